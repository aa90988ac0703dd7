package broadcast

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/modelcast/modelcast/internal/crc64ecma"
)

// rawStream opens a stream of every chunk from n's data plane on a connection that receives
// into a small buffer and reads nothing until the caller does: n's socket fills.
func rawStream(t *testing.T, n *Broadcaster, chunks int) (*bufio.Reader, *net.TCPConn) {
	t.Helper()
	tok, err := n.token(t.Context(), "team", false)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.DialTimeout("tcp", n.Addr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	tc := c.(*net.TCPConn)
	t.Cleanup(func() { tc.Close() })
	if err := tc.SetReadBuffer(32 << 10); err != nil {
		t.Fatal(err)
	}
	if err := tc.SetDeadline(time.Now().Add(time.Minute)); err != nil { // a hang fails, later
		t.Fatal(err)
	}
	body := want{have: make([]bool, chunks)}.encode()
	fmt.Fprintf(tc, "POST /v1/team/models/k/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s",
		tok, wantContentType, len(body), body)
	r := bufio.NewReader(tc)
	res, err := http.ReadResponse(r, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != http.StatusOK {
		t.Fatalf("stream answered %s", res.Status)
	}
	if !res.Close {
		t.Error("the stream's response does not say Connection: close (net/http closes the connection after it)")
	}
	return r, tc
}

// waitFull waits until l's stream has filled its socket and waits for room.
func waitFull(t *testing.T, l *replica) {
	t.Helper()
	waitUntil(t, "the stream fills its socket", func() bool {
		l.mu.Lock()
		streams := l.streams
		l.mu.Unlock()
		if len(streams) != 1 {
			return false
		}
		_, _, full := streams[0].state()
		return full
	})
}

// waitUntil polls cond until it holds, failing after 30 s.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(5 * time.Millisecond) // a poll, with the deadline above
	}
}

// readChunks reads frames from r, checking each chunk's bytes and CRC-64, until a frame that is
// not a chunk; it returns the chunks in the order they came and that frame's kind.
func (w *orderWorld) readChunks(t *testing.T, r io.Reader) ([]int, byte) {
	t.Helper()
	hdr := make([]byte, frameHeaderSize)
	var got []int
	for {
		f, err := readFrame(r, hdr)
		if err != nil {
			t.Fatalf("after %d chunks: %v", len(got), err)
		}
		if f.kind != frameChunk {
			return got, f.kind
		}
		b := make([]byte, f.size)
		if _, err := io.ReadFull(r, b); err != nil {
			t.Fatalf("chunk %d: %v", f.index, err)
		}
		if !bytes.Equal(b, w.bytesOf(f.index)[f.offset:]) || crc64ecma.Update(0, b) != f.crc {
			t.Fatalf("chunk %d came with other bytes or CRC", f.index)
		}
		got = append(got, f.index)
	}
}

// TestStreamWaitsForRoomAndSendsOn: a stream whose receiver does not read fills its socket; the
// stream's goroutine then waits for room, and the chunks verified meanwhile (sent on by the
// goroutine that verifies them, which finds the socket full) all come, whole and in the order
// they were verified, once the receiver reads.
func TestStreamWaitsForRoomAndSendsOn(t *testing.T) {
	w := newOrderWorld(t, 24<<20)
	a := w.node(t, "a")
	la := w.local(t, a, 1)
	n := w.layout.Len()
	for i := range n / 2 {
		w.put(t, la, i, w.layout.Chunk(i).Size)
	}
	r, _ := rawStream(t, a, n)
	waitFull(t, la)
	for i := n / 2; i < n; i++ { // verified while the socket is full
		w.put(t, la, i, w.layout.Chunk(i).Size)
	}
	got, last := w.readChunks(t, r)
	if last != frameEnd {
		t.Fatalf("the stream ended with frame kind %d, want the end frame", last)
	}
	if len(got) != n {
		t.Fatalf("got %d chunks, want %d", len(got), n)
	}
	for k, i := range got {
		if i != k {
			t.Fatalf("chunk %d came %d-th, want the order of verification", i, k)
		}
	}
	if s := a.Stats(); s.Served != w.m.Size() {
		t.Errorf("a served %d bytes, want %d", s.Served, w.m.Size())
	}
}

