package v1alpha1_test

import (
	"encoding/json"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions"
	apiextensionsinstall "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/install"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextensionsvalidation "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/validation"
	structuralschema "k8s.io/apiextensions-apiserver/pkg/apiserver/schema"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/cel"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/listtype"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/validation"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/util/validation/field"
	celconfig "k8s.io/apiserver/pkg/apis/cel"

	"github.com/modelcast/modelcast/pkg/apis/modelcast/v1alpha1"
)

// loadCRD decodes the chart's CRD strictly (an unknown or duplicate field fails).
func loadCRD(t *testing.T) (*apiextensionsv1.CustomResourceDefinition, *runtime.Scheme) {
	t.Helper()
	data, err := os.ReadFile(crdFile)
	if err != nil {
		t.Fatal(err)
	}
	sch := runtime.NewScheme()
	apiextensionsinstall.Install(sch)
	obj, _, err := serializer.NewCodecFactory(sch, serializer.EnableStrict).UniversalDeserializer().Decode(data, nil, nil)
	if err != nil {
		t.Fatalf("%s: %v", crdFile, err)
	}
	crd, ok := obj.(*apiextensionsv1.CustomResourceDefinition)
	if !ok {
		t.Fatalf("%s holds a %T", crdFile, obj)
	}
	return crd, sch
}

// TestCRD: the CRD is what the issue asks for, and the API server would take it.
func TestCRD(t *testing.T) {
	crd, sch := loadCRD(t)
	if crd.Name != "modelcaches.modelcast.io" || crd.Spec.Group != v1alpha1.Group || crd.Spec.Names.Kind != "ModelCache" ||
		crd.Spec.Names.Plural != "modelcaches" || crd.Spec.Names.ListKind != "ModelCacheList" {
		t.Errorf("CRD %s: group %q, names %+v", crd.Name, crd.Spec.Group, crd.Spec.Names)
	}
	if crd.Spec.Scope != apiextensionsv1.NamespaceScoped {
		t.Errorf("scope %q, want Namespaced: a ModelCache's secretRef is in its namespace", crd.Spec.Scope)
	}
	if len(crd.Spec.Versions) != 1 {
		t.Fatalf("%d versions, want 1", len(crd.Spec.Versions))
	}
	v := crd.Spec.Versions[0]
	if v.Name != v1alpha1.GroupVersion.Version || !v.Served || !v.Storage {
		t.Errorf("version %s: served %v, storage %v", v.Name, v.Served, v.Storage)
	}
	if v.Subresources == nil || v.Subresources.Status == nil {
		t.Error("no status subresource: status would be written with the spec, and nodes could change the spec")
	}
	type column struct{ name, typ, path string }
	var cols []column
	for _, c := range v.AdditionalPrinterColumns {
		cols = append(cols, column{c.Name, c.Type, c.JSONPath})
	}
	want := []column{
		{"Model", "string", ".spec.ossPath"},
		{"Ready", "integer", ".status.readyNodes"},
		{"Desired", "integer", ".status.desiredNodes"},
		{"Size", "string", ".status.sizeText"},
		{"Age", "date", ".metadata.creationTimestamp"},
	}
	if !slices.Equal(cols, want) {
		t.Errorf("printer columns %v, want %v", cols, want)
	}

	root := v.Schema.OpenAPIV3Schema
	if spec := root.Properties["spec"]; !slices.Contains(spec.Required, "ossPath") || !slices.Contains(root.Required, "spec") {
		t.Errorf("required: %v at the root, %v in spec; want spec and ossPath", root.Required, spec.Required)
	}
	status := root.Properties["status"]
	nodes := status.Properties["nodes"]
	if listType(nodes) != "map" || !slices.Equal(nodes.XListMapKeys, []string{"node"}) {
		t.Errorf("status.nodes: list type %q, keys %v; want a map keyed by node (one entry, and one field manager, per node)", listType(nodes), nodes.XListMapKeys)
	}
	var states []string
	for _, e := range nodes.Items.Schema.Properties["state"].Enum {
		var s string
		if err := json.Unmarshal(e.Raw, &s); err != nil {
			t.Fatal(err)
		}
		states = append(states, s)
	}
	if want := []string{"Pending", "Staging", "Ready", "Failed"}; !slices.Equal(states, want) {
		t.Errorf("node states %v, want %v", states, want)
	}
	if c := status.Properties["conditions"]; listType(c) != "map" || !slices.Equal(c.XListMapKeys, []string{"type"}) {
		t.Errorf("status.conditions: list type %q, keys %v", listType(c), c.XListMapKeys)
	}

	// The API server's own validation of a new CRD: structural schema, list types, CEL rules
	// compiled and within their cost.
	internal := &apiextensions.CustomResourceDefinition{}
	defaulted := crd.DeepCopy()
	sch.Default(defaulted)
	if err := sch.Convert(defaulted, internal, nil); err != nil {
		t.Fatal(err)
	}
	internal.Status.StoredVersions = []string{v.Name} // as the API server sets it on create
	if errs := apiextensionsvalidation.ValidateCustomResourceDefinition(t.Context(), internal); len(errs) > 0 {
		t.Errorf("the API server would refuse the CRD: %v", errs.ToAggregate())
	}
}

