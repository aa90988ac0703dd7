package driver_test

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/modelcast/modelcast/pkg/driver"
	"github.com/modelcast/modelcast/test/ossemu"
)

// modelKey is the cache key of the staged model at uri, if it is staged.
func modelKey(p *plugin, uri string) (string, bool) {
	for _, m := range p.d.Store().Models() {
		if m.URI == uri {
			return m.Key, true
		}
	}
	return "", false
}

// unavailable publishes req under a short deadline and wants Unavailable: the staging goes
// on, kubelet retries.
func unavailable(t *testing.T, p *plugin, req *csi.NodePublishVolumeRequest) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 400*time.Millisecond)
	defer cancel()
	if _, err := p.node.NodePublishVolume(ctx, req); status.Code(err) != codes.Unavailable {
		t.Fatalf("publish under a short deadline: %v, want Unavailable", err)
	}
}

// TestRetryAfterExpiryFindsModel: a publish answers Unavailable while its model stages; the
// staging ends, and kubelet's retry comes only after its backoff, later than expireTimeSec.
// The model is kept for that target: the retry mounts it without OSS serving it again.
func TestRetryAfterExpiryFindsModel(t *testing.T) {
	srv := emu(t)
	files := genModel(t, srv, "big/", 8<<20)
	genModel(t, srv, "control/", 1<<20)
	clk := clocktesting.NewFakeClock(time.Now())
	p := startPlugin(t, inProcess{srv}, "", withOptions(func(o *driver.Options) {
		o.Config.ExpireTimeSec = 30
		o.Clock = clk
	}))

	// control: a model released now, expiring after 30 s. Its expiry tells that the cache
	// looked at every model at the clock's new time.
	tc := target(t, "pod-control")
	if _, err := p.node.NodePublishVolume(t.Context(), publishReq("oss://models/control/", tc)); err != nil {
		t.Fatal(err)
	}
	if _, err := p.node.NodeUnpublishVolume(t.Context(), &csi.NodeUnpublishVolumeRequest{VolumeId: "vol-1", TargetPath: tc}); err != nil {
		t.Fatal(err)
	}
	controlKey, _ := modelKey(p, "oss://models/control/")

	srv.ResetStats()
	srv.SetEgressRate(8 << 20) // a second for the model: longer than the publish waits
	tg := target(t, "pod-a")
	unavailable(t, p, publishReq("oss://models/big/", tg))
	waitUntil(t, "the staging to end", func() bool { _, ok := modelKey(p, "oss://models/big/"); return ok })
	key, _ := modelKey(p, "oss://models/big/")

	// Kubelet's backoff outlasts expireTimeSec.
	clk.Step(31 * time.Second)
	waitUntil(t, "the control model to expire", func() bool { return !p.d.Store().Has(controlKey) })
	if !p.d.Store().Has(key) {
		t.Fatal("the model expired before the retry of the publish it was staged for")
	}
	if _, err := p.node.NodePublishVolume(t.Context(), publishReq("oss://models/big/", tg)); err != nil {
		t.Fatalf("retry: %v", err)
	}
	checkMounted(t, tg, files)
	if served := srv.Stats().BytesServed; served != 8<<20 {
		t.Errorf("OSS served %d bytes, want one copy (%d)", served, 8<<20)
	}
}

// TestRetryEvents: a pod's publish waits, answers Unavailable, and is retried while the model
// stages and once more after it is staged. The pod gets one StagingModel Event for the
// staging, and ModelReady when its publish succeeds, though the model was staged by then.
func TestRetryEvents(t *testing.T) {
	srv := emu(t)
	genModel(t, srv, "qwen/", 8<<20)
	kube := fake.NewSimpleClientset(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "vllm-0", Namespace: "serving", UID: "uid-1"}})
	p := startPlugin(t, inProcess{srv}, "", withKube(kube))
	srv.SetEgressRate(4 << 20) // two seconds: several publishes answer Unavailable
	req := podPublishReq("oss://models/qwen/", target(t, "pod-a"))

	unavailable(t, p, req)
	unavailable(t, p, req)
	unavailable(t, p, req)
	waitUntil(t, "the staging to end", func() bool { _, ok := modelKey(p, "oss://models/qwen/"); return ok })
	if _, err := p.node.NodePublishVolume(t.Context(), req); err != nil {
		t.Fatalf("retry: %v", err)
	}
	// Events are posted in order: once ModelReady is there, so are the others.
	waitEvents(t, kube, "serving", "vllm-0", "node-1", map[string]*regexp.Regexp{
		driver.ReasonReady: regexp.MustCompile(`^Ready: 8\.4 MB in \d+\.\d s \(peer 0 B, OSS 8\.4 MB\)$`),
	})
	counts := eventCounts(t, kube, "serving")
	if counts[driver.ReasonStaging] != 1 || counts[driver.ReasonReady] != 1 {
		t.Errorf("Events by reason %v, want one %s and one %s", counts, driver.ReasonStaging, driver.ReasonReady)
	}

	// Another pod finding the model staged has no Events: a cache hit.
	other := podPublishReq("oss://models/qwen/", target(t, "pod-b"))
	other.VolumeContext["csi.storage.k8s.io/pod.name"] = "vllm-1"
	if _, err := p.node.NodePublishVolume(t.Context(), other); err != nil {
		t.Fatal(err)
	}
	if n := eventCounts(t, kube, "serving")[driver.ReasonReady]; n != 1 {
		t.Errorf("%d ModelReady Events after a cache hit of another pod, want still 1", n)
	}
}

