// Package v1alpha1 is the modelcast.io/v1alpha1 API: ModelCache, a model to stage (pre-warm)
// on chosen nodes before the pods that use it land there.
//
// The CRD in charts/modelcast/crds and zz_generated.deepcopy.go are generated from these types
// by `make generate` (controller-gen); a test fails when they are not current.
//
// +kubebuilder:object:generate=true
// +groupName=modelcast.io
package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// Group is the API group of modelcast's resources.
const Group = "modelcast.io"

// GroupVersion is this package's group and version.
var GroupVersion = schema.GroupVersion{Group: Group, Version: "v1alpha1"}

// AddToScheme registers ModelCache and ModelCacheList with s.
func AddToScheme(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion, &ModelCache{}, &ModelCacheList{})
	metav1.AddToGroupVersion(s, GroupVersion)
	return nil
}
