package driver_test

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/moby/sys/mountinfo"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/modelcast/modelcast/pkg/apis/modelcast/v1alpha1"
	"github.com/modelcast/modelcast/pkg/driver"
	"github.com/modelcast/modelcast/pkg/prewarm"
	"github.com/modelcast/modelcast/test/ossemu"
)

// declared is a ModelCache in namespace ns. It names node-2, not this plugin's node-1: it
// authorizes mounts in its namespace whether or not it selects the node (and nothing is
// pre-warmed here, so the emulator counts only what publishes ask).
func declared(ns, name string, spec v1alpha1.ModelCacheSpec) *unstructured.Unstructured {
	spec.NodeNames = []string{"node-2"}
	mc := &v1alpha1.ModelCache{TypeMeta: metav1.TypeMeta{APIVersion: v1alpha1.GroupVersion.String(), Kind: "ModelCache"},
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: spec}
	u, err := runtime.DefaultUnstructuredConverter.ToUnstructured(mc)
	if err != nil {
		panic(err)
	}
	return &unstructured.Unstructured{Object: u}
}

func modelCacheClient(objs ...runtime.Object) *dynamicfake.FakeDynamicClient {
	return dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schema.GroupVersionResource]string{prewarm.Resource: "ModelCacheList"}, objs...)
}

// podPublish is a publish of path at a fresh target for pod ns/name, with its pod information
// as kubelet passes it with podInfoOnMount.
func podPublish(t *testing.T, path, ns, name string) *csi.NodePublishVolumeRequest {
	req := publishReq(path, target(t, ns+"-"+name))
	req.VolumeContext["csi.storage.k8s.io/pod.name"] = name
	req.VolumeContext["csi.storage.k8s.io/pod.namespace"] = ns
	req.VolumeContext["csi.storage.k8s.io/pod.uid"] = "uid-" + name
	req.VolumeContext["csi.storage.k8s.io/ephemeral"] = "true"
	return req
}

// ossRequests counts the emulator's requests of every kind.
func ossRequests(srv *ossemu.Server) int64 {
	var n int64
	for _, c := range srv.Stats().Requests {
		n += c
	}
	return n
}

// refused checks that err is PermissionDenied with a message holding every part of want.
func refused(t *testing.T, err error, want ...string) {
	t.Helper()
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("publish: %v, want PermissionDenied", err)
	}
	for _, w := range want {
		if msg := status.Convert(err).Message(); !strings.Contains(msg, w) {
			t.Errorf("message %q lacks %q", msg, w)
		}
	}
}

