package broadcast

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/klog/v2"

	"github.com/modelcast/modelcast/pkg/coord"
)

// server is the peer data plane: POST (or GET) /v1/<tenant>/models/<key>/stream with
// "Authorization: Bearer <tenant token>" and the chunks the caller has in the body (see want)
// answers every chunk the caller lacks, each as soon as this node has it verified.
type server struct {
	node *Broadcaster

	mu        sync.Mutex
	tokens    map[string]string    // tenant → token, as last read from Redis
	refreshed map[string]time.Time // when a tenant's token was last re-read on a mismatch
	// refreshing holds, per tenant, a channel closed when the re-read under way ends.
	refreshing map[string]chan struct{}

	served     atomic.Int64 // bytes of chunks sent
	streams    atomic.Int64 // streams being served
	authFailed atomic.Int64
	corrupt    atomic.Int64 // test hook: 1 + the chunk to send with a byte flipped, once (0: off)
}

const streamPrefix = "/v1/"

func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/healthz" {
		_, _ = io.WriteString(w, "ok\n")
		return
	}
	tenant, key, ok := parseStreamPath(r.URL.Path)
	if !ok || (r.Method != http.MethodGet && r.Method != http.MethodPost) {
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	if !s.authorized(r.Context(), tenant, r.Header.Get("Authorization")) {
		s.authFailed.Add(1)
		klog.V(2).InfoS("Refused a peer without the tenant's token", "tenant", tenant, "peer", r.RemoteAddr)
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	l := s.node.reg.get(tenant, key)
	if l == nil {
		http.Error(w, "unknown model", http.StatusNotFound)
		return
	}
	n := l.layout.Len()
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, int64((n+7)/8+8*maxPartials)))
	if err != nil {
		http.Error(w, "request body: "+err.Error(), http.StatusBadRequest)
		return
	}
	wt, err := decodeWant(body, func(i int) int64 { return l.layout.Chunk(i).Size }, n)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	// stripe s of stripes: only the chunks i with i % stripes == s (default: all).
	if q := r.URL.Query(); q.Has("stripes") {
		stripe, err1 := strconv.Atoi(q.Get("stripe"))
		stripes, err2 := strconv.Atoi(q.Get("stripes"))
		if err1 != nil || err2 != nil || stripes < 1 || stripes > maxStripes || stripe < 0 || stripe >= stripes {
			http.Error(w, fmt.Sprintf("stripe %q of %q: want 0 ≤ stripe < stripes ≤ %d", q.Get("stripe"), q.Get("stripes"), maxStripes), http.StatusBadRequest)
			return
		}
		for i := range wt.have {
			if i%stripes != stripe {
				wt.have[i] = true // another stripe's: not asked for here
			}
		}
	}
	s.streams.Add(1)
	defer s.streams.Add(-1)
	if err := s.stream(r.Context(), w, l, wt); err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, errMoved) {
		klog.V(2).InfoS("Stream to a peer ended", "model", key, "peer", r.RemoteAddr, "err", err)
	}
}

