// Package driver is modelcast's CSI surface: the Identity, Node and Controller services,
// volume attribute and secret parsing, bind mounts, pod Events, and the one place where
// errors become gRPC codes.
package driver

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/kubernetes-csi/csi-lib-utils/protosanitizer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/modelcast/modelcast/internal/version"
	"github.com/modelcast/modelcast/pkg/broadcast"
	"github.com/modelcast/modelcast/pkg/cache"
	"github.com/modelcast/modelcast/pkg/config"
	"github.com/modelcast/modelcast/pkg/coord"
	"github.com/modelcast/modelcast/pkg/leader"
	"github.com/modelcast/modelcast/pkg/metrics"
	"github.com/modelcast/modelcast/pkg/ossclient"
	"github.com/modelcast/modelcast/pkg/prewarm"
)

// Modes of the plugin.
const (
	ModeNode       = "node"
	ModeController = "controller"
	ModeAll        = "all" // both services in one process (tests, single-node setups)
	// ModeAgent is the node's model code without CSI (csi-plugin agent): the cache, the
	// broadcast chain and its data plane, used through Stage. It serves no CSI endpoint
	// (Options.Endpoint stays empty; Serve and Run refuse to run), and its health is its
	// cache's.
	ModeAgent = "agent"
)

// DefaultDriverName is the CSI driver's name (the CSIDriver object's name).
const DefaultDriverName = "oss.csi.modelcast.io"

// Options wire a Driver. Everything external is injected here.
type Options struct {
	Mode       string
	Endpoint   string // unix:///csi/csi.sock; none in ModeAgent
	DriverName string
	NodeID     string
	Config     config.Config
	// Getenv reads the OSS_* defaults (endpoint, region, credentials); default os.Getenv.
	Getenv func(string) string
	// KubeClient posts pod Events; nil: no Events.
	KubeClient kubernetes.Interface
	// DynamicClient, with KubeClient, runs the node's ModelCache watcher (pre-warming the
	// models of the ModelCaches that select the node); nil: none.
	DynamicClient dynamic.Interface
	// LeaderElection elects, among the controller's replicas, the one that writes the
	// ModelCaches' totals: a Lease in KubeClient's API, in LeaderElection.Namespace, named
	// TotalsLeaseName(DriverName) unless Name is set; Identity is required. Namespace "": no
	// election, this controller writes them.
	LeaderElection leader.Config
	// AuthorizeMounts, on a node, refuses to publish a model that no ModelCache of the pod's
	// namespace declares (PermissionDenied, and a MountNotAuthorized Event on the pod). It
	// needs KubeClient and DynamicClient, and the pod's namespace in the volume context (the
	// CSIDriver's podInfoOnMount).
	AuthorizeMounts bool
	// NodeIP is this node's address for peers (the broadcast data plane listens on
	// bindPort); default: all interfaces, advertised as the host name's address.
	NodeIP string
	// Mounter for pods' bind mounts; default: mount(2).
	Mounter Mounter
	Clock   clock.WithTickerAndDelayedExecution
	// ManifestTTL: how long a listed manifest is reused for the same path and credentials.
	ManifestTTL time.Duration
	// ListTimeout bounds one listing of a model (shared by every publish waiting for it);
	// default DefaultListTimeout. A publish waits for it as for a staging (PublishWait).
	ListTimeout time.Duration
	// PublishWait caps one NodePublishVolume's wait for the listing and the staging; 0: no cap,
	// the call waits until PublishMargin before the caller's deadline (kubelet's: 2 minutes),
	// then answers Unavailable with the staging's progress. A caller without a deadline waits
	// PublishWait, or as long as kubelet's call would when it is 0.
	PublishWait, PublishMargin time.Duration
	// ProgressEvery is the cadence of progress Events while staging.
	ProgressEvery time.Duration
	// HTTPEndpoint is where Serve answers /metrics, /healthz and /readyz (host:port); "" for
	// none.
	HTTPEndpoint string
	// Metrics records what the plugin does; default: a fresh registry.
	Metrics *metrics.Metrics
	// WhileServing, when set, runs once the CSI endpoint accepts connections (kubelet's plugin
	// registration goes here: kubelet dials the endpoint as soon as it learns of it), with a
	// context that ends when serving stops. Serve waits for it to return; an error from it
	// stops the driver, and Serve returns it.
	WhileServing func(ctx context.Context) error
}

