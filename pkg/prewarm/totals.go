package prewarm

import (
	"context"
	"fmt"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/modelcast/modelcast/internal/units"
	"github.com/modelcast/modelcast/pkg/apis/modelcast/v1alpha1"
)

// ControllerFieldManager is the field manager of the totals: the controller is their only
// writer (the nodes write only their own entries of status.nodes).
const ControllerFieldManager = "modelcast-controller"

// Reasons of the Ready condition.
const (
	ReasonAllNodesReady   = "AllNodesReady"
	ReasonNodesNotReady   = "NodesNotReady"
	ReasonNoNodesSelected = "NoNodesSelected"
)

// Summary is what the controller writes in a ModelCache's status: the totals and the Ready
// condition, and the nodes whose entries it drops because the nodes no longer exist.
type Summary struct {
	ObservedGeneration int64
	DesiredNodes       int32
	ReadyNodes         int32
	Size               int64
	Ready              metav1.Condition // LastTransitionTime: now, or the current one if unchanged
	// Gone are the nodes with an entry in status.nodes that no longer exist (sorted).
	Gone []string
}

// Summarize computes mc's totals from the nodes that exist: desired is the nodes mc selects,
// ready the Ready entries of nodes it still selects, size the largest of their totalBytes.
func Summarize(mc *v1alpha1.ModelCache, nodes []*corev1.Node, now time.Time) Summary {
	s := Summary{ObservedGeneration: mc.Generation}
	exists := map[string]bool{}
	selected := map[string]bool{}
	for _, n := range nodes {
		exists[n.Name] = true
		if Selects(mc, n.Name, n.Labels) {
			selected[n.Name] = true
			s.DesiredNodes++
		}
	}
	for _, e := range mc.Status.Nodes {
		if !exists[e.Node] {
			s.Gone = append(s.Gone, e.Node)
			continue
		}
		if selected[e.Node] && e.State == v1alpha1.NodeReady {
			s.ReadyNodes++
			s.Size = max(s.Size, e.TotalBytes)
		}
	}
	slices.Sort(s.Gone)
	cond := metav1.Condition{Type: v1alpha1.ConditionReady, ObservedGeneration: mc.Generation}
	switch {
	case s.DesiredNodes == 0:
		cond.Status, cond.Reason = metav1.ConditionFalse, ReasonNoNodesSelected
		cond.Message = "no node matches spec.nodeSelector or spec.nodeNames"
	case s.ReadyNodes == s.DesiredNodes:
		cond.Status, cond.Reason = metav1.ConditionTrue, ReasonAllNodesReady
		cond.Message = fmt.Sprintf("the model is staged on all %d selected nodes", s.DesiredNodes)
	default:
		cond.Status, cond.Reason = metav1.ConditionFalse, ReasonNodesNotReady
		cond.Message = fmt.Sprintf("the model is staged on %d of %d selected nodes", s.ReadyNodes, s.DesiredNodes)
	}
	conds := slices.Clone(mc.Status.Conditions)
	cond.LastTransitionTime = metav1.NewTime(now)
	apimeta.SetStatusCondition(&conds, cond) // keeps LastTransitionTime when Status is unchanged
	s.Ready = *apimeta.FindStatusCondition(conds, v1alpha1.ConditionReady)
	return s
}

// current says whether mc's status already shows s (nothing to apply).
func (s Summary) current(mc *v1alpha1.ModelCache) bool {
	st := mc.Status
	c := apimeta.FindStatusCondition(st.Conditions, v1alpha1.ConditionReady)
	return len(s.Gone) == 0 && st.ObservedGeneration == s.ObservedGeneration && st.DesiredNodes == s.DesiredNodes &&
		st.ReadyNodes == s.ReadyNodes && st.Size == s.Size && st.SizeText == sizeText(s.Size) && c != nil &&
		c.Status == s.Ready.Status && c.Reason == s.Ready.Reason && c.Message == s.Ready.Message &&
		c.ObservedGeneration == s.Ready.ObservedGeneration && c.LastTransitionTime.Equal(&s.Ready.LastTransitionTime)
}

