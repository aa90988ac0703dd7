package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ModelCache stages a model on the nodes it selects before the pods that use it land there,
// through the same cache and broadcast chain as a volume (N nodes pre-warm with one OSS
// stream), and keeps it pinned on them (never expired, never evicted) while it selects them.
// Deleting it, or a node no longer matching, releases the model on that node: it then expires
// like a model whose last pod left.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Namespaced,categories=modelcast
// +kubebuilder:printcolumn:name="Model",type=string,JSONPath=`.spec.ossPath`
// +kubebuilder:printcolumn:name="Ready",type=integer,JSONPath=`.status.readyNodes`
// +kubebuilder:printcolumn:name="Desired",type=integer,JSONPath=`.status.desiredNodes`
// +kubebuilder:printcolumn:name="Size",type=string,JSONPath=`.status.sizeText`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type ModelCache struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// Spec is the model and the nodes to stage it on.
	// +required
	Spec ModelCacheSpec `json:"spec"`
	// Status is the model's state on each selected node, and in total.
	// +optional
	Status ModelCacheStatus `json:"status,omitempty"`
}

// ModelCacheSpec is the model (the attributes a volume takes), its credentials and where to
// stage it: on the nodes whose labels match NodeSelector, and on those named in NodeNames.
//
// +kubebuilder:validation:XValidation:rule="(has(self.nodeSelector) && size(self.nodeSelector) > 0) || (has(self.nodeNames) && size(self.nodeNames) > 0)",message="choose the nodes to stage the model on: spec.nodeSelector (labels) or spec.nodeNames, or both"
type ModelCacheSpec struct {
	// OSSPath is the model: oss://bucket/prefix/ (a prefix is always a directory), as a
	// volume's ossPath attribute.
	// +required
	// +kubebuilder:validation:Pattern=`^oss://[a-z0-9][a-z0-9-]{1,61}[a-z0-9](/.*)?$`
	OSSPath string `json:"ossPath"`
	// Endpoint is the OSS endpoint, e.g. oss-cn-beijing-internal.aliyuncs.com (https unless a
	// scheme is given); default: the node plugin's OSS_ENDPOINT.
	// +optional
	Endpoint string `json:"endpoint,omitempty"`
	// Region is the OSS region, e.g. cn-beijing; default: the node plugin's OSS_REGION, or
	// derived from an *.aliyuncs.com endpoint.
	// +optional
	Region string `json:"region,omitempty"`
	// Tenant is the broadcast tenant (default: the node plugin's broadcast.tenant): nodes of
	// one tenant share models.
	// +optional
	Tenant string `json:"tenant,omitempty"`
	// Broadcast says whether to stage the model through the broadcast chain (default: the
	// node plugin's broadcast.enableBroadcast).
	// +optional
	Broadcast *bool `json:"broadcast,omitempty"`
	// SecretRef names a Secret in the ModelCache's namespace with the OSS credentials, with
	// the keys a volume's nodePublishSecretRef takes (akId, akSecret, securityToken, or OSS
	// Connector's OSS_ACCESS_KEY_ID, OSS_ACCESS_KEY_SECRET, OSS_SESSION_TOKEN). The node
	// plugin reads it only in the namespaces the chart's modelCache.secretNamespaces lists
	// (elsewhere the nodes report SecretForbidden), and never uses its own credentials in its
	// place. Without it, the node plugin's own credentials, else anonymous access.
	// +optional
	SecretRef *SecretReference `json:"secretRef,omitempty"`
	// NodeSelector selects the nodes whose labels include all of these.
	// +optional
	NodeSelector map[string]string `json:"nodeSelector,omitempty"`
	// NodeNames names nodes to stage the model on, besides those NodeSelector selects.
	// +optional
	// +listType=set
	// +kubebuilder:validation:items:MinLength=1
	NodeNames []string `json:"nodeNames,omitempty"`
}

// SecretReference names a Secret in the namespace of the object that holds the reference.
// +structType=atomic
type SecretReference struct {
	// Name of the Secret.
	// +required
	// +kubebuilder:validation:MinLength=1
	Name string `json:"name"`
}

// ModelCacheStatus is the model's state on each selected node, and in total. Each node writes
// its own entry of Nodes with server-side apply, under a field manager of its own.
type ModelCacheStatus struct {
	// ObservedGeneration is the generation of the spec the totals describe.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// DesiredNodes is how many nodes the ModelCache selects.
	// +optional
	DesiredNodes int32 `json:"desiredNodes"`
	// ReadyNodes is how many of them have the model staged.
	// +optional
	ReadyNodes int32 `json:"readyNodes"`
	// Size is the model's size in bytes.
	// +optional
	Size int64 `json:"size,omitempty"`
	// SizeText is Size for people ("135.4 GB"): what `kubectl get modelcaches` shows.
	// +optional
	SizeText string `json:"sizeText,omitempty"`
	// Nodes is the model's state on each node, one entry per node, keyed by its name.
	// +optional
	// +listType=map
	// +listMapKey=node
	Nodes []NodeStatus `json:"nodes,omitempty"`
	// Conditions: Ready (every selected node has the model).
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// NodeState is the model's state on one node.
// +kubebuilder:validation:Enum=Pending;Staging;Ready;Failed
type NodeState string

// The states of a model on a node.
const (
	// NodePending: the node is selected and has not started staging (waiting for room, for
	// the credentials, or for its watcher).
	NodePending NodeState = "Pending"
	// NodeStaging: bytes are arriving (Bytes of TotalBytes, at Rate, from Source).
	NodeStaging NodeState = "Staging"
	// NodeReady: the model is staged and pinned on the node.
	NodeReady NodeState = "Ready"
	// NodeFailed: the staging failed (Reason, Message); the node tries again later.
	NodeFailed NodeState = "Failed"
)

// ConditionReady is the condition type that is True when every selected node has the model.
const ConditionReady = "Ready"

// NodeStatus is the model's state on one node.
type NodeStatus struct {
	// Node is the node's name.
	// +required
	// +kubebuilder:validation:MinLength=1
	Node string `json:"node"`
	// State of the model on the node.
	// +required
	State NodeState `json:"state"`
	// Bytes staged so far (all of them once Ready).
	// +optional
	Bytes int64 `json:"bytes,omitempty"`
	// TotalBytes is the model's size.
	// +optional
	TotalBytes int64 `json:"totalBytes,omitempty"`
	// Rate is the staging's recent rate, in bytes per second.
	// +optional
	Rate int64 `json:"rate,omitempty"`
	// Source says where the bytes come from: "OSS (position 1 of 8, chain head)", "node
	// gpu-7 (position 3 of 8)".
	// +optional
	Source string `json:"source,omitempty"`
	// Reason is a CamelCase word saying why the model is in this state (for Failed: e.g.
	// NoSpace, AccessDenied, NotFound).
	// +optional
	Reason string `json:"reason,omitempty"`
	// Message says it for people, and what to do.
	// +optional
	Message string `json:"message,omitempty"`
	// LastUpdateTime is when the node last wrote this entry.
	// +optional
	LastUpdateTime *metav1.Time `json:"lastUpdateTime,omitempty"`
}

// ModelCacheList is a list of ModelCaches.
//
// +kubebuilder:object:root=true
type ModelCacheList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ModelCache `json:"items"`
}