func (o *Options) defaults() {
	if o.DriverName == "" {
		o.DriverName = DefaultDriverName
	}
	if o.Getenv == nil {
		o.Getenv = os.Getenv
	}
	if o.Mounter == nil {
		o.Mounter = kernelMounter{}
	}
	if o.Clock == nil {
		o.Clock = clock.RealClock{}
	}
	if o.ManifestTTL == 0 {
		o.ManifestTTL = 30 * time.Second
	}
	if o.PublishMargin == 0 {
		o.PublishMargin = 5 * time.Second
	}
	if o.ProgressEvery == 0 {
		o.ProgressEvery = 30 * time.Second
	}
	if o.Metrics == nil {
		o.Metrics = metrics.New(version.Get())
	}
	if o.LeaderElection.Namespace != "" && o.LeaderElection.Name == "" {
		o.LeaderElection.Name = TotalsLeaseName(o.DriverName)
	}
}

// Validate checks the options a caller sets.
func (o *Options) Validate() error {
	var errs []error
	switch o.Mode {
	case ModeNode, ModeAll, ModeAgent:
		if o.NodeID == "" {
			errs = append(errs, fmt.Errorf("node ID is required in %s mode (--node-id or NODE_NAME)", o.Mode))
		}
	case ModeController:
	default:
		errs = append(errs, fmt.Errorf("mode %q: want %s, %s, %s or %s", o.Mode, ModeNode, ModeController, ModeAll, ModeAgent))
	}
	if o.LeaderElection.Namespace != "" {
		if err := o.LeaderElection.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("leader election: %w", err))
		}
	}
	switch {
	case o.AuthorizeMounts && (o.Mode == ModeController || o.Mode == ModeAgent):
		errs = append(errs, fmt.Errorf("mount authorization: the %s mode publishes no volume", o.Mode))
	case o.AuthorizeMounts && (o.KubeClient == nil || o.DynamicClient == nil):
		errs = append(errs, errors.New("mount authorization needs a Kubernetes client (KubeClient and DynamicClient): it reads the ModelCaches"))
	}
	switch {
	case o.Mode == ModeAgent:
		if o.Endpoint != "" {
			errs = append(errs, fmt.Errorf("endpoint %q: the %s mode serves no CSI endpoint", o.Endpoint, ModeAgent))
		}
	default:
		if _, _, err := parseEndpoint(o.Endpoint); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// servesNode says whether the mode runs the node's model code (the cache and the chain).
func (o *Options) servesNode() bool {
	return o.Mode == ModeNode || o.Mode == ModeAll || o.Mode == ModeAgent
}

// Driver is a configured plugin: its gRPC services and, on a node, the model cache.
type Driver struct {
	opts    Options
	server  *grpc.Server
	store   *cache.Store
	chain   *broadcast.Broadcaster
	res     *resolver
	events  *kubeEvents
	serving atomic.Bool // the CSI endpoint is listening
	// closeOnce makes Close idempotent (Serve closes the driver; so may its owner).
	closeOnce sync.Once
	// modelCaches is the node's informer on every ModelCache, shared by the pre-warm watcher
	// and mount authorization; Serve runs it. nil without a Kubernetes client.
	modelCaches toolscache.SharedIndexInformer
}

// New builds the services. On a node it opens the cache (mounting or adopting its tmpfs and
// reconciling references with the mount table) before anything is served.
func New(opts Options) (*Driver, error) {
	opts.defaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	d := &Driver{opts: opts}
	cfg := opts.Config
	base := ossclient.EnvConfig(opts.Getenv)
	base.OnRequestError = opts.Metrics.OSSRequestError
	base.Limits = ossclient.Limits{MaxObjects: cfg.Model.MaxObjects, MaxBytes: cfg.MaxModelBytes()} // zero: ossclient's defaults
	res := newResolver(base, ossclient.DownloadOptions{Concurrency: cfg.Concurrency()}, opts.ManifestTTL, opts.ListTimeout, opts.Clock)
	d.res = res

	var events Events = noEvents{}
	if opts.KubeClient != nil {
		d.events = newKubeEvents(opts.KubeClient, opts.NodeID)
		events = d.events
	}
	d.server = grpc.NewServer(grpc.UnaryInterceptor(d.intercept))
	ident := &identityServer{name: opts.DriverName, version: version.Get(), ready: func() bool { return d.cacheCheck() == nil }}
	csi.RegisterIdentityServer(d.server, ident)

	if opts.servesNode() {
		node, err := newChainNode(opts)
		if err != nil {
			return nil, err
		}
		d.chain = node
		res.chain, res.broadcast, res.tenant = node, cfg.Broadcast.EnableBroadcast, cfg.Broadcast.Tenant
		store, err := cache.New(cache.Config{
			Root:          cfg.Cache.Root,
			Tmpfs:         cache.TmpfsConfig{Mount: *cfg.Cache.Tmpfs, Size: cfg.Cache.TmpfsSize, Huge: cfg.HugeOption()},
			ExpireAfter:   cfg.ExpireAfter(),
			SoftCap:       cfg.SoftCapBytes(),
			MemoryReserve: int64(cfg.Cache.MemoryReserveGB * 1e9), // GB as every size the plugin reports
			Clock:         opts.Clock,
			OnRelease:     node.Release,
			OnStaged:      opts.Metrics.ObserveStaging,
			// A model staged for a publish that answered Unavailable is kept for kubelet's
			// retry, however far its backoff went.
			RetryHold: kubeletMaxBackoff + retryMargin,
		})
		if err != nil {
			node.Close()
			return nil, err
		}
		d.store = store
		res.store = store
		opts.Metrics.WatchNode(store, node)
		ns := &nodeServer{
			nodeID: opts.NodeID, store: store, mounter: opts.Mounter, res: res, events: events,
			clock: opts.Clock, locks: newKeyLock(), cacheRoot: store.Root(), published: map[string]publication{},
			maxWait: opts.PublishWait, margin: opts.PublishMargin, progressEvery: opts.ProgressEvery,
		}
		if d.watchesModelCaches() {
			d.modelCaches = prewarm.NewModelCacheInformer(opts.DynamicClient)
		}
		if opts.AuthorizeMounts {
			ns.authz = &mountAuthorizer{modelCaches: d.modelCaches, endpoint: res.modelEndpoint, events: events, driverName: opts.DriverName}
			klog.InfoS("Mount authorization is on: a pod mounts only a model that a ModelCache of its namespace declares")
		}
		csi.RegisterNodeServer(d.server, ns)
	}
	if opts.Mode == ModeController || opts.Mode == ModeAll {
		csi.RegisterControllerServer(d.server, &controllerServer{res: res, requests: map[string]string{}})
	}
	return d, nil
}

// Store is the node's model cache (nil in controller mode).
func (d *Driver) Store() *cache.Store { return d.store }

// Stage makes the model of a volume (attributes and secrets as NodePublishVolume takes them)
// ready on this node for holder, without mounting it, and returns its directory and cache key.
// It is the node agent's path (the demo and the benchmarks run the node code without CSI).
func (d *Driver) Stage(ctx context.Context, attrs, secrets map[string]string, holder string) (dir, key string, err error) {
	if d.store == nil {
		return "", "", errors.New("not a node")
	}
	spec, err := parseVolume(attrs)
	if err != nil {
		return "", "", err
	}
	model, src, err := d.res.model(ctx, spec, secrets)
	if err != nil {
		return "", "", err
	}
	dir, err = d.store.Acquire(ctx, model, src, holder)
	return dir, model.Key(), err
}

// Chain is the node's part in model broadcasting (nil in controller mode).
func (d *Driver) Chain() *broadcast.Broadcaster { return d.chain }

// Metrics are the plugin's metrics.
func (d *Driver) Metrics() *metrics.Metrics { return d.opts.Metrics }

// newChainNode starts the node's broadcast part. Without broadcast, or without Redis
// configured, it is a node that fetches from OSS directly; an unreachable Redis only logs (the
// client reconnects by itself, and fetches fall back to OSS meanwhile).
func newChainNode(opts Options) (*broadcast.Broadcaster, error) {
	b := opts.Config.Broadcast
	cc := broadcast.Config{NodeID: opts.NodeID, Tenant: b.Tenant, Chains: b.Chains, HeadConcurrency: b.HeadConcurrency, CongestionControl: b.CongestionControl,
		Addr: net.JoinHostPort(opts.NodeIP, strconv.Itoa(opts.Config.BindPort))}
	if opts.NodeIP == "" {
		cc.Addr, cc.Listen = net.JoinHostPort(hostIP(), strconv.Itoa(opts.Config.BindPort)), ":"+strconv.Itoa(opts.Config.BindPort)
	}
	if !b.EnableBroadcast {
		return broadcast.New(cc, nil)
	}
	if b.DB.Host == "" && b.DB.URL == "" {
		klog.InfoS("Broadcast is enabled but no Redis is configured (broadcast.db.host): fetching from OSS directly")
		return broadcast.New(cc, nil)
	}
	rc := coord.RedisConfig{
		Addr: net.JoinHostPort(b.DB.Host, strconv.Itoa(b.DB.Port)), URL: b.DB.URL,
		Username: b.DB.Username, Password: b.DB.Password, TLS: b.DB.TLS,
	}
	if b.DB.CAFile != "" {
		pem, err := os.ReadFile(b.DB.CAFile)
		if err != nil {
			return nil, fmt.Errorf("broadcast.db.caFile: %w", err)
		}
		rc.CACert = pem
	}
	if b.DB.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(b.DB.CertFile, b.DB.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("broadcast.db.certFile and keyFile: %w", err)
		}
		rc.ClientCert = &cert
	}
	rdb, err := coord.NewRedisClient(rc)
	if err != nil {
		return nil, err
	}
	n, err := broadcast.New(cc, rdb)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	n.CheckRedis(ctx) // says so at once, and clearly, if Redis refuses this node
	return n, nil
}

