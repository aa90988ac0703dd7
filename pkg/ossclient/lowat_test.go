package ossclient

import (
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// markedPair returns a connection dialed with dialMarked (reads above 4 KiB marked, the given
// read/write timeout) and the server's end of it.
func markedPair(t *testing.T, timeout time.Duration) (*markedConn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	c, err := dialMarked(time.Second, time.Minute, timeout, 4<<10)(t.Context(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	srv, ok := <-accepted
	if !ok {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { c.Close(); srv.Close() })
	mc, ok := c.(*markedConn)
	if !ok {
		t.Fatalf("dialMarked returned a %T", c)
	}
	return mc, srv
}

// mark reads c's SO_RCVLOWAT back from the kernel.
func mark(t *testing.T, c *markedConn) int {
	t.Helper()
	var v int
	var serr error
	if err := c.raw.Control(func(fd uintptr) { v, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVLOWAT) }); err != nil || serr != nil {
		t.Fatal(err, serr)
	}
	return v
}

// readWithin runs a Read of n bytes and fails the test if it has not returned within 10 s
// (a read waiting on a mark its bytes will never reach).
func readWithin(t *testing.T, c net.Conn, n int) (int, error) {
	t.Helper()
	type result struct {
		n   int
		err error
	}
	done := make(chan result, 1)
	go func() {
		k, err := c.Read(make([]byte, n))
		done <- result{k, err}
	}()
	select {
	case r := <-done:
		return r.n, r.err
	case <-time.After(10 * time.Second):
		t.Fatalf("a %d-byte read has not returned after 10 s", n)
		return 0, nil
	}
}

// Reads larger than the transport's buffer wait for their bytes (up to maxMark); the
// transport's own buffered reads (the response's head, an idle connection's peek) for one.
func TestMarkedConnMarksLargeReadsOnly(t *testing.T) {
	c, srv := markedPair(t, 0)
	for _, tc := range []struct{ read, mark int }{
		{64 << 10, 64 << 10},
		{4 << 10, 1}, // net/http's buffer: never marked
		{4<<10 + 1, 4<<10 + 1},
		{4 << 20, maxMark},
		{100, 1},
	} {
		wrote := make(chan error, 1)
		go func() { _, err := srv.Write(make([]byte, tc.read)); wrote <- err }()
		k, err := readWithin(t, c, tc.read)
		if err != nil {
			t.Fatal(err)
		}
		if got := mark(t, c); got != tc.mark {
			t.Fatalf("after a %d-byte read the mark is %d, want %d", tc.read, got, tc.mark)
		}
		if _, err := io.ReadFull(c, make([]byte, tc.read-k)); err != nil {
			t.Fatal(err)
		}
		if err := <-wrote; err != nil {
			t.Fatal(err)
		}
	}
}

// A marked read still ends with the bytes that arrived and io.EOF when the peer closes, and
// with a timeout when the peer stalls mid-body: the mark never outlasts the stream or the
// read timeout.
func TestMarkedConnEndsOnCloseAndTimeout(t *testing.T) {
	t.Run("close", func(t *testing.T) {
		c, srv := markedPair(t, 0)
		if _, err := srv.Write(make([]byte, 100)); err != nil {
			t.Fatal(err)
		}
		srv.Close()
		got := 0
		for {
			k, err := readWithin(t, c, 64<<10)
			got += k
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		if got != 100 {
			t.Fatalf("read %d bytes, want 100", got)
		}
	})
	t.Run("stall", func(t *testing.T) {
		c, srv := markedPair(t, 300*time.Millisecond)
		if _, err := srv.Write(make([]byte, 100)); err != nil {
			t.Fatal(err)
		}
		if k, err := readWithin(t, c, 64<<10); k != 100 || err != nil {
			t.Fatalf("first read: %d bytes, %v; want the 100 that arrived", k, err)
		}
		// The peer sends a little more, short of the mark, then nothing.
		if _, err := srv.Write(make([]byte, 100)); err != nil {
			t.Fatal(err)
		}
		var err error
		for err == nil {
			_, err = readWithin(t, c, 64<<10)
		}
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("a stalled peer: %v, want the read timeout", err)
		}
	})
}
