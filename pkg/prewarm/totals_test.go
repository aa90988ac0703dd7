package prewarm_test

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
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
	kubefake "k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/modelcast/modelcast/pkg/apis/modelcast/v1alpha1"
	"github.com/modelcast/modelcast/pkg/prewarm"
)

func node(name string, labels map[string]string) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
}

func entry(node string, state v1alpha1.NodeState, total int64) v1alpha1.NodeStatus {
	return v1alpha1.NodeStatus{Node: node, State: state, TotalBytes: total}
}

func TestSummarize(t *testing.T) {
	gpu := map[string]string{"gpu": "a100"}
	nodes := []*corev1.Node{node("n1", gpu), node("n2", gpu), node("n3", nil)}
	now := time.Date(2026, 12, 1, 3, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name           string
		mc             *v1alpha1.ModelCache
		entries        []v1alpha1.NodeStatus
		desired, ready int32
		size           int64
		status         metav1.ConditionStatus
		reason         string
		gone           []string
	}{
		{name: "selector, none ready", mc: mc("a", nil, gpu), entries: []v1alpha1.NodeStatus{entry("n1", v1alpha1.NodeStaging, 10)},
			desired: 2, status: metav1.ConditionFalse, reason: prewarm.ReasonNodesNotReady},
		{name: "selector and names, some ready", mc: mc("a", []string{"n3"}, gpu),
			entries: []v1alpha1.NodeStatus{entry("n1", v1alpha1.NodeReady, 10), entry("n2", v1alpha1.NodeFailed, 0), entry("n3", v1alpha1.NodeReady, 10)},
			desired: 3, ready: 2, size: 10, status: metav1.ConditionFalse, reason: prewarm.ReasonNodesNotReady},
		{name: "all ready", mc: mc("a", []string{"n1"}, nil), entries: []v1alpha1.NodeStatus{entry("n1", v1alpha1.NodeReady, 5<<30)},
			desired: 1, ready: 1, size: 5 << 30, status: metav1.ConditionTrue, reason: prewarm.ReasonAllNodesReady},
		{name: "an unselected node's Ready entry does not count", mc: mc("a", []string{"n1"}, nil),
			entries: []v1alpha1.NodeStatus{entry("n1", v1alpha1.NodeReady, 7), entry("n3", v1alpha1.NodeReady, 9)},
			desired: 1, ready: 1, size: 7, status: metav1.ConditionTrue, reason: prewarm.ReasonAllNodesReady},
		{name: "size is the largest Ready entry's", mc: mc("a", nil, gpu),
			entries: []v1alpha1.NodeStatus{entry("n1", v1alpha1.NodeReady, 7), entry("n2", v1alpha1.NodeReady, 9)},
			desired: 2, ready: 2, size: 9, status: metav1.ConditionTrue, reason: prewarm.ReasonAllNodesReady},
		{name: "deleted nodes: not desired, not ready, their entries gone", mc: mc("a", []string{"n1", "n9", "n8"}, nil),
			entries: []v1alpha1.NodeStatus{entry("n9", v1alpha1.NodeReady, 7), entry("n1", v1alpha1.NodeReady, 7), entry("n8", v1alpha1.NodePending, 0)},
			desired: 1, ready: 1, size: 7, status: metav1.ConditionTrue, reason: prewarm.ReasonAllNodesReady, gone: []string{"n8", "n9"}},
		{name: "no node selected", mc: mc("a", nil, map[string]string{"gpu": "h100"}),
			status: metav1.ConditionFalse, reason: prewarm.ReasonNoNodesSelected},
		{name: "only a deleted node named", mc: mc("a", []string{"n9"}, nil), entries: []v1alpha1.NodeStatus{entry("n9", v1alpha1.NodeReady, 7)},
			status: metav1.ConditionFalse, reason: prewarm.ReasonNoNodesSelected, gone: []string{"n9"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.mc.Generation = 4
			tc.mc.Status.Nodes = tc.entries
			s := prewarm.Summarize(tc.mc, nodes, now)
			if s.DesiredNodes != tc.desired || s.ReadyNodes != tc.ready || s.Size != tc.size || s.ObservedGeneration != 4 {
				t.Errorf("desired %d ready %d size %d generation %d, want %d %d %d 4", s.DesiredNodes, s.ReadyNodes, s.Size, s.ObservedGeneration, tc.desired, tc.ready, tc.size)
			}
			if s.Ready.Type != v1alpha1.ConditionReady || s.Ready.Status != tc.status || s.Ready.Reason != tc.reason || s.Ready.ObservedGeneration != 4 || !s.Ready.LastTransitionTime.Time.Equal(now) {
				t.Errorf("condition %+v, want %s %s at %v", s.Ready, tc.status, tc.reason, now)
			}
			if !slices.Equal(s.Gone, tc.gone) {
				t.Errorf("gone %v, want %v", s.Gone, tc.gone)
			}
		})
	}
}

