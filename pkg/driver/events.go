package driver

import (
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"
)

// Event reasons posted on pods.
const (
	ReasonStaging       = "StagingModel"
	ReasonProgress      = "StagingProgress"
	ReasonReady         = "ModelReady"
	ReasonStagingFailed = "StagingFailed"
	// ReasonUnchecked: OSS did not answer the model's listing, and a manifest listed before
	// (by this plugin, or kept beside the model staged on this node) is used without it.
	ReasonUnchecked = "ModelNotChecked"
	// ReasonNotAuthorized: mount authorization refused the pod's volume (no ModelCache of its
	// namespace declares the model).
	ReasonNotAuthorized = "MountNotAuthorized"
)

// Events posts Kubernetes Events on the pods volumes are published for. Posting is
// asynchronous and best effort: an Event that cannot be posted never fails a mount.
type Events interface {
	Event(pod PodRef, warning bool, reason, message string)
}

// noEvents is used without a Kubernetes client, or for volumes without pod information.
type noEvents struct{}

func (noEvents) Event(PodRef, bool, string, string) {}

// kubeEvents posts through client-go's event broadcaster (which aggregates repeats and
// rate-limits per object).
type kubeEvents struct {
	recorder    record.EventRecorder
	broadcaster record.EventBroadcaster
}

func newKubeEvents(client kubernetes.Interface, nodeID string) *kubeEvents {
	b := record.NewBroadcaster()
	b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	return &kubeEvents{
		broadcaster: b,
		recorder:    b.NewRecorder(scheme.Scheme, v1.EventSource{Component: "modelcast", Host: nodeID}),
	}
}

func (k *kubeEvents) Event(pod PodRef, warning bool, reason, message string) {
	if pod.Name == "" || pod.Namespace == "" {
		return // no podInfoOnMount: nothing to post on
	}
	kind := v1.EventTypeNormal
	if warning {
		kind = v1.EventTypeWarning
	}
	ref := &v1.ObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, Namespace: pod.Namespace, UID: types.UID(pod.UID)}
	// Without request ids, repeated failures aggregate into one Event with a count; the ids
	// are in the plugin's log.
	k.recorder.Event(ref, kind, reason, withoutRequestIDs(message))
}

// Shutdown flushes and stops the broadcaster.
func (k *kubeEvents) Shutdown() { k.broadcaster.Shutdown() }
