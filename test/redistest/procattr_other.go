//go:build !linux

package redistest

import "syscall"

// sysProcAttr: outside Linux a server killed with its test binary may
// outlive it.
func sysProcAttr() *syscall.SysProcAttr { return nil }
