package ossclient

import (
	"context"
	"net"
	"syscall"
	"time"

	"github.com/modelcast/modelcast/internal/sockopt"
)

// A download on a link slower than the machine has hundreds of connections, each delivering a
// few kilobytes at a time; a reader woken for every few kilobytes costs a thread wake-up each,
// and on a link-bound node those wake-ups are most of the download's CPU. A body read knows
// how many bytes are sure to come: net/http hands the connection a body read only up to the
// response's Content-Length (or the current chunk of a chunked body), straight into the
// reader's buffer, and reads the response's head and anything else through its own buffer of
// a few kilobytes. So a read larger than that buffer asks the kernel (SO_RCVLOWAT) to wake it
// only once as many bytes as it asks for are there; any other read wakes for one byte as
// before. A read returns at once with what has arrived when anything has; the end of the
// stream, an error or the read deadline wake a waiting read whatever its mark.
//
// Only plain-HTTP connections are marked: under TLS the connection is read in records whose
// sizes do not follow the body's.

// maxMark bounds the mark (the kernel caps it at half the receive buffer's limit anyway).
const maxMark = 256 << 10

// markedConn is a plain-HTTP connection to OSS whose large reads wait for their bytes, with
// the SDK's read/write timeout: every read or write that moves bytes pushes the deadline on.
type markedConn struct {
	*net.TCPConn
	raw     syscall.RawConn
	above   int           // reads of at most this many bytes are the transport's own buffer's
	timeout time.Duration // read/write timeout; 0: none
	set     int           // the socket's SO_RCVLOWAT as last set
}

func (c *markedConn) Read(p []byte) (int, error) {
	mark := 1
	if len(p) > c.above {
		mark = min(len(p), maxMark)
	}
	if mark != c.set {
		var serr error
		if err := c.raw.Control(func(fd uintptr) { serr = sockopt.SetRcvLowat(fd, mark) }); err == nil && serr == nil {
			c.set = mark
		}
		// On an error the read still works, with more wake-ups: nothing to report.
	}
	n, err := c.TCPConn.Read(p)
	if err == nil && n > 0 {
		err = c.nudge()
	}
	return n, err
}

func (c *markedConn) Write(p []byte) (int, error) {
	n, err := c.TCPConn.Write(p)
	if err == nil && n > 0 {
		err = c.nudge()
	}
	return n, err
}

// nudge pushes the deadline on by the timeout, as the SDK's own connections do.
func (c *markedConn) nudge() error {
	if c.timeout > 0 {
		return c.SetDeadline(time.Now().Add(c.timeout))
	}
	return nil
}

// dialMarked dials TCP connections as the SDK does (connect timeout, keep-alive, the deadline
// set at once) and marks their large reads; above is the transport's read buffer size.
func dialMarked(connect, keepAlive, timeout time.Duration, above int) func(ctx context.Context, network, addr string) (net.Conn, error) {
	d := &net.Dialer{Timeout: connect, KeepAlive: keepAlive}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		tc, ok := c.(*net.TCPConn)
		if !ok {
			return c, nil
		}
		raw, err := tc.SyscallConn()
		if err != nil {
			c.Close()
			return nil, err
		}
		mc := &markedConn{TCPConn: tc, raw: raw, above: above, timeout: timeout, set: 1} // 1: the kernel's default
		if err := mc.nudge(); err != nil {
			c.Close()
			return nil, err
		}
		return mc, nil
	}
}
