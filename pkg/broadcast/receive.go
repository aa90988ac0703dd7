package broadcast

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"slices"
	"sync/atomic"
	"time"

	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/modelcast/modelcast/internal/crc64ecma"
	"github.com/modelcast/modelcast/pkg/coord"
)

// Errors of a pull from a peer; the relay replaces the peer after any of them.
var (
	errCorrupt = errors.New("chunk failed its checksum")
	errStalled = errors.New("peer stalled")
	errRefused = errors.New("peer refused the stream")
	// errChainChanged: the peer no longer stands before this node, or is gone.
	errChainChanged = errors.New("the chain changed")
)

// pull streams every chunk this node lacks from peer, in the order the peer verifies them,
// verifying and writing each. It returns nil once the model is complete. The hop is striped
// over Config.Stripes TCP connections (stripe s carries the chunks i with i % Stripes == s):
// one connection's congestion control on a shaped or lossy link does not bound the hop.
func (n *Broadcaster) pull(ctx context.Context, l *replica, peer coord.Member, pos int) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	w := l.wants()
	body := w.encode()
	token, err := n.token(ctx, l.tenant, false)
	if err != nil {
		return err
	}
	// A watchdog ends the streams when the chain says to look elsewhere.
	var last atomic.Int64
	last.Store(n.cfg.Clock.Now().UnixNano())
	done, watched := make(chan struct{}), make(chan struct{})
	defer func() { close(done); <-watched }()
	go func() {
		defer close(watched)
		n.watch(ctx, cancel, l, peer, pos, &last, done)
	}()

	stripes := n.cfg.Stripes
	errs := make(chan error, stripes)
	for s := range stripes {
		go func() {
			err := n.pullStripe(ctx, l, peer, want{have: slices.Clone(w.have), offsets: w.offsets}, body, token, s, &last)
			if err != nil {
				cancel(err) // the other stripes stop too: the relay looks again
			}
			errs <- err
		}()
	}
	var first error
	for range stripes {
		if err := <-errs; err != nil && first == nil {
			first = pullErr(ctx, peer, err)
		}
	}
	if first != nil {
		return first
	}
	if !l.isComplete() {
		return fmt.Errorf("%s ended its streams before the model's end", peer.Node)
	}
	return nil
}

// pullStripe receives stripe s of what w lacks from peer.
func (n *Broadcaster) pullStripe(ctx context.Context, l *replica, peer coord.Member, w want, body []byte, token string, s int, last *atomic.Int64) error {
	var conn *lowatConn // the stream's connection, told how many bytes each chunk has left
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) {
		conn, _ = i.Conn.(*lowatConn)
	}})
	res, err := n.request(ctx, l, peer, body, token, s)
	if err == nil && res.StatusCode == http.StatusUnauthorized {
		res.Body.Close()
		// Redis may have lost and remade the token: read it again, once.
		if token, err = n.token(ctx, l.tenant, true); err == nil {
			res, err = n.request(ctx, l, peer, body, token, s)
		}
	}
	if err != nil {
		return fmt.Errorf("stream from %s: %w", peer.Node, err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("%w: %s answered %s", errRefused, peer.Node, res.Status)
	}
	stripes := n.cfg.Stripes
	left := 0 // chunks of the stripe still to come
	for i, ok := range w.have {
		if !ok && i%stripes == s {
			left++
		}
	}
	r := &countingReader{r: res.Body, last: last, clock: n.cfg.Clock}
	hdr := make([]byte, frameHeaderSize)
	buf := make([]byte, 256<<10)
	for {
		f, err := readFrame(r, hdr)
		if err != nil {
			return err
		}
		switch f.kind {
		case frameMoved:
			return fmt.Errorf("%s: %w", peer.Node, errMoved)
		case frameEnd:
			if left > 0 {
				return fmt.Errorf("%s ended stripe %d with %d chunks still to send", peer.Node, s, left)
			}
			return nil
		}
		if f.index >= l.layout.Len() || f.index%stripes != s || w.have[f.index] || f.offset != w.offsets[f.index] ||
			f.size != l.layout.Chunk(f.index).Size-f.offset {
			return fmt.Errorf("%s sent chunk %d at %d (%d bytes), which this node did not ask for in stripe %d", peer.Node, f.index, f.offset, f.size, s)
		}
		w.have[f.index] = true // a chunk comes once per stream
		left--
		if err := n.receiveChunk(ctx, l, r, conn, f, buf, peer); err != nil {
			return err
		}
	}
}