// hostIP is the first non-loopback address of this host (the peer address without NodeIP).
func hostIP() string {
	addrs, err := net.InterfaceAddrs()
	if err == nil {
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok && !ipn.IP.IsLoopback() && ipn.IP.To4() != nil {
				return ipn.IP.String()
			}
		}
	}
	return "127.0.0.1"
}

// Serve listens on the endpoint and serves until ctx ends (or the WhileServing hook fails),
// then stops gracefully. Pods' mounts and the cache stay as they are: a restarted plugin adopts
// them. However it returns — a listener that could not be opened included — Serve has stopped
// what it started and closed the driver (the cache and its janitor, the chain node and its
// peer listener, listings in flight, the Events broadcaster).
func (d *Driver) Serve(ctx context.Context) error {
	// sctx ends serving: with ctx, or when the hook fails. The HTTP server lives under it too.
	sctx, stopServing := context.WithCancel(ctx)
	var httpDone <-chan struct{}
	defer func() {
		stopServing()
		if httpDone != nil {
			<-httpDone
		}
		d.Close()
	}()
	if d.opts.Mode == ModeAgent {
		return fmt.Errorf("the %s mode serves no CSI endpoint", ModeAgent)
	}
	ln, err := listen(d.opts.Endpoint)
	if err != nil {
		return err
	}
	if d.opts.HTTPEndpoint != "" {
		if _, httpDone, err = metrics.Serve(sctx, d.opts.HTTPEndpoint, d.HTTPHandler()); err != nil {
			_ = ln.Close()
			return err
		}
	}
	klog.InfoS("Serving CSI", "endpoint", d.opts.Endpoint, "mode", d.opts.Mode, "driver", d.opts.DriverName, "version", version.Get(), "nodeID", d.opts.NodeID)
	served := make(chan error, 1)
	d.serving.Store(true)
	go func() { served <- d.server.Serve(ln) }()
	hookDone := make(chan struct{})
	var hookErr error
	if hook := d.opts.WhileServing; hook != nil {
		go func() {
			defer close(hookDone)
			if hookErr = hook(sctx); hookErr != nil {
				stopServing()
			}
		}()
	} else {
		close(hookDone)
	}
	informerDone := make(chan struct{})
	if d.modelCaches != nil {
		go func() {
			defer close(informerDone)
			d.modelCaches.RunWithContext(sctx)
		}()
	} else {
		close(informerDone)
	}
	watchDone := make(chan struct{})
	if d.watchesModelCaches() {
		go func() {
			defer close(watchDone)
			d.watchModelCaches(sctx)
		}()
	} else {
		close(watchDone)
	}
	totalsDone := make(chan struct{})
	if d.writesTotals() {
		go func() {
			defer close(totalsDone)
			d.writeTotals(sctx)
		}()
	} else {
		close(totalsDone)
	}
	select {
	case err = <-served:
		d.server.Stop() // the connections it had
	case <-sctx.Done():
		klog.InfoS("Stopping; pods' mounts and the cache stay")
		stopped := make(chan struct{})
		go func() { d.server.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(10 * time.Second):
			d.server.Stop()
		}
		err = <-served
	}
	stopServing()
	<-hookDone
	<-watchDone // its stagings ended before the cache closes
	<-informerDone
	<-totalsDone
	d.serving.Store(false)
	if errors.Is(err, grpc.ErrServerStopped) {
		err = nil
	}
	return errors.Join(err, hookErr)
}

