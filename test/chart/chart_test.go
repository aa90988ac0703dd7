// Package chart checks the Helm chart offline: helm lint and helm template with default and
// non-default values, every rendered object strictly decoded with client-go's scheme (an
// unknown or misspelled field fails), the schema rejecting bad values, the rendered
// config.json accepted by the plugin's own loader, and deploy/ current and valid.
package chart

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	storagev1 "k8s.io/api/storage/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/modelcast/modelcast/pkg/apis/modelcast/v1alpha1"
	"github.com/modelcast/modelcast/pkg/config"
	"github.com/modelcast/modelcast/pkg/driver"
)

const chartDir = "../../charts/modelcast"

// helm finds the helm binary hack/tools.sh builds (make test runs it), or $HELM.
func helm(t *testing.T) string {
	t.Helper()
	if h := os.Getenv("HELM"); h != "" {
		return h
	}
	h, err := filepath.Abs("../../bin/tools/helm")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(h); err != nil {
		t.Fatalf("no helm at %s: run `bash hack/tools.sh` (make test does) or set HELM", h)
	}
	return h
}

func run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(helm(t), args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		return out.String() + errb.String(), fmt.Errorf("helm %s: %w\n%s%s", strings.Join(args, " "), err, out.String(), errb.String())
	}
	return out.String(), nil
}

// rendered is a chart's output, decoded.
type rendered struct {
	objs []runtime.Object
}

func (r rendered) kinds() []string {
	var ks []string
	for _, o := range r.objs {
		ks = append(ks, o.GetObjectKind().GroupVersionKind().Kind)
	}
	slices.Sort(ks)
	return ks
}

func find[T runtime.Object](t *testing.T, r rendered, name string) T {
	t.Helper()
	for _, o := range r.objs {
		if v, ok := o.(T); ok {
			if m, ok := o.(interface{ GetName() string }); ok && (name == "" || m.GetName() == name) {
				return v
			}
		}
	}
	var zero T
	t.Fatalf("no %T named %q in the output (kinds: %v)", zero, name, r.kinds())
	return zero
}

func has[T runtime.Object](r rendered, name string) bool {
	for _, o := range r.objs {
		if _, ok := o.(T); ok {
			if m, ok := o.(interface{ GetName() string }); ok && m.GetName() == name {
				return true
			}
		}
	}
	return false
}

// decodeStrict decodes every YAML document of a stream with client-go's scheme and the CRD
// types: unknown kinds, unknown fields and duplicate fields are errors.
func decodeStrict(t *testing.T, name string, stream []byte) rendered {
	t.Helper()
	sch := runtime.NewScheme()
	if err := errors.Join(scheme.AddToScheme(sch), apiextensionsv1.AddToScheme(sch), v1alpha1.AddToScheme(sch)); err != nil {
		t.Fatal(err)
	}
	dec := serializer.NewCodecFactory(sch, serializer.EnableStrict).UniversalDeserializer()
	rd := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(stream)))
	var r rendered
	for i := 0; ; i++ {
		doc, err := rd.Read()
		if err != nil {
			break
		}
		if len(bytes.TrimSpace(stripComments(doc))) == 0 {
			continue
		}
		obj, _, err := dec.Decode(doc, nil, nil)
		if err != nil {
			t.Fatalf("%s, document %d: %v\n%s", name, i, err, doc)
		}
		r.objs = append(r.objs, obj)
	}
	if len(r.objs) == 0 {
		t.Fatalf("%s: no objects", name)
	}
	return r
}

func stripComments(doc []byte) []byte {
	var out [][]byte
	for _, l := range bytes.Split(doc, []byte("\n")) {
		if !bytes.HasPrefix(bytes.TrimSpace(l), []byte("#")) {
			out = append(out, l)
		}
	}
	return bytes.Join(out, []byte("\n"))
}

