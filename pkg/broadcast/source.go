package broadcast

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"k8s.io/klog/v2"

	"github.com/modelcast/modelcast/pkg/cache"
	"github.com/modelcast/modelcast/pkg/coord"
	"github.com/modelcast/modelcast/pkg/ossclient"
)

// source is the cache Source of one tenant's volumes.
type source struct {
	n      *Broadcaster
	oss    cache.OSSSource
	tenant string
}

// Describe says where the bytes come from, for the pod's first Event.
func (s *source) Describe() string {
	if s.n.coord == nil {
		return "OSS"
	}
	return "the " + s.tenant + " broadcast chain"
}

// Fetch stages m into dir through the model's chain: from the nearest live predecessor, or
// from OSS for the head (or with Redis out of reach). It serves what it has to successors
// from the start.
func (s *source) Fetch(ctx context.Context, m cache.Model, dir string, report func(cache.Progress)) error {
	n := s.n
	if n.coord == nil {
		return n.direct(ctx, s.oss, m, dir, report)
	}
	key := m.Key()
	l, err := openReplica(s.tenant, key, ossclient.NewLayout(m.Manifest, n.cfg.ChunkSize), dir, n.cfg.Clock)
	if err != nil {
		return err
	}
	jctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	_, err = n.token(jctx, s.tenant, false)
	var pos int
	if err == nil {
		pos, err = n.coord.Join(jctx, s.tenant, key, n.cfg.NodeID, l.info, l.progress(), 0)
		l.pos.Store(int64(pos))
	}
	cancel()
	n.observe(err)
	if err != nil {
		// Coordination is down: read OSS as the head of a chain of one. The node registers the
		// model like any other, so its heartbeat joins the chain when Redis answers again and
		// the model is served to peers from then on.
		n.stats.fallbacks.Add(1)
		klog.InfoS("Broadcast coordination unavailable; fetching from OSS directly", "model", m.String(), "err", err)
		n.reg.add(l)
		_, problem := n.Coordination()
		l.setOrigin(origin{oss: true, note: "broadcast off: " + problem})
		stop := l.reportEvery(100*time.Millisecond, report)
		err := n.head(ctx, l, s.oss)
		stop()
		if err != nil {
			n.drop(context.WithoutCancel(ctx), l)
		}
		return err
	}
	n.stats.joins.Add(1)
	n.reg.add(l)
	stop := l.reportEvery(100*time.Millisecond, report)
	stopPublish := n.publishEvery(l, progressEvery)
	err = n.relay(ctx, l, s.oss)
	stopPublish()
	stop()
	if err != nil {
		n.drop(context.WithoutCancel(ctx), l)
		return err
	}
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Second)
	defer cancel()
	if err := n.coord.SetProgress(pctx, s.tenant, key, n.cfg.NodeID, l.progress()); err != nil {
		klog.V(2).InfoS("Could not publish the model's completion", "model", m.String(), "err", err)
	}
	t, _ := n.Transfer(key)
	klog.V(2).InfoS("Staged model through the chain", "model", m.String(), "position", l.pos.Load(), "fromOSS", t.FromOSS, "fromPeers", t.FromPeers)
	return nil
}

// direct fetches the model from OSS without the chain, counting its bytes.
func (n *Broadcaster) direct(ctx context.Context, oss cache.OSSSource, m cache.Model, dir string, report func(cache.Progress)) error {
	key := m.Key()
	return oss.Fetch(ctx, m, dir, func(p cache.Progress) {
		n.directBytes.Store(key, p.Done)
		report(p)
	})
}

// progressEvery is how often a staging node publishes its progress (and so its receive
// rate, which slow-node detection compares).
const progressEvery = 500 * time.Millisecond

// publishEvery publishes l's progress every d until stopped.
func (n *Broadcaster) publishEvery(l *replica, d time.Duration) (stop func()) {
	done, finished := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(finished)
		t := n.cfg.Clock.NewTicker(d)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-n.ctx.Done():
				return
			case <-t.C():
			}
			ctx, cancel := context.WithTimeout(n.ctx, d)
			if err := n.coord.SetProgress(ctx, l.tenant, l.key, n.cfg.NodeID, l.progress()); err != nil {
				klog.V(4).InfoS("Could not publish progress", "model", l.key, "err", err)
			}
			cancel()
		}
	}()
	return func() { close(done); <-finished }
}

