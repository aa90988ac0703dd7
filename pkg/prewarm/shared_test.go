package prewarm_test

import (
	"context"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	kubefake "k8s.io/client-go/kubernetes/fake"

	"github.com/modelcast/modelcast/pkg/apis/modelcast/v1alpha1"
	"github.com/modelcast/modelcast/pkg/prewarm"
)

// TestRunSharesTheModelCacheInformer: given Config.ModelCaches, the watcher reads the
// ModelCaches from that informer (the driver shares it with mount authorization) and never
// lists or watches them itself; when it stops, the informer, which is its owner's, still runs.
func TestRunSharesTheModelCacheInformer(t *testing.T) {
	m := mc("qwen", []string{"node-1"}, nil)
	u, err := runtime.DefaultUnstructuredConverter.ToUnstructured(m)
	if err != nil {
		t.Fatal(err)
	}
	obj := &unstructured.Unstructured{Object: u}
	obj.SetAPIVersion(v1alpha1.GroupVersion.String())
	obj.SetKind("ModelCache")
	kinds := map[schema.GroupVersionResource]string{prewarm.Resource: "ModelCacheList"}
	// The shared informer's client holds the ModelCache; the watcher's own client holds none.
	sharedClient := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), kinds, obj)
	own := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), kinds)
	informer := prewarm.NewModelCacheInformer(sharedClient)
	ictx, stopInformer := context.WithCancel(context.Background())
	informerDone := make(chan struct{})
	go func() {
		defer close(informerDone)
		informer.RunWithContext(ictx)
	}()
	defer func() { stopInformer(); <-informerDone }()

	e := newEnv(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- prewarm.Run(ctx, prewarm.Config{Node: "node-1", Kube: kubefake.NewSimpleClientset(node("node-1", nil)), Dynamic: own,
			Cache: e.cache, Status: e.status, Clock: e.clock, ModelCaches: informer})
	}()
	waitFor(t, "the shared informer's ModelCache pinned", func() bool { return e.cache.Pins()[prewarm.Holder("ns", "qwen")] != "" })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for _, a := range own.Actions() {
		if a.GetResource() == prewarm.Resource && (a.GetVerb() == "list" || a.GetVerb() == "watch") {
			t.Errorf("the watcher ran its own ModelCache informer: %s %s", a.GetVerb(), a.GetResource())
		}
	}
	if informer.IsStopped() {
		t.Error("the watcher stopped the shared informer it does not own")
	}
}