// render lints and templates the chart with values, and decodes the output strictly.
func render(t *testing.T, values ...string) rendered {
	t.Helper()
	args := []string{}
	for _, v := range values {
		args = append(args, "--set", v)
	}
	if _, err := run(t, append([]string{"lint", "--strict", chartDir}, args...)...); err != nil {
		t.Fatal(err)
	}
	out, err := run(t, append([]string{"template", "mc", chartDir, "--namespace", "modelcast"}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	return decodeStrict(t, fmt.Sprintf("helm template %v", values), []byte(out))
}

func container(t *testing.T, spec corev1.PodSpec, name string) corev1.Container {
	t.Helper()
	for _, c := range spec.Containers {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no container %q", name)
	return corev1.Container{}
}

func names(cs []corev1.Container) []string {
	var n []string
	for _, c := range cs {
		n = append(n, c.Name)
	}
	return n
}

func envValue(c corev1.Container, name string) (corev1.EnvVar, bool) {
	for _, e := range c.Env {
		if e.Name == name {
			return e, true
		}
	}
	return corev1.EnvVar{}, false
}

// loadConfig runs the ConfigMap's config.json through the plugin's own (strict) loader.
func loadConfig(t *testing.T, r rendered, cm string) config.Config {
	t.Helper()
	data := find[*corev1.ConfigMap](t, r, cm).Data["config.json"]
	p := filepath.Join(t.TempDir(), "config.json")
	if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := config.Load(p, func(string) string { return "" })
	if err != nil {
		t.Fatalf("the plugin rejects the chart's config.json: %v\n%s", err, data)
	}
	return c
}

// grant is a rule bound to a ServiceAccount: where it applies ("" for the whole cluster), and
// what it allows.
type grant struct {
	namespace string
	rule      rbacv1.PolicyRule
}

// grantsTo returns the rules the chart's (Cluster)RoleBindings give the ServiceAccount
// namespace/name, with the roles they name; a binding to a role the chart does not render is
// an error.
func grantsTo(t *testing.T, r rendered, namespace, name string) []grant {
	t.Helper()
	bound := func(subjects []rbacv1.Subject) bool {
		for _, s := range subjects {
			if s.Kind == "ServiceAccount" && s.Namespace == namespace && s.Name == name {
				return true
			}
		}
		return false
	}
	rolesIn := func(ns, kind, role string) []rbacv1.PolicyRule {
		for _, o := range r.objs {
			switch v := o.(type) {
			case *rbacv1.ClusterRole:
				if kind == "ClusterRole" && v.Name == role {
					return v.Rules
				}
			case *rbacv1.Role:
				if kind == "Role" && v.Name == role && v.Namespace == ns {
					return v.Rules
				}
			}
		}
		t.Fatalf("a binding names the %s %s/%s, which the chart does not render", kind, ns, role)
		return nil
	}
	var out []grant
	for _, o := range r.objs {
		switch b := o.(type) {
		case *rbacv1.ClusterRoleBinding:
			if bound(b.Subjects) {
				for _, rule := range rolesIn("", b.RoleRef.Kind, b.RoleRef.Name) {
					out = append(out, grant{"", rule})
				}
			}
		case *rbacv1.RoleBinding:
			if bound(b.Subjects) {
				for _, rule := range rolesIn(b.Namespace, b.RoleRef.Kind, b.RoleRef.Name) {
					out = append(out, grant{b.Namespace, rule})
				}
			}
		}
	}
	return out
}

// secretGrants are the grants that reach Secrets (by name, or by a wildcard).
func secretGrants(gs []grant) []grant {
	var out []grant
	for _, g := range gs {
		if (slices.Contains(g.rule.APIGroups, "") || slices.Contains(g.rule.APIGroups, "*")) &&
			(slices.Contains(g.rule.Resources, "secrets") || slices.Contains(g.rule.Resources, "*")) {
			out = append(out, g)
		}
	}
	return out
}

// TestNodeSecretsAccess: by default the node plugin may read no Secret at all (ModelCaches use
// its own credentials; a secretRef fails with SecretForbidden); modelCache.secretNamespaces
// grants it get, and only get, on Secrets in each namespace listed, and nowhere else.
func TestNodeSecretsAccess(t *testing.T) {
	if got := secretGrants(grantsTo(t, render(t), "modelcast", "mc-modelcast-node")); len(got) != 0 {
		t.Errorf("by default the node plugin may read Secrets: %+v", got)
	}
	r := render(t, "modelCache.secretNamespaces={ml,team-b}")
	got := secretGrants(grantsTo(t, r, "modelcast", "mc-modelcast-node"))
	var where []string
	for _, g := range got {
		where = append(where, g.namespace)
		want := rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"get"}}
		if !slices.Equal(g.rule.APIGroups, want.APIGroups) || !slices.Equal(g.rule.Resources, want.Resources) ||
			!slices.Equal(g.rule.Verbs, want.Verbs) || len(g.rule.ResourceNames) != 0 || len(g.rule.NonResourceURLs) != 0 {
			t.Errorf("in %q the node plugin gets %+v, want only get on secrets", g.namespace, g.rule)
		}
	}
	slices.Sort(where)
	if !slices.Equal(where, []string{"ml", "team-b"}) {
		t.Errorf("the node plugin may read Secrets in %q, want exactly ml and team-b", where)
	}
	roles, bindings := 0, 0
	for _, o := range r.objs {
		switch v := o.(type) {
		case *rbacv1.Role:
			if v.Name == "mc-modelcast-node-secrets" {
				roles++
			}
		case *rbacv1.RoleBinding:
			if v.Name == "mc-modelcast-node-secrets" {
				bindings++
			}
		}
	}
	if roles != 2 || bindings != 2 {
		t.Errorf("%d Roles and %d RoleBindings mc-modelcast-node-secrets, want one of each per namespace", roles, bindings)
	}
	// The rest of the node plugin's permissions are the default's.
	if n, d := len(grantsTo(t, r, "modelcast", "mc-modelcast-node"))-len(got), len(grantsTo(t, render(t), "modelcast", "mc-modelcast-node")); n != d {
		t.Errorf("the node plugin has %d other rules with secretNamespaces, %d without", n, d)
	}
}

// TestDefaults: the default install is what a production CSI driver needs.
func TestDefaults(t *testing.T) {
	r := render(t)
	want := []string{"ClusterRole", "ClusterRole", "ClusterRoleBinding", "ClusterRoleBinding", "ConfigMap", "CSIDriver",
		"DaemonSet", "Deployment", "Deployment", "Role", "RoleBinding", "Secret", "Service", "ServiceAccount", "ServiceAccount"}
	slices.Sort(want)
	if got := r.kinds(); !slices.Equal(got, want) {
		t.Errorf("kinds %v, want %v", got, want)
	}

	d := find[*storagev1.CSIDriver](t, r, driver.DefaultDriverName)
	if d.Spec.AttachRequired == nil || *d.Spec.AttachRequired || d.Spec.PodInfoOnMount == nil || !*d.Spec.PodInfoOnMount ||
		d.Spec.FSGroupPolicy == nil || *d.Spec.FSGroupPolicy != storagev1.NoneFSGroupPolicy ||
		!slices.Equal(d.Spec.VolumeLifecycleModes, []storagev1.VolumeLifecycleMode{storagev1.VolumeLifecyclePersistent, storagev1.VolumeLifecycleEphemeral}) {
		t.Errorf("CSIDriver spec: %+v", d.Spec)
	}

	ds := find[*appsv1.DaemonSet](t, r, "mc-modelcast-node")
	pod := ds.Spec.Template.Spec
	if !pod.HostNetwork || pod.PriorityClassName != "system-node-critical" || pod.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
		t.Errorf("node pod: hostNetwork %v, priority %q, dns %q", pod.HostNetwork, pod.PriorityClassName, pod.DNSPolicy)
	}
	if len(pod.Tolerations) != 1 || pod.Tolerations[0].Operator != corev1.TolerationOpExists {
		t.Errorf("node tolerations %+v: GPU nodes' taints must be tolerated", pod.Tolerations)
	}
	if got := names(pod.Containers); !slices.Equal(got, []string{"csi-plugin", "node-driver-registrar", "liveness-probe"}) {
		t.Errorf("node containers %v", got)
	}
	plugin := container(t, pod, "csi-plugin")
	if plugin.Image != "modelcast/csi-plugin:0.1.0" {
		t.Errorf("image %q: the tag defaults to the chart's appVersion", plugin.Image)
	}
	if plugin.SecurityContext == nil || plugin.SecurityContext.Privileged == nil || !*plugin.SecurityContext.Privileged {
		t.Error("the node plugin is not privileged")
	}
	if _, ok := plugin.Resources.Limits[corev1.ResourceMemory]; ok {
		t.Errorf("the node plugin has a memory limit (%v): tmpfs pages it writes are charged to it", plugin.Resources.Limits)
	}
	mounts := map[string]corev1.VolumeMount{}
	for _, m := range plugin.VolumeMounts {
		mounts[m.MountPath] = m
	}
	for _, p := range []string{"/var/lib/kubelet", "/var/lib/modelcast"} {
		if m, ok := mounts[p]; !ok || m.MountPropagation == nil || *m.MountPropagation != corev1.MountPropagationBidirectional {
			t.Errorf("%s: %+v, want a Bidirectional mount", p, m)
		}
	}
	for _, a := range []string{"node", "--endpoint=unix:///csi/csi.sock", "--driver-name=" + driver.DefaultDriverName, "--http-endpoint=:19899"} {
		if !slices.Contains(plugin.Args, a) {
			t.Errorf("node args %v lack %s", plugin.Args, a)
		}
	}
	if slices.Contains(plugin.Args, "--authorize-mounts") {
		t.Errorf("node args %v: mount authorization is opt-in (node.authorizeMounts)", plugin.Args)
	}
	for _, e := range []string{"NODE_NAME", "NODE_IP", "MODELCAST_REDIS_PASSWORD"} {
		if _, ok := envValue(plugin, e); !ok {
			t.Errorf("node env lacks %s", e)
		}
	}
	if ip, _ := envValue(plugin, "NODE_IP"); ip.ValueFrom == nil || ip.ValueFrom.FieldRef == nil || ip.ValueFrom.FieldRef.FieldPath != "status.hostIP" {
		t.Errorf("NODE_IP %+v: want the downward API's status.hostIP", ip)
	}
	if plugin.LivenessProbe == nil || plugin.LivenessProbe.HTTPGet == nil || plugin.LivenessProbe.HTTPGet.Path != "/healthz" ||
		plugin.ReadinessProbe == nil || plugin.ReadinessProbe.HTTPGet == nil || plugin.ReadinessProbe.HTTPGet.Path != "/readyz" {
		t.Errorf("probes: liveness %+v, readiness %+v", plugin.LivenessProbe, plugin.ReadinessProbe)
	}
	reg := container(t, pod, "node-driver-registrar")
	if !slices.Contains(reg.Args, "--kubelet-registration-path=/var/lib/kubelet/plugins/"+driver.DefaultDriverName+"/csi.sock") {
		t.Errorf("registrar args %v", reg.Args)
	}

	cfg := loadConfig(t, r, "mc-modelcast-config")
	if !cfg.Broadcast.EnableBroadcast || cfg.Broadcast.DB.Host != "mc-modelcast-redis.modelcast.svc" || cfg.Broadcast.DB.Username != "modelcast" ||
		cfg.ExpireTimeSec != 120 || cfg.BindPort != 19898 || cfg.Concurrency() != 256 || cfg.Cache.Root != "/var/lib/modelcast/cache" {
		t.Errorf("config: %+v", cfg)
	}
	if cfg.Broadcast.DB.Password != "" {
		t.Error("the Redis password is in the ConfigMap: it belongs in the Secret")
	}

	ctrl := find[*appsv1.Deployment](t, r, "mc-modelcast-controller")
	if got := names(ctrl.Spec.Template.Spec.Containers); !slices.Equal(got, []string{"csi-plugin", "csi-provisioner"}) {
		t.Errorf("controller containers %v", got)
	}
	if p := container(t, ctrl.Spec.Template.Spec, "csi-provisioner"); !slices.Contains(p.Args, "--leader-election") {
		t.Errorf("provisioner args %v: no leader election", p.Args)
	}
	// csi-plugin controller writes the ModelCaches' totals under a Lease in its namespace
	// ($POD_NAMESPACE), as $POD_NAME: its service account may get, create and update Leases
	// there.
	cp := container(t, ctrl.Spec.Template.Spec, "csi-plugin")
	for name, path := range map[string]string{"POD_NAMESPACE": "metadata.namespace", "POD_NAME": "metadata.name"} {
		if e, ok := envValue(cp, name); !ok || e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != path {
			t.Errorf("controller env %s: %+v, want the downward API's %s", name, e, path)
		}
	}
	role := find[*rbacv1.Role](t, r, "mc-modelcast-leader-election")
	leases := false
	for _, rule := range role.Rules {
		if slices.Contains(rule.APIGroups, "coordination.k8s.io") && slices.Contains(rule.Resources, "leases") &&
			slices.Contains(rule.Verbs, "get") && slices.Contains(rule.Verbs, "create") && slices.Contains(rule.Verbs, "update") {
			leases = true
		}
	}
	if !leases || role.Namespace != "modelcast" {
		t.Errorf("Role %s/%s: %+v, want get, create and update on leases in the release's namespace", role.Namespace, role.Name, role.Rules)
	}
	binding := find[*rbacv1.RoleBinding](t, r, "mc-modelcast-leader-election")
	sa := rbacv1.Subject{Kind: "ServiceAccount", Name: ctrl.Spec.Template.Spec.ServiceAccountName, Namespace: ctrl.Namespace}
	if binding.Namespace != role.Namespace || binding.RoleRef.Kind != "Role" || binding.RoleRef.Name != role.Name || !slices.Contains(binding.Subjects, sa) {
		t.Errorf("RoleBinding %s/%s: %+v to %+v, want the controller's service account %+v", binding.Namespace, binding.Name, binding.Subjects, binding.RoleRef, sa)
	}

	redis := find[*appsv1.Deployment](t, r, "mc-modelcast-redis")
	rc := container(t, redis.Spec.Template.Spec, "redis")
	if pw, ok := envValue(rc, "REDIS_PASSWORD"); !ok || pw.ValueFrom == nil || pw.ValueFrom.SecretKeyRef == nil || pw.ValueFrom.SecretKeyRef.Name != "mc-modelcast-redis" {
		t.Errorf("bundled Redis password: %+v", pw)
	}
	if s := find[*corev1.Secret](t, r, "mc-modelcast-redis"); len(s.Data["password"]) < 32 {
		t.Errorf("generated Redis password of %d bytes", len(s.Data["password"]))
	}
	// Every name is prefixed with the release: two releases never collide.
	for _, o := range r.objs {
		n := o.(interface{ GetName() string }).GetName()
		if _, ok := o.(*storagev1.CSIDriver); !ok && !strings.HasPrefix(n, "mc-modelcast") {
			t.Errorf("%T %q is not prefixed with the release", o, n)
		}
	}
}