// Close releases what New acquired, without touching mounts. It may be called more than once.
func (d *Driver) Close() {
	d.closeOnce.Do(d.close)
}

func (d *Driver) close() {
	d.res.close()
	if d.store != nil {
		d.store.Close()
	}
	if d.chain != nil {
		d.chain.Close()
	}
	if d.events != nil {
		d.events.Shutdown()
	}
}

// Run builds a driver and serves until ctx ends. A node plugin that stops while no pod holds
// a model also unmounts its cache tmpfs (uninstalling leaves no mount behind); with pods
// holding models the cache stays, and a restarted plugin adopts it.
func Run(ctx context.Context, opts Options) error {
	d, err := New(opts)
	if err != nil {
		return err
	}
	err = d.Serve(ctx)
	if d.store != nil {
		if _, uerr := d.store.UnmountIfIdle(); uerr != nil {
			klog.ErrorS(uerr, "Could not unmount the idle cache tmpfs")
		}
	}
	return err
}

func parseEndpoint(ep string) (network, address string, err error) {
	u, err := url.Parse(ep)
	if err != nil || (u.Scheme != "unix" && u.Scheme != "tcp") {
		return "", "", fmt.Errorf("endpoint %q: want unix:///path/csi.sock or tcp://host:port", ep)
	}
	if u.Scheme == "unix" {
		p := u.Path
		if p == "" {
			p = u.Opaque
		}
		if p == "" {
			return "", "", fmt.Errorf("endpoint %q has no socket path", ep)
		}
		return "unix", p, nil
	}
	return "tcp", u.Host, nil
}