func listType(s apiextensionsv1.JSONSchemaProps) string {
	if s.XListType == nil {
		return ""
	}
	return *s.XListType
}

// crValidator checks a ModelCache as the API server does on create: the OpenAPI schema, the
// list types (unique keys) and the CEL rules.
type crValidator struct {
	schema     validation.SchemaValidator
	structural *structuralschema.Structural
	cel        *cel.Validator
}

func newValidator(t *testing.T) crValidator {
	t.Helper()
	crd, _ := loadCRD(t)
	var internal apiextensions.CustomResourceValidation
	if err := apiextensionsv1.Convert_v1_CustomResourceValidation_To_apiextensions_CustomResourceValidation(crd.Spec.Versions[0].Schema, &internal, nil); err != nil {
		t.Fatal(err)
	}
	sv, _, err := validation.NewSchemaValidator(internal.OpenAPIV3Schema)
	if err != nil {
		t.Fatal(err)
	}
	ss, err := structuralschema.NewStructural(internal.OpenAPIV3Schema)
	if err != nil {
		t.Fatal(err)
	}
	cv := cel.NewValidator(ss, true, celconfig.PerCallLimit)
	if cv == nil {
		t.Fatal("the CRD has no CEL rules")
	}
	return crValidator{schema: sv, structural: ss, cel: cv}
}

func (v crValidator) validate(t *testing.T, obj map[string]any) field.ErrorList {
	t.Helper()
	errs := validation.ValidateCustomResource(nil, obj, v.schema)
	errs = append(errs, listtype.ValidateListSetsAndMaps(nil, v.structural, obj)...)
	celErrs, _ := v.cel.Validate(t.Context(), nil, v.structural, obj, nil, celconfig.RuntimeCELCostBudget)
	return append(errs, celErrs...)
}

// fullModelCache uses every field.
func fullModelCache() *v1alpha1.ModelCache {
	on := true
	now := metav1.NewTime(time.Date(2026, 12, 1, 2, 3, 4, 0, time.UTC))
	return &v1alpha1.ModelCache{
		TypeMeta:   metav1.TypeMeta{APIVersion: v1alpha1.GroupVersion.String(), Kind: "ModelCache"},
		ObjectMeta: metav1.ObjectMeta{Name: "qwen3-8b", Namespace: "ml"},
		Spec: v1alpha1.ModelCacheSpec{
			OSSPath: "oss://models/qwen/Qwen3-8B/", Endpoint: "oss-cn-beijing-internal.aliyuncs.com", Region: "cn-beijing",
			Tenant: "team-a", Broadcast: &on, SecretRef: &v1alpha1.SecretReference{Name: "oss-keys"},
			NodeSelector: map[string]string{"nvidia.com/gpu.product": "NVIDIA-H20"}, NodeNames: []string{"gpu-7"},
		},
		Status: v1alpha1.ModelCacheStatus{
			ObservedGeneration: 1, DesiredNodes: 2, ReadyNodes: 1, Size: 16_400_000_000, SizeText: "16.4 GB",
			Nodes: []v1alpha1.NodeStatus{
				{Node: "gpu-7", State: v1alpha1.NodeReady, Bytes: 16_400_000_000, TotalBytes: 16_400_000_000, Source: "OSS (position 1 of 2, chain head)", LastUpdateTime: &now},
				{Node: "gpu-8", State: v1alpha1.NodeStaging, Bytes: 8e9, TotalBytes: 16_400_000_000, Rate: 2e9, Source: "node gpu-7 (position 2 of 2)", LastUpdateTime: &now},
			},
			Conditions: []metav1.Condition{{Type: v1alpha1.ConditionReady, Status: metav1.ConditionFalse, Reason: "Staging",
				Message: "1 of 2 nodes have the model", LastTransitionTime: now, ObservedGeneration: 1}},
		},
	}
}

func unstructured(t *testing.T, mc *v1alpha1.ModelCache) map[string]any {
	t.Helper()
	obj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(mc)
	if err != nil {
		t.Fatal(err)
	}
	return obj
}