// TestValues: non-default values render what they say.
func TestValues(t *testing.T) {
	r := render(t,
		"node.registration=builtin", "node.livenessProbe.sidecar=true", "kubeletDir=/data/kubelet",
		"redis.mode=external", "redis.external.host=r-bp1.redis.rds.aliyuncs.com", "redis.external.port=6380",
		"redis.external.username=mc", "redis.external.existingSecret=tair", "redis.external.tls=true",
		"oss.existingSecret=oss-keys", "oss.endpoint=oss-cn-beijing-internal.aliyuncs.com", "oss.region=cn-beijing",
		"image.tag=v9.9.9", "controller.enabled=false", "config.expireTimeSec=600", "config.prefetch.maxCacheAdviseGB=500",
		"config.broadcast.tenant=team-a", "config.broadcast.chains=2", "config.cache.tmpfsSize=400g",
		"config.model.maxObjects=250000", "config.model.maxSizeGB=1500",
		"node.tolerations[0].key=nvidia.com/gpu", "node.tolerations[0].operator=Exists", "node.tolerations[0].effect=NoSchedule",
		"node.authorizeMounts=true",
	)
	if has[*appsv1.Deployment](r, "mc-modelcast-controller") || has[*appsv1.Deployment](r, "mc-modelcast-redis") || has[*corev1.Secret](r, "mc-modelcast-redis") {
		t.Errorf("controller or bundled Redis rendered: %v", r.kinds())
	}
	pod := find[*appsv1.DaemonSet](t, r, "mc-modelcast-node").Spec.Template.Spec
	if got := names(pod.Containers); !slices.Equal(got, []string{"csi-plugin", "liveness-probe"}) {
		t.Errorf("containers %v: builtin registration has no registrar sidecar", got)
	}
	plugin := container(t, pod, "csi-plugin")
	for _, a := range []string{"--kubelet-registration-dir=/data/kubelet/plugins_registry", "--kubelet-csi-endpoint=/data/kubelet/plugins/" + driver.DefaultDriverName + "/csi.sock",
		"--authorize-mounts"} {
		if !slices.Contains(plugin.Args, a) {
			t.Errorf("args %v lack %s", plugin.Args, a)
		}
	}
	if plugin.Image != "modelcast/csi-plugin:v9.9.9" {
		t.Errorf("image %s", plugin.Image)
	}
	if plugin.LivenessProbe.HTTPGet.Port.IntValue() != 19897 {
		t.Errorf("liveness probe %+v: want the sidecar's port", plugin.LivenessProbe.HTTPGet)
	}
	if pw, ok := envValue(plugin, "MODELCAST_REDIS_PASSWORD"); !ok || pw.ValueFrom.SecretKeyRef.Name != "tair" || pw.ValueFrom.SecretKeyRef.Key != "password" {
		t.Errorf("Redis password from %+v", pw)
	}
	if id, ok := envValue(plugin, "OSS_ACCESS_KEY_ID"); !ok || id.ValueFrom.SecretKeyRef.Name != "oss-keys" || id.ValueFrom.SecretKeyRef.Key != "akId" {
		t.Errorf("OSS key from %+v", id)
	}
	if e, _ := envValue(plugin, "OSS_ENDPOINT"); e.Value != "oss-cn-beijing-internal.aliyuncs.com" {
		t.Errorf("OSS_ENDPOINT %q", e.Value)
	}
	if len(pod.Tolerations) != 1 || pod.Tolerations[0].Key != "nvidia.com/gpu" {
		t.Errorf("tolerations %+v", pod.Tolerations)
	}
	vols := map[string]string{}
	for _, v := range pod.Volumes {
		if v.HostPath != nil {
			vols[v.Name] = v.HostPath.Path
		}
	}
	if vols["plugin-dir"] != "/data/kubelet/plugins/"+driver.DefaultDriverName || vols["kubelet-dir"] != "/data/kubelet" {
		t.Errorf("host paths %v", vols)
	}
	if _, ok := vols["registration-dir"]; ok {
		t.Error("builtin registration mounts the registrar's directory")
	}
	cfg := loadConfig(t, r, "mc-modelcast-config")
	if cfg.Broadcast.DB.Host != "r-bp1.redis.rds.aliyuncs.com" || cfg.Broadcast.DB.Port != 6380 || !cfg.Broadcast.DB.TLS || cfg.Broadcast.DB.Username != "mc" ||
		cfg.Broadcast.Tenant != "team-a" || cfg.Broadcast.Chains != 2 || cfg.ExpireTimeSec != 600 || cfg.Prefetch.MaxCacheAdviseGB != 500 || cfg.Cache.TmpfsSize != "400g" {
		t.Errorf("config %+v", cfg)
	}
	if cfg.Model.MaxObjects != 250_000 || cfg.MaxModelBytes() != 1500e9 {
		t.Errorf("model bounds %+v", cfg.Model)
	}

	// A private CA and a client certificate for Redis/Tair over TLS come from a Secret.
	r = render(t, "redis.mode=external", "redis.external.host=r-bp1.redis.rds.aliyuncs.com",
		"redis.external.tlsSecret=tair-tls", "redis.external.clientCertificate=true")
	pod = find[*appsv1.DaemonSet](t, r, "mc-modelcast-node").Spec.Template.Spec
	mounted := false
	for _, m := range container(t, pod, "csi-plugin").VolumeMounts {
		mounted = mounted || m.Name == "redis-tls" && m.MountPath == "/etc/modelcast-redis-tls"
	}
	secretVol := false
	for _, v := range pod.Volumes {
		secretVol = secretVol || v.Name == "redis-tls" && v.Secret != nil && v.Secret.SecretName == "tair-tls"
	}
	if !mounted || !secretVol {
		t.Errorf("the Redis TLS Secret is not mounted (mount %v, volume %v)", mounted, secretVol)
	}
	if db := loadConfig(t, r, "mc-modelcast-config").Broadcast.DB; !db.TLS || db.CAFile != "/etc/modelcast-redis-tls/ca.crt" ||
		db.CertFile != "/etc/modelcast-redis-tls/tls.crt" || db.KeyFile != "/etc/modelcast-redis-tls/tls.key" {
		t.Errorf("Redis TLS config %+v", db)
	}

	// Inline OSS keys become a Secret of the release; no Redis turns broadcasting off.
	r = render(t, "oss.accessKeyId=LTAIexample", "oss.accessKeySecret=example-secret", "redis.mode=none", "node.livenessProbe.sidecar=false")
	s := find[*corev1.Secret](t, r, "mc-modelcast-oss")
	if s.StringData["akId"] != "LTAIexample" || s.StringData["akSecret"] != "example-secret" {
		t.Errorf("OSS secret %+v", s.StringData)
	}
	pod = find[*appsv1.DaemonSet](t, r, "mc-modelcast-node").Spec.Template.Spec
	if got := names(pod.Containers); !slices.Equal(got, []string{"csi-plugin", "node-driver-registrar"}) {
		t.Errorf("containers %v: without the livenessprobe sidecar", got)
	}
	plugin = container(t, pod, "csi-plugin")
	if p := plugin.LivenessProbe.HTTPGet; p.Path != "/healthz" || p.Port.String() != "http" {
		t.Errorf("liveness probe %+v: want the plugin's own /healthz", p)
	}
	if _, ok := envValue(plugin, "MODELCAST_REDIS_PASSWORD"); ok {
		t.Error("a Redis password without Redis")
	}
	if cfg := loadConfig(t, r, "mc-modelcast-config"); cfg.Broadcast.EnableBroadcast {
		t.Error("redis.mode=none leaves broadcasting on")
	}
	for _, o := range r.objs {
		if cm, ok := o.(*corev1.ConfigMap); ok && strings.Contains(fmt.Sprint(cm.Data), "example-secret") {
			t.Error("an OSS secret in a ConfigMap")
		}
	}
}

