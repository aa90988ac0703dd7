//go:build !linux

package agenttest

import "syscall"

func procAttr() *syscall.SysProcAttr { return nil }