func pullErr(ctx context.Context, peer coord.Member, err error) error {
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return fmt.Errorf("stream from %s broke off: %w", peer.Node, err)
	}
	return err
}

func (n *Broadcaster) request(ctx context.Context, l *replica, peer coord.Member, body []byte, token string, stripe int) (*http.Response, error) {
	u := url.URL{Scheme: "http", Host: peer.Addr, Path: fmt.Sprintf("%s%s/models/%s/stream", streamPrefix, l.tenant, l.key),
		RawQuery: fmt.Sprintf("stripe=%d&stripes=%d", stripe, n.cfg.Stripes)}
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
func (n *Broadcaster) receiveChunk(ctx context.Context, l *replica, r io.Reader, conn *lowatConn, f frame, buf []byte, peer coord.Member) error {
	c := l.layout.Chunk(f.index)
	p := l.partialOf(f.index)
	mapped, ok := l.beginWrite(c, p.bytes, f.size)
	if !ok {
		return errReleased
	}
	defer l.endWrite()
	if mapped != nil {
		populate(mapped) // fault the pages in at once
	}
	defer conn.expect(0)
	for left := f.size; left > 0; {
		b := buf[:min(int64(len(buf)), left)]
		if mapped != nil {
			b = mapped[f.size-left:][:len(b)]
		}
		k, err := readSome(r, conn, b, left)
		if k > 0 {
			if mapped == nil {
				if _, werr := l.files[c.Object].WriteAt(b[:k], c.Offset+p.bytes); werr != nil {
					return fmt.Errorf("write %s: %w", l.layout.Manifest().Path(c.Object), werr)
				}
			}
			p.crc = crc64ecma.Update(p.crc, b[:k])
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
		n.stats.corrupt.Add(1)
		return fmt.Errorf("%w: chunk %d from %s carries CRC-64 %x, the OSS reader published %x", errCorrupt, f.index, peer.Node, want, published)
	}
	if got := p.crc; got != want {
		l.setPartial(f.index, partial{})
		n.stats.corrupt.Add(1)
		return fmt.Errorf("%w: chunk %d from %s has CRC-64 %x, its frame says %x", errCorrupt, f.index, peer.Node, got, want)
	}
	return l.chunkDone(f.index, p.crc) // an error: an object failed OSS's CRC-64, the staging fails
}

// readSome reads into b what has arrived of a chunk whose left bytes are sure to come: one
// Read, after telling conn so. One Read at a time, because net/http's buffered reader may hold
// some of those bytes already: it then answers from its buffer without asking the socket, and
// the next Read tells conn the smaller rest. (io.ReadFull here once kept the first Read's mark
// for its later ones: a small last chunk, half of it buffered with its frame header, then waited
// for more bytes than its peer would ever send.) The end of the stream inside the chunk is
// io.ErrUnexpectedEOF.
func readSome(r io.Reader, conn *lowatConn, b []byte, left int64) (int, error) {
	conn.expect(left)
	k, err := r.Read(b)
	if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return k, err
}

// watch ends the stream from peer when the chain says to look elsewhere:
//   - the peer's heartbeat expired (it died or froze), or it left the chain for longer than a
//     heartbeat or two (Redis may have lost the chain and the peer not rejoined yet);
//   - it no longer stands before this node (positions changed: following it could close a
//     cycle);
//   - nothing arrived for StallTimeout while the peer has bytes this node lacks (a peer
//     waiting on its own upstream is not stalled);
//   - this node holds its successors back (slowBehind): it steps back to the chain's tail.
func (n *Broadcaster) watch(ctx context.Context, cancel context.CancelCauseFunc, l *replica, peer coord.Member, pos int, last *atomic.Int64, done <-chan struct{}) {
	every := min(n.cfg.StallTimeout/4, progressEvery)
	t := n.cfg.Clock.NewTicker(every)
	defer t.Stop()
	start := n.cfg.Clock.Now()
	var missingSince time.Time
	for {
		select {
		case <-done:
			return
		case <-ctx.Done():
			return
		case <-t.C():
		}
		idle := n.cfg.Clock.Since(time.Unix(0, last.Load()))
		rctx, rcancel := context.WithTimeout(ctx, every)
		members, err := n.coord.Members(rctx, l.tenant, l.key)
		rcancel()
		if err != nil {
			// Redis out of reach: keep streaming; a stream that stalls twice as long ends.
			if idle >= 2*n.cfg.StallTimeout {
				cancel(fmt.Errorf("%w: nothing from %s for %s", errStalled, peer.Node, idle.Round(time.Second)))
				return
			}
			continue
		}
		me, p := find(members, n.cfg.NodeID), find(members, peer.Node)
		if me != nil && me.Position != pos {
			cancel(fmt.Errorf("%w: this node's position went from %d to %d", errChainChanged, pos, me.Position))
			return
		}
		switch {
		case p == nil:
			if missingSince.IsZero() {
				missingSince = n.cfg.Clock.Now()
			}
			if n.cfg.Clock.Since(missingSince) > 2*n.cfg.Heartbeat {
				cancel(fmt.Errorf("%w: %s left the chain", errChainChanged, peer.Node))
				return
			}
			continue
		case !p.Alive():
			cancel(fmt.Errorf("%w: %s's heartbeat expired", errChainChanged, peer.Node))
			return
		case me != nil && p.Position >= me.Position:
			cancel(fmt.Errorf("%w: %s is now at position %d, after this node's %d", errChainChanged, peer.Node, p.Position, me.Position))
			return
		case idle >= n.cfg.StallTimeout && (p.Progress.Complete || p.Progress.Bytes > l.verifiedBytes()):
			cancel(fmt.Errorf("%w: nothing from %s for %s", errStalled, peer.Node, idle.Round(time.Second)))
			return
		}
		missingSince = time.Time{}
		if me != nil && n.cfg.Clock.Since(start) >= slowAfter && n.slowBehind(l, *me, *p, members) && l.stepBack() {
			rctx, rcancel := context.WithTimeout(ctx, time.Second)
			npos, err := n.coord.MoveToTail(rctx, l.tenant, l.key, n.cfg.NodeID)
			rcancel()
			if err != nil {
				klog.V(2).InfoS("Could not move to the chain's tail", "model", l.key, "err", err)
				continue
			}
			l.pos.Store(int64(npos))
			n.stats.stepBacks.Add(1)
			rate, _ := l.rate()
			klog.InfoS("Receiving slower than the nodes before this one: moved to the chain's tail", "model", l.key,
				"rate", int64(rate), "from", pos, "to", npos)
			cancel(fmt.Errorf("%w: this node stepped back to position %d", errMoved, npos))
			return
		}
	}
}

// Slow-node detection: a node that has streamed from its predecessor for at least
// slowAfter, receiving (over the last rateWindow) at under slowFraction of the predecessor's
// own receive rate, and has fallen behind it by slowBehindFor of that rate (and slowLag), while
// a successor waits on it, steps back to the chain's tail. A node on a slower link (a quarter
// of the others' rate, say) meets all three within about two seconds and keeps meeting them;
// a node of one chain that a busy machine slows for a moment does not fall that far behind.
// Each second of detection costs the successors a second at the slow node's rate.
const (
	slowFraction        = 0.4
	slowAfter           = time.Second
	slowBehindFor       = 1500 * time.Millisecond
	slowLag       int64 = 16 << 20
)

// slowBehind reports whether this node (me) holds its chain back behind pred (see the
// constants above).
func (n *Broadcaster) slowBehind(l *replica, me, pred coord.Member, members []coord.Member) bool {
	if pred.Progress.Complete || pred.Progress.Rate <= 0 {
		return false // a complete predecessor's rate says nothing of the chain's
	}
	k := n.cfg.Chains
	successor := false
	for _, m := range members {
		if m.Position > me.Position && m.Alive() && !m.Progress.Complete && (m.Position-1)%k == (me.Position-1)%k {
			successor = true
			break
		}
	}
	rate, span := l.rate()
	lag := pred.Progress.Bytes - l.verifiedBytes()
	return successor && span >= rateWindow*2/3 && rate < slowFraction*pred.Progress.Rate &&
		lag >= max(slowLag, int64(slowBehindFor.Seconds()*pred.Progress.Rate))
}

type countingReader struct {
	r     io.Reader
	last  *atomic.Int64
	clock clock.PassiveClock
}

func (c *countingReader) Read(p []byte) (int, error) {
	k, err := c.r.Read(p)
	if k > 0 {
		c.last.Store(c.clock.Now().UnixNano())
	}
	return k, err
}