// TestSchemaRejects: a misspelled or impossible value fails before anything is installed,
// with a message naming it.
func TestSchemaRejects(t *testing.T) {
	for _, c := range []struct {
		set  []string
		want string
	}{
		{[]string{"node.registraton=builtin"}, "registraton"},
		{[]string{"config.expireTimeSecs=60"}, "expireTimeSecs"},
		{[]string{"config.broadcast.enableBroadcasting=true"}, "enableBroadcasting"},
		{[]string{"node.registration=auto"}, "registration"},
		{[]string{"redis.mode=cluster"}, "mode"},
		{[]string{"redis.mode=external"}, "host"},
		{[]string{"config.bindPort=70000"}, "bindPort"},
		{[]string{"config.cache.tmpfsSize=lots"}, "tmpfsSize"},
		{[]string{"config.model.maxObject=10"}, "maxObject"},
		{[]string{"config.model.maxSizeGB=0"}, "maxSizeGB"},
		{[]string{"oss.accessKeyId=LTAIexample"}, "accessKeySecret"},
		{[]string{"modelCache.secretNamespace={ml}"}, "secretNamespace"},
		{[]string{"modelCache.secretNamespaces={Team_B}"}, "secretNamespaces"},
		{[]string{"modelCache.secretNamespaces={ml,ml}"}, "secretNamespaces"},
		{[]string{"node.authorizeMounts=maybe"}, "authorizeMounts"},
	} {
		args := []string{"template", "mc", chartDir}
		for _, s := range c.set {
			args = append(args, "--set", s)
		}
		if _, err := run(t, args...); err == nil {
			t.Errorf("%v: rendered without an error", c.set)
		} else if !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: the error does not name %q: %v", c.set, c.want, err)
		}
	}
}