func TestSummarizeKeepsTransitionTime(t *testing.T) {
	then := metav1.NewTime(time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC))
	now := then.Add(time.Hour)
	m := mc("a", []string{"n1"}, nil)
	m.Status.Nodes = []v1alpha1.NodeStatus{entry("n1", v1alpha1.NodeReady, 7)}
	m.Status.Conditions = []metav1.Condition{{Type: v1alpha1.ConditionReady, Status: metav1.ConditionTrue, Reason: prewarm.ReasonAllNodesReady, LastTransitionTime: then}}
	if s := prewarm.Summarize(m, []*corev1.Node{node("n1", nil)}, now); !s.Ready.LastTransitionTime.Equal(&then) {
		t.Errorf("unchanged Ready: transition %v, want %v", s.Ready.LastTransitionTime, then)
	}
	m.Status.Nodes[0].State = v1alpha1.NodeStaging
	if s := prewarm.Summarize(m, []*corev1.Node{node("n1", nil)}, now); !s.Ready.LastTransitionTime.Time.Equal(now) || s.Ready.Status != metav1.ConditionFalse {
		t.Errorf("Ready turned False: %+v, want a transition at %v", s.Ready, now)
	}
}

type patch struct {
	name, manager, subresource string
	patchType                  types.PatchType
	force                      bool
	body                       map[string]any
}

