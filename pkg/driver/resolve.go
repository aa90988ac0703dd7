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

	"github.com/modelcast/modelcast/pkg/cache"
	"github.com/modelcast/modelcast/pkg/chain"
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
	chain     *chain.Node
	broadcast bool
	tenant    string

	// listTimeout bounds one shared listing (a manifest, with its HEADs): it runs under the
	// resolver's context, not under any caller's, so one caller giving up fails nobody else.
	listTimeout time.Duration

	ctx    context.Context // ends with close: shared listings run under it
	cancel context.CancelFunc
	wg     sync.WaitGroup // shared listings in flight; added to under mu while not closed
	closed bool           // guarded by mu

	mu        sync.Mutex
	clients   map[string]*ossclient.Client
	manifests map[string]manifestEntry
	flight    singleflight.Group
}

type manifestEntry struct {
	m  *ossclient.Manifest
	at time.Time
}

// maxClients bounds the clients kept (one per endpoint and credentials).
const maxClients = 256

// DefaultListTimeout bounds one listing of a model (LIST pages and a HEAD per object, with
// the SDK's retries) shared by the publishes waiting for it.
const DefaultListTimeout = 5 * time.Minute

func newResolver(base ossclient.Config, download ossclient.DownloadOptions, ttl, listTimeout time.Duration, clk clock.PassiveClock) *resolver {
	if listTimeout <= 0 {
		listTimeout = DefaultListTimeout
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &resolver{base: base, download: download, ttl: ttl, listTimeout: listTimeout, clock: clk, ctx: ctx, cancel: cancel,
		clients: map[string]*ossclient.Client{}, manifests: map[string]manifestEntry{}}
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
	cfg := r.base
	if spec.Endpoint != "" {
		cfg.Endpoint = spec.Endpoint
		if spec.Region == "" {
			cfg.Region = "" // the node's region belongs to the node's endpoint; derive anew
		}
	}
	if spec.Region != "" {
		cfg.Region = spec.Region
	}
	creds, ok, err := credentialsFrom(secrets)
	if err != nil {
		return cfg, err
	}
	if ok {
		cfg.Credentials = creds
	}
	return cfg, nil
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

// model resolves the volume's model with the volume's credentials. Manifests are kept for
// the resolver's TTL per (endpoint, credentials, path): a burst of pods on a node asks OSS
// once, and a credential that cannot list the model never gets a manifest listed with
// another. When OSS is unavailable, a manifest these credentials listed before is used.
func (r *resolver) model(ctx context.Context, spec VolumeSpec, secrets map[string]string) (cache.Model, cache.Source, error) {
	cfg, err := r.config(spec, secrets)
	if err != nil {
		return cache.Model{}, nil, err
	}
	c, key, err := r.client(cfg)
	if err != nil {
		return cache.Model{}, nil, err
	}
	tenant, useChain, err := r.broadcastFor(spec)
	if err != nil {
		return cache.Model{}, nil, err
	}
	list := func(ctx context.Context) (*ossclient.Manifest, error) { return c.Manifest(ctx, spec.URI) }
	src := cache.Source(cache.OSSSource{Client: c, Options: r.download})
	if useChain {
		list = func(ctx context.Context) (*ossclient.Manifest, error) {
			return r.chain.ResolveManifest(ctx, tenant, c, spec.URI)
		}
		src = r.chain.Source(cache.OSSSource{Client: c, Options: r.download}, tenant)
	}
	mkey := key + "\x00" + tenant + "\x00" + spec.URI.String()
	r.mu.Lock()
	cached, ok := r.manifests[mkey]
	r.mu.Unlock()
	now := r.clock.Now()
	if ok && now.Sub(cached.at) < r.ttl {
		return cache.Model{Endpoint: c.Endpoint(), Manifest: cached.m}, src, nil
	}
	v, err := r.shared(ctx, mkey, spec.URI, func(ctx context.Context) (any, error) {
		m, err := list(ctx)
		if err != nil {
			return nil, err
		}
		r.mu.Lock()
		r.manifests[mkey] = manifestEntry{m: m, at: r.clock.Now()}
		r.mu.Unlock()
		return m, nil
	})
	if err != nil {
		if ok && (errors.Is(err, ossclient.ErrUnavailable) || errors.Is(err, errPending)) {
			klog.FromContext(ctx).Info("OSS unavailable; using the manifest listed before", "model", spec.URI.String(), "listedAt", cached.at, "err", err)
			return cache.Model{Endpoint: c.Endpoint(), Manifest: cached.m}, src, nil
		}
		return cache.Model{}, nil, err
	}
	return cache.Model{Endpoint: c.Endpoint(), Manifest: v.(*ossclient.Manifest)}, src, nil
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
	if err := chain.ValidTenant(tenant); err != nil {
		return "", false, fmt.Errorf("%w: volume attribute %s: %w", errInvalid, AttrTenant, err)
	}
	on := r.broadcast
	if spec.Broadcast != nil {
		on = *spec.Broadcast
	}
	return tenant, on && r.chain != nil && r.chain.Enabled(), nil
}
