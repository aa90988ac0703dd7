package main

import (
	"context"
	"fmt"
	"os"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/modelcast/modelcast/pkg/config"
	"github.com/modelcast/modelcast/pkg/driver"
	"github.com/modelcast/modelcast/pkg/registration"
)

const nodeUsage = `usage: csi-plugin node [flags]

Serves the CSI node service on --endpoint: stages each volume's model once into the node's
tmpfs cache (from OSS, or from peers along the broadcast chain) and bind-mounts it read-only
into every pod that uses it. The configuration file (--config; README: Node configuration)
says where the cache is and how models are fetched; OSS credentials come from the volume's
secret, else from OSS_ACCESS_KEY_ID, OSS_ACCESS_KEY_SECRET and OSS_SESSION_TOKEN. With
--kubelet-registration-dir it registers itself with kubelet, without node-driver-registrar.
`

const controllerUsage = `usage: csi-plugin controller [flags]

Serves the CSI controller service on --endpoint: CreateVolume turns a StorageClass's
parameters into a volume (its capacity the model's size, when the provisioner secret's
credentials can list it), DeleteVolume (never touches OSS) and ValidateVolumeCapabilities.
With a Kubernetes API (--kubeconfig, or in-cluster), it also writes the ModelCaches' totals
(desired and ready nodes, size, the Ready condition): of several replicas, the one that holds
the Lease <driver-name>-totals (dots as dashes) in --leader-election-namespace.
`

// runServe runs the CSI services in the given mode (driver.ModeNode or ModeController) until
// ctx ends.
func runServe(ctx context.Context, mode string, args []string) error {
	usage := nodeUsage
	if mode == driver.ModeController {
		usage = controllerUsage
	}
	fs := serverFlagSet(mode, usage)
	o := Options{Mode: mode}
	o.AddFlags(fs)
	if err := parseArgs(fs, args); err != nil {
		return err
	}
	if err := o.Validate(); err != nil {
		return usageErr(fs, err)
	}
	opts := o.driverOptions()
	if reg := o.registration(); reg.Dir != "" {
		hook, err := registrationHook(reg)
		if err != nil {
			return err
		}
		opts.WhileServing = hook
	}

	cfg, err := config.Load(o.ConfigPath, os.Getenv)
	if err != nil {
		return err
	}
	opts.Config = cfg
	if opts.KubeClient, opts.DynamicClient, err = kubeClients(o.Kubeconfig); err != nil {
		return err
	}
	if opts.KubeClient == nil {
		klog.InfoS("No Kubernetes API configured: pod Events and ModelCaches are off")
	}
	if mode == driver.ModeController && opts.KubeClient != nil {
		namespaceFile := "" // the pod's own namespace, only for the API the pod is in
		if o.Kubeconfig == "" && inCluster() {
			namespaceFile = inClusterNamespaceFile
		}
		if opts.LeaderElection, err = o.leaderElection(namespaceFile); err != nil {
			return err
		}
	}
	klog.InfoS("Configuration", "config", o.ConfigPath, "expireTimeSec", cfg.ExpireTimeSec, "parallelRequests", cfg.Concurrency(),
		"maxCacheAdviseGB", cfg.Prefetch.MaxCacheAdviseGB, "cacheRoot", cfg.Cache.Root, "tmpfsSize", cfg.Cache.TmpfsSize, "huge", cfg.Cache.Huge)
	return driver.Run(ctx, opts)
}

// registrationHook returns what serves the kubelet registration reg (Options.registration)
// while the CSI endpoint does.
func registrationHook(reg registration.Config) (func(context.Context) error, error) {
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

// inCluster says whether the plugin runs in a pod, where it reaches the API server without a
// kubeconfig.
func inCluster() bool { return os.Getenv("KUBERNETES_SERVICE_HOST") != "" }

// kubeClients builds the clients (typed, and dynamic for ModelCaches) from a kubeconfig, or
// in-cluster when running in a pod; nil when neither is available.
func kubeClients(kubeconfig string) (kubernetes.Interface, dynamic.Interface, error) {
	var rc *rest.Config
	var err error
	switch {
	case kubeconfig != "":
		rc, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	case inCluster():
		rc, err = rest.InClusterConfig()
	default:
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("kubernetes client: %w", err)
	}
	kube, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, nil, fmt.Errorf("kubernetes client: %w", err)
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		return nil, nil, fmt.Errorf("kubernetes dynamic client: %w", err)
	}
	return kube, dyn, nil
}
