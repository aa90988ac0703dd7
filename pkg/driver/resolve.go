package driver

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/modelcast/modelcast/pkg/broadcast"
	"github.com/modelcast/modelcast/pkg/cache"
	"github.com/modelcast/modelcast/pkg/coord"
	"github.com/modelcast/modelcast/pkg/ossclient"
)

// resolver turns a volume (attributes and secrets) into a model: the OSS client for its
// endpoint and credentials, and the manifest that pins the version to stage.
type resolver struct {
	base     ossclient.Config // the node's defaults (OSS_* environment)
	download ossclient.DownloadOptions
	clock    clock.PassiveClock
	ttl      time.Duration
	// chain, when set, pins manifests and supplies bytes through model broadcasting for
	// volumes that use it (broadcast: the node's default; tenant: the default tenant).
	chain     *broadcast.Broadcaster
	broadcast bool
	tenant    string
	// store, when set (on a node), is asked for a staged model, by the manifest kept beside it,
	// when OSS cannot list it.
	store committedModels

	// listTimeout bounds one shared listing (a manifest, with its HEADs): it runs under the
	// resolver's context, not under any caller's, so one caller giving up fails nobody else.
	listTimeout time.Duration

	ctx    context.Context // ends with close: shared listings run under it
	cancel context.CancelFunc
	wg     sync.WaitGroup // shared listings in flight; added to under mu while not closed
	closed bool           // guarded by mu

	mu      sync.Mutex
	clients map[string]*ossclient.Client
	// manifests are the manifests listed, by where the model is (endpoint, tenant, path: no
	// credentials, so rotated credentials do not add entries), each with the credentials that
	// listed it. At most maxManifests entries of at most maxListers credentials each.
	manifests map[string]*manifestEntry
	flight    singleflight.Group
}

// committedModels is what the resolver asks of the cache (*cache.Store).
type committedModels interface {
	Find(endpoint string, uri ossclient.URI, lister string) (cache.Model, bool)
}

// manifestEntry is the last manifest listed for a model, and who listed it.
type manifestEntry struct {
	m *ossclient.Manifest
	// listers are the configKeys of the credentials that listed m, with when each last did:
	// a manifest is reused only for credentials that listed it themselves.
	listers map[string]time.Time
}

// last is when m was last listed, by anyone.
func (e *manifestEntry) last() time.Time {
	var t time.Time
	for _, at := range e.listers {
		if at.After(t) {
			t = at
		}
	}
	return t
}

// Bounds of what the resolver keeps: clients (one per endpoint and credentials), models whose
// manifest is kept, and credentials remembered per model (STS credentials rotate: each
// rotation is new credentials).
const (
	maxClients   = 256
	maxManifests = 256
	maxListers   = 8
)

// DefaultListTimeout bounds one listing of a model (LIST pages and a HEAD per object, with
// the SDK's retries) shared by the publishes waiting for it.
const DefaultListTimeout = 5 * time.Minute

