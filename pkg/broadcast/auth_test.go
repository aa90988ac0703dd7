package broadcast

import (
	"sync"
	"testing"
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
