package broadcast

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/modelcast/modelcast/pkg/cache"
	"github.com/modelcast/modelcast/pkg/coord"
	"github.com/modelcast/modelcast/pkg/ossclient"
)

// DefaultChunkSize is the unit of checksums, relaying and resumption: what one hop holds
// before forwarding it (store and forward). At 400 Mbit/s a 256 KiB chunk adds 5 ms per hop.
const DefaultChunkSize int64 = 256 << 10

// DefaultStripes is how many TCP connections a hop is striped over unless configured.
const DefaultStripes = 4

// Config of a Broadcaster. Zero values mean the defaults.
type Config struct {
	// NodeID names this node in chains (the Kubernetes node name).
	NodeID string
	// Addr is the peer address other nodes use (node IP and bind port); Listen is where the
	// data plane listens (default: Addr). With port 0 the kernel picks one and Addr gets it.
	Addr, Listen string
	// Tenant is the default tenant (broadcast.tenant); volumes may name another.
	Tenant string
	// Chains is the number of independent chains per model (broadcast.chains).
	Chains int
	// ChunkSize is the unit of checksums, relaying and resumption.
	ChunkSize int64
	// HeadConcurrency and HeadPartSize shape a chain head's download from OSS: its parallel
	// ranged GETs, and so the bytes it holds in flight — what a successor fetches again if the
	// head dies. Zero: the OSS source's own (a head reads as a direct fetch does).
	HeadConcurrency int
	HeadPartSize    int64
	// Heartbeat is how often membership and progress are renewed; NodeTTL how long a silent
	// node stays alive in Redis.
	Heartbeat, NodeTTL time.Duration
	// Stripes is the number of TCP connections a hop is striped over (DefaultStripes): a single
	// connection's congestion control on a shaped or lossy link can hold a hop well under the
	// link's rate.
	Stripes int
	// CongestionControl is the TCP congestion control of the connections this node sends a
	// hop's bytes on (DefaultCongestionControl; SystemCongestionControl: the kernel's default).
	CongestionControl string
	// StallTimeout: a stream with nothing for this long, from a peer that has bytes, is replaced.
	StallTimeout time.Duration
	// ManifestTTL: how long a published manifest pins a model's version for new nodes.
	ManifestTTL time.Duration
	// Clock is the time every timeout, rate and ticker reads (default: the real clock).
	Clock clock.WithTicker
}

func (c *Config) defaults() {
	if c.Tenant == "" {
		c.Tenant = "default"
	}
	if c.Chains <= 0 {
		c.Chains = 1
	}
	if c.ChunkSize <= 0 {
		c.ChunkSize = DefaultChunkSize
	}
	if c.Heartbeat <= 0 {
		c.Heartbeat = 2 * time.Second
	}
	if c.NodeTTL <= 0 {
		c.NodeTTL = 3 * c.Heartbeat
	}
	if c.Stripes <= 0 {
		c.Stripes = DefaultStripes
	}
	c.Stripes = min(c.Stripes, maxStripes)
	if c.CongestionControl == "" {
		c.CongestionControl = DefaultCongestionControl
	}
	if c.StallTimeout <= 0 {
		c.StallTimeout = 10 * time.Second
	}
	if c.ManifestTTL <= 0 {
		c.ManifestTTL = 10 * time.Minute
	}
	if c.Clock == nil {
		c.Clock = clock.RealClock{}
	}
}

// Broadcaster is this node's part in model broadcasting: the data plane server, the heartbeat, and
// the models it stages or holds.
type Broadcaster struct {
	cfg    Config
	coord  *coord.Coordinator // nil: no Redis; every fetch goes to OSS directly
	reg    replicas
	srv    *server
	http   *http.Server
	client *http.Client

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	tokens   map[string]string // tenant → token (client side)
	failures map[string]failures

	directBytes sync.Map // model key → bytes fetched from OSS without the chain
	stats       stats
	health      health
	beats       atomic.Int64 // heartbeat rounds done: a round's renewals are no longer in flight
}

// stats are the node's counters (Stats is their snapshot).
type stats struct {
	joins, relinks, takeovers, fallbacks, corrupt, stepBacks atomic.Int64
}