// TestStreamMovedWhileFull: a node that moves in its chain while its stream waits for room
// ends the stream after the frame in flight, with frameMoved: the receiver gets whole chunks,
// then the news.
func TestStreamMovedWhileFull(t *testing.T) {
	w := newOrderWorld(t, 16<<20)
	a := w.node(t, "a")
	la := w.local(t, a, 1)
	n := w.layout.Len()
	for i := range n {
		w.put(t, la, i, w.layout.Chunk(i).Size)
	}
	r, _ := rawStream(t, a, n)
	waitFull(t, la)
	if !la.stepBack() {
		t.Fatal("the node had moved already")
	}
	got, last := w.readChunks(t, r)
	if last != frameMoved {
		t.Fatalf("the stream ended with frame kind %d, want frameMoved", last)
	}
	if len(got) == 0 || len(got) == n {
		t.Errorf("got %d of %d chunks before frameMoved, want some and not all", len(got), n)
	}
	if _, err := r.ReadByte(); !errors.Is(err, io.EOF) {
		t.Errorf("after frameMoved: %v, want the connection's end", err)
	}
}

// TestStreamEndsWhenTheReceiverGoes: a receiver that resets its connection while the stream
// waits for room, or while it waits for chunks, ends the stream rather than leaving it waiting.
func TestStreamEndsWhenTheReceiverGoes(t *testing.T) {
	for _, full := range []bool{true, false} {
		t.Run(fmt.Sprintf("full=%v", full), func(t *testing.T) {
			w := newOrderWorld(t, 16<<20)
			a := w.node(t, "a")
			la := w.local(t, a, 1)
			n := w.layout.Len()
			have := n
			if !full {
				have = 3
			}
			for i := range have {
				w.put(t, la, i, w.layout.Chunk(i).Size)
			}
			r, c := rawStream(t, a, n)
			if full {
				waitFull(t, la)
			} else if got, _ := w.readChunksN(t, r, have); len(got) != have {
				t.Fatalf("got %d chunks, want %d", len(got), have)
			}
			if err := c.SetLinger(0); err != nil {
				t.Fatal(err)
			}
			c.Close()
			waitStreams(t, a, 0)
			for i := have; i < n; i++ { // chunks verified after the stream ended go nowhere
				w.put(t, la, i, w.layout.Chunk(i).Size)
			}
			la.mu.Lock()
			left := len(la.streams)
			la.mu.Unlock()
			if left != 0 {
				t.Errorf("%d streams still registered", left)
			}
		})
	}
}

// TestStreamWaitingForRoomEndsWhenTheModelIsReleased: a stream whose receiver stopped
// reading (a frozen successor: its socket stays full, nothing resets it) ends when the cache
// releases the model, and closes the files it sent from: open, they would keep the released
// model's tmpfs pages.
func TestStreamWaitingForRoomEndsWhenTheModelIsReleased(t *testing.T) {
	w := newOrderWorld(t, 16<<20)
	a := w.node(t, "a")
	la := w.local(t, a, 1)
	for i := range w.layout.Len() {
		w.put(t, la, i, w.layout.Chunk(i).Size)
	}
	rawStream(t, a, w.layout.Len()) // never read
	waitFull(t, la)
	la.mu.Lock()
	st := la.streams[0]
	la.mu.Unlock()
	la.close()
	waitStreams(t, a, 0)
	st.mu.Lock()
	open := len(st.files)
	st.mu.Unlock()
	if open != 0 {
		t.Errorf("the ended stream keeps %d of the released model's files open", open)
	}
}

// TestStreamEndsWhenTheModelIsReleased: a stream waiting for chunks ends when the cache
// releases the model.
func TestStreamEndsWhenTheModelIsReleased(t *testing.T) {
	w := newOrderWorld(t, 4<<20)
	a := w.node(t, "a")
	la := w.local(t, a, 1)
	w.put(t, la, 0, w.layout.Chunk(0).Size)
	r, _ := rawStream(t, a, w.layout.Len())
	if got, _ := w.readChunksN(t, r, 1); len(got) != 1 {
		t.Fatal("the verified chunk did not come")
	}
	la.close()
	waitStreams(t, a, 0)
	if _, err := io.ReadAll(r); err != nil {
		t.Errorf("reading the rest: %v, want the connection's end", err)
	}
}

// readChunksN reads exactly k chunk frames.
func (w *orderWorld) readChunksN(t *testing.T, r io.Reader, k int) ([]int, error) {
	t.Helper()
	hdr := make([]byte, frameHeaderSize)
	var got []int
	for range k {
		f, err := readFrame(r, hdr)
		if err != nil || f.kind != frameChunk {
			return got, fmt.Errorf("frame %+v: %v", f, err)
		}
		if _, err := io.CopyN(io.Discard, r, f.size); err != nil {
			return got, err
		}
		got = append(got, f.index)
	}
	return got, nil
}

// waitStreams waits until n serves k streams.
func waitStreams(t *testing.T, n *Broadcaster, k int64) {
	t.Helper()
	waitUntil(t, fmt.Sprintf("a serves %d streams", k), func() bool { return n.srv.streams.Load() == k })
}
