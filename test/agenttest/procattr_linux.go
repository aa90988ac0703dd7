package agenttest

import "syscall"

// procAttr: the kernel kills an agent whose parent dies without its clean-up.
func procAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} }
