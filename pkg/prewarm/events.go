package prewarm

import (
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"

	"github.com/modelcast/modelcast/internal/units"
	"github.com/modelcast/modelcast/pkg/cache"
)

// Reasons of the Events the node posts on a ModelCache; a failed staging's Warning has the
// Failed entry's reason (ReasonFor).
const (
	EventStaging  = "StagingModel"
	EventReady    = "ModelReady"
	EventReleased = "ModelReleased"
)

// Events posts Kubernetes Events (client-go's record.EventRecorder is one). Posting is
// asynchronous and best effort: an Event never fails a staging.
type Events interface {
	Event(object runtime.Object, eventtype, reason, message string)
}

type noEvents struct{}

func (noEvents) Event(runtime.Object, string, string, string) {}

// newEvents posts through client-go's event broadcaster, which aggregates repeats and
// rate-limits per object and source (the node); stop flushes and stops it.
func newEvents(kube kubernetes.Interface, node string) (Events, func()) {
	b := record.NewBroadcaster()
	b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: kube.CoreV1().Events("")})
	return b.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "modelcast", Host: node}), b.Shutdown
}

// event posts an Event on a ModelCache. Messages name the node: the Events of every node a
// ModelCache selects land on that one object.
func (r *Reconciler) event(ref *corev1.ObjectReference, warning bool, reason, message string) {
	kind := corev1.EventTypeNormal
	if warning {
		kind = corev1.EventTypeWarning
	}
	r.events.Event(ref, kind, reason, message)
}

// readyMessage says that a ModelCache's model is ready on node, how big, how long after its
// job began (the node selected, or the model changed) and where its bytes came from; or that
// it was in the node's cache already.
func readyMessage(ossPath, node string, meta cache.Meta, began, now time.Time) string {
	if !meta.StagedAt.IsZero() && meta.StagedAt.Before(began) {
		return fmt.Sprintf("Model %s ready on node %s: %s, already in the node's cache", ossPath, node, units.Bytes(meta.Size))
	}
	msg := fmt.Sprintf("Model %s ready on node %s: %s in %s", ossPath, node, units.Bytes(meta.Size), shortDuration(now.Sub(began)))
	if meta.From != "" {
		msg += " from " + meta.From
	}
	return msg + fmt.Sprintf(" (peers %s, OSS %s)", units.Bytes(meta.FromPeers), units.Bytes(meta.FromOSS))
}

// shortDuration prints d for people: 0.4s, 40s, 41.2s, 1m20s, 5m, 1h.
func shortDuration(d time.Duration) string {
	switch {
	case d < time.Minute && d%time.Second == 0:
		return fmt.Sprintf("%ds", d/time.Second)
	case d < time.Minute:
		return fmt.Sprintf("%.1fs", d.Seconds())
	}
	s := d.Round(time.Second).String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
