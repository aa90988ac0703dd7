package chain

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/klog/v2"
)

// server is the peer data plane: GET /v1/<tenant>/models/<key>/stream?chunk=N&offset=B with
// "Authorization: Bearer <tenant token>" answers the model's chunks from chunk N (B bytes into
// it) to the end, each as soon as this node has it verified.
type server struct {
	node *Node

	mu        sync.Mutex
	tokens    map[string]string    // tenant → token, as last read from Redis
	refreshed map[string]time.Time // when a tenant's token was last re-read on a mismatch

	served      atomic.Int64 // bytes of chunks sent
	streams     atomic.Int64 // streams being served
	authFailed  atomic.Int64
	corruptOnce sync.Once // test hook (Config.CorruptChunk)
}

const streamPrefix = "/v1/"

func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/healthz" {
		_, _ = io.WriteString(w, "ok\n")
		return
	}
	tenant, key, ok := parseStreamPath(r.URL.Path)
	if !ok || r.Method != http.MethodGet {
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
	chunk, err1 := strconv.Atoi(r.URL.Query().Get("chunk"))
	offset, err2 := strconv.ParseInt(r.URL.Query().Get("offset"), 10, 64)
	if err1 != nil || err2 != nil || chunk < 0 || chunk > l.layout.Len() || offset < 0 ||
		(chunk < l.layout.Len() && offset >= l.layout.Chunk(chunk).Size) || (chunk == l.layout.Len() && offset != 0) {
		http.Error(w, "bad chunk or offset", http.StatusBadRequest)
		return
	}
	s.streams.Add(1)
	defer s.streams.Add(-1)
	if err := s.stream(r.Context(), w, l, chunk, offset); err != nil && !errors.Is(err, context.Canceled) {
		klog.V(2).InfoS("Stream to a peer ended", "model", key, "peer", r.RemoteAddr, "chunk", chunk, "err", err)
	}
}

func parseStreamPath(p string) (tenant, key string, ok bool) {
	rest, ok := strings.CutPrefix(p, streamPrefix)
	if !ok {
		return "", "", false
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 4 || parts[1] != "models" || parts[3] != "stream" || ValidTenant(parts[0]) != nil || parts[2] == "" {
		return "", "", false
	}
	return parts[0], parts[2], true
}

// authorized compares the bearer token with the tenant's, reading it again from Redis (at most
// once a second) when it does not match: Redis may have lost and remade it.
func (s *server) authorized(ctx context.Context, tenant, header string) bool {
	got, ok := strings.CutPrefix(header, "Bearer ")
	if !ok || got == "" {
		return false
	}
	s.mu.Lock()
	want := s.tokens[tenant]
	s.mu.Unlock()
	if want != "" && subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1 {
		return true
	}
	s.mu.Lock()
	if time.Since(s.refreshed[tenant]) < time.Second {
		s.mu.Unlock()
		return false
	}
	s.refreshed[tenant] = time.Now()
	s.mu.Unlock()
	fresh, err := s.node.token(ctx, tenant, true)
	return err == nil && subtle.ConstantTimeCompare([]byte(got), []byte(fresh)) == 1
}

// stream writes frames from chunk (offset bytes into it) to the end of the model.
func (s *server) stream(ctx context.Context, w http.ResponseWriter, l *local, chunk int, offset int64) error {
	n := l.layout.Len()
	length := int64(frameHeaderSize) * int64(n-chunk+1)
	if chunk < n {
		length += l.layout.Manifest().Size() - l.layout.Chunk(chunk).Start - offset
	}
	w.Header().Set("Content-Type", "application/x-modelcast-chunks")
	w.Header().Set("Content-Length", strconv.FormatInt(length, 10))
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	hdr := make([]byte, 0, frameHeaderSize)
	var files fileCache
	defer files.close()
	for i := chunk; i < n; i++ {
		if err := s.awaitFlushed(ctx, rc, l, i); err != nil {
			return err
		}
		c := l.layout.Chunk(i)
		f := frame{kind: frameChunk, index: i, offset: offset, size: c.Size - offset, crc: l.crc(i)}
		if _, err := w.Write(f.encode(hdr[:0])); err != nil {
			return err
		}
		src, err := files.get(l, c.Object)
		if err != nil {
			return err
		}
		if err := s.sendChunk(w, src, i, c.Offset+offset, f.size); err != nil {
			return err
		}
		offset = 0
	}
	end := frame{kind: frameEnd, index: n}
	_, err := w.Write(end.encode(hdr[:0]))
	return err
}

// awaitFlushed waits for chunk i, flushing what is buffered first, so the receiver gets every
// chunk as soon as this node has it.
func (s *server) awaitFlushed(ctx context.Context, rc *http.ResponseController, l *local, i int) error {
	if l.await(immediate(ctx), i) == nil {
		return nil
	}
	if err := rc.Flush(); err != nil {
		return err
	}
	return l.await(ctx, i)
}

// immediate is a context that is already done, for a non-blocking check.
func immediate(ctx context.Context) context.Context {
	c, cancel := context.WithCancel(ctx)
	cancel()
	return c
}

// sendChunk copies n bytes at off of src to w (sendfile through net/http's ReaderFrom).
func (s *server) sendChunk(w io.Writer, src *fileAt, chunk int, off, n int64) error {
	if s.node.cfg.CorruptChunk >= 0 && chunk == s.node.cfg.CorruptChunk {
		corrupted := false
		s.corruptOnce.Do(func() { corrupted = true })
		if corrupted {
			return s.sendCorrupted(w, src, off, n)
		}
	}
	if err := src.seek(off); err != nil {
		return err
	}
	k, err := io.CopyN(w, src.f, n)
	src.pos += k
	s.served.Add(k)
	return err
}

// sendCorrupted is the test hook: the chunk's bytes with one of them flipped.
func (s *server) sendCorrupted(w io.Writer, src *fileAt, off, n int64) error {
	b := make([]byte, n)
	if _, err := src.f.ReadAt(b, off); err != nil {
		return err
	}
	b[n/2] ^= 0x5a
	klog.InfoS("Test hook: sending a corrupted chunk", "chunk", s.node.cfg.CorruptChunk)
	src.pos = -1
	k, err := w.Write(b)
	s.served.Add(int64(k))
	return err
}

// fileAt is an object's file opened for one stream, with its offset.
type fileAt struct {
	f   *os.File
	pos int64
}

func (f *fileAt) seek(off int64) error {
	if f.pos == off {
		return nil
	}
	if _, err := f.f.Seek(off, io.SeekStart); err != nil {
		return err
	}
	f.pos = off
	return nil
}

// fileCache keeps one stream's open object: chunks go in order, so one file at a time.
type fileCache struct {
	obj int
	f   *fileAt
}

func (c *fileCache) get(l *local, o int) (*fileAt, error) {
	if c.f != nil && c.obj == o {
		return c.f, nil
	}
	c.close()
	f, err := l.reader(o)
	if err != nil {
		return nil, fmt.Errorf("open object %d: %w", o, err)
	}
	c.obj, c.f = o, &fileAt{f: f}
	return c.f, nil
}

func (c *fileCache) close() {
	if c.f != nil {
		_ = c.f.f.Close()
		c.f = nil
	}
}
