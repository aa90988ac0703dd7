package prewarm

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/modelcast/modelcast/pkg/apis/modelcast/v1alpha1"
)

// watched is what the node watcher and the totals writer both read: every ModelCache (all
// namespaces) and the Nodes (all of them, or one by name), as synced informers, and a signal
// that either changed.
type watched struct {
	modelCaches, nodes toolscache.SharedIndexInformer
	changed            <-chan struct{} // one pending signal at most
	stop               func()          // stops the informers and waits for them
}

// watch starts the informers and waits for their first sync; node "" watches every Node. It
// returns nil (and no error) when ctx ends first.
func watch(ctx context.Context, kube kubernetes.Interface, dyn dynamic.Interface, node string) (*watched, error) {
	return watchShared(ctx, kube, dyn, nil, node)
}

// NewModelCacheInformer returns an informer on every ModelCache (all namespaces, unstructured,
// indexed by namespace), for a caller that shares it with the node watcher (Config.ModelCaches)
// and runs and stops it itself.
func NewModelCacheInformer(dyn dynamic.Interface) toolscache.SharedIndexInformer {
	return dynamicinformer.NewFilteredDynamicInformer(dyn, Resource, metav1.NamespaceAll, 0,
		toolscache.Indexers{toolscache.NamespaceIndex: toolscache.MetaNamespaceIndexFunc}, nil).Informer()
}

// watchShared is watch with a ModelCache informer that the caller shares, runs and stops
// (NewModelCacheInformer); nil: its own.
func watchShared(ctx context.Context, kube kubernetes.Interface, dyn dynamic.Interface, shared toolscache.SharedIndexInformer, node string) (*watched, error) {
	changed := make(chan struct{}, 1)
	poke := func() {
		select {
		case changed <- struct{}{}:
		default:
		}
	}
	handler := toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { poke() },
		UpdateFunc: func(any, any) { poke() },
		DeleteFunc: func(any) { poke() },
	}
	var dynFactory dynamicinformer.DynamicSharedInformerFactory
	mcInformer := shared
	if mcInformer == nil {
		dynFactory = dynamicinformer.NewDynamicSharedInformerFactory(dyn, 0)
		mcInformer = dynFactory.ForResource(Resource).Informer()
	}
	var opts []informers.SharedInformerOption
	if node != "" {
		opts = append(opts, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", node).String()
		}))
	}
	nodeFactory := informers.NewSharedInformerFactoryWithOptions(kube, 0, opts...)
	nodeInformer := nodeFactory.Core().V1().Nodes().Informer()
	mcHandler, err := mcInformer.AddEventHandler(handler)
	if err != nil {
		return nil, fmt.Errorf("watch modelcaches: %w", err)
	}
	if _, err := nodeInformer.AddEventHandler(handler); err != nil {
		_ = mcInformer.RemoveEventHandler(mcHandler)
		return nil, fmt.Errorf("watch nodes: %w", err)
	}
	ictx, stopInformers := context.WithCancel(ctx)
	w := &watched{modelCaches: mcInformer, nodes: nodeInformer, changed: changed, stop: func() {
		stopInformers()
		if dynFactory != nil {
			dynFactory.Shutdown()
		} else if err := toolscache.ShutDownEventHandler(mcInformer, mcHandler); err != nil {
			klog.ErrorS(err, "Could not remove the watcher's handler from the shared ModelCache informer")
		}
		nodeFactory.Shutdown()
	}}
	if dynFactory != nil {
		dynFactory.Start(ictx.Done())
	}
	nodeFactory.Start(ictx.Done())
	// The handler's own sync: a shared informer synced long ago has not yet replayed its
	// objects to a handler added now.
	if !toolscache.WaitForCacheSync(ctx.Done(), mcHandler.HasSynced, nodeInformer.HasSynced) {
		w.stop()
		return nil, nil // ctx ended first
	}
	return w, nil
}

// caches returns every ModelCache the informer holds, decoded (one that does not decode is
// logged and left out).
func (w *watched) caches() []*v1alpha1.ModelCache {
	var out []*v1alpha1.ModelCache
	for _, obj := range w.modelCaches.GetStore().List() {
		mc, err := fromUnstructured(obj)
		if err != nil {
			klog.ErrorS(err, "Ignoring a ModelCache that does not decode")
			continue
		}
		out = append(out, mc)
	}
	return out
}

// nodeList returns the Nodes the informer holds.
func (w *watched) nodeList() []*corev1.Node {
	var out []*corev1.Node
	for _, obj := range w.nodes.GetStore().List() {
		if n, ok := obj.(*corev1.Node); ok {
			out = append(out, n)
		}
	}
	return out
}
