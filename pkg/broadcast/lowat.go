package broadcast

import (
	"context"
	"net"
	"sync/atomic"
	"syscall"

	"github.com/modelcast/modelcast/internal/sockopt"
)

// A hop's receiver reads a chunk's bytes straight into the cache. On a link slower than the
// machine, the kernel would wake it for every few kilobytes that arrive: a shaped 1 Gbit/s
// hop measured about 55 000 reads (and as many wake-ups and context switches) per GB. The
// receiver knows how many bytes are sure to come (the rest of the chunk it is reading), so it
// asks the kernel, with SO_RCVLOWAT, to wake it only once they are there: a few reads per
// read buffer instead.
//
// Only bytes that are sure to come may be waited for: a low-water mark above what the peer
// will send would leave the read waiting until the peer's next chunk (or for ever at the
// stream's end). lowatConn therefore waits for at most min(want, len(p)) bytes, where want
// is what the receiver set for the chunk it reads and len(p) is what this read asks for;
// a read outside a chunk (a frame header, the response's head, an idle connection's peek)
// waits for one byte as before. net/http's buffered reader sits between the two: it reads
// the connection either straight into the receiver's buffer (len(p) ≤ the chunk's rest) or,
// when empty, into its own small buffer, and in both cases every byte of the chunk's rest
// is still in the socket or on its way.

// maxLowat bounds the mark: the kernel caps it at half the receive buffer's limit anyway.
const maxLowat = 1 << 20

// lowatConn is a TCP connection whose reads wait for the bytes its reader says are coming
// (read with raw system calls, see rawio.go; the mark set with one, internal/sockopt).
// One goroutine reads it at a time (net/http's connection reader or a body's reader).
type lowatConn struct {
	*net.TCPConn
	raw  syscall.RawConn
	want atomic.Int64 // bytes sure to come, set by the receiver around a chunk's reads; 0: none
	set  int          // the socket's SO_RCVLOWAT as last set
}

func (c *lowatConn) Read(p []byte) (int, error) {
	lw := 1
	if w := c.want.Load(); w > 0 {
		lw = int(min(w, int64(len(p)), maxLowat))
	}
	if lw != c.set {
		var serr error
		if err := c.raw.Control(func(fd uintptr) {
			serr = sockopt.SetRcvLowat(fd, lw)
		}); err == nil && serr == nil {
			c.set = lw
		}
		// On an error the read still works, with more wake-ups: nothing to report.
	}
	return rawRead(c, c.raw, p)
}

// expect says that n more bytes are sure to come (0: nothing is).
func (c *lowatConn) expect(n int64) {
	if c != nil {
		c.want.Store(n)
	}
}

// dialLowat dials with d and wraps TCP connections in a lowatConn.
func dialLowat(d *net.Dialer) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		if tc, raw, ok := tcpRaw(c); ok {
			return &lowatConn{TCPConn: tc, raw: raw, set: 1}, nil // 1: the kernel's default
		}
		return c, nil
	}
}
