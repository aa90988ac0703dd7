package chain

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/modelcast/modelcast/internal/crc64ecma"
)

// Errors of a pull from a peer; the relay replaces the peer after any of them.
var (
	errCorrupt = errors.New("chunk failed its checksum")
	errStalled = errors.New("peer stalled")
	errRefused = errors.New("peer refused the stream")
)

// pull streams the model from peer, from this node's position to the end (or until it
// fails), verifying and writing every chunk. It returns nil once the model is complete.
func (n *Node) pull(ctx context.Context, l *local, peer Member) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	pos := l.position()
	token, err := n.token(ctx, l.tenant, false)
	if err != nil {
		return err
	}
	res, err := n.request(ctx, l, peer, pos, token)
	if err == nil && res.StatusCode == http.StatusUnauthorized {
		res.Body.Close()
		// Redis may have lost and remade the token: read it again, once.
		if token, err = n.token(ctx, l.tenant, true); err == nil {
			res, err = n.request(ctx, l, peer, pos, token)
		}
	}
	if err != nil {
		return fmt.Errorf("stream from %s: %w", peer.Node, err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("%w: %s answered %s", errRefused, peer.Node, res.Status)
	}

	// A watchdog ends the stream when nothing arrives for StallTimeout while the peer has
	// bytes this node lacks (a peer waiting on its own upstream is not stalled).
	var last atomic.Int64
	last.Store(time.Now().UnixNano())
	done := make(chan struct{})
	defer close(done)
	go n.watch(ctx, cancel, l, peer, &last, done)

	r := &countingReader{r: res.Body, last: &last}
	hdr := make([]byte, frameHeaderSize)
	buf := make([]byte, 256<<10)
	for {
		f, err := readFrame(r, hdr)
		if err != nil {
			return pullErr(ctx, peer, err)
		}
		if f.kind == frameEnd {
			if !l.isComplete() {
				return fmt.Errorf("%s ended the stream at chunk %d before the model's end", peer.Node, pos.chunk)
			}
			return nil
		}
		if f.index != pos.chunk || f.offset != pos.bytes || pos.chunk >= l.layout.Len() || f.size != l.layout.Chunk(pos.chunk).Size-pos.bytes {
			return fmt.Errorf("%s sent chunk %d at %d (%d bytes), expected chunk %d at %d", peer.Node, f.index, f.offset, f.size, pos.chunk, pos.bytes)
		}
		if err := n.receiveChunk(ctx, l, r, f, &pos, buf, peer); err != nil {
			if errors.Is(err, errCorrupt) {
				n.stats.corrupt.Add(1)
			}
			return pullErr(ctx, peer, err)
		}
	}
}

func pullErr(ctx context.Context, peer Member, err error) error {
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return fmt.Errorf("stream from %s broke off: %w", peer.Node, err)
	}
	return err
}

func (n *Node) request(ctx context.Context, l *local, peer Member, pos partial, token string) (*http.Response, error) {
	u := url.URL{Scheme: "http", Host: peer.Addr, Path: fmt.Sprintf("%s%s/models/%s/stream", streamPrefix, l.tenant, l.key),
		RawQuery: "chunk=" + strconv.Itoa(pos.chunk) + "&offset=" + strconv.FormatInt(pos.bytes, 10)}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	return n.client.Do(req)
}

// receiveChunk reads the rest of chunk f.index into place, checks it and records it.
func (n *Node) receiveChunk(ctx context.Context, l *local, r io.Reader, f frame, pos *partial, buf []byte, peer Member) error {
	c := l.layout.Chunk(f.index)
	dst := l.files[c.Object]
	for left := f.size; left > 0; {
		k, err := io.ReadFull(r, buf[:min(int64(len(buf)), left)])
		if k > 0 {
			if _, werr := dst.WriteAt(buf[:k], c.Offset+pos.bytes); werr != nil {
				return fmt.Errorf("write %s: %w", l.layout.Manifest().Path(c.Object), werr)
			}
			pos.crc = crc64ecma.Update(pos.crc, buf[:k])
			pos.bytes += int64(k)
			left -= int64(k)
			l.fromPeers.Add(int64(k))
			l.setPartial(*pos)
		}
		if err != nil {
			return err
		}
	}
	want := f.crc
	if published, ok := n.publishedSum(ctx, l, f.index); ok && published != want {
		*pos = partial{chunk: f.index}
		l.setPartial(*pos)
		return fmt.Errorf("%w: chunk %d from %s carries CRC-64 %x, the OSS reader published %x", errCorrupt, f.index, peer.Node, want, published)
	}
	if got := pos.crc; got != want {
		// The partial bytes are not trusted either: the chunk is fetched again whole.
		*pos = partial{chunk: f.index}
		l.setPartial(*pos)
		return fmt.Errorf("%w: chunk %d from %s has CRC-64 %x, its frame says %x", errCorrupt, f.index, peer.Node, got, want)
	}
	if err := l.chunkDone(f.index, pos.crc); err != nil {
		return err // an object failed OSS's CRC-64: the staging fails
	}
	*pos = partial{chunk: f.index + 1}
	return nil
}

// watch cancels the stream when it stalls.
func (n *Node) watch(ctx context.Context, cancel context.CancelCauseFunc, l *local, peer Member, last *atomic.Int64, done <-chan struct{}) {
	t := time.NewTicker(n.cfg.StallTimeout / 4)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-ctx.Done():
			return
		case <-t.C:
		}
		idle := time.Since(time.Unix(0, last.Load()))
		if idle < n.cfg.StallTimeout {
			continue
		}
		ahead, err := n.peerAhead(ctx, l, peer)
		if ahead || err != nil && idle >= 2*n.cfg.StallTimeout {
			cancel(fmt.Errorf("%w: nothing from %s for %s", errStalled, peer.Node, idle.Round(time.Second)))
			return
		}
	}
}

// peerAhead reports whether the peer's published progress is past this node's.
func (n *Node) peerAhead(ctx context.Context, l *local, peer Member) (bool, error) {
	if n.coord == nil {
		return false, errors.New("no coordinator")
	}
	members, err := n.coord.Members(ctx, l.tenant, l.key)
	if err != nil {
		return false, err
	}
	for _, m := range members {
		if m.Node == peer.Node {
			return m.Progress.Complete || m.Progress.Bytes > l.contiguousBytes(), nil
		}
	}
	return true, nil // it left the chain
}

type countingReader struct {
	r    io.Reader
	last *atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	k, err := c.r.Read(p)
	if k > 0 {
		c.last.Store(time.Now().UnixNano())
	}
	return k, err
}