// relay fills l from predecessors or OSS until it is complete.
func (n *Broadcaster) relay(ctx context.Context, l *replica, oss cache.OSSSource) error {
	confirm := false // a takeover waits for a second look (see below)
	for !l.isComplete() {
		if err := ctx.Err(); err != nil {
			return err
		}
		if l.isClosed() {
			return errReleased
		}
		pred, members, err := n.predecessor(ctx, l)
		if err != nil {
			klog.V(2).InfoS("Cannot read the chain; continuing from OSS", "model", l.key, "err", err)
		}
		pos := int(l.pos.Load())
		rank, of := n.rank(members, pos)
		if pred == nil && l.verifiedBytes() > 0 && !confirm {
			// Before costing OSS a takeover, look again a heartbeat later: after a Redis
			// restart the nodes before this one may not have rejoined yet.
			confirm = true
			select {
			case <-n.cfg.Clock.After(n.cfg.Heartbeat):
			case <-ctx.Done():
				return ctx.Err()
			}
			continue
		}
		confirm = false
		if pred == nil {
			if l.verifiedBytes() > 0 {
				n.stats.takeovers.Add(1)
				klog.V(2).InfoS("Taking over as the chain's head", "model", l.key, "position", rank, "of", of)
			}
			n.setOrigin(ctx, l, origin{oss: true, position: rank, of: of})
			if err := n.head(ctx, l, oss); err != nil {
				return err
			}
			continue
		}
		n.setOrigin(ctx, l, origin{peer: pred.Node, position: rank, of: of})
		err = n.pull(ctx, l, *pred, pos)
		switch {
		case err == nil:
			continue
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, ossclient.ErrIntegrity):
			return err // an object failed OSS's CRC-64: this version cannot be staged
		case errors.Is(err, errMoved), errors.Is(err, errChainChanged):
			// The chain's order changed (a slow node stepped back, a predecessor left, Redis
			// lost and rebuilt the chain): look again at once.
			n.stats.relinks.Add(1)
			klog.V(2).InfoS("Re-linking", "model", l.key, "from", pred.Node, "reason", err)
			continue
		}
		n.failed(l, pred.Node)
		n.stats.relinks.Add(1)
		klog.V(2).InfoS("Re-linking", "model", l.key, "from", pred.Node, "err", err)
		select {
		case <-n.cfg.Clock.After(200 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// suspectAfter failures of one peer (within suspectFor) make the relay skip it for suspectFor.
const (
	suspectAfter = 2
	suspectFor   = 30 * time.Second
)

func failureKey(l *replica, peer string) string { return l.tenant + "/" + l.key + "/" + peer }

func (n *Broadcaster) failed(l *replica, peer string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	k := failureKey(l, peer)
	f := n.failures[k]
	if n.cfg.Clock.Since(f.last) > suspectFor {
		f.count = 0
	}
	f.count++
	f.last = n.cfg.Clock.Now()
	n.failures[k] = f
}

func (n *Broadcaster) suspected(l *replica, peer string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	f := n.failures[failureKey(l, peer)]
	return f.count >= suspectAfter && n.cfg.Clock.Since(f.last) < suspectFor
}

// predecessor finds the nearest live, unsuspected node before this one in its chain (one of
// Config.Chains per model: positions are dealt round-robin). nil means this node is the head.
// A node missing from the chain (Redis restarted) joins again, at the position it had.
func (n *Broadcaster) predecessor(ctx context.Context, l *replica) (*coord.Member, []coord.Member, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	members, err := n.coord.Members(ctx, l.tenant, l.key)
	if err != nil {
		return nil, nil, err
	}
	me := find(members, n.cfg.NodeID)
	if me == nil {
		// Redis lost the chain: come back with an address (a member without one looks dead
		// to its successors) and at the position this node had.
		if err := n.coord.Register(ctx, l.tenant, n.cfg.NodeID, n.cfg.Addr, n.cfg.NodeTTL); err != nil {
			return nil, nil, err
		}
		pos, err := n.coord.Join(ctx, l.tenant, l.key, n.cfg.NodeID, l.info, l.progress(), int(l.pos.Load()))
		if err != nil {
			return nil, nil, err
		}
		l.pos.Store(int64(pos))
		if members, err = n.coord.Members(ctx, l.tenant, l.key); err != nil {
			return nil, nil, err
		}
	} else {
		l.pos.Store(int64(me.Position))
	}
	pos, k := int(l.pos.Load()), n.cfg.Chains
	var best *coord.Member
	for i := range members {
		m := &members[i]
		if m.Node == n.cfg.NodeID || m.Position >= pos || (m.Position-1)%k != (pos-1)%k || !m.Alive() || n.suspected(l, m.Node) {
			continue
		}
		if best == nil || m.Position > best.Position {
			best = m
		}
	}
	return best, members, nil
}

// find returns the member named node, or nil.
func find(members []coord.Member, node string) *coord.Member {
	for i := range members {
		if members[i].Node == node {
			return &members[i]
		}
	}
	return nil
}

// setOrigin records where l's bytes come from now and publishes it at once (the heartbeat
// would only in a while), so operators see a re-link as it happens.
func (n *Broadcaster) setOrigin(ctx context.Context, l *replica, o origin) {
	if l.origin() == o {
		return
	}
	l.setOrigin(o)
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if err := n.coord.SetProgress(ctx, l.tenant, l.key, n.cfg.NodeID, l.progress()); err != nil {
		klog.V(2).InfoS("Could not publish the model's source", "model", l.key, "err", err)
	}
}

// rank is the node's 1-based place in its chain (one of Chains: positions are dealt
// round-robin) counting live nodes only, and the chain's length; 0, 0 without members.
func (n *Broadcaster) rank(members []coord.Member, pos int) (int, int) {
	if len(members) == 0 {
		return 0, 0
	}
	k := n.cfg.Chains
	rank, of := 1, 1
	for _, m := range members {
		if m.Node == n.cfg.NodeID || !m.Alive() || (m.Position-1)%k != (pos-1)%k {
			continue
		}
		of++
		if m.Position < pos {
			rank++
		}
	}
	return rank, of
}

// head fetches every chunk this node lacks from OSS, as a direct fetch does (the same
// parallel ranged GETs), publishing every chunk's CRC-64 as it comes. Each chunk is served to
// the successor as soon as it is verified, in whatever order the parts complete.
func (n *Broadcaster) head(ctx context.Context, l *replica, oss cache.OSSSource) error {
	pub := &sumPublisher{n: n, l: l}
	stop := sync.OnceFunc(pub.run())
	defer stop()
	opts := oss.Options
	opts.Layout = l.layout
	if n.cfg.HeadConcurrency > 0 {
		opts.Concurrency = n.cfg.HeadConcurrency
	}
	if n.cfg.HeadPartSize > 0 {
		opts.PartSize = n.cfg.HeadPartSize
	}
	var present int64
	opts.Resume, present = l.resume()
	before := l.fromOSS.Load()
	opts.Progress = func(p ossclient.Progress) { l.fromOSS.Store(before + p.Done - present) }
	opts.Chunk = func(i int, crc uint64) {
		if err := l.chunkDone(i, crc); err != nil {
			klog.ErrorS(err, "A chunk from OSS failed its object's check", "model", l.key, "chunk", i)
			return // not published: it is not what OSS holds
		}
		pub.add(i, crc)
	}
	klog.V(2).InfoS("Fetching from OSS as the chain's head", "model", l.key, "present", present, "concurrency", opts.Concurrency)
	err := oss.Client.Download(ctx, l.layout.Manifest(), l.dir, opts)
	if errors.Is(err, ossclient.ErrIntegrity) {
		// The chunks of an object that failed OSS's CRC-64 were published before the object
		// could be checked: take them back, so a retry is not refused for the bad read.
		stop()
		n.clearSums(l)
	}
	return err
}

// clearSums removes from Redis the published CRC-64s of every chunk of l's objects that did
// not pass their object's check.
func (n *Broadcaster) clearSums(l *replica) {
	ctx, cancel := context.WithTimeout(n.ctx, 3*time.Second)
	defer cancel()
	for o := range l.layout.Manifest().Objects {
		if l.objectVerified(o) {
			continue
		}
		first, end := l.layout.ObjectChunks(o)
		if err := n.coord.PublishSums(ctx, l.tenant, l.key, first, make([]uint64, end-first)); err != nil {
			klog.V(2).InfoS("Could not clear the checksums of a failed object", "model", l.key, "err", err)
			return
		}
	}
}

// sumPublisher batches the CRC-64s of chunks read from OSS into Redis.
type sumPublisher struct {
	n       *Broadcaster
	l       *replica
	mu      sync.Mutex
	pending map[int]uint64
}

func (p *sumPublisher) add(i int, crc uint64) {
	p.mu.Lock()
	if p.pending == nil {
		p.pending = map[int]uint64{}
	}
	p.pending[i] = crc
	p.mu.Unlock()
}

// run flushes every 100 ms until stopped (and once more then).
func (p *sumPublisher) run() (stop func()) {
	done, finished := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(finished)
		t := p.n.cfg.Clock.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				p.flush()
				return
			case <-t.C():
				p.flush()
			}
		}
	}()
	return func() { close(done); <-finished }
}

