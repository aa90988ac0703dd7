package driver_test

import (
	"encoding/json"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/modelcast/modelcast/pkg/apis/modelcast/v1alpha1"
	"github.com/modelcast/modelcast/pkg/driver"
	"github.com/modelcast/modelcast/pkg/prewarm"
)

// applied records the status entries the node applied, by ModelCache name.
type applied struct {
	mu      sync.Mutex
	entries map[string][]v1alpha1.NodeStatus
	totals  map[string]int // the controller's applies of the totals, by ModelCache
	bad     []string
}

func (a *applied) last(name string) (v1alpha1.NodeStatus, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	e := a.entries[name]
	if len(e) == 0 {
		return v1alpha1.NodeStatus{}, false
	}
	return e[len(e)-1], true
}

func modelCache(name string, spec v1alpha1.ModelCacheSpec) *unstructured.Unstructured {
	mc := &v1alpha1.ModelCache{TypeMeta: metav1.TypeMeta{APIVersion: v1alpha1.GroupVersion.String(), Kind: "ModelCache"},
		ObjectMeta: metav1.ObjectMeta{Namespace: "ml", Name: name}, Spec: spec}
	u, err := runtime.DefaultUnstructuredConverter.ToUnstructured(mc)
	if err != nil {
		panic(err)
	}
	return &unstructured.Unstructured{Object: u}
}

// TestModelCachesArePrewarmed: the node plugin, given a Kubernetes client, pins the model of
// each ModelCache that selects its node (by name, or by a label of its Node) through the
// resolver and the cache — two ModelCaches of one model cost one download — writes its status
// entry with server-side apply on the status subresource under its own field manager, and
// releases the pin when the ModelCache is deleted or the node's labels stop matching. The
// API server is client-go's fakes here; the real one is make e2e's.
func TestModelCachesArePrewarmed(t *testing.T) {
	srv := emu(t)
	files := genModel(t, srv, "qwen/", 4<<20)
	var size int64
	for _, b := range files {
		size += int64(len(b))
	}
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1", Labels: map[string]string{"gpu": "a100"}}}
	kube := fake.NewSimpleClientset(node)
	// The fake keeps ModelCaches unstructured, as the API server serves them.
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{prewarm.Resource: "ModelCacheList"},
		modelCache("by-name", v1alpha1.ModelCacheSpec{OSSPath: "oss://models/qwen/", NodeNames: []string{"node-1"}}),
		modelCache("by-label", v1alpha1.ModelCacheSpec{OSSPath: "oss://models/qwen/", NodeSelector: map[string]string{"gpu": "a100"}}),
		modelCache("elsewhere", v1alpha1.ModelCacheSpec{OSSPath: "oss://models/qwen/", NodeNames: []string{"node-2"}}),
	)
	got := &applied{entries: map[string][]v1alpha1.NodeStatus{}, totals: map[string]int{}}
	dyn.PrependReactor("patch", "modelcaches", func(action k8stesting.Action) (bool, runtime.Object, error) {
		p := action.(k8stesting.PatchActionImpl)
		got.mu.Lock()
		defer got.mu.Unlock()
		// The plugin runs in ModeAll: its controller part applies the totals (pkg/prewarm's
		// tests check their content).
		if p.GetSubresource() == "status" && p.GetPatchType() == types.ApplyPatchType && p.GetPatchOptions().FieldManager == prewarm.ControllerFieldManager {
			got.totals[p.GetName()]++
			return true, &unstructured.Unstructured{Object: map[string]any{"apiVersion": v1alpha1.GroupVersion.String(), "kind": "ModelCache"}}, nil
		}
		if p.GetSubresource() != "status" || p.GetPatchType() != types.ApplyPatchType || p.GetPatchOptions().FieldManager != "modelcast-node-node-1" {
			got.bad = append(got.bad, string(p.GetPatchType())+" "+p.GetSubresource()+" "+p.GetPatchOptions().FieldManager)
			return true, nil, nil
		}
		var body v1alpha1.ModelCache
		if err := json.Unmarshal(p.GetPatch(), &body); err != nil {
			got.bad = append(got.bad, err.Error())
		}
		for _, e := range body.Status.Nodes {
			got.entries[p.GetName()] = append(got.entries[p.GetName()], e)
		}
		if len(body.Status.Nodes) == 0 { // this node's entry removed
			got.entries[p.GetName()] = append(got.entries[p.GetName()], v1alpha1.NodeStatus{})
		}
		return true, &unstructured.Unstructured{Object: map[string]any{"apiVersion": v1alpha1.GroupVersion.String(), "kind": "ModelCache"}}, nil
	})
	p := startPlugin(t, inProcess{srv}, "", withKube(kube), withOptions(func(o *driver.Options) {
		o.DynamicClient = dyn
		// The node's own credentials: a ModelCache's secretRef is not read yet.
		env := map[string]string{"OSS_ENDPOINT": srv.Endpoint(), "OSS_REGION": region, "OSS_ACCESS_KEY_ID": ak, "OSS_ACCESS_KEY_SECRET": sk}
		o.Getenv = func(k string) string { return env[k] }
	}))
	store := p.d.Store()

	waitUntil := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s (pins %v)", what, store.Pins())
			}
			time.Sleep(10 * time.Millisecond) // polling with a deadline
		}
	}
	for _, name := range []string{"by-name", "by-label"} {
		waitUntil(name+" Ready", func() bool {
			e, ok := got.last(name)
			return ok && e.State == v1alpha1.NodeReady
		})
		e, _ := got.last(name)
		if e.Node != "node-1" || e.Bytes != size || e.TotalBytes != size {
			t.Errorf("%s: entry %+v, want node-1 with %d of %d bytes", name, e, size, size)
		}
		if _, ok := store.Pins()[prewarm.Holder("ml", name)]; !ok {
			t.Errorf("%s: not pinned: %v", name, store.Pins())
		}
	}
	if _, ok := store.Pins()[prewarm.Holder("ml", "elsewhere")]; ok {
		t.Error("a ModelCache for another node was pinned here")
	}
	if served := srv.Stats().BytesServed; served != size {
		t.Errorf("OSS served %d bytes, want the model once (%d)", served, size)
	}

	if err := dyn.Resource(prewarm.Resource).Namespace("ml").Delete(t.Context(), "by-name", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitUntil("by-name released", func() bool { _, ok := store.Pins()[prewarm.Holder("ml", "by-name")]; return !ok })

	node.Labels = map[string]string{"gpu": "h100"}
	if _, err := kube.CoreV1().Nodes().Update(t.Context(), node, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitUntil("by-label released", func() bool { _, ok := store.Pins()[prewarm.Holder("ml", "by-label")]; return !ok })
	waitUntil("by-label's entry removed", func() bool { e, ok := got.last("by-label"); return ok && e.State == "" })
	got.mu.Lock()
	defer got.mu.Unlock()
	if len(got.bad) > 0 {
		t.Errorf("patches that are not this node's server-side apply of the status: %q", got.bad)
	}
	if got.totals["by-name"] == 0 || got.totals["elsewhere"] == 0 {
		t.Errorf("the controller applied no totals of by-name or elsewhere: %v", got.totals)
	}
}