// Stats counts what a node did in model broadcasting since it started.
type Stats struct {
	// Joins: chains joined (one per model staged through a chain).
	Joins int64
	// Relinks: predecessors replaced after a stream failed, stalled or sent a bad chunk.
	Relinks int64
	// Takeovers: times the node became a chain's head midway, every node before it gone.
	Takeovers int64
	// Fallbacks: stagings that went straight to OSS because Redis was out of reach or refused
	// this node.
	Fallbacks int64
	// Coordination is the node's state with Redis (CoordinationOK, …).
	Coordination string
	// CorruptChunks: chunks from peers that failed their checksum (fetched again).
	CorruptChunks int64
	// StepBacks: times the node moved to a chain's tail for receiving slower than the nodes
	// before it.
	StepBacks int64
	// AuthFailures: peer requests refused for a missing or wrong tenant token.
	AuthFailures int64
	// Served: model bytes sent to peers. Streams: streams being served now.
	Served  int64
	Streams int64
}

// Stats returns the node's counters.
func (n *Broadcaster) Stats() Stats {
	s := Stats{
		Joins: n.stats.joins.Load(), Relinks: n.stats.relinks.Load(), Takeovers: n.stats.takeovers.Load(),
		Fallbacks: n.stats.fallbacks.Load(), CorruptChunks: n.stats.corrupt.Load(), StepBacks: n.stats.stepBacks.Load(),
		AuthFailures: n.srv.authFailed.Load(), Served: n.srv.served.Load(), Streams: n.srv.streams.Load(),
	}
	s.Coordination, _ = n.Coordination()
	return s
}

type failures struct {
	count int
	last  time.Time
}

// NewNode starts the data plane listening and the heartbeat. rdb may be nil (broadcast off or
// no Redis): the node then only ever fetches from OSS.
func New(cfg Config, rdb redis.UniversalClient) (*Broadcaster, error) {
	cfg.defaults()
	if cfg.NodeID == "" {
		return nil, errors.New("chain: node ID is required")
	}
	if err := coord.ValidTenant(cfg.Tenant); err != nil {
		return nil, fmt.Errorf("chain: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n := &Broadcaster{
		cfg: cfg, reg: replicas{models: map[string]*replica{}}, ctx: ctx, cancel: cancel,
		tokens: map[string]string{}, failures: map[string]failures{},
		client: &http.Client{Transport: &http.Transport{
			DialContext:           dialLowat(&net.Dialer{Timeout: 3 * time.Second, KeepAlive: 15 * time.Second}),
			ResponseHeaderTimeout: 10 * time.Second,
			MaxIdleConnsPerHost:   4,
			DisableCompression:    true,
		}},
	}
	if rdb != nil {
		n.coord = coord.NewCoordinator(rdb)
	}
	n.srv = &server{node: n, tokens: map[string]string{}, refreshed: map[string]time.Time{}, refreshing: map[string]chan struct{}{}}
	if rdb == nil {
		return n, nil
	}
	listen := cfg.Listen
	if listen == "" {
		listen = cfg.Addr
	}
	ln, warn, err := Listen(n.ctx, listen, n.cfg.CongestionControl)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("chain: listen on %s: %w", listen, err)
	}
	if warn != nil {
		klog.ErrorS(warn, "Peer data plane keeps the kernel's default TCP congestion control; set broadcast.congestionControl to one this kernel offers")
	}
	if host, port, err := net.SplitHostPort(cfg.Addr); err == nil && port == "0" {
		_, real, _ := net.SplitHostPort(ln.Addr().String())
		n.cfg.Addr = net.JoinHostPort(host, real)
	}
	// A connection that carries no request for as long as a stream may carry nothing before its
	// receiver gives it up is closed (streams themselves end with their connections): an idle
	// one, refused or not, would hold a goroutine and a descriptor for as long as its peer likes.
	n.http = &http.Server{Handler: n.srv, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: n.cfg.StallTimeout, ConnContext: withConn}
	n.wg.Add(2)
	go func() {
		defer n.wg.Done()
		if err := n.http.Serve(rawListener{ln}); err != nil && !errors.Is(err, http.ErrServerClosed) {
			klog.ErrorS(err, "Peer data plane stopped")
		}
	}()
	go func() {
		defer n.wg.Done()
		n.heartbeat()
	}()
	klog.InfoS("Broadcast node started", "node", cfg.NodeID, "peerAddr", n.cfg.Addr, "tenant", cfg.Tenant, "chains", cfg.Chains)
	return n, nil
}

