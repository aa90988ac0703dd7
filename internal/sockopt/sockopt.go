// Package sockopt sets socket options with raw system calls. A raw call never tells the Go
// scheduler it may block, so it never wakes the runtime's sysmon thread; an ordinary one does,
// after every idle spell, and a reader on a link slower than the machine idles between most of
// its reads. Only calls that cannot block belong here.
package sockopt

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// SetRcvLowat sets fd's SO_RCVLOWAT to n bytes: a read (and readiness for epoll) waits until n
// bytes are there, or the stream ends, or an error or the read deadline comes first.
func SetRcvLowat(fd uintptr, n int) error {
	v := int32(n)
	if _, _, e := unix.RawSyscall6(unix.SYS_SETSOCKOPT, fd, unix.SOL_SOCKET, unix.SO_RCVLOWAT,
		uintptr(unsafe.Pointer(&v)), unsafe.Sizeof(v), 0); e != 0 {
		return e
	}
	return nil
}
