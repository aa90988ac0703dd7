package main

import (
	"context"
	"fmt"
	"os"
	"strconv"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/modelcast/modelcast/pkg/config"
	"github.com/modelcast/modelcast/pkg/driver"
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
	_ = fs.Parse(args)

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
