package chain

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
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

// pull streams every chunk this node lacks from peer, in the order the peer verifies them,
// verifying and writing each. It returns nil once the model is complete.
func (n *Node) pull(ctx context.Context, l *local, peer Member) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	w := l.wants()
	body := w.encode()
	token, err := n.token(ctx, l.tenant, false)
	if err != nil {
		return err
	}
	res, err := n.request(ctx, l, peer, body, token)
	if err == nil && res.StatusCode == http.StatusUnauthorized {
		res.Body.Close()
		// Redis may have lost and remade the token: read it again, once.
		if token, err = n.token(ctx, l.tenant, true); err == nil {
			res, err = n.request(ctx, l, peer, body, token)
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
				return fmt.Errorf("%s ended the stream before the model's end", peer.Node)
			}
			return nil
		}
		if f.index >= l.layout.Len() || w.have[f.index] || f.offset != w.offsets[f.index] || f.size != l.layout.Chunk(f.index).Size-f.offset {
			return fmt.Errorf("%s sent chunk %d at %d (%d bytes), which this node did not ask for", peer.Node, f.index, f.offset, f.size)
		}
		w.have[f.index] = true // a chunk comes once per stream
		if err := n.receiveChunk(ctx, l, r, f, buf, peer); err != nil {
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

func (n *Node) request(ctx context.Context, l *local, peer Member, body []byte, token string) (*http.Response, error) {
	u := url.URL{Scheme: "http", Host: peer.Addr, Path: fmt.Sprintf("%s%s/models/%s/stream", streamPrefix, l.tenant, l.key)}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", wantContentType)
	return n.client.Do(req)
}

// receiveChunk reads the rest of chunk f.index into place (the bytes before f.offset are
// already there), checks it and records it.
func (n *Node) receiveChunk(ctx context.Context, l *local, r io.Reader, f frame, buf []byte, peer Member) error {
	c := l.layout.Chunk(f.index)
	dst := l.files[c.Object]
	p := l.partialOf(f.index)
	for left := f.size; left > 0; {
		k, err := io.ReadFull(r, buf[:min(int64(len(buf)), left)])
		if k > 0 {
			if _, werr := dst.WriteAt(buf[:k], c.Offset+p.bytes); werr != nil {
				return fmt.Errorf("write %s: %w", l.layout.Manifest().Path(c.Object), werr)
			}
			p.crc = crc64ecma.Update(p.crc, buf[:k])
			p.bytes += int64(k)
			left -= int64(k)
			l.fromPeers.Add(int64(k))
			l.setPartial(f.index, p)
		}
		if err != nil {
			return err
		}
	}
	want := f.crc
	if published, ok := n.publishedSum(ctx, l, f.index); ok && published != want {
		l.setPartial(f.index, partial{}) // the partial bytes are not trusted either: the chunk comes again whole
		return fmt.Errorf("%w: chunk %d from %s carries CRC-64 %x, the OSS reader published %x", errCorrupt, f.index, peer.Node, want, published)
	}
	if got := p.crc; got != want {
		l.setPartial(f.index, partial{})
		return fmt.Errorf("%w: chunk %d from %s has CRC-64 %x, its frame says %x", errCorrupt, f.index, peer.Node, got, want)
	}
	return l.chunkDone(f.index, p.crc) // an error: an object failed OSS's CRC-64, the staging fails
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
			return m.Progress.Complete || m.Progress.Bytes > l.verifiedBytes(), nil
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