// TestSchemaValidates: a ModelCache using every field is accepted; one without ossPath, with a
// path that is not oss://bucket/…, choosing no node, or with an unknown or duplicate node state
// entry is refused, naming the field.
func TestSchemaValidates(t *testing.T) {
	v := newValidator(t)
	if errs := v.validate(t, unstructured(t, fullModelCache())); len(errs) > 0 {
		t.Fatalf("a full ModelCache is refused: %v", errs.ToAggregate())
	}
	spec := func(obj map[string]any) map[string]any { return obj["spec"].(map[string]any) }
	for _, c := range []struct {
		name  string
		typed func(mc *v1alpha1.ModelCache) // a change to the object
		raw   func(obj map[string]any)      // or to its JSON form, for what Go would not encode
		want  string                        // in the errors
	}{
		{name: "no ossPath", raw: func(obj map[string]any) { delete(spec(obj), "ossPath") }, want: "spec.ossPath: Required value"},
		{name: "an s3 path", typed: func(mc *v1alpha1.ModelCache) { mc.Spec.OSSPath = "s3://models/qwen/" }, want: "spec.ossPath"},
		{name: "a bad bucket", typed: func(mc *v1alpha1.ModelCache) { mc.Spec.OSSPath = "oss://Models_A/qwen/" }, want: "spec.ossPath"},
		{name: "no nodes", typed: func(mc *v1alpha1.ModelCache) { mc.Spec.NodeSelector, mc.Spec.NodeNames = nil, nil }, want: "choose the nodes"},
		{name: "empty selector and names", raw: func(obj map[string]any) {
			spec(obj)["nodeSelector"], spec(obj)["nodeNames"] = map[string]any{}, []any{}
		}, want: "choose the nodes"},
		{name: "an empty node name", typed: func(mc *v1alpha1.ModelCache) { mc.Spec.NodeNames = []string{""} }, want: "spec.nodeNames[0]"},
		{name: "a secretRef without a name", typed: func(mc *v1alpha1.ModelCache) { mc.Spec.SecretRef = &v1alpha1.SecretReference{} }, want: "spec.secretRef.name"},
		{name: "an unknown state", typed: func(mc *v1alpha1.ModelCache) { mc.Status.Nodes[1].State = "Done" }, want: "status.nodes[1].state: Unsupported value"},
		{name: "two entries for one node", typed: func(mc *v1alpha1.ModelCache) { mc.Status.Nodes[1].Node = "gpu-7" }, want: "status.nodes[1]: Duplicate value"},
	} {
		t.Run(c.name, func(t *testing.T) {
			mc := fullModelCache()
			if c.typed != nil {
				c.typed(mc)
			}
			obj := unstructured(t, mc)
			if c.raw != nil {
				c.raw(obj)
			}
			errs := v.validate(t, obj)
			if len(errs) == 0 {
				t.Fatal("accepted")
			}
			if msg := errs.ToAggregate().Error(); !strings.Contains(msg, c.want) {
				t.Errorf("refused with %q, which does not say %q", msg, c.want)
			}
		})
	}
}

// TestScheme: the types register under modelcast.io/v1alpha1 and deep-copy (the generated
// methods) without sharing anything with the original.
func TestScheme(t *testing.T) {
	sch := runtime.NewScheme()
	if err := v1alpha1.AddToScheme(sch); err != nil {
		t.Fatal(err)
	}
	for _, o := range []runtime.Object{&v1alpha1.ModelCache{}, &v1alpha1.ModelCacheList{}} {
		gvks, _, err := sch.ObjectKinds(o)
		if err != nil || len(gvks) != 1 || gvks[0].GroupVersion() != v1alpha1.GroupVersion {
			t.Errorf("%T: kinds %v, %v", o, gvks, err)
		}
	}
	mc := fullModelCache()
	cp := mc.DeepCopyObject().(*v1alpha1.ModelCache)
	cp.Spec.NodeSelector["zone"] = "b"
	cp.Spec.NodeNames[0] = "gpu-9"
	*cp.Spec.Broadcast = false
	cp.Status.Nodes[0].State = v1alpha1.NodeFailed
	cp.Status.Nodes[0].LastUpdateTime.Time = time.Time{}
	cp.Status.Conditions[0].Status = metav1.ConditionTrue
	if orig := fullModelCache(); !equalJSON(t, mc, orig) {
		t.Error("changing a deep copy changed the original")
	}
}

func equalJSON(t *testing.T, a, b any) bool {
	t.Helper()
	ja, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	jb, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return string(ja) == string(jb)
}
