package broadcast

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"
)

// TestAuthorizedTogether: a receiver's stripes reach a node that has not read the tenant's token
// yet all at once. The first re-reads it from Redis; the others wait for that read and are let in
// by its result rather than refused for coming while it was under way (which failed a stream with
// 401 on a loaded machine). A wrong token among them is still refused.
func TestAuthorizedTogether(t *testing.T) {
	w := newOrderWorld(t, 1<<20)
	a, b := w.node(t, "a"), w.node(t, "b")
	w.local(t, a, 1)
	tok, err := b.token(t.Context(), "team", false) // b makes the tenant's token; a has none yet
	if err != nil {
		t.Fatal(err)
	}
	const callers = 16
	start := make(chan struct{})
	results := make([]bool, callers+1)
	var wg sync.WaitGroup
	for i := range callers + 1 {
		header := "Bearer " + tok
		if i == callers {
			header = "Bearer not-" + tok
		}
		wg.Go(func() {
			<-start
			results[i] = a.srv.authorized(t.Context(), "team", header)
		})
	}
	close(start)
	wg.Wait()
	for i, ok := range results[:callers] {
		if !ok {
			t.Errorf("caller %d with the tenant's token was refused", i)
		}
	}
	if results[callers] {
		t.Error("a caller with a wrong token was let in")
	}
}

// TestIdlePeerConnectionsClose: a connection that asked for something (here without the
// tenant's token, refused with 401) and then sits idle is closed by the data plane, rather than
// holding a goroutine and a descriptor of the node for as long as the other end likes.
func TestIdlePeerConnectionsClose(t *testing.T) {
	w := newOrderWorld(t, 1<<20)
	n, err := New(Config{NodeID: "a", Addr: "127.0.0.1:0", Tenant: "team", Heartbeat: 200 * time.Millisecond, StallTimeout: 300 * time.Millisecond}, w.rdb)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Close)
	c, err := net.DialTimeout("tcp", n.Addr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(20 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(c, "GET /v1/team/models/k/stream HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(c)
	res, err := http.ReadResponse(r, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(io.Discard, res.Body); err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != http.StatusUnauthorized || res.Close {
		t.Fatalf("answered %s (close %v), want 401 on a kept-alive connection", res.Status, res.Close)
	}
	if _, err := r.ReadByte(); !errors.Is(err, io.EOF) {
		t.Errorf("an idle connection: %v, want the node to close it", err)
	}
}