func (p *sumPublisher) flush() {
	p.mu.Lock()
	pending := p.pending
	p.pending = nil
	p.mu.Unlock()
	if len(pending) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(p.n.ctx, 2*time.Second)
	defer cancel()
	// Runs of consecutive chunks go in one SETRANGE each.
	idx := make([]int, 0, len(pending))
	for i := range pending {
		idx = append(idx, i)
	}
	slices.Sort(idx)
	for start := 0; start < len(idx); {
		end := start + 1
		for end < len(idx) && idx[end] == idx[end-1]+1 {
			end++
		}
		crcs := make([]uint64, end-start)
		for j := range crcs {
			crcs[j] = pending[idx[start+j]]
		}
		if err := p.n.coord.PublishSums(ctx, p.l.tenant, p.l.key, idx[start], crcs); err != nil {
			klog.V(2).InfoS("Could not publish chunk checksums", "model", p.l.key, "err", err)
			return
		}
		start = end
	}
}

// publishedSum returns the CRC-64 the OSS reader published for chunk i, if Redis has it.
func (n *Broadcaster) publishedSum(ctx context.Context, l *replica, i int) (uint64, bool) {
	if crc, ok := l.publishedSum(i); ok {
		return crc, true
	}
	if !l.mayFetchSums() {
		return 0, false
	}
	ctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	const batch = 256
	sums, err := n.coord.Sums(ctx, l.tenant, l.key, i, min(batch, l.layout.Len()-i))
	if err != nil {
		return 0, false
	}
	l.storeSums(i, sums)
	return l.publishedSum(i)
}
