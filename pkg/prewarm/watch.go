package prewarm

import (
	"context"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/modelcast/modelcast/pkg/apis/modelcast/v1alpha1"
)

// Resource is the ModelCaches' resource.
var Resource = schema.GroupVersionResource{Group: v1alpha1.Group, Version: v1alpha1.GroupVersion.Version, Resource: "modelcaches"}

// Config wires a watcher.
type Config struct {
	Node string
	// Kube reads the node's own Node object, for its labels, and gets (never lists or
	// watches) the Secret a ModelCache names in its namespace, on each staging attempt.
	Kube    kubernetes.Interface
	Dynamic dynamic.Interface // ModelCaches, and their status
	Cache   Cache
	// Status writes the node's status entries; default: server-side apply through Dynamic.
	Status StatusWriter
	// Events posts Events on the ModelCaches (staging, ready, failed, released); default:
	// client-go's broadcaster on Kube, flushed when Run returns.
	Events Events
	Clock  clock.WithTicker // default: the real clock
	// RetryAfter is the wait after a job's first failed staging, doubled after each failure
	// that follows up to MaxRetryAfter; default 10 s. A job's waits start again from it: a
	// job ends once its model is pinned, and a changed spec starts another.
	RetryAfter time.Duration
	// MaxRetryAfter caps the wait between two stagings; default 5 minutes.
	MaxRetryAfter time.Duration
	// ModelCaches is an informer on every ModelCache (NewModelCacheInformer) that the caller
	// shares with the watcher, and runs and stops itself; nil: the watcher runs its own.
	ModelCaches toolscache.SharedIndexInformer
}

func (cfg *Config) defaults() {
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.RetryAfter <= 0 {
		cfg.RetryAfter = 10 * time.Second
	}
	if cfg.MaxRetryAfter <= 0 {
		cfg.MaxRetryAfter = 5 * time.Minute
	}
	cfg.MaxRetryAfter = max(cfg.MaxRetryAfter, cfg.RetryAfter)
}

// Run watches the ModelCaches (all namespaces) and the node's own Node until ctx ends, keeping
// the pins of those that select the node; then it stops its jobs and waits for them.
func Run(ctx context.Context, cfg Config) error {
	if cfg.Status == nil {
		cfg.Status = NewApplier(cfg.Dynamic, cfg.Node)
	}
	if cfg.Events == nil {
		events, stop := newEvents(cfg.Kube, cfg.Node)
		defer stop() // after the jobs stopped (deferred below): their last Events are flushed
		cfg.Events = events
	}
	w, err := watchShared(ctx, cfg.Kube, cfg.Dynamic, cfg.ModelCaches, cfg.Node)
	if err != nil || w == nil {
		return err
	}
	defer w.stop()
	klog.InfoS("Watching ModelCaches", "node", cfg.Node)
	r := NewReconciler(ctx, cfg)
	defer r.Stop()
	first := true
	for {
		var nodeLabels map[string]string
		for _, n := range w.nodeList() {
			if n.Name == cfg.Node {
				nodeLabels = n.Labels
			}
		}
		r.Reconcile(w.caches(), nodeLabels, first)
		first = false
		select {
		case <-ctx.Done():
			return nil
		case <-w.changed:
		}
	}
}

func fromUnstructured(obj any) (*v1alpha1.ModelCache, error) {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return nil, fmt.Errorf("modelcache: unexpected object %T", obj)
	}
	mc := &v1alpha1.ModelCache{}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, mc); err != nil {
		return nil, fmt.Errorf("modelcache %s/%s: %w", u.GetNamespace(), u.GetName(), err)
	}
	return mc, nil
}

// Applier writes a node's status entries with server-side apply on the status subresource,
// under the field manager modelcast-node-<node>: each node owns its own entry of the list-map.
type Applier struct {
	client dynamic.Interface
	node   string
}

// NewApplier returns the StatusWriter of node.
func NewApplier(client dynamic.Interface, node string) *Applier {
	return &Applier{client: client, node: node}
}

// FieldManager is the field manager of node's status entries.
func FieldManager(node string) string { return "modelcast-node-" + node }

// Apply writes st as the node's entry.
func (a *Applier) Apply(ctx context.Context, namespace, name string, st v1alpha1.NodeStatus) error {
	entry, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&st)
	if err != nil {
		return fmt.Errorf("status of modelcache %s/%s: %w", namespace, name, err)
	}
	return a.apply(ctx, namespace, name, map[string]any{"nodes": []any{entry}})
}

// Remove applies no entry, which drops the one this node's manager owned.
func (a *Applier) Remove(ctx context.Context, namespace, name string) error {
	err := a.apply(ctx, namespace, name, map[string]any{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

func (a *Applier) apply(ctx context.Context, namespace, name string, status map[string]any) error {
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": v1alpha1.GroupVersion.String(),
		"kind":       "ModelCache",
		"metadata":   map[string]any{"name": name, "namespace": namespace},
		"status":     status,
	}}
	_, err := a.client.Resource(Resource).Namespace(namespace).Apply(ctx, name, obj,
		metav1.ApplyOptions{FieldManager: FieldManager(a.node), Force: true}, "status")
	if err != nil {
		return fmt.Errorf("apply status of modelcache %s/%s: %w", namespace, name, err)
	}
	return nil
}