// TestEventsAggregate: a staging fails twice alike (OSS refuses a GET). The StagingFailed
// Events and the messages kubelet posts (the call's) carry no OSS request id, so the two
// failures are one Event with a count of two.
func TestEventsAggregate(t *testing.T) {
	srv := emu(t)
	files := genModel(t, srv, "qwen/", 1<<20)
	kube := fake.NewSimpleClientset(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "vllm-0", Namespace: "serving", UID: "uid-1"}})
	p := startPlugin(t, inProcess{srv}, "", withKube(kube))
	var refused string // one object, so that every failure names the same
	for rel := range files {
		refused = max(refused, rel)
	}
	srv.InjectFault(ossemu.Fault{Op: ossemu.OpGet, Key: "qwen/" + refused, Kind: ossemu.FaultStatus, Status: 403, Count: -1})
	req := podPublishReq("oss://models/qwen/", target(t, "pod-a"))

	var msgs []string
	for range 2 {
		_, err := p.node.NodePublishVolume(t.Context(), req)
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("publish with GETs refused: %v, want PermissionDenied", err)
		}
		msgs = append(msgs, status.Convert(err).Message())
	}
	for _, m := range msgs {
		if strings.Contains(strings.ToLower(m), "request id") || !strings.Contains(m, "HTTP 403") {
			t.Errorf("message %q: want the failure without its request id", m)
		}
	}
	if msgs[0] != msgs[1] {
		t.Errorf("two identical failures, two messages:\n%s\n%s", msgs[0], msgs[1])
	}
	var failed []corev1.Event
	waitUntil(t, "one StagingFailed Event with a count of 2", func() bool {
		evs, err := kube.CoreV1().Events("serving").List(t.Context(), metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		failed = failed[:0]
		for _, e := range evs.Items {
			if e.Reason == driver.ReasonStagingFailed {
				failed = append(failed, e)
			}
		}
		return len(failed) == 1 && failed[0].Count == 2 || len(failed) > 1
	})
	if len(failed) != 1 {
		for _, e := range failed {
			t.Errorf("StagingFailed ×%d: %q", e.Count, e.Message)
		}
		t.Fatalf("%d StagingFailed Events for two identical failures, want one with a count of 2", len(failed))
	}
	if m := failed[0].Message; strings.Contains(strings.ToLower(m), "request id") || !strings.Contains(m, "HTTP 403") {
		t.Errorf("StagingFailed message %q: want the failure without its request id", m)
	}
}

// podPublishReq is publishReq with the pod information kubelet adds (podInfoOnMount).
func podPublishReq(path, target string) *csi.NodePublishVolumeRequest {
	req := publishReq(path, target)
	req.VolumeContext["csi.storage.k8s.io/pod.name"] = "vllm-0"
	req.VolumeContext["csi.storage.k8s.io/pod.namespace"] = "serving"
	req.VolumeContext["csi.storage.k8s.io/pod.uid"] = "uid-1"
	req.VolumeContext["csi.storage.k8s.io/ephemeral"] = "false"
	return req
}

// eventCounts sums the Events of the namespace by reason (a repeated Event counts each time).
func eventCounts(t *testing.T, kube *fake.Clientset, ns string) map[string]int {
	t.Helper()
	evs, err := kube.CoreV1().Events(ns).List(t.Context(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	counts := map[string]int{}
	for _, e := range evs.Items {
		counts[e.Reason] += int(max(1, e.Count))
	}
	return counts
}
