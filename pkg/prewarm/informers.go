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
	dynFactory := dynamicinformer.NewDynamicSharedInformerFactory(dyn, 0)
	mcInformer := dynFactory.ForResource(Resource).Informer()
	var opts []informers.SharedInformerOption
	if node != "" {
		opts = append(opts, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", node).String()
		}))
	}
	nodeFactory := informers.NewSharedInformerFactoryWithOptions(kube, 0, opts...)
	nodeInformer := nodeFactory.Core().V1().Nodes().Informer()
	if _, err := mcInformer.AddEventHandler(handler); err != nil {
		return nil, fmt.Errorf("watch modelcaches: %w", err)
	}
	if _, err := nodeInformer.AddEventHandler(handler); err != nil {
		return nil, fmt.Errorf("watch nodes: %w", err)
	}
	ictx, stopInformers := context.WithCancel(ctx)
	w := &watched{modelCaches: mcInformer, nodes: nodeInformer, changed: changed, stop: func() {
		stopInformers()
		dynFactory.Shutdown()
		nodeFactory.Shutdown()
	}}
	dynFactory.Start(ictx.Done())
	nodeFactory.Start(ictx.Done())
	if !toolscache.WaitForCacheSync(ctx.Done(), mcInformer.HasSynced, nodeInformer.HasSynced) {
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
