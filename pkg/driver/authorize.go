package driver

import (
	"fmt"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/modelcast/modelcast/pkg/ossclient"
)

// mountAuthorizer is the opt-in mount authorization (Options.AuthorizeMounts): a pod mounts
// only a model that a ModelCache of its own namespace declares, whether or not that ModelCache
// selects this node. What the namespace may read is the data, so the model is its OSS path and
// its endpoint, both normalized as a publish normalizes them; region, tenant, broadcast and
// secretRef say how the bytes are fetched and shared, not which, and do not count (a region
// matters only where it names the endpoint: when neither the volume nor the node sets one).
//
// It reads the ModelCaches from the informer the driver shares with the pre-warm watcher:
// no API call per publish.
type mountAuthorizer struct {
	modelCaches toolscache.SharedIndexInformer
	// endpoint is the normalized endpoint of a model (resolver.modelEndpoint): "" in a spec is
	// the node's default.
	endpoint   func(VolumeSpec) (string, error)
	events     Events
	driverName string
}

// authorize returns nil when spec's pod may mount spec's model; else an errNotAuthorized
// (PermissionDenied) that says what to do, with a Warning Event on the pod, or errNotReady
// (Unavailable: kubelet retries) until the ModelCaches have been listed once.
func (a *mountAuthorizer) authorize(spec VolumeSpec) error {
	ns := spec.Pod.Namespace
	if ns == "" {
		// No pod to post an Event on: the message is the pod's FailedMount Event.
		return fmt.Errorf("%w: this node plugin authorizes mounts (--authorize-mounts) by the pod's namespace, and the volume context has none (%s): "+
			"kubelet passes it only when the CSIDriver %s sets podInfoOnMount: true; set it (the chart does)", errNotAuthorized, podNamespaceKey, a.driverName)
	}
	if !a.modelCaches.HasSynced() {
		return fmt.Errorf("%w: mount authorization is waiting for the ModelCache list from the API server; kubelet retries", errNotReady)
	}
	endpoint, err := a.endpoint(spec)
	if err != nil {
		return err
	}
	objs, err := a.modelCaches.GetIndexer().ByIndex(toolscache.NamespaceIndex, ns)
	if err != nil {
		return fmt.Errorf("modelcaches of namespace %q: %w", ns, err)
	}
	var elsewhere []string // ModelCaches of this path from another endpoint
	for _, obj := range objs {
		u, ok := obj.(*unstructured.Unstructured)
		if !ok {
			continue
		}
		path, _, _ := unstructured.NestedString(u.Object, "spec", "ossPath")
		mcEndpoint, _, _ := unstructured.NestedString(u.Object, "spec", "endpoint")
		region, _, _ := unstructured.NestedString(u.Object, "spec", "region")
		uri, err := ossclient.ParseURI(strings.TrimSpace(path))
		if err != nil || uri != spec.URI {
			continue
		}
		ep, err := a.endpoint(VolumeSpec{URI: uri, Endpoint: strings.TrimSpace(mcEndpoint), Region: strings.TrimSpace(region)})
		if err != nil {
			klog.V(2).InfoS("Mount authorization ignores a ModelCache whose endpoint is not valid", "modelCache", klog.KObj(u), "err", err)
			continue
		}
		if ep == endpoint {
			return nil
		}
		elsewhere = append(elsewhere, fmt.Sprintf("%q from %s", u.GetName(), ep))
	}
	detail := fmt.Sprintf("namespace %q may not mount %s from %s: mount authorization is on and no ModelCache in %q declares this model; "+
		"create one with spec.ossPath %s (kubectl get modelcaches -n %s)", ns, spec.URI, endpoint, ns, spec.URI, ns)
	if len(elsewhere) > 0 {
		slices.Sort(elsewhere)
		detail = fmt.Sprintf("namespace %q may not mount %s from %s: mount authorization is on and the ModelCaches in %q declare this model only from "+
			"another endpoint (%s); make the volume's endpoint and a ModelCache's the same (empty is the node plugin's OSS_ENDPOINT) "+
			"(kubectl get modelcaches -n %s)", ns, spec.URI, endpoint, ns, strings.Join(elsewhere, ", "), ns)
	}
	a.events.Event(spec.Pod, true, ReasonNotAuthorized, "Not mounted: "+detail)
	return fmt.Errorf("%w: %s", errNotAuthorized, detail)
}