// Addr is the peer address other nodes reach this one at.
func (n *Broadcaster) Addr() string { return n.cfg.Addr }

// Enabled reports whether the node coordinates through Redis.
func (n *Broadcaster) Enabled() bool { return n.coord != nil }

// Close leaves every chain, stops the heartbeat and the data plane. Models stay in the cache.
func (n *Broadcaster) Close() {
	n.cancel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	for _, l := range n.reg.all() {
		n.drop(ctx, l)
	}
	if n.coord != nil {
		for _, t := range n.tenants() {
			_ = n.coord.Deregister(ctx, t, n.cfg.NodeID)
		}
	}
	if n.http != nil {
		_ = n.http.Shutdown(ctx)
		_ = n.http.Close()
	}
	n.wg.Wait()
}

// Release is the cache's hook for a model it released (expired, evicted): the node stops
// serving it and leaves its chains, so successors re-link. Only complete copies go: the cache
// releases committed models, and a staging of the same key that began meanwhile (a pod asked
// for the model again) is a new copy that must go on.
func (n *Broadcaster) Release(key string) {
	ctx, cancel := context.WithTimeout(n.ctx, 3*time.Second)
	defer cancel()
	for _, l := range n.reg.byKey(key) {
		if l.isComplete() {
			n.drop(ctx, l)
		}
	}
}

func (n *Broadcaster) drop(ctx context.Context, l *replica) {
	n.reg.remove(l)
	l.close()
	if n.coord != nil {
		if err := n.coord.Leave(ctx, l.tenant, l.key, n.cfg.NodeID); err != nil {
			klog.V(2).InfoS("Could not leave a chain", "model", l.key, "err", err)
		}
	}
}

// tenants are the tenants this node takes part in.
func (n *Broadcaster) tenants() []string {
	seen := map[string]bool{n.cfg.Tenant: true}
	out := []string{n.cfg.Tenant}
	for _, l := range n.reg.all() {
		if !seen[l.tenant] {
			seen[l.tenant] = true
			out = append(out, l.tenant)
		}
	}
	return out
}

// heartbeat renews the node's address and, for every model it stages or holds, its place in
// the chain and its progress. After Redis lost its data (a restart), this puts it all back.
func (n *Broadcaster) heartbeat() {
	t := n.cfg.Clock.NewTicker(n.cfg.Heartbeat)
	defer t.Stop()
	for {
		ctx, cancel := context.WithTimeout(n.ctx, n.cfg.Heartbeat)
		for _, tenant := range n.tenants() {
			err := n.coord.Register(ctx, tenant, n.cfg.NodeID, n.cfg.Addr, n.cfg.NodeTTL)
			if ctx.Err() == nil || err == nil {
				n.observe(err)
			}
			if err != nil {
				klog.V(2).InfoS("Heartbeat failed", "tenant", tenant, "err", err)
			}
		}
		for _, l := range n.reg.all() {
			n.renew(ctx, l)
		}
		cancel()
		n.beats.Add(1)
		select {
		case <-n.ctx.Done():
			return
		case <-t.C():
		}
	}
}

// renew renews the node's place in l's chain and its progress there. A copy dropped while the
// renewal was on its way (its Leave may have landed first) is taken out again, unless another
// copy of the model took its place.
func (n *Broadcaster) renew(ctx context.Context, l *replica) {
	if l.isClosed() {
		return
	}
	pos, err := n.coord.Join(ctx, l.tenant, l.key, n.cfg.NodeID, l.info, l.progress(), int(l.pos.Load()))
	if err != nil {
		klog.V(2).InfoS("Could not renew a chain", "model", l.key, "err", err)
		return
	}
	if l.isClosed() {
		if n.reg.get(l.tenant, l.key) == nil {
			_ = n.coord.Leave(ctx, l.tenant, l.key, n.cfg.NodeID)
		}
		return
	}
	l.pos.Store(int64(pos))
}