func newResolver(base ossclient.Config, download ossclient.DownloadOptions, ttl, listTimeout time.Duration, clk clock.PassiveClock) *resolver {
	if listTimeout <= 0 {
		listTimeout = DefaultListTimeout
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &resolver{base: base, download: download, ttl: ttl, listTimeout: listTimeout, clock: clk, ctx: ctx, cancel: cancel,
		clients: map[string]*ossclient.Client{}, manifests: map[string]*manifestEntry{}}
}

// close stops the shared listings in flight and waits for them.
func (r *resolver) close() {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	r.cancel()
	r.wg.Wait()
}

// config merges the volume's endpoint, region and secret credentials over the node's
// defaults. Credentials come whole from one place: the volume's secret, else the node's
// environment, else none (anonymous).
func (r *resolver) config(spec VolumeSpec, secrets map[string]string) (ossclient.Config, error) {
	cfg := r.location(spec)
	creds, ok, err := credentialsFrom(secrets)
	if err != nil {
		return cfg, err
	}
	if ok {
		cfg.Credentials = creds
	}
	if cfg.Region == "" && !cfg.Credentials.Anonymous() && cfg.SignatureVersion != ossclient.SignV1 {
		// (An endpoint that is not usable at all is refused by ossclient.New, saying why.)
		if region, err := ossclient.EndpointRegion(cfg.Endpoint); err == nil && region == "" {
			return cfg, fmt.Errorf("%w: endpoint %s does not name a region, which V4 signing needs: set the volume attribute %s (e.g. %s: cn-beijing), or %s in the node plugin's environment (the chart's oss.region) as every volume's default",
				ossclient.ErrInvalidConfig, cfg.Endpoint, AttrRegion, AttrRegion, ossclient.EnvRegion)
		}
	}
	return cfg, nil
}

// location is the node's defaults with the volume's endpoint and region over them.
func (r *resolver) location(spec VolumeSpec) ossclient.Config {
	cfg := r.base
	if spec.Endpoint != "" {
		cfg.Endpoint = spec.Endpoint
		// The region the volume's endpoint names (oss-cn-hangzhou.aliyuncs.com), if it names
		// one; else the node's (OSS_REGION), the default as for every attribute.
		if region, _ := ossclient.EndpointRegion(spec.Endpoint); region != "" {
			cfg.Region = region
		}
	}
	if spec.Region != "" {
		cfg.Region = spec.Region
	}
	return cfg
}

// modelEndpoint is the normalized endpoint a volume's model is read from, as endpoint says,
// but neither reading secrets nor building a client: an empty endpoint is the node's default
// (OSS_ENDPOINT), or the public endpoint of the region when neither is set.
func (r *resolver) modelEndpoint(spec VolumeSpec) (string, error) {
	return r.location(spec).EndpointURL()
}

// client returns a client for cfg, shared by every volume with the same endpoint and
// credentials (so connections are reused across publishes).
func (r *resolver) client(cfg ossclient.Config) (*ossclient.Client, string, error) {
	key := configKey(cfg)
	r.mu.Lock()
	defer r.mu.Unlock()
	if c := r.clients[key]; c != nil {
		return c, key, nil
	}
	c, err := ossclient.New(cfg)
	if err != nil {
		return nil, "", err
	}
	if len(r.clients) >= maxClients {
		clear(r.clients)
	}
	r.clients[key] = c
	return c, key, nil
}

// endpoint is the normalized endpoint a volume's model is read from (no request is made).
func (r *resolver) endpoint(spec VolumeSpec, secrets map[string]string) (string, error) {
	cfg, err := r.config(spec, secrets)
	if err != nil {
		return "", err
	}
	c, _, err := r.client(cfg)
	if err != nil {
		return "", err
	}
	return c.Endpoint(), nil
}

// configKey identifies a configuration, secrets included, without keeping them in clear.
func configKey(c ossclient.Config) string {
	h := sha256.New()
	for _, s := range []string{c.Endpoint, c.Region, c.SignatureVersion, fmt.Sprint(c.UsePathStyle),
		c.Credentials.AccessKeyID, c.Credentials.AccessKeySecret, c.Credentials.SecurityToken} {
		fmt.Fprintf(h, "%d:%s", len(s), s)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// listerKey names credentials to the cache (cache.Model.Lister): a digest, never the secrets.
func listerKey(c ossclient.Credentials) string {
	h := sha256.New()
	for _, s := range []string{"modelcast lister v1", c.AccessKeyID, c.AccessKeySecret, c.SecurityToken} {
		fmt.Fprintf(h, "%d:%s", len(s), s)
	}
	return hex.EncodeToString(h.Sum(nil))[:32]
}

// cachedLocked returns the manifest kept for a model if credentials ckey listed it, and when
// they did.
func (r *resolver) cachedLocked(mkey, ckey string) (*ossclient.Manifest, time.Time, bool) {
	e := r.manifests[mkey]
	if e == nil {
		return nil, time.Time{}, false
	}
	at, ok := e.listers[ckey]
	return e.m, at, ok
}

// rememberLocked keeps m as the model's manifest, listed by credentials ckey at now. Another
// version replaces the one kept (whoever listed the old one lists again); past the bounds the
// least recently listed model, and the credentials that listed least recently, go first.
func (r *resolver) rememberLocked(mkey, ckey string, m *ossclient.Manifest, now time.Time) {
	e := r.manifests[mkey]
	if e == nil || e.m.Fingerprint() != m.Fingerprint() {
		if e == nil && len(r.manifests) >= maxManifests {
			var oldest string
			var oldestAt time.Time
			for k, o := range r.manifests {
				if at := o.last(); oldest == "" || at.Before(oldestAt) {
					oldest, oldestAt = k, at
				}
			}
			delete(r.manifests, oldest)
		}
		e = &manifestEntry{m: m, listers: map[string]time.Time{}}
		r.manifests[mkey] = e
	}
	e.listers[ckey] = now
	for len(e.listers) > maxListers {
		var oldest string
		var oldestAt time.Time
		for k, at := range e.listers {
			if oldest == "" || at.Before(oldestAt) {
				oldest, oldestAt = k, at
			}
		}
		delete(e.listers, oldest)
	}
}

// resolved is a volume's model as the resolver found it.
type resolved struct {
	model cache.Model
	src   cache.Source
	// unchecked, when set, is why OSS was not asked for the model's manifest (it did not
	// answer): the manifest is one listed before, or the one kept beside the staged model.
	unchecked error
}

// model is resolve's model and source.
func (r *resolver) model(ctx context.Context, spec VolumeSpec, secrets map[string]string) (cache.Model, cache.Source, error) {
	res, err := r.resolve(ctx, spec, secrets)
	return res.model, res.src, err
}

// resolve resolves the volume's model with the volume's credentials. Manifests are kept for
// the resolver's TTL per (endpoint, path) and credentials: a burst of pods on a node asks OSS
// once, and a credential that cannot list the model never gets a manifest listed with
// another. When OSS is unavailable, a manifest these credentials listed before is used: the
// one listed last by this process, else the one of a model staged on this node (kept beside
// it in the cache, so it outlives a restart).
func (r *resolver) resolve(ctx context.Context, spec VolumeSpec, secrets map[string]string) (resolved, error) {
	cfg, err := r.config(spec, secrets)
	if err != nil {
		return resolved{}, err
	}
	c, key, err := r.client(cfg)
	if err != nil {
		return resolved{}, err
	}
	anon := cfg
	anon.Credentials = ossclient.Credentials{}
	lister := listerKey(cfg.Credentials)
	tenant, useChain, err := r.broadcastFor(spec)
	if err != nil {
		return resolved{}, err
	}
	list := func(ctx context.Context) (*ossclient.Manifest, error) { return c.Manifest(ctx, spec.URI) }
	src := cache.Source(cache.OSSSource{Client: c, Options: r.download})
	if useChain {
		list = func(ctx context.Context) (*ossclient.Manifest, error) {
			return r.chain.ResolveManifest(ctx, tenant, c, spec.URI)
		}
		src = r.chain.Source(cache.OSSSource{Client: c, Options: r.download}, tenant)
	}
	// The model's entry is keyed without credentials; the listing is shared per credentials.
	mkey := configKey(anon) + "\x00" + tenant + "\x00" + spec.URI.String()
	r.mu.Lock()
	cached, listedAt, ok := r.cachedLocked(mkey, key)
	r.mu.Unlock()
	now := r.clock.Now()
	if ok && now.Sub(listedAt) < r.ttl {
		return resolved{model: cache.Model{Endpoint: c.Endpoint(), Manifest: cached, Lister: lister}, src: src}, nil
	}
	v, err := r.shared(ctx, key+"\x00"+mkey, spec.URI, func(ctx context.Context) (any, error) {
		m, err := list(ctx)
		if err != nil {
			return nil, err
		}
		r.mu.Lock()
		r.rememberLocked(mkey, key, m, r.clock.Now())
		r.mu.Unlock()
		return m, nil
	})
	if err != nil {
		if !errors.Is(err, ossclient.ErrUnavailable) && !errors.Is(err, errPending) {
			_, fromSecret, _ := credentialsFrom(secrets)
			return resolved{}, refusedCredentials(cfg, fromSecret, r.endpointError(spec, c.Endpoint(), err))
		}
		logger := klog.FromContext(ctx)
		if ok {
			logger.Info("OSS unavailable; using the manifest listed before", "model", spec.URI.String(), "listedAt", listedAt, "err", err)
			return resolved{model: cache.Model{Endpoint: c.Endpoint(), Manifest: cached, Lister: lister}, src: src, unchecked: err}, nil
		}
		if r.store != nil {
			if m, found := r.store.Find(c.Endpoint(), spec.URI, lister); found {
				logger.Info("OSS unavailable; serving the model staged on this node without checking OSS for a newer version",
					"model", spec.URI.String(), "key", m.Key(), "fingerprint", m.Manifest.Fingerprint(), "err", err)
				return resolved{model: m, src: src, unchecked: err}, nil
			}
		}
		return resolved{}, err
	}
	return resolved{model: cache.Model{Endpoint: c.Endpoint(), Manifest: v.(*ossclient.Manifest), Lister: lister}, src: src}, nil
}

// shared runs fn once for every caller asking for key at the same time. fn runs under the
// resolver's context (with the first caller's values, not its cancellation) bounded by
// listTimeout; each caller waits only as long as its own ctx allows, and one that stops
// waiting gets an error saying the listing goes on (errPending): its retry joins it.
func (r *resolver) shared(ctx context.Context, key string, uri ossclient.URI, fn func(context.Context) (any, error)) (any, error) {
	began := r.clock.Now()
	ch := r.flight.DoChan(key, func() (any, error) {
		r.mu.Lock()
		if r.closed {
			r.mu.Unlock()
			return nil, fmt.Errorf("%w: list %s: the driver is stopping", errNotReady, uri)
		}
		r.wg.Add(1)
		r.mu.Unlock()
		defer r.wg.Done()
		lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.listTimeout)
		defer cancel()
		stop := context.AfterFunc(r.ctx, cancel) // the resolver closing ends it too
		defer stop()
		return fn(lctx)
	})
	select {
	case res := <-ch:
		return res.Val, res.Err
	case <-ctx.Done():
		waited := r.clock.Since(began).Round(100 * time.Millisecond)
		return nil, fmt.Errorf("%w: still listing %s: OSS has not answered the listing and HEAD requests in %v; the listing goes on and a retry joins it",
			errPending, uri, waited)
	}
}

// broadcastFor says whether the volume's model goes through the chain, and for which tenant.
func (r *resolver) broadcastFor(spec VolumeSpec) (string, bool, error) {
	tenant := spec.Tenant
	if tenant == "" {
		tenant = r.tenant
	}
	if tenant == "" {
		tenant = "default"
	}
	if err := coord.ValidTenant(tenant); err != nil {
		return "", false, fmt.Errorf("%w: volume attribute %s: %w", errInvalid, AttrTenant, err)
	}
	on := r.broadcast
	if spec.Broadcast != nil {
		on = *spec.Broadcast
	}
	return tenant, on && r.chain != nil && r.chain.Enabled(), nil
}
