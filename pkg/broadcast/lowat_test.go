package broadcast

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// lowatPair dials a loopback listener through dialLowat and returns both ends.
func lowatPair(t *testing.T) (*lowatConn, net.Conn) {
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
	c, err := dialLowat(&net.Dialer{Timeout: 5 * time.Second})(t.Context(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	lc, ok := c.(*lowatConn)
	if !ok {
		t.Fatalf("dialLowat returned a %T", c)
	}
	srv, ok := <-accepted
	if !ok {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { lc.Close(); srv.Close() })
	// A read that waits longer than this is a hang: fail rather than block the suite.
	if err := lc.SetReadDeadline(time.Now().Add(30 * time.Second)); err != nil {
		t.Fatal(err)
	}
	return lc, srv
}

func rcvlowat(t *testing.T, c *lowatConn) int {
	t.Helper()
	var v int
	var gerr error
	if err := c.raw.Control(func(fd uintptr) { v, gerr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVLOWAT) }); err != nil || gerr != nil {
		t.Fatal(err, gerr)
	}
	return v
}

// A read of a chunk's bytes waits for min(what is sure to come, what the read asks for); a
// read outside a chunk waits for one byte, so a short message at a stream's end arrives.
func TestLowatConnWaitsOnlyForBytesSureToCome(t *testing.T) {
	c, srv := lowatPair(t)

	// A chunk's 600 KiB, sent in pieces as a shaped link delivers them.
	chunk := bytes.Repeat([]byte("modelcast"), 600<<10/9)
	go func() {
		for p := chunk; len(p) > 0; {
			k := min(len(p), 40<<10)
			if _, err := srv.Write(p[:k]); err != nil {
				return
			}
			p = p[k:]
		}
	}()
	got := make([]byte, 0, len(chunk))
	buf := make([]byte, 256<<10)
	reads := 0
	for left := int64(len(chunk)); left > 0; {
		c.expect(left)
		b := buf[:min(int64(len(buf)), left)]
		k, err := io.ReadFull(c, b)
		if err != nil {
			t.Fatalf("after %d bytes: %v", len(got), err)
		}
		reads++
		if want := int(min(left, int64(len(b)))); reads == 1 && rcvlowat(t, c) != want {
			t.Errorf("SO_RCVLOWAT %d while reading %d of the chunk's %d bytes left: want %d", rcvlowat(t, c), len(b), left, want)
		}
		got = append(got, b[:k]...)
		left -= int64(k)
	}
	if !bytes.Equal(got, chunk) {
		t.Fatal("the chunk's bytes differ")
	}

	// Outside a chunk: a 10-byte end frame and nothing after it, read through a 4 KiB buffer.
	c.expect(0)
	if _, err := srv.Write([]byte("end-frame!")); err != nil {
		t.Fatal(err)
	}
	small := make([]byte, 4<<10)
	k, err := c.Read(small)
	if err != nil || string(small[:k]) != "end-frame!" {
		t.Fatalf("read %q, %v: want the 10-byte message (a read outside a chunk must not wait for more)", small[:k], err)
	}
	if v := rcvlowat(t, c); v != 1 {
		t.Errorf("SO_RCVLOWAT %d outside a chunk: want 1", v)
	}

	// A chunk's last few bytes, fewer than the read's buffer: the mark is the bytes left.
	c.expect(7)
	if _, err := srv.Write([]byte("7 bytes")); err != nil {
		t.Fatal(err)
	}
	if k, err := c.Read(small); err != nil || string(small[:k]) != "7 bytes" {
		t.Fatalf("read %q, %v: want the chunk's last 7 bytes", small[:k], err)
	}
	if v := rcvlowat(t, c); v != 7 {
		t.Errorf("SO_RCVLOWAT %d for a chunk's last 7 bytes: want 7", v)
	}
}
