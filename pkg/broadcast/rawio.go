package broadcast

import (
	"io"
	"net"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A hop's sockets are read and written with raw system calls; the runtime's poller still does
// the waiting (syscall.RawConn). Go's ordinary system calls tell the scheduler they may block,
// and the first one after every P went idle wakes the runtime's monitor thread (sysmon), which
// then polls every 20 µs until the process is idle again. A relay is idle between chunks, so
// every chunk woke sysmon, at about four context switches a time: 16 000–17 000 of a middle
// node's 22 000–26 000 per GB relayed over 1 Gbit/s links on a paravirtualized VM, where a
// sleep and wake-up cost ~25 µs of CPU. With the calls here: 3 100–3 700 of 11 500–12 700, and
// the relay's CPU went from a median 2.43 to 1.78 core-s per GB (docs/design.md has the runs).
//
// None of these calls blocks: the sockets are non-blocking (EAGAIN sends the goroutine to the
// poller), and the files sent from or received into are the cache's, on tmpfs, whose pages are
// in memory. MADV_POPULATE_WRITE allocates and zeroes them, as the page faults of writing into
// the mapping would, and Go never counts page faults as system calls either.

// rawRead reads what conn's socket holds into p, waiting in the poller while it holds nothing.
// It returns io.EOF at the stream's end.
func rawRead(conn net.Conn, raw syscall.RawConn, p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	var k int
	var errno syscall.Errno
	err := raw.Read(func(fd uintptr) bool {
		for {
			r, _, e := unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
			switch e {
			case unix.EINTR:
				continue
			case unix.EAGAIN:
				return false
			}
			k, errno = int(r), e
			return true
		}
	})
	switch {
	case err != nil:
		return 0, opError("read", conn, err)
	case errno != 0:
		return 0, opError("read", conn, os.NewSyscallError("read", errno))
	case k == 0:
		return 0, io.EOF
	}
	return k, nil
}

func opError(op string, c net.Conn, err error) error {
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}

// populate faults the pages of b in (MADV_POPULATE_WRITE), best effort.
func populate(b []byte) {
	if len(b) > 0 {
		_, _, _ = unix.RawSyscall(unix.SYS_MADVISE, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), unix.MADV_POPULATE_WRITE)
	}
}

// rawListener accepts connections whose writes are raw system calls (a stream's chunks are
// sent on them by outStream).
type rawListener struct{ net.Listener }

func (l rawListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	if tc, raw, ok := tcpRaw(c); ok {
		return &rawWriteConn{TCPConn: tc, raw: raw}, nil
	}
	return c, nil
}

// tcpRaw is c as a TCP connection and its file descriptor's access, if it is one.
func tcpRaw(c net.Conn) (*net.TCPConn, syscall.RawConn, bool) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil, nil, false
	}
	raw, err := tc.SyscallConn()
	return tc, raw, err == nil
}

// rawWriteConn is an accepted connection of the data plane: net/http writes a response's head
// through Write, and a stream's outStream sends its frames on the descriptor.
type rawWriteConn struct {
	*net.TCPConn
	raw syscall.RawConn
}

func (c *rawWriteConn) Write(p []byte) (int, error) {
	done := 0
	err := c.push("write", func() bool { return done < len(p) }, func(fd uintptr) (uintptr, syscall.Errno) {
		r, _, e := unix.RawSyscall(unix.SYS_WRITE, fd, uintptr(unsafe.Pointer(&p[done])), uintptr(len(p)-done))
		if e == 0 {
			done += int(r)
		}
		return r, e
	})
	if err == nil && done < len(p) {
		err = io.ErrShortWrite
	}
	return done, err
}

// push repeats call (one raw system call that moves some bytes, and counts them) while more
// says there is more to move, waiting in the poller while the socket is full. A call that moves
// nothing ends it: the source ended.
func (c *rawWriteConn) push(op string, more func() bool, call func(fd uintptr) (uintptr, syscall.Errno)) error {
	var errno syscall.Errno
	err := c.raw.Write(func(fd uintptr) bool {
		var full bool
		full, errno = moveRaw(fd, more, call)
		return !full
	})
	switch {
	case err != nil:
		return opError(op, c, err)
	case errno != 0:
		return opError(op, c, os.NewSyscallError(op, errno))
	}
	return nil
}

// moveRaw repeats call on fd while more says there is more to move, until the socket is full
// (full), call fails (errno) or moves nothing (the source ended). It never waits.
func moveRaw(fd uintptr, more func() bool, call func(fd uintptr) (uintptr, syscall.Errno)) (full bool, errno syscall.Errno) {
	for more() {
		r, e := call(fd)
		switch e {
		case 0:
			if r == 0 {
				return false, 0
			}
		case unix.EINTR:
		case unix.EAGAIN:
			return true, 0
		default:
			return false, e
		}
	}
	return false, 0
}
