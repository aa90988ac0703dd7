package broadcast

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// lowatPair dials a loopback listener through dialLowat and returns both ends.
func lowatPair(t *testing.T) (*lowatConn, net.Conn) {
	t.Helper()
	c, srv := tcpPair(t, net.Listener.Accept, func(addr string) (net.Conn, error) {
		return dialLowat(&net.Dialer{Timeout: 5 * time.Second})(t.Context(), "tcp", addr)
	})
	lc, ok := c.(*lowatConn)
	if !ok {
		t.Fatalf("dialLowat returned a %T", c)
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
	for left := int64(len(chunk)); left > 0; {
		c.expect(left)
		b := buf[:min(int64(len(buf)), left)]
		// One Read sets the mark for what it asks for (the rest of a short read asks for less).
		k, err := c.Read(b)
		if err != nil {
			t.Fatalf("after %d bytes: %v", len(got), err)
		}
		if want := int(min(left, int64(len(b)))); rcvlowat(t, c) != want {
			t.Errorf("SO_RCVLOWAT %d after a read of %d of the chunk's %d bytes left: want %d", rcvlowat(t, c), len(b), left, want)
		}
		more, err := io.ReadFull(c, b[k:])
		if err != nil {
			t.Fatalf("after %d bytes: %v", len(got)+k+more, err)
		}
		k += more
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

// A chunk smaller than net/http's read buffer, the stream's last, with half of it read into
// that buffer along with its frame header: the rest must arrive although nothing follows it
// but the end frame (a mark left at the whole chunk waited for bytes that never came).
func TestReadSomeDoesNotWaitForBufferedBytes(t *testing.T) {
	const hdrSize, size, first = 32, 2967, 1000
	chunk := bytes.Repeat([]byte{'m'}, size)
	headerRead := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "100000") // a stream that goes on: the sender waits for more
		w.WriteHeader(http.StatusOK)
		// The frame header and the chunk's first bytes leave together.
		_, _ = w.Write(append(bytes.Repeat([]byte{'h'}, hdrSize), chunk[:first]...))
		_ = http.NewResponseController(w).Flush()
		select {
		case <-headerRead:
		case <-r.Context().Done():
			return
		}
		_, _ = w.Write(append(chunk[first:], []byte("end-frame!")...))
		_ = http.NewResponseController(w).Flush()
		<-r.Context().Done() // nothing more until the receiver hangs up
	}))
	defer srv.Close()
	client := &http.Client{Transport: &http.Transport{DialContext: dialLowat(&net.Dialer{Timeout: 5 * time.Second})}}
	defer client.CloseIdleConnections()

	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second) // a wait past this is the hang
	defer cancel()
	var conn *lowatConn
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) {
		conn, _ = i.Conn.(*lowatConn)
	}})
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	res, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if conn == nil {
		t.Fatal("the request did not go through a lowatConn")
	}
	hdr := make([]byte, hdrSize)
	if _, err := io.ReadFull(res.Body, hdr); err != nil {
		t.Fatal(err)
	}
	close(headerRead)
	got := make([]byte, size)
	for n := 0; n < size; {
		k, err := readSome(res.Body, conn, got[n:], int64(size-n))
		n += k
		if err != nil {
			t.Fatalf("after %d of the chunk's %d bytes: %v (the read waited for bytes its peer would not send)", n, size, err)
		}
	}
	if !bytes.Equal(got, chunk) {
		t.Fatal("the chunk's bytes differ")
	}
	conn.expect(0)
	end := make([]byte, 10)
	if _, err := io.ReadFull(res.Body, end); err != nil || string(end) != "end-frame!" {
		t.Fatalf("end frame %q, %v", end, err)
	}
}
