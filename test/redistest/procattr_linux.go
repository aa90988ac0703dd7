//go:build linux

package redistest

import "syscall"

// sysProcAttr has the kernel kill redis-server when the test process dies
// without running its cleanups (a test timeout's panic, a crash), so no
// server outlives its test binary. Pdeathsig fires when the thread that
// started the child exits, which Go does only for a goroutine that exits
// while locked to its thread (runtime.LockOSThread): do not Start or Restart
// a server from such a goroutine.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
