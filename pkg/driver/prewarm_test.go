package driver_test

import (
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/modelcast/modelcast/pkg/apis/modelcast/v1alpha1"
	"github.com/modelcast/modelcast/pkg/cache"
	"github.com/modelcast/modelcast/pkg/driver"
	"github.com/modelcast/modelcast/pkg/prewarm"
	"github.com/modelcast/modelcast/test/ossemu"
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
		ObjectMeta: metav1.ObjectMeta{Namespace: "ml", Name: name, UID: types.UID("uid-" + name)}, Spec: spec}
	u, err := runtime.DefaultUnstructuredConverter.ToUnstructured(mc)
	if err != nil {
		panic(err)
	}
	return &unstructured.Unstructured{Object: u}
}

// recordApplies records the node's applies of its status entries (and counts the controller's
// startPrewarming starts a node plugin on node-1 watching dyn's ModelCaches, with the node's
// own OSS credentials in its environment, and returns its cache; a failed test logs the pins.
func startPrewarming(t *testing.T, srv *ossemu.Server, kube *fake.Clientset, dyn *dynamicfake.FakeDynamicClient) *cache.Store {
	t.Helper()
	p := startPlugin(t, inProcess{srv}, "", withKube(kube), withOptions(func(o *driver.Options) {
		o.DynamicClient = dyn
		env := map[string]string{"OSS_ENDPOINT": srv.Endpoint(), "OSS_REGION": region, "OSS_ACCESS_KEY_ID": ak, "OSS_ACCESS_KEY_SECRET": sk}
		o.Getenv = func(k string) string { return env[k] }
	}))
	store := p.d.Store()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("the cache's pins: %v", store.Pins())
		}
	})
	return store
}

// applies of the totals) through dyn.
func recordApplies(dyn *dynamicfake.FakeDynamicClient) *applied {
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
	return got
}