// warned waits for an Event of reason on pod ns/name whose message matches re (waitEvents:
// no Event may reveal the secret) and checks that it is a Warning.
func warned(t *testing.T, kube *fake.Clientset, ns, name, reason string, re *regexp.Regexp) {
	t.Helper()
	waitEvents(t, kube, ns, name, "node-1", map[string]*regexp.Regexp{reason: re})
	evs, err := kube.CoreV1().Events(ns).List(t.Context(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range evs.Items {
		if e.InvolvedObject.Kind == "Pod" && e.InvolvedObject.Name == name && e.Reason == reason && re.MatchString(e.Message) &&
			e.Type != corev1.EventTypeWarning {
			t.Errorf("the %s Event on pod %s/%s is of type %s, want %s", reason, ns, name, e.Type, corev1.EventTypeWarning)
		}
	}
}

// published says whether target is a mount point and holds a model in the plugin's cache.
func published(t *testing.T, p *plugin, target string) bool {
	t.Helper()
	mounted, err := mountinfo.Mounted(target)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	return mounted && p.d.Store().Holds(target)
}

// untouched says whether target is neither a mount point nor holds a model.
func untouched(t *testing.T, p *plugin, target string) bool {
	t.Helper()
	mounted, err := mountinfo.Mounted(target)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	return !mounted && !p.d.Store().Holds(target)
}

// TestMountAuthorization: with --authorize-mounts a pod mounts a model only when a ModelCache
// of its own namespace declares it (the OSS path and the endpoint, normalized: a trailing
// slash either way, an empty endpoint is the node's). Anything else is PermissionDenied with a
// message that says what to do and a MountNotAuthorized Warning on the pod, before any OSS
// request; a ModelCache created later lets kubelet's retry mount, and once it is deleted a new
// publish is refused again.
func TestMountAuthorization(t *testing.T) {
	srv := emu(t)
	genModel(t, srv, "qwen/", 4<<20)
	ep := srv.Endpoint()
	dyn := modelCacheClient(
		// Written as a person might: no trailing slash on the path, one on the endpoint.
		declared("ml", "qwen", v1alpha1.ModelCacheSpec{OSSPath: "oss://models/qwen", Endpoint: ep + "/"}),
		declared("other-ep", "qwen-elsewhere", v1alpha1.ModelCacheSpec{OSSPath: "oss://models/qwen/", Endpoint: "http://127.0.0.1:1"}),
	)
	kube := fake.NewSimpleClientset()
	p := startPlugin(t, inProcess{srv}, "", withKube(kube), withOptions(func(o *driver.Options) {
		o.DynamicClient, o.AuthorizeMounts = dyn, true
	}))
	srv.ResetStats()

	// Another namespace's ModelCache does not authorize this one's pods. (A first publish may
	// come before the plugin's first list of the ModelCaches: Unavailable, and kubelet retries.)
	intruder := podPublish(t, "oss://models/qwen/", "team-b", "intruder")
	var err error
	waitUntil(t, "the ModelCache list", func() bool {
		_, err = p.node.NodePublishVolume(t.Context(), intruder)
		return status.Code(err) != codes.Unavailable
	})
	refused(t, err, `namespace "team-b" may not mount oss://models/qwen/ from `+ep+`: mount authorization is on and no ModelCache in "team-b" declares this model`,
		"create one with spec.ossPath oss://models/qwen/", "kubectl get modelcaches -n team-b")
	warned(t, kube, "team-b", "intruder", driver.ReasonNotAuthorized,
		regexp.MustCompile(`^Not mounted: namespace "team-b" may not mount oss://models/qwen/ from `+regexp.QuoteMeta(ep)+`: .*kubectl get modelcaches -n team-b\)$`))
	if !untouched(t, p, intruder.TargetPath) {
		t.Error("the refused pod's target is mounted or holds a model")
	}

	// The same model from another endpoint is other data.
	_, err = p.node.NodePublishVolume(t.Context(), podPublish(t, "oss://models/qwen/", "other-ep", "vllm-0"))
	refused(t, err, `namespace "other-ep" may not mount oss://models/qwen/ from `+ep, `"qwen-elsewhere" from http://127.0.0.1:1`)
	warned(t, kube, "other-ep", "vllm-0", driver.ReasonNotAuthorized, regexp.MustCompile(`another endpoint`))

	// Without the pod's namespace (a CSIDriver without podInfoOnMount) nothing is authorized.
	_, err = p.node.NodePublishVolume(t.Context(), publishReq("oss://models/qwen/", target(t, "no-pod-info")))
	refused(t, err, "podInfoOnMount", "csi.storage.k8s.io/pod.namespace", driver.DefaultDriverName)

	if n := ossRequests(srv); n != 0 {
		t.Fatalf("refused publishes made %d OSS requests (%v), want none", n, srv.Stats().Requests)
	}

	// The ModelCache's namespace mounts it.
	allowed := podPublish(t, "oss://models/qwen/", "ml", "vllm-0")
	if _, err := p.node.NodePublishVolume(t.Context(), allowed); err != nil {
		t.Fatalf("a pod of the ModelCache's namespace: %v", err)
	}
	if !published(t, p, allowed.TargetPath) {
		t.Fatal("the authorized pod's model is not mounted")
	}

	// A ModelCache created in team-b: kubelet's retry of the refused publish mounts.
	if _, err := dyn.Resource(prewarm.Resource).Namespace("team-b").Create(t.Context(),
		declared("team-b", "qwen", v1alpha1.ModelCacheSpec{OSSPath: "oss://models/qwen/"}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the retry after the ModelCache's creation to mount", func() bool {
		_, err = p.node.NodePublishVolume(t.Context(), intruder)
		if err != nil && status.Code(err) != codes.PermissionDenied {
			t.Fatalf("retry: %v", err)
		}
		return err == nil
	})
	if !published(t, p, intruder.TargetPath) {
		t.Fatal("the retry succeeded without a mount")
	}

	// Deleted: a new publish is refused (the mount made stays; the check is at publish).
	if err := dyn.Resource(prewarm.Resource).Namespace("team-b").Delete(t.Context(), "qwen", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	// Until the informer sees the deletion a publish may still mount: each try is a new pod.
	tries := 0
	waitUntil(t, "a publish refused after the deletion", func() bool {
		tries++
		_, err = p.node.NodePublishVolume(t.Context(), podPublish(t, "oss://models/qwen/", "team-b", fmt.Sprintf("late-%d", tries)))
		return err != nil
	})
	refused(t, err, `namespace "team-b" may not mount oss://models/qwen/`, "no ModelCache in \"team-b\" declares this model")
	if !published(t, p, intruder.TargetPath) {
		t.Error("deleting the ModelCache unmounted a pod's model")
	}
}

// TestMountAuthorizationOff: by default a pod of any namespace mounts any model, whatever the
// ModelCaches declare.
func TestMountAuthorizationOff(t *testing.T) {
	srv := emu(t)
	genModel(t, srv, "llama/", 1<<20)
	dyn := modelCacheClient(declared("ml", "qwen", v1alpha1.ModelCacheSpec{OSSPath: "oss://models/qwen/"}))
	p := startPlugin(t, inProcess{srv}, "", withKube(fake.NewSimpleClientset()), withOptions(func(o *driver.Options) { o.DynamicClient = dyn }))
	req := podPublish(t, "oss://models/llama/", "team-b", "vllm-0")
	if _, err := p.node.NodePublishVolume(t.Context(), req); err != nil {
		t.Fatalf("authorization off: %v", err)
	}
	if !published(t, p, req.TargetPath) {
		t.Fatal("not mounted")
	}
}

// TestMountAuthorizationWaitsForTheList: until the plugin has listed the ModelCaches once, a
// publish is Unavailable (kubelet retries), not refused; then it is decided.
func TestMountAuthorizationWaitsForTheList(t *testing.T) {
	srv := emu(t)
	genModel(t, srv, "qwen/", 1<<20)
	dyn := modelCacheClient(declared("ml", "qwen", v1alpha1.ModelCacheSpec{OSSPath: "oss://models/qwen/"}))
	// The API server does not answer the list (or watch) of ModelCaches until released.
	listed := make(chan struct{})
	release := sync.OnceFunc(func() { close(listed) })
	dyn.PrependReactor("list", "modelcaches", func(k8stesting.Action) (bool, runtime.Object, error) {
		<-listed
		return false, nil, nil
	})
	dyn.PrependWatchReactor("modelcaches", func(k8stesting.Action) (bool, watch.Interface, error) {
		<-listed
		return false, nil, nil
	})
	p := startPlugin(t, inProcess{srv}, "", withKube(fake.NewSimpleClientset()), withOptions(func(o *driver.Options) {
		o.DynamicClient, o.AuthorizeMounts = dyn, true
	}))
	t.Cleanup(release) // before the plugin stops (cleanups run last first)
	srv.ResetStats()
	req := podPublish(t, "oss://models/qwen/", "ml", "vllm-0")
	_, err := p.node.NodePublishVolume(t.Context(), req)
	if status.Code(err) != codes.Unavailable || !strings.Contains(status.Convert(err).Message(), "waiting for the ModelCache list") {
		t.Fatalf("publish before the first list: %v, want Unavailable waiting for the ModelCache list", err)
	}
	if n := ossRequests(srv); n != 0 {
		t.Errorf("%d OSS requests before authorization", n)
	}
	release()
	waitUntil(t, "the publish after the list to mount", func() bool {
		_, err = p.node.NodePublishVolume(t.Context(), req)
		if err != nil && status.Code(err) != codes.Unavailable {
			t.Fatalf("publish after the list: %v", err)
		}
		return err == nil
	})
}

// TestMountAuthorizationNeedsModelCaches: the driver refuses mount authorization it could not
// enforce: without a Kubernetes client (no ModelCaches to read), or in a mode that publishes
// nothing.
func TestMountAuthorizationNeedsModelCaches(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    driver.Options
		want string
	}{
		{"no client", driver.Options{Mode: driver.ModeNode, NodeID: "node-1"}, "mount authorization needs a Kubernetes client"},
		{"no dynamic client", driver.Options{Mode: driver.ModeNode, NodeID: "node-1", KubeClient: fake.NewSimpleClientset()}, "mount authorization needs a Kubernetes client"},
		{"controller", driver.Options{Mode: driver.ModeController, KubeClient: fake.NewSimpleClientset(), DynamicClient: modelCacheClient()}, "the controller mode publishes no volume"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.o.AuthorizeMounts, tc.o.Endpoint = true, "unix://"+filepath.Join(t.TempDir(), "csi.sock")
			if d, err := driver.New(tc.o); err == nil || !strings.Contains(err.Error(), tc.want) {
				if d != nil {
					d.Close()
				}
				t.Fatalf("New: %v, want an error saying %q", err, tc.want)
			}
		})
	}
}