func sizeText(size int64) string {
	if size == 0 {
		return ""
	}
	return units.Bytes(size)
}

// Totals is the single writer of ModelCaches' totals: it applies them (server-side apply on the
// status subresource, field manager modelcast-controller) without touching status.nodes, and
// drops the entries of deleted nodes.
type Totals struct {
	client dynamic.Interface
	clock  clock.PassiveClock
}

// NewTotals returns the totals' writer; clk nil is the real clock.
func NewTotals(client dynamic.Interface, clk clock.PassiveClock) *Totals {
	if clk == nil {
		clk = clock.RealClock{}
	}
	return &Totals{client: client, clock: clk}
}

// Reconcile writes mc's totals from nodes, the nodes that exist, unless its status shows them.
func (t *Totals) Reconcile(ctx context.Context, mc *v1alpha1.ModelCache, nodes []*corev1.Node) error {
	s := Summarize(mc, nodes, t.clock.Now())
	if s.current(mc) {
		return nil
	}
	// A deleted node cannot remove its entry: apply, as its manager, no entry, which drops the
	// entry that manager alone owned (as the node itself does when unselected).
	for _, node := range s.Gone {
		if err := NewApplier(t.client, node).Remove(ctx, mc.Namespace, mc.Name); err != nil {
			return fmt.Errorf("remove the entry of deleted node %s: %w", node, err)
		}
		klog.V(2).InfoS("Removed a deleted node's status entry", "modelCache", klog.KObj(mc), "node", node)
	}
	cond, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&s.Ready)
	if err != nil {
		return fmt.Errorf("status of modelcache %s/%s: %w", mc.Namespace, mc.Name, err)
	}
	status := map[string]any{
		"observedGeneration": s.ObservedGeneration,
		"desiredNodes":       int64(s.DesiredNodes),
		"readyNodes":         int64(s.ReadyNodes),
		"conditions":         []any{cond},
	}
	if s.Size > 0 {
		status["size"], status["sizeText"] = s.Size, sizeText(s.Size)
	}
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": v1alpha1.GroupVersion.String(),
		"kind":       "ModelCache",
		"metadata":   map[string]any{"name": mc.Name, "namespace": mc.Namespace},
		"status":     status,
	}}
	_, err = t.client.Resource(Resource).Namespace(mc.Namespace).Apply(ctx, mc.Name, obj,
		metav1.ApplyOptions{FieldManager: ControllerFieldManager, Force: true}, "status")
	if apierrors.IsNotFound(err) {
		return nil // deleted meanwhile
	}
	if err != nil {
		return fmt.Errorf("apply totals of modelcache %s/%s: %w", mc.Namespace, mc.Name, err)
	}
	klog.V(2).InfoS("Wrote a ModelCache's totals", "modelCache", klog.KObj(mc), "desired", s.DesiredNodes, "ready", s.ReadyNodes, "size", s.Size)
	return nil
}

// totalsRetry is the wait before writing totals again after a failure.
const totalsRetry = 30 * time.Second

// RunTotals watches the ModelCaches (all namespaces) and the Nodes until ctx ends, writing
// every ModelCache's totals when either changes (and again after a failed write).
func RunTotals(ctx context.Context, kube kubernetes.Interface, dyn dynamic.Interface, clk clock.WithTicker) error {
	if clk == nil {
		clk = clock.RealClock{}
	}
	w, err := watch(ctx, kube, dyn, "")
	if err != nil || w == nil {
		return err
	}
	defer w.stop()
	klog.InfoS("Writing ModelCaches' totals")
	t := NewTotals(dyn, clk)
	for {
		nodes := w.nodeList()
		failed := false
		for _, mc := range w.caches() {
			wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			err = t.Reconcile(wctx, mc, nodes)
			cancel()
			if err != nil && ctx.Err() == nil {
				klog.ErrorS(err, "Could not write a ModelCache's totals", "modelCache", klog.KObj(mc))
				failed = true
			}
		}
		var retry <-chan time.Time
		if failed {
			retry = clk.After(totalsRetry)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-w.changed:
		case <-retry:
		}
	}
}