func parseStreamPath(p string) (tenant, key string, ok bool) {
	rest, ok := strings.CutPrefix(p, streamPrefix)
	if !ok {
		return "", "", false
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 4 || parts[1] != "models" || parts[3] != "stream" || coord.ValidTenant(parts[0]) != nil || parts[2] == "" {
		return "", "", false
	}
	return parts[0], parts[2], true
}

// authorized compares the bearer token with the tenant's. Only tenants this node serves a model
// of are considered: a request naming any other tenant is refused without a look at Redis, so
// requests from anyone who reaches the port neither write keys into Redis nor grow this node's
// state. On a mismatch the token is read again from Redis (at most once a second per tenant, and
// never created here): Redis may have lost it and a node remade it, or this node has not needed
// it yet. Requests that arrive while that read is under way (a receiver's stripes come together)
// wait for it and are judged by what it read, not refused for coming second.
func (s *server) authorized(ctx context.Context, tenant, header string) bool {
	got, ok := strings.CutPrefix(header, "Bearer ")
	if !ok || got == "" || !s.node.reg.hasTenant(tenant) {
		return false
	}
	matches := func() bool {
		want := s.tokens[tenant]
		return want != "" && subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
	}
	s.mu.Lock()
	if matches() {
		s.mu.Unlock()
		return true
	}
	if done, ok := s.refreshing[tenant]; ok {
		s.mu.Unlock()
		select {
		case <-done:
		case <-ctx.Done():
			return false
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		return matches()
	}
	if s.node.cfg.Clock.Since(s.refreshed[tenant]) < time.Second || s.node.coord == nil {
		s.mu.Unlock()
		return false
	}
	s.refreshed[tenant] = s.node.cfg.Clock.Now()
	done := make(chan struct{})
	s.refreshing[tenant] = done
	s.mu.Unlock()
	// The read is shared with the requests that wait for it: it runs under the node's context,
	// not this request's.
	rctx, cancel := context.WithTimeout(s.node.ctx, time.Second)
	fresh, err := s.node.coord.ReadToken(rctx, tenant)
	cancel()
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil && fresh != "" {
		s.tokens[tenant] = fresh
	}
	delete(s.refreshing, tenant)
	close(done)
	return matches()
}

// connKey is the context key under which the data plane's server keeps a request's connection.
type connKey struct{}

// withConn is the data plane's http.Server.ConnContext: streams send on the connection itself.
func withConn(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, connKey{}, c)
}

// stream answers with a frame for every chunk the receiver lacks, in the order this node
// verified them, then the end frame. net/http writes the response's head; the body goes on
// the connection itself, sent by whoever verifies each chunk (outStream), so net/http closes
// the connection after it, as for any response shorter than its Content-Length.
func (s *server) stream(ctx context.Context, w http.ResponseWriter, l *replica, wt want) error {
	conn, ok := ctx.Value(connKey{}).(*rawWriteConn)
	if !ok {
		http.Error(w, "streams are served only on the data plane's TCP connections", http.StatusInternalServerError)
		return errors.New("not on a data plane connection")
	}
	n := l.layout.Len()
	left := 0
	length := int64(frameHeaderSize)
	for i := range n {
		if !wt.have[i] {
			left++
			length += frameHeaderSize + l.layout.Chunk(i).Size - wt.offsets[i]
		}
	}
	w.Header().Set("Content-Type", "application/x-modelcast-chunks")
	w.Header().Set("Content-Length", strconv.FormatInt(length, 10))
	// The body bypasses net/http, which then closes the connection: the receiver must not keep it.
	w.Header().Set("Connection", "close")
	w.WriteHeader(http.StatusOK)
	if err := http.NewResponseController(w).Flush(); err != nil {
		return err
	}
	st := newOutStream(s, l, conn, wt, left)
	defer st.stop()
	l.addStream(st)
	defer l.removeStream(st)
	st.kick()
	moved, released := st.moved, st.released
	for {
		select {
		case <-st.wake:
		case <-moved: // a stream waiting for chunks sends frameMoved (one that waits for room, once room comes)
			moved = nil
			st.kick()
			continue
		case <-released:
			return errReleased
		case <-ctx.Done():
			return ctx.Err()
		}
		ended, result, full := st.state()
		if ended {
			return result
		}
		if full {
			if err := st.waitRoom(); err != nil {
				if closed(st.released) {
					return errReleased // the release interrupted the wait
				}
				return err
			}
		}
	}
}

// fileCache keeps one stream's open objects: chunks come in the order they were verified,
// from any object.
type fileCache map[int]*os.File

func (c *fileCache) get(l *replica, o int) (*os.File, error) {
	if f := (*c)[o]; f != nil {
		return f, nil
	}
	f, err := l.reader(o)
	if err != nil {
		return nil, fmt.Errorf("open object %d: %w", o, err)
	}
	if *c == nil {
		*c = fileCache{}
	}
	(*c)[o] = f
	return f, nil
}

func (c *fileCache) close() {
	for o, f := range *c {
		_ = f.Close()
		delete(*c, o)
	}
}