// TestManifestsCurrent: deploy/modelcast.yaml is what `make manifests` renders now.
func TestManifestsCurrent(t *testing.T) {
	have, err := os.ReadFile("../../deploy/modelcast.yaml")
	if err != nil {
		t.Fatal(err)
	}
	out, err := run(t, "template", "modelcast", chartDir, "--namespace", "kube-system", "--set", "redis.mode=none", "--include-crds")
	if err != nil {
		t.Fatal(err)
	}
	body := have[bytes.Index(have, []byte("\n---")):]
	if !bytes.Equal(bytes.TrimSpace(body), bytes.TrimSpace([]byte(out))) {
		t.Fatal("deploy/modelcast.yaml is not what the chart renders: run `make manifests`")
	}
	r := decodeStrict(t, "deploy/modelcast.yaml", have)
	// kubectl apply installs what helm install does, the chart's CRDs included.
	if !has[*apiextensionsv1.CustomResourceDefinition](r, "modelcaches.modelcast.io") {
		t.Errorf("deploy/modelcast.yaml lacks the ModelCache CRD (kinds: %v)", r.kinds())
	}
}

// TestExamples: every example decodes strictly, names the driver and uses only attributes
// the driver knows (it validates them as NodePublishVolume and CreateVolume would).
func TestExamples(t *testing.T) {
	files, err := filepath.Glob("../../deploy/examples/*.yaml")
	if err != nil || len(files) < 4 {
		t.Fatalf("examples: %v %v", files, err)
	}
	var attrs []map[string]string
	caches := 0
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range decodeStrict(t, f, b).objs {
			switch v := o.(type) {
			case *storagev1.StorageClass:
				if v.Provisioner != driver.DefaultDriverName {
					t.Errorf("%s: provisioner %q", f, v.Provisioner)
				}
				attrs = append(attrs, v.Parameters)
			case *corev1.PersistentVolume:
				if v.Spec.CSI == nil || v.Spec.CSI.Driver != driver.DefaultDriverName {
					t.Errorf("%s: PV %+v", f, v.Spec.CSI)
				}
				attrs = append(attrs, v.Spec.CSI.VolumeAttributes)
			case *v1alpha1.ModelCache:
				caches++
				a := map[string]string{driver.AttrOSSPath: v.Spec.OSSPath}
				if v.Spec.Endpoint != "" {
					a[driver.AttrEndpoint] = v.Spec.Endpoint
				}
				if _, err := driver.ParseVolumeAttributes(a); err != nil {
					t.Errorf("%s: ModelCache %s: %v", f, v.Name, err)
				}
				if len(v.Spec.NodeNames) == 0 && len(v.Spec.NodeSelector) == 0 {
					t.Errorf("%s: ModelCache %s selects no node", f, v.Name)
				}
			case *corev1.Pod:
				for _, vol := range v.Spec.Volumes {
					if vol.CSI != nil {
						if vol.CSI.Driver != driver.DefaultDriverName {
							t.Errorf("%s: inline driver %q", f, vol.CSI.Driver)
						}
						attrs = append(attrs, vol.CSI.VolumeAttributes)
					}
				}
			}
		}
	}
	if caches != 1 {
		t.Errorf("%d ModelCaches in the examples, want 1", caches)
	}
	if len(attrs) != 3 {
		t.Errorf("%d volumes in the examples, want a StorageClass, a static PV and an inline volume", len(attrs))
	}
	for _, a := range attrs {
		if _, err := driver.ParseVolumeAttributes(a); err != nil {
			t.Errorf("example attributes %v: %v", a, err)
		}
	}
}
