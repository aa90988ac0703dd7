package driver_test

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/modelcast/modelcast/pkg/driver"
	"github.com/modelcast/modelcast/test/ossemu"
)

// pollFor waits for cond, checking every 20 ms, until timeout.
func pollFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline.C:
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		case <-tick.C:
		}
	}
}

// TestRestartedPluginServesCachedModelWhileOSSIsDown: a model staged before a plugin restart
// stays in the cache tmpfs; after the restart OSS fails every request (503, then not there at
// all), and a publish of the model still succeeds from the cache, by the manifest kept beside
// it, without one OSS request succeeding, and says so in a pod Event. Credentials that never
// listed the model get Unavailable, not the model. Once OSS answers, its listing wins: a
// changed model is staged anew.
func TestRestartedPluginServesCachedModelWhileOSSIsDown(t *testing.T) {
	const otherKey, otherSecret = "LTAI5tOtherTenantKey", "other-tenant-secret"
	srv := ossemu.Start(t, ossemu.Options{Region: region, Credentials: []ossemu.Credential{
		{AccessKeyID: ak, AccessKeySecret: sk}, {AccessKeyID: otherKey, AccessKeySecret: otherSecret},
	}})
	srv.CreateBucket("models", ossemu.BucketOptions{})
	v1 := genModel(t, srv, "qwen/", 4<<20)
	dir := t.TempDir()

	p1 := startPlugin(t, inProcess{srv}, dir)
	ta := target(t, "pod-a")
	if _, err := p1.node.NodePublishVolume(t.Context(), publishReq("oss://models/qwen/", ta)); err != nil {
		t.Fatal(err)
	}
	p1.stop() // the pod keeps its mount, the cache its tmpfs

	kube := fake.NewSimpleClientset(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "vllm-1", Namespace: "serving", UID: "uid-1"}})
	p2 := startPlugin(t, inProcess{srv}, dir, withKube(kube))
	srv.ResetStats()
	srv.InjectFault(ossemu.Fault{Kind: ossemu.FaultStatus, Status: 503, Count: -1})

	tb := target(t, "pod-b")
	req := publishReq("oss://models/qwen/", tb)
	req.VolumeContext["csi.storage.k8s.io/pod.name"] = "vllm-1"
	req.VolumeContext["csi.storage.k8s.io/pod.namespace"] = "serving"
	req.VolumeContext["csi.storage.k8s.io/pod.uid"] = "uid-1"
	if _, err := p2.node.NodePublishVolume(t.Context(), req); err != nil {
		t.Fatalf("publish of a cached model after a restart, OSS answering 503: %v", err)
	}
	checkMounted(t, tb, v1)
	st := srv.Stats()
	var requests int64
	for _, n := range st.Requests {
		requests += n
	}
	if requests == 0 || st.FaultsHit != requests || st.BytesServed != 0 {
		t.Errorf("OSS answered %d of %d requests (and served %d bytes); want every one refused", requests-st.FaultsHit, requests, st.BytesServed)
	}
	want := regexp.MustCompile(`^OSS did not answer the listing of oss://models/qwen/ \(.*OSS unavailable.*503.*\); using the version listed before, without checking OSS for a newer one$`)
	pollFor(t, "the pod's ModelNotChecked Event", 10*time.Second, func() bool {
		evs, err := kube.CoreV1().Events("serving").List(t.Context(), metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range evs.Items {
			if strings.Contains(e.Message, sk) {
				t.Fatalf("an Event reveals the secret: %q", e.Message)
			}
			if e.Reason == driver.ReasonUnchecked && e.Type == corev1.EventTypeWarning && e.InvolvedObject.Name == "vllm-1" && want.MatchString(e.Message) {
				return true
			}
		}
		return false
	})

	// Credentials that never listed the model do not get it while OSS cannot say whether
	// they may read it.
	other := publishReq("oss://models/qwen/", target(t, "pod-c"))
	other.Secrets = map[string]string{"akId": otherKey, "akSecret": otherSecret}
	_, err := p2.node.NodePublishVolume(t.Context(), other)
	if status.Code(err) != codes.Unavailable || !strings.Contains(status.Convert(err).Message(), "OSS unavailable") {
		t.Errorf("publish with credentials that never listed the model, OSS down: %v; want Unavailable", err)
	}

	// OSS answers again, with a changed model: its listing wins.
	srv.ClearFaults()
	src := t.TempDir()
	objs, err := srv.GenerateModel("models", "qwen/", ossemu.ModelSpec{Size: 4 << 20, Seed: 12, Dir: src})
	if err != nil {
		t.Fatal(err)
	}
	v2 := map[string][]byte{}
	for _, o := range objs {
		rel := strings.TrimPrefix(o.Key, "qwen/")
		b, err := os.ReadFile(filepath.Join(src, rel))
		if err != nil {
			t.Fatal(err)
		}
		v2[rel] = b
	}
	td := target(t, "pod-d")
	if _, err := p2.node.NodePublishVolume(t.Context(), publishReq("oss://models/qwen/", td)); err != nil {
		t.Fatalf("publish once OSS answers: %v", err)
	}
	checkMounted(t, td, v2)
	if len(p2.d.Store().Models()) != 2 {
		t.Errorf("cached models: %+v; want the old version (still mounted) and the new one", p2.d.Store().Models())
	}

	// Another restart, and OSS gone altogether: the newest version these credentials listed
	// is served.
	p2.stop()
	_ = srv.Close()
	p3 := startPlugin(t, inProcess{srv}, dir)
	te := target(t, "pod-e")
	if _, err := p3.node.NodePublishVolume(t.Context(), publishReq("oss://models/qwen/", te)); err != nil {
		t.Fatalf("publish after a restart with OSS not listening: %v", err)
	}
	checkMounted(t, te, v2)
	checkMounted(t, ta, v1)
}