// TestTotalsApply checks the patches against client-go's fake dynamic client: the totals are
// applied on the status subresource as modelcast-controller without status.nodes, a deleted
// node's entry is dropped by applying no entry as that node's manager, and a status that
// already shows the totals is not written again.
func TestTotalsApply(t *testing.T) {
	m := mc("qwen", []string{"n1", "gone"}, nil)
	m.Namespace, m.Generation = "serving", 3
	m.Status.Nodes = []v1alpha1.NodeStatus{entry("n1", v1alpha1.NodeReady, 1500000), entry("gone", v1alpha1.NodeReady, 1500000)}
	u, err := runtime.DefaultUnstructuredConverter.ToUnstructured(m)
	if err != nil {
		t.Fatal(err)
	}
	obj := &unstructured.Unstructured{Object: u}
	obj.SetAPIVersion(v1alpha1.GroupVersion.String())
	obj.SetKind("ModelCache")
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{prewarm.Resource: "ModelCacheList"}, obj)
	var mu sync.Mutex
	var got []patch
	dyn.PrependReactor("patch", "modelcaches", func(action k8stesting.Action) (bool, runtime.Object, error) {
		p := action.(k8stesting.PatchActionImpl)
		var body map[string]any
		if err := json.Unmarshal(p.GetPatch(), &body); err != nil {
			t.Errorf("patch body: %v", err)
		}
		force := p.GetPatchOptions().Force != nil && *p.GetPatchOptions().Force
		mu.Lock()
		got = append(got, patch{p.GetName(), p.GetPatchOptions().FieldManager, p.GetSubresource(), p.GetPatchType(), force, body})
		mu.Unlock()
		return true, obj, nil
	})
	now := time.Date(2026, 12, 1, 3, 0, 0, 0, time.UTC)
	tot := prewarm.NewTotals(dyn, clocktesting.NewFakePassiveClock(now))
	if err := tot.Reconcile(context.Background(), m, []*corev1.Node{node("n1", nil)}); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("%d patches, want 2: %+v", len(got), got)
	}
	rm := got[0]
	if rm.name != "qwen" || rm.manager != prewarm.FieldManager("gone") || rm.subresource != "status" || rm.patchType != types.ApplyPatchType {
		t.Errorf("removal %+v, want an apply of status as %s", rm, prewarm.FieldManager("gone"))
	}
	if st, _ := rm.body["status"].(map[string]any); len(st) != 0 {
		t.Errorf("removal applies status %v, want none", st)
	}
	ap := got[1]
	if ap.name != "qwen" || ap.manager != prewarm.ControllerFieldManager || ap.subresource != "status" || ap.patchType != types.ApplyPatchType || !ap.force {
		t.Errorf("totals %+v, want a forced apply of status as %s", ap, prewarm.ControllerFieldManager)
	}
	var body v1alpha1.ModelCache
	raw, _ := json.Marshal(ap.body)
	if err := json.Unmarshal(raw, &body); err != nil {
		t.Fatal(err)
	}
	st := body.Status
	if st.Nodes != nil || body.Spec.OSSPath != "" {
		t.Errorf("totals touch nodes or spec: %s", raw)
	}
	if body.Kind != "ModelCache" || body.APIVersion != v1alpha1.GroupVersion.String() || body.Namespace != "serving" || body.Name != "qwen" {
		t.Errorf("totals identify %s %s %s/%s", body.APIVersion, body.Kind, body.Namespace, body.Name)
	}
	if st.DesiredNodes != 1 || st.ReadyNodes != 1 || st.Size != 1500000 || st.SizeText != "1.5 MB" || st.ObservedGeneration != 3 {
		t.Errorf("totals %s", raw)
	}
	if len(st.Conditions) != 1 || st.Conditions[0].Type != "Ready" || st.Conditions[0].Status != metav1.ConditionTrue ||
		st.Conditions[0].Reason != prewarm.ReasonAllNodesReady || !st.Conditions[0].LastTransitionTime.Time.Equal(now) {
		t.Errorf("conditions %+v", st.Conditions)
	}
	// desiredNodes and readyNodes are written when zero.
	if _, ok := ap.body["status"].(map[string]any)["readyNodes"]; !ok {
		t.Errorf("readyNodes missing from %s", raw)
	}

	// The status now shows the totals, and the deleted node's entry is gone: nothing to write.
	m.Status = body.Status
	m.Status.Nodes = []v1alpha1.NodeStatus{entry("n1", v1alpha1.NodeReady, 1500000)}
	got = nil
	if err := tot.Reconcile(context.Background(), m, []*corev1.Node{node("n1", nil)}); err != nil {
		t.Fatal(err)
	}
	if len(got) != 0 {
		t.Errorf("current totals written again: %+v", got)
	}
	// n1 loses the model: written again, NodesNotReady, without size.
	m.Status.Nodes[0].State = v1alpha1.NodeStaging
	if err := tot.Reconcile(context.Background(), m, []*corev1.Node{node("n1", nil)}); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 {
		t.Fatalf("%d patches, want 1", len(got))
	}
	st2 := got[0].body["status"].(map[string]any)
	if st2["readyNodes"] != float64(0) || st2["size"] != nil || st2["conditions"].([]any)[0].(map[string]any)["reason"] != prewarm.ReasonNodesNotReady {
		t.Errorf("totals %v", st2)
	}
}

// TestRunTotals runs the informers' loop against the fake clients until the totals are applied,
// then stops it.
func TestRunTotals(t *testing.T) {
	m := mc("qwen", []string{"n1"}, nil)
	m.Namespace = "serving"
	u, err := runtime.DefaultUnstructuredConverter.ToUnstructured(m)
	if err != nil {
		t.Fatal(err)
	}
	obj := &unstructured.Unstructured{Object: u}
	obj.SetAPIVersion(v1alpha1.GroupVersion.String())
	obj.SetKind("ModelCache")
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{prewarm.Resource: "ModelCacheList"}, obj)
	applied := make(chan string, 10)
	dyn.PrependReactor("patch", "modelcaches", func(action k8stesting.Action) (bool, runtime.Object, error) {
		p := action.(k8stesting.PatchActionImpl)
		select {
		case applied <- p.GetPatchOptions().FieldManager + " " + string(p.GetPatch()):
		default:
		}
		return true, obj, nil
	})
	kube := kubefake.NewSimpleClientset(node("n1", nil))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- prewarm.RunTotals(ctx, kube, dyn, nil) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	select {
	case p := <-applied:
		if !strings.HasPrefix(p, prewarm.ControllerFieldManager+" ") || !strings.Contains(p, `"desiredNodes":1`) || !strings.Contains(p, prewarm.ReasonNodesNotReady) {
			t.Errorf("applied %s", p)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no totals applied within 10s")
	}
}