func listen(ep string) (net.Listener, error) {
	network, addr, err := parseEndpoint(ep)
	if err != nil {
		return nil, err
	}
	if network == "unix" {
		if err := os.MkdirAll(filepath.Dir(addr), 0o750); err != nil {
			return nil, err
		}
		if err := os.Remove(addr); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("remove stale socket %s: %w", addr, err)
		}
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", ep, err)
	}
	if network == "unix" {
		if err := os.Chmod(addr, 0o660); err != nil {
			_ = ln.Close()
			return nil, err
		}
	}
	return ln, nil
}

// intercept logs every call — method, duration and code (V(4); errors always; Probe only at
// V(6)), and the request with secrets stripped at V(5) — and records it in the metrics.
func (d *Driver) intercept(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	level := klog.Level(4)
	if info.FullMethod == csi.Identity_Probe_FullMethodName {
		level = 6
	}
	if klog.V(5).Enabled() {
		klog.V(5).InfoS("Request", "method", info.FullMethod, "request", protosanitizer.StripSecrets(req))
	}
	start := time.Now()
	resp, err := handler(ctx, req)
	code := status.Code(err)
	d.opts.Metrics.ObserveCall(path.Base(info.FullMethod), code.String(), time.Since(start))
	if err != nil {
		klog.ErrorS(err, "Call failed", "method", info.FullMethod, "code", code.String(), "duration", time.Since(start))
	} else {
		klog.V(level).InfoS("Call", "method", info.FullMethod, "code", code.String(), "duration", time.Since(start))
	}
	return resp, err
}
