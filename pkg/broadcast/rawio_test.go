package broadcast

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

// tcpPair listens on loopback, accepts with accept and dials with dial; it returns both ends,
// each with a deadline 30 s away: a call that waits longer is a hang, and fails rather than
// block the suite.
func tcpPair(t *testing.T, accept func(net.Listener) (net.Conn, error), dial func(addr string) (net.Conn, error)) (dialled, accepted net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() {
		c, err := accept(ln)
		if err != nil {
			close(acc)
			return
		}
		acc <- c
	}()
	c, err := dial(ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	a, ok := <-acc
	if !ok {
		c.Close()
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); c.Close() })
	deadline := time.Now().Add(30 * time.Second)
	for _, x := range []net.Conn{a, c} {
		if err := x.SetDeadline(deadline); err != nil {
			t.Fatal(err)
		}
	}
	return c, a
}

// rawPair returns a connection accepted through rawListener (the data plane's sending side)
// and the dialled end.
func rawPair(t *testing.T) (*rawWriteConn, *net.TCPConn) {
	t.Helper()
	c, a := tcpPair(t, func(ln net.Listener) (net.Conn, error) { return rawListener{ln}.Accept() },
		func(addr string) (net.Conn, error) { return net.DialTimeout("tcp", addr, 5*time.Second) })
	rc, ok := a.(*rawWriteConn)
	if !ok {
		t.Fatalf("rawListener accepted a %T", a)
	}
	// Small socket buffers: a send of megabytes meets a full socket many times over, however
	// fast the other end reads.
	if err := rc.SetWriteBuffer(64 << 10); err != nil {
		t.Fatal(err)
	}
	if err := c.(*net.TCPConn).SetReadBuffer(64 << 10); err != nil {
		t.Fatal(err)
	}
	return rc, c.(*net.TCPConn)
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{7})
	_, _ = r.Read(b)
	return b
}

// readAllAsync reads c to its end and delivers what it read.
func readAllAsync(c net.Conn) <-chan []byte {
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(c)
		got <- b
	}()
	return got
}

func TestRawWriteSendsEverythingWhenTheSocketFills(t *testing.T) {
	w, r := rawPair(t)
	want := randomBytes(16 << 20) // far more than a socket buffer: the writes meet EAGAIN
	got := readAllAsync(r)
	n, err := w.Write(want)
	if err != nil || n != len(want) {
		t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(want))
	}
	w.Close()
	if b := <-got; !bytes.Equal(b, want) {
		t.Fatalf("received %d bytes, not the %d written", len(b), len(want))
	}
}

// A peer that goes away ends a write or a send with an error, not a wait.
func TestRawWriteToAClosedPeerFails(t *testing.T) {
	for _, send := range []struct {
		name string
		do   func(w *rawWriteConn) error
	}{
		{"write", func(w *rawWriteConn) error { _, err := w.Write(randomBytes(8 << 20)); return err }},
	} {
		t.Run(send.name, func(t *testing.T) {
			w, r := rawPair(t)
			if err := r.SetLinger(0); err != nil { // close with a reset: the sender's next call fails
				t.Fatal(err)
			}
			r.Close()
			err := send.do(w)
			var op *net.OpError
			if !errors.As(err, &op) || !(errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)) {
				t.Fatalf("got %v, want a *net.OpError of ECONNRESET or EPIPE", err)
			}
		})
	}
}

// A write waiting for room ends when its deadline passes.
func TestRawWriteHonoursTheDeadline(t *testing.T) {
	w, _ := rawPair(t) // the other end never reads
	b := randomBytes(64 << 20)
	if err := w.SetWriteDeadline(time.Now().Add(200 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	n, err := w.Write(b)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Write = %d, %v; want the deadline's error", n, err)
	}
	if n <= 0 || n >= 64<<20 {
		t.Errorf("Write reports %d bytes written before the deadline", n)
	}
}

func TestRawReadEndsAtEOFDeadlineAndClose(t *testing.T) {
	t.Run("data then EOF", func(t *testing.T) {
		c, srv := lowatPair(t)
		if _, err := srv.Write([]byte("hello")); err != nil {
			t.Fatal(err)
		}
		srv.Close()
		b, err := io.ReadAll(c)
		if err != nil || string(b) != "hello" {
			t.Fatalf("ReadAll = %q, %v", b, err)
		}
		if n, err := c.Read(make([]byte, 8)); n != 0 || err != io.EOF {
			t.Fatalf("a read after the end = %d, %v; want 0, io.EOF", n, err)
		}
	})
	t.Run("deadline", func(t *testing.T) {
		c, _ := lowatPair(t)
		if err := c.SetReadDeadline(time.Now().Add(100 * time.Millisecond)); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Read(make([]byte, 8)); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("got %v, want the deadline's error", err)
		}
	})
	t.Run("closed while waiting", func(t *testing.T) {
		c, _ := lowatPair(t)
		errc := make(chan error, 1)
		go func() {
			_, err := c.Read(make([]byte, 8))
			errc <- err
		}()
		time.AfterFunc(50*time.Millisecond, func() { c.Close() })
		if err := <-errc; !errors.Is(err, net.ErrClosed) {
			t.Fatalf("got %v, want net.ErrClosed", err)
		}
	})
}