// modelCacheEvents returns the Events the fake API server holds on ModelCaches of ml, as
// "name reason type message", once check accepts them (or the deadline passes), after checking
// that every one is on a ModelCache (kind, apiVersion, UID) and posted by node-1.
func modelCacheEvents(t *testing.T, kube *fake.Clientset, check func([]string) bool) []string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		list, err := kube.CoreV1().Events("ml").List(t.Context(), metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, ev := range list.Items {
			o := ev.InvolvedObject
			if o.Kind != "ModelCache" || o.APIVersion != v1alpha1.GroupVersion.String() || o.Namespace != "ml" || o.UID != types.UID("uid-"+o.Name) ||
				ev.Source.Host != "node-1" || ev.Source.Component != "modelcast" {
				t.Fatalf("an Event not on a ModelCache of ml from node-1: %+v %+v", o, ev.Source)
			}
			got = append(got, o.Name+" "+ev.Reason+" "+ev.Type+" "+ev.Message)
		}
		slices.Sort(got)
		if check(got) || time.Now().After(deadline) {
			return got
		}
		time.Sleep(10 * time.Millisecond) // polling with a deadline
	}
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
	got := recordApplies(dyn)
	store := startPrewarming(t, srv, kube, dyn)

	for _, name := range []string{"by-name", "by-label"} {
		waitUntil(t, name+" Ready", func() bool {
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
	waitUntil(t, "by-name released", func() bool { _, ok := store.Pins()[prewarm.Holder("ml", "by-name")]; return !ok })

	node.Labels = map[string]string{"gpu": "h100"}
	if _, err := kube.CoreV1().Nodes().Update(t.Context(), node, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "by-label released", func() bool { _, ok := store.Pins()[prewarm.Holder("ml", "by-label")]; return !ok })
	waitUntil(t, "by-label's entry removed", func() bool { e, ok := got.last("by-label"); return ok && e.State == "" })

	// The node's Events reach the API server on the ModelCaches: staging and ready on both,
	// released on the one whose selector stopped matching, nothing on the deleted one's
	// deletion nor on the one for another node.
	events := modelCacheEvents(t, kube, func(evs []string) bool { return len(evs) >= 5 })
	wantPrefixes := []string{
		"by-label ModelReady Normal Model oss://models/qwen/ ready on node node-1: 4.2 MB",
		"by-label ModelReleased Normal Released oss://models/qwen/ on node node-1: the ModelCache no longer selects the node",
		"by-label StagingModel Normal Staging oss://models/qwen/ on node node-1",
		"by-name ModelReady Normal Model oss://models/qwen/ ready on node node-1: 4.2 MB",
		"by-name StagingModel Normal Staging oss://models/qwen/ on node node-1",
	}
	if len(events) != len(wantPrefixes) {
		t.Errorf("events %q, want %d", events, len(wantPrefixes))
	} else {
		for i, w := range wantPrefixes {
			if !strings.HasPrefix(events[i], w) {
				t.Errorf("event %q, want %q…", events[i], w)
			}
		}
	}
	got.mu.Lock()
	defer got.mu.Unlock()
	if len(got.bad) > 0 {
		t.Errorf("patches that are not this node's server-side apply of the status: %q", got.bad)
	}
	if got.totals["by-name"] == 0 || got.totals["elsewhere"] == 0 {
		t.Errorf("the controller applied no totals of by-name or elsewhere: %v", got.totals)
	}
}

// TestModelCacheSecretRef: a ModelCache's secretRef is read with the node's Kubernetes client
// (a get in the ModelCache's namespace) and its credentials resolve and stage the model as a
// volume's nodePublishSecretRef does. The node's own credentials, valid here, are never used in
// the secret's place: a secret OSS refuses, one without credentials, one with unknown keys, a
// missing one and one the node may not read are Failed entries naming the secret, the access
// key masked, and never a secret value.
func TestModelCacheSecretRef(t *testing.T) {
	srv := emu(t)
	files := genModel(t, srv, "qwen/", 2<<20)
	var size int64
	for _, b := range files {
		size += int64(len(b))
	}
	sec := func(name string, data map[string]string) *corev1.Secret {
		s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "ml", Name: name}, Data: map[string][]byte{}}
		for k, v := range data {
			s.Data[k] = []byte(v)
		}
		return s
	}
	const wrongSecret = "modelcache-wrong-secret-value"
	kube := fake.NewSimpleClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1"}},
		sec("oss", map[string]string{"akId": ak, "akSecret": sk}),
		sec("wrong", map[string]string{"akId": ak, "akSecret": wrongSecret}),
		sec("empty", nil),
		sec("misspelt", map[string]string{"accessKeyId": ak, "akSecret": sk}),
		sec("locked", map[string]string{"akId": ak, "akSecret": sk}),
	)
	// The API server's answer for a namespace outside modelCache.secretNamespaces.
	kube.PrependReactor("get", "secrets", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if name := a.(k8stesting.GetAction).GetName(); name == "locked" {
			return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "secrets"}, name,
				errors.New(`User "system:serviceaccount:kube-system:modelcast-node" cannot get resource "secrets" in API group "" in the namespace "ml"`))
		}
		return false, nil, nil
	})
	spec := func(secret string) v1alpha1.ModelCacheSpec {
		return v1alpha1.ModelCacheSpec{OSSPath: "oss://models/qwen/", NodeNames: []string{"node-1"}, SecretRef: &v1alpha1.SecretReference{Name: secret}}
	}
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{prewarm.Resource: "ModelCacheList"},
		modelCache("with-secret", spec("oss")),
		modelCache("refused", spec("wrong")),
		modelCache("empty", spec("empty")),
		modelCache("misspelt", spec("misspelt")),
		modelCache("missing", spec("nope")),
		modelCache("locked", spec("locked")),
	)
	got := recordApplies(dyn)
	store := startPrewarming(t, srv, kube, dyn)
	final := func(name string) (e v1alpha1.NodeStatus) {
		t.Helper()
		waitUntil(t, name+" Ready or Failed", func() bool {
			var ok bool
			e, ok = got.last(name)
			return ok && (e.State == v1alpha1.NodeReady || e.State == v1alpha1.NodeFailed)
		})
		return e
	}
	if e := final("with-secret"); e.State != v1alpha1.NodeReady || e.Bytes != size {
		t.Errorf("with-secret: %+v, want Ready with %d bytes", e, size)
	}
	if _, ok := store.Pins()[prewarm.Holder("ml", "with-secret")]; !ok {
		t.Errorf("with-secret is not pinned: %v", store.Pins())
	}
	for _, tc := range []struct {
		name, reason string
		want         []string
	}{
		{"refused", "AccessDenied", []string{"the credentials of the ModelCache's secret ml/wrong (spec.secretRef), access key LTAI…tKey, were refused by OSS: "}},
		{"empty", prewarm.ReasonInvalidSecret, []string{"the ModelCache's secret ml/empty (spec.secretRef) holds no credentials: it needs akId or OSS_ACCESS_KEY_ID and akSecret"}},
		{"misspelt", prewarm.ReasonInvalidSecret, []string{"the ModelCache's secret ml/misspelt (spec.secretRef) has unknown key(s) accessKeyId; known: akId"}},
		{"missing", prewarm.ReasonSecretNotFound, []string{"secret ml/nope (spec.secretRef) does not exist"}},
		{"locked", prewarm.ReasonSecretForbidden, []string{"the node plugin is not allowed to read Secrets in namespace ml", "modelCache.secretNamespaces"}},
	} {
		e := final(tc.name)
		if e.State != v1alpha1.NodeFailed || e.Reason != tc.reason {
			t.Errorf("%s: %+v, want Failed with reason %s", tc.name, e, tc.reason)
		}
		for _, w := range tc.want {
			if !strings.Contains(e.Message, w) {
				t.Errorf("%s: message %q lacks %q", tc.name, e.Message, w)
			}
		}
		for _, secret := range []string{sk, wrongSecret} {
			if strings.Contains(e.Message, secret) {
				t.Errorf("%s: a secret value in the message %q", tc.name, e.Message)
			}
		}
		if _, ok := store.Pins()[prewarm.Holder("ml", tc.name)]; ok {
			t.Errorf("%s is pinned: the node's own credentials were used in its secret's place", tc.name)
		}
	}
	// Each failure is a Warning Event with its reason and the node; no secret value in any.
	events := modelCacheEvents(t, kube, func(evs []string) bool { return len(evs) >= 12 })
	for _, tc := range []struct{ name, reason string }{
		{"refused", "AccessDenied"}, {"empty", prewarm.ReasonInvalidSecret}, {"misspelt", prewarm.ReasonInvalidSecret},
		{"missing", prewarm.ReasonSecretNotFound}, {"locked", prewarm.ReasonSecretForbidden},
	} {
		prefix := tc.name + " " + tc.reason + " Warning Staging oss://models/qwen/ on node node-1 failed: "
		if !slices.ContainsFunc(events, func(ev string) bool { return strings.HasPrefix(ev, prefix) }) {
			t.Errorf("no Event %q… in %q", prefix, events)
		}
	}
	if !slices.ContainsFunc(events, func(ev string) bool {
		return strings.HasPrefix(ev, "with-secret StagingModel Normal Staging oss://models/qwen/ on node node-1 with the credentials of secret ml/oss")
	}) {
		t.Errorf("no StagingModel Event naming with-secret's secret in %q", events)
	}
	for _, ev := range events {
		if strings.Contains(ev, sk) || strings.Contains(ev, wrongSecret) || strings.Contains(ev, "request id") {
			t.Errorf("a secret value or an OSS request id in the Event %q", ev)
		}
	}
	for _, a := range kube.Actions() {
		if a.GetResource().Resource == "secrets" && (a.GetVerb() != "get" || a.GetNamespace() != "ml") {
			t.Errorf("a request on Secrets other than a get in the ModelCaches' namespace: %s %s", a.GetVerb(), a.GetNamespace())
		}
	}
}