// token returns the tenant's peer secret (from Redis, cached; refresh reads it again).
func (n *Broadcaster) token(ctx context.Context, tenant string, refresh bool) (string, error) {
	n.mu.Lock()
	tok := n.tokens[tenant]
	n.mu.Unlock()
	if tok != "" && !refresh {
		return tok, nil
	}
	if n.coord == nil {
		return "", errors.New("no coordinator")
	}
	tok, err := n.coord.Token(ctx, tenant)
	if err != nil {
		return "", fmt.Errorf("tenant token: %w", err)
	}
	n.mu.Lock()
	n.tokens[tenant] = tok
	n.mu.Unlock()
	n.srv.mu.Lock()
	n.srv.tokens[tenant] = tok
	n.srv.mu.Unlock()
	return tok, nil
}

// PathID identifies a model's location (not its version): the manifest key.
func PathID(endpoint string, u ossclient.URI) string {
	h := sha256.New()
	for _, s := range []string{endpoint, u.Bucket, u.Prefix} {
		fmt.Fprintf(h, "%d:%s", len(s), s)
	}
	return hex.EncodeToString(h.Sum(nil))[:32]
}

// ResolveManifest returns the manifest every node of the tenant stages: the one published in
// Redis, or — for the first node to need the model — the one it lists from OSS and publishes.
// A published manifest is used only after client's own credentials could read its first
// object (HEAD with If-Match): the tenant shares bytes, not permissions. A published manifest
// whose objects changed in OSS is replaced. Without Redis it lists OSS.
func (n *Broadcaster) ResolveManifest(ctx context.Context, tenant string, client *ossclient.Client, u ossclient.URI) (*ossclient.Manifest, error) {
	if n.coord == nil {
		return client.Manifest(ctx, u)
	}
	id := PathID(client.Endpoint(), u)
	rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	data, err := n.coord.Manifest(rctx, tenant, id)
	cancel()
	if err != nil {
		klog.V(2).InfoS("Redis unavailable for the manifest; listing OSS", "model", u.String(), "err", err)
		return client.Manifest(ctx, u)
	}
	replace := false
	if data != nil {
		m, err := ossclient.DecodeManifest(data)
		if err == nil && m.URI() == u {
			switch err := client.Check(ctx, m); {
			case err == nil:
				return m, nil
			case errors.Is(err, ossclient.ErrChanged), errors.Is(err, ossclient.ErrNotFound):
				replace = true // stale: list again and publish the new version
			default:
				return nil, err
			}
		} else {
			klog.InfoS("Ignoring an unusable published manifest", "model", u.String(), "err", err)
			replace = true
		}
	}
	m, err := client.Manifest(ctx, u)
	if err != nil {
		return nil, err
	}
	enc, err := m.MarshalJSON()
	if err != nil {
		return nil, err
	}
	pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	won, err := n.coord.PublishManifest(pctx, tenant, id, enc, n.cfg.ManifestTTL, replace)
	if err != nil {
		klog.V(2).InfoS("Could not publish the manifest", "model", u.String(), "err", err)
		return m, nil
	}
	if published, err := ossclient.DecodeManifest(won); err == nil && published.URI() == u {
		return published, nil // another node was first: stage its version
	}
	return m, nil
}

// Source returns the cache Source for volumes of tenant: the chain, falling back to oss.
func (n *Broadcaster) Source(oss cache.OSSSource, tenant string) cache.Source {
	if tenant == "" {
		tenant = n.cfg.Tenant
	}
	return &source{n: n, oss: oss, tenant: tenant}
}

// Transfer is what a model's staging received, by source.
type Transfer struct {
	FromOSS, FromPeers int64
}

// Transfer returns the bytes received for a model (any tenant), and whether the node has it.
func (n *Broadcaster) Transfer(key string) (Transfer, bool) {
	var t Transfer
	ls := n.reg.byKey(key)
	for _, l := range ls {
		t.FromOSS += l.fromOSS.Load()
		t.FromPeers += l.fromPeers.Load()
	}
	found := len(ls) > 0
	if v, ok := n.directBytes.Load(key); ok {
		t.FromOSS += v.(int64)
		found = true
	}
	return t, found
}

// ServedBytes counts the model bytes this node sent to peers.
func (n *Broadcaster) ServedBytes() int64 { return n.srv.served.Load() }
