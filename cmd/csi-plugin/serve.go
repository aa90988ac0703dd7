package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/modelcast/modelcast/pkg/config"
	"github.com/modelcast/modelcast/pkg/driver"
	"github.com/modelcast/modelcast/pkg/registration"
)

// DefaultHTTPPort serves metrics and health, beside the peer data plane's bindPort (19898).
const DefaultHTTPPort = 19899

// runServe runs the CSI services in the given mode until ctx ends.
func runServe(ctx context.Context, mode string, args []string) error {
	fs := newFlagSet(mode)
	opts := driver.Options{Mode: mode}
	fs.StringVar(&opts.Endpoint, "endpoint", "unix:///csi/csi.sock", "CSI endpoint")
	fs.StringVar(&opts.DriverName, "driver-name", driver.DefaultDriverName, "CSI driver name (the CSIDriver object's)")
	fs.StringVar(&opts.NodeID, "node-id", os.Getenv("NODE_NAME"), "this node's ID (default: $NODE_NAME)")
	fs.StringVar(&opts.NodeIP, "node-ip", os.Getenv("NODE_IP"), "this node's address for broadcast peers (default: $NODE_IP)")
	fs.StringVar(&opts.HTTPEndpoint, "http-endpoint", ":"+strconv.Itoa(DefaultHTTPPort), "where to serve /metrics, /healthz and /readyz (host:port; empty: off)")
	configPath := fs.String("config", config.DefaultPath, "configuration file (OSS Connector's keys; see README)")
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig for posting pod Events (default: in-cluster, when running in a pod)")
	var reg registration.Config
	if mode == driver.ModeNode {
		fs.DurationVar(&opts.PublishWait, "publish-wait", 0, "the longest one NodePublishVolume waits for the listing and the staging before it answers Unavailable "+
			"with the progress (kubelet retries and the staging goes on); 0: until shortly before kubelet's deadline (2 minutes), "+
			"which starts the pod as soon as the staging ends; never past that deadline")
		fs.DurationVar(&opts.ProgressEvery, "progress-every", 30*time.Second, "how often a staging posts a StagingProgress Event on its pods")
		fs.StringVar(&reg.Dir, "kubelet-registration-dir", "", "register with kubelet through this directory, kubelet's plugins_registry "+
			"(e.g. /registration, the host's /var/lib/kubelet/plugins_registry mounted there), instead of node-driver-registrar; empty: off")
		fs.StringVar(&reg.Endpoint, "kubelet-csi-endpoint", "", "the CSI socket's path as kubelet on the host sees it, "+
			"e.g. /var/lib/kubelet/plugins/<driver-name>/csi.sock (default: the path of --endpoint)")
	}
	_ = fs.Parse(args)
	if reg.Dir == "" && reg.Endpoint != "" {
		return errors.New("--kubelet-csi-endpoint needs --kubelet-registration-dir")
	}
	if reg.Dir != "" {
		hook, err := registrationHook(reg, opts)
		if err != nil {
			return err
		}
		opts.WhileServing = hook
	}

	cfg, err := config.Load(*configPath, os.Getenv)
	if err != nil {
		return err
	}
	opts.Config = cfg
	if opts.KubeClient, err = kubeClient(*kubeconfig); err != nil {
		return err
	}
	if opts.KubeClient == nil {
		klog.InfoS("No Kubernetes API configured: pod Events are off")
	}
	klog.InfoS("Configuration", "config", *configPath, "expireTimeSec", cfg.ExpireTimeSec, "parallelRequests", cfg.Concurrency(),
		"maxCacheAdviseGB", cfg.Prefetch.MaxCacheAdviseGB, "cacheRoot", cfg.Cache.Root, "tmpfsSize", cfg.Cache.TmpfsSize, "huge", cfg.Cache.Huge)
	return driver.Run(ctx, opts)
}

// registrationHook validates the kubelet registration's flags and returns what serves it while
// the CSI endpoint does.
func registrationHook(reg registration.Config, opts driver.Options) (func(context.Context) error, error) {
	reg.DriverName = cmp.Or(opts.DriverName, driver.DefaultDriverName)
	if reg.Endpoint == "" {
		path, ok := strings.CutPrefix(opts.Endpoint, "unix://")
		if !ok {
			return nil, fmt.Errorf("kubelet registration: --endpoint %q is not a unix socket: set --kubelet-csi-endpoint", opts.Endpoint)
		}
		reg.Endpoint = path
	}
	if err := reg.Validate(); err != nil {
		return nil, fmt.Errorf("kubelet registration: %w", err)
	}
	// Kubelet's rejection ends the plugin: the hook's error stops the driver and the process
	// exits non-zero (as node-driver-registrar does). A plugin kubelet does not know is never
	// called, whatever its health says; exiting shows the rejection as a restarting container
	// with kubelet's message in its log, and the restarted plugin registers again (pods'
	// mounts and the cache survive a restart). The registration server stopping by itself ends
	// the plugin the same way.
	return func(ctx context.Context) error {
		rctx, stop := context.WithCancel(ctx)
		defer stop()
		r, err := registration.Serve(rctx, reg)
		if err != nil {
			return fmt.Errorf("kubelet registration: %w", err)
		}
		defer func() { stop(); <-r.Done() }() // the registrar stopped and its socket removed
		select {
		case <-r.Rejected():
			return r.Rejection() // "kubelet rejected the registration: <kubelet's message>"
		case <-r.Done():
			if ctx.Err() == nil {
				return fmt.Errorf("kubelet registration: the registration server at %s stopped serving", r.SocketPath())
			}
			return nil
		}
	}, nil
}

// kubeClient builds a client from a kubeconfig, or in-cluster when running in a pod; nil when
// neither is available.
func kubeClient(kubeconfig string) (kubernetes.Interface, error) {
	var rc *rest.Config
	var err error
	switch {
	case kubeconfig != "":
		rc, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	case os.Getenv("KUBERNETES_SERVICE_HOST") != "":
		rc, err = rest.InClusterConfig()
	default:
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return kubernetes.NewForConfig(rc)
}
