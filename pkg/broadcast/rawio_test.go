package broadcast

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
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

// tempFile is a file of the given bytes, open for reading.
func tempFile(t *testing.T, b []byte) *os.File {
	t.Helper()
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func offsetOf(t *testing.T, f *os.File) int64 {
	t.Helper()
	pos, err := f.Seek(0, io.SeekCurrent)
	if err != nil {
		t.Fatal(err)
	}
	return pos
}

func TestRawSendfileFromASection(t *testing.T) {
	data := randomBytes(12 << 20)
	f := tempFile(t, data)
	for _, tc := range []struct {
		name      string
		off, n    int64
		limit     int64 // an io.LimitedReader around the section (-1: none)
		wantBytes int64
	}{
		{"whole file", 0, int64(len(data)), -1, int64(len(data))},
		{"middle", 3<<20 + 5, 5 << 20, -1, 5 << 20},
		{"under a limit", 1 << 20, 4 << 20, 1<<20 + 3, 1<<20 + 3},
		{"past the file's end", int64(len(data)) - 100, 1 << 20, -1, 100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, r := rawPair(t)
			got := readAllAsync(r)
			sec := io.NewSectionReader(f, tc.off, tc.n)
			var src io.Reader = sec
			var lr *io.LimitedReader
			if tc.limit >= 0 {
				lr = &io.LimitedReader{R: sec, N: tc.limit}
				src = lr
			}
			n, err := w.ReadFrom(src)
			if err != nil || n != tc.wantBytes {
				t.Fatalf("ReadFrom = %d, %v; want %d, nil", n, err, tc.wantBytes)
			}
			w.Close()
			if b := <-got; !bytes.Equal(b, data[tc.off:tc.off+tc.wantBytes]) {
				t.Fatalf("received %d bytes, not bytes %d to %d of the file", len(b), tc.off, tc.off+tc.wantBytes)
			}
			// The section and the limit advanced by what was sent; the file's offset did not move.
			if pos, _ := sec.Seek(0, io.SeekCurrent); pos != tc.wantBytes {
				t.Errorf("the section is at %d, want %d", pos, tc.wantBytes)
			}
			if lr != nil && lr.N != tc.limit-tc.wantBytes {
				t.Errorf("the limit has %d left, want %d", lr.N, tc.limit-tc.wantBytes)
			}
			if pos := offsetOf(t, f); pos != 0 {
				t.Errorf("the file's offset moved to %d", pos)
			}
		})
	}
}

func TestRawSendfileFromAFileOffset(t *testing.T) {
	data := randomBytes(6 << 20)
	f := tempFile(t, data)
	if _, err := f.Seek(1<<20, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	w, r := rawPair(t)
	got := readAllAsync(r)
	lr := &io.LimitedReader{R: f, N: 2 << 20}
	if n, err := w.ReadFrom(lr); err != nil || n != 2<<20 {
		t.Fatalf("ReadFrom = %d, %v; want %d, nil", n, err, 2<<20)
	}
	// Without a limit: the rest of the file from where it now is.
	if n, err := w.ReadFrom(f); err != nil || n != 3<<20 {
		t.Fatalf("ReadFrom = %d, %v; want %d, nil", n, err, 3<<20)
	}
	w.Close()
	if b := <-got; !bytes.Equal(b, data[1<<20:]) {
		t.Fatalf("received %d bytes, not the file's last %d", len(b), len(data)-1<<20)
	}
	if lr.N != 0 {
		t.Errorf("the limit has %d left", lr.N)
	}
	if pos := offsetOf(t, f); pos != int64(len(data)) {
		t.Errorf("the file's offset is %d, want its end %d", pos, len(data))
	}
}

func TestRawReadFromAnyOtherReaderCopies(t *testing.T) {
	w, r := rawPair(t)
	data := randomBytes(3<<20 + 7)
	got := readAllAsync(r)
	if n, err := w.ReadFrom(strings.NewReader(string(data))); err != nil || n != int64(len(data)) {
		t.Fatalf("ReadFrom = %d, %v; want %d, nil", n, err, len(data))
	}
	w.Close()
	if b := <-got; !bytes.Equal(b, data) {
		t.Fatal("the bytes differ")
	}
}

// A peer that goes away ends a write or a send with an error, not a wait.
func TestRawWriteToAClosedPeerFails(t *testing.T) {
	f := tempFile(t, randomBytes(8<<20))
	for _, send := range []struct {
		name string
		do   func(w *rawWriteConn) error
	}{
		{"write", func(w *rawWriteConn) error { _, err := w.Write(randomBytes(8 << 20)); return err }},
		{"sendfile", func(w *rawWriteConn) error { _, err := w.ReadFrom(io.NewSectionReader(f, 0, 8<<20)); return err }},
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
