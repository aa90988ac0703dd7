package driver_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/modelcast/modelcast/pkg/driver"
	"github.com/modelcast/modelcast/test/ossemu"
)

// genModel generates a model under bucket "models" and returns its objects' bytes by path.
func genModel(t *testing.T, srv *ossemu.Server, prefix string, size int64) map[string][]byte {
	t.Helper()
	src := t.TempDir()
	objs, err := srv.GenerateModel("models", prefix, ossemu.ModelSpec{Size: size, Seed: 11, Dir: src})
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{}
	for _, o := range objs {
		rel := strings.TrimPrefix(o.Key, prefix)
		b, err := os.ReadFile(filepath.Join(src, rel))
		if err != nil {
			t.Fatal(err)
		}
		files[rel] = b
	}
	return files
}

func checkMounted(t *testing.T, target string, files map[string][]byte) {
	t.Helper()
	for rel, want := range files {
		got, err := os.ReadFile(filepath.Join(target, rel))
		if err != nil {
			t.Fatalf("read %s through the mount: %v", rel, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%s differs through the mount", rel)
		}
	}
	// Read-only, for the pod as for root.
	if err := os.WriteFile(filepath.Join(target, "new-file"), []byte("x"), 0o644); err == nil || !os.IsPermission(err) && !strings.Contains(err.Error(), "read-only") {
		t.Errorf("writing into the mount: %v, want a read-only file system error", err)
	}
}

func TestTwoPodsShareOneStaging(t *testing.T) {
	srv := emu(t)
	files := genModel(t, srv, "qwen/", 48<<20)
	p := startPlugin(t, inProcess{srv}, "")
	srv.ResetStats()
	targets := []string{target(t, "pod-a"), target(t, "pod-b")}
	var wg sync.WaitGroup
	errs := make([]error, len(targets))
	for i, tg := range targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = p.node.NodePublishVolume(t.Context(), publishReq("oss://models/qwen/", tg))
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
		checkMounted(t, targets[i], files)
	}
	var size int64
	for _, b := range files {
		size += int64(len(b))
	}
	if served := srv.Stats().BytesServed; served != size {
		t.Errorf("OSS served %d bytes for two pods of a %d-byte model, want exactly one copy", served, size)
	}
	// Publishing again is idempotent; unpublishing one pod leaves the other working.
	if _, err := p.node.NodePublishVolume(t.Context(), publishReq("oss://models/qwen/", targets[0])); err != nil {
		t.Fatalf("second publish: %v", err)
	}
	if _, err := p.node.NodeUnpublishVolume(t.Context(), &csi.NodeUnpublishVolumeRequest{VolumeId: "vol-1", TargetPath: targets[0]}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(targets[0]); !os.IsNotExist(err) {
		t.Errorf("target still there after unpublish: %v", err)
	}
	checkMounted(t, targets[1], files)
	if _, err := p.node.NodeUnpublishVolume(t.Context(), &csi.NodeUnpublishVolumeRequest{VolumeId: "vol-1", TargetPath: targets[0]}); err != nil {
		t.Errorf("second unpublish: %v", err)
	}
	if served := srv.Stats().BytesServed; served != size {
		t.Errorf("OSS served %d bytes in all, want %d", served, size)
	}
}

// TestPublishOutlastsKubeletDeadline: staging takes longer than one NodePublishVolume may; the
// call answers before its deadline with a retryable code and the progress, the staging goes
// on, and a retry completes without a second download.
func TestPublishOutlastsKubeletDeadline(t *testing.T) {
	srv := emu(t)
	files := genModel(t, srv, "big/", 32<<20)
	p := startPlugin(t, inProcess{srv}, "", withOptions(func(o *driver.Options) { o.PublishMargin = 500 * time.Millisecond }))
	srv.ResetStats()
	srv.SetEgressRate(16 << 20) // about two seconds for the model
	tg := target(t, "pod-a")

	ctx, cancel := context.WithTimeout(t.Context(), 1500*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := p.node.NodePublishVolume(ctx, publishReq("oss://models/big/", tg))
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("publish under a short deadline: %v, want Unavailable", err)
	}
	if time.Since(start) >= 1500*time.Millisecond {
		t.Errorf("answered after the deadline (%v): kubelet would see its own timeout, not the progress", time.Since(start))
	}
	msg := status.Convert(err).Message()
	if !regexp.MustCompile(`^staging oss://models/big/: [0-9.]+ [kMG]?B of 33.6 MB from OSS$`).MatchString(msg) || strings.Contains(msg, "%") {
		t.Errorf("message %q does not say how far the staging got", msg)
	}
	if _, err := p.node.NodePublishVolume(t.Context(), publishReq("oss://models/big/", tg)); err != nil {
		t.Fatalf("retry: %v", err)
	}
	checkMounted(t, tg, files)
	if st := srv.Stats(); st.BytesServed != 32<<20 {
		t.Errorf("OSS served %d bytes, want one copy (%d)", st.BytesServed, 32<<20)
	}
}

// TestRestartKeepsPublishedVolume: the plugin restarts with a volume published; the pod's mount
// keeps serving files, and the reference survives (the model is neither expired nor refetched).
func TestRestartKeepsPublishedVolume(t *testing.T) {
	srv := emu(t)
	files := genModel(t, srv, "qwen/", 8<<20)
	dir := t.TempDir()
	p := startPlugin(t, inProcess{srv}, dir)
	tg := target(t, "pod-a")
	if _, err := p.node.NodePublishVolume(t.Context(), publishReq("oss://models/qwen/", tg)); err != nil {
		t.Fatal(err)
	}
	p.stop()
	checkMounted(t, tg, files)

	srv.ResetStats()
	p2 := startPlugin(t, inProcess{srv}, dir)
	checkMounted(t, tg, files)
	if !p2.d.Store().Holds(tg) {
		t.Fatal("the restarted plugin lost the pod's reference")
	}
	// The publish kubelet may repeat after a restart is a no-op.
	if _, err := p2.node.NodePublishVolume(t.Context(), publishReq("oss://models/qwen/", tg)); err != nil {
		t.Fatal(err)
	}
	if served := srv.Stats().BytesServed; served != 0 {
		t.Errorf("OSS served %d bytes after the restart, want 0", served)
	}
	if _, err := p2.node.NodeUnpublishVolume(t.Context(), &csi.NodeUnpublishVolumeRequest{VolumeId: "vol-1", TargetPath: tg}); err != nil {
		t.Fatal(err)
	}
	if p2.d.Store().Holds(tg) {
		t.Errorf("reference kept after unpublish")
	}
}

// TestPodEvents: with pod information in the volume context, staging start, progress and
// readiness are posted as Events on the pod.
func TestPodEvents(t *testing.T) {
	srv := emu(t)
	genModel(t, srv, "qwen/", 24<<20)
	kube := fake.NewSimpleClientset(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "vllm-0", Namespace: "serving", UID: "uid-1"}})
	p := startPlugin(t, inProcess{srv}, "", withKube(kube), withOptions(func(o *driver.Options) { o.ProgressEvery = 100 * time.Millisecond }))
	srv.SetEgressRate(24 << 20) // a second: time for progress Events
	req := publishReq("oss://models/qwen/", target(t, "pod-a"))
	req.VolumeContext["csi.storage.k8s.io/pod.name"] = "vllm-0"
	req.VolumeContext["csi.storage.k8s.io/pod.namespace"] = "serving"
	req.VolumeContext["csi.storage.k8s.io/pod.uid"] = "uid-1"
	req.VolumeContext["csi.storage.k8s.io/ephemeral"] = "false"
	if _, err := p.node.NodePublishVolume(t.Context(), req); err != nil {
		t.Fatal(err)
	}
	waitEvents(t, kube, "serving", "vllm-0", "node-1", map[string]*regexp.Regexp{
		driver.ReasonStaging:  regexp.MustCompile(`^Staging model oss://models/qwen/ \(25\.2 MB, 6 files\) from OSS$`),
		driver.ReasonProgress: regexp.MustCompile(`^Staging oss://models/qwen/: \d+% \([0-9.]+ MB of 25\.2 MB\) at [0-9.]+ MB/s, (about \d+s|under a second) left, from OSS$`),
		driver.ReasonReady:    regexp.MustCompile(`^Ready: 25\.2 MB in \d+\.\d s \(peer 0 B, OSS 25\.2 MB\)$`),
	})
}

// waitEvents waits until the pod has an Event of every reason in want whose message matches,
// and fails if any Event reveals the test's secret.
func waitEvents(t *testing.T, kube *fake.Clientset, ns, pod, host string, want map[string]*regexp.Regexp) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		evs, err := kube.CoreV1().Events(ns).List(t.Context(), metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		found := map[string]bool{}
		for _, e := range evs.Items {
			if strings.Contains(e.Message, sk) {
				t.Fatalf("an Event reveals the secret: %q", e.Message)
			}
			if e.InvolvedObject.Name != pod || e.InvolvedObject.Kind != "Pod" || e.Source.Host != host {
				continue
			}
			if re, ok := want[e.Reason]; ok && re.MatchString(e.Message) {
				found[e.Reason] = true
			}
		}
		if len(found) == len(want) {
			return
		}
		if time.Now().After(deadline) {
			var got []string
			for _, e := range evs.Items {
				got = append(got, e.Reason+": "+e.Message)
			}
			t.Fatalf("Events matched %v of %d; events:\n%s", found, len(want), strings.Join(got, "\n"))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestPublishBadInput(t *testing.T) {
	srv := emu(t)
	genModel(t, srv, "qwen/", 1<<20)
	srv.PutObject("models", "evil/ok.bin", []byte("fine"))
	srv.PutObject("models", "evil/../../etc/cron.d/x", []byte("evil"))
	p := startPlugin(t, inProcess{srv}, "")
	writer := readOnlyCap()
	writer.AccessMode.Mode = csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER
	block := &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}, AccessMode: readOnlyCap().AccessMode}

	for _, tc := range []struct {
		name   string
		mutate func(*csi.NodePublishVolumeRequest)
		code   codes.Code
		hint   string
	}{
		{"missing volume id", func(r *csi.NodePublishVolumeRequest) { r.VolumeId = "" }, codes.InvalidArgument, "volume ID is required"},
		{"missing target path", func(r *csi.NodePublishVolumeRequest) { r.TargetPath = "" }, codes.InvalidArgument, "target path is required"},
		{"relative target path", func(r *csi.NodePublishVolumeRequest) { r.TargetPath = "pods/x/mount" }, codes.InvalidArgument, "not absolute"},
		{"missing capability", func(r *csi.NodePublishVolumeRequest) { r.VolumeCapability = nil }, codes.InvalidArgument, "volume capability is required"},
		{"writer access mode", func(r *csi.NodePublishVolumeRequest) { r.VolumeCapability = writer }, codes.InvalidArgument, "use accessModes [ReadOnlyMany]"},
		{"block volume", func(r *csi.NodePublishVolumeRequest) { r.VolumeCapability = block }, codes.InvalidArgument, "block volumes are not supported"},
		{"missing ossPath", func(r *csi.NodePublishVolumeRequest) { delete(r.VolumeContext, "ossPath") }, codes.InvalidArgument, "ossPath is required"},
		{"odd ossPath", func(r *csi.NodePublishVolumeRequest) { r.VolumeContext["ossPath"] = "s3://models/qwen/" }, codes.InvalidArgument, "must start with oss://"},
		{"bad bucket", func(r *csi.NodePublishVolumeRequest) { r.VolumeContext["ossPath"] = "oss://My_Bucket/qwen/" }, codes.InvalidArgument, `bucket name "My_Bucket"`},
		{"traversal in ossPath", func(r *csi.NodePublishVolumeRequest) { r.VolumeContext["ossPath"] = "oss://models/../etc/" }, codes.InvalidArgument, `".." path segment`},
		{"unknown attribute", func(r *csi.NodePublishVolumeRequest) { r.VolumeContext["osspath"] = "x" }, codes.InvalidArgument, "unknown volume attribute(s) osspath"},
		{"alias disagrees", func(r *csi.NodePublishVolumeRequest) { r.VolumeContext["OSS_PATH"] = "oss://models/other/" }, codes.InvalidArgument, "given twice"},
		{"bad broadcast", func(r *csi.NodePublishVolumeRequest) { r.VolumeContext["broadcast"] = "maybe" }, codes.InvalidArgument, "true or false"},
		{"half a secret", func(r *csi.NodePublishVolumeRequest) { r.Secrets = map[string]string{"akId": ak} }, codes.InvalidArgument, "no access key secret"},
		{"secret keys of another spelling", func(r *csi.NodePublishVolumeRequest) {
			r.Secrets = map[string]string{"accessKeyId": ak, "accessKeySecret": sk}
		}, codes.InvalidArgument, "unknown key(s) accessKeyId, accessKeySecret"},
		{"wrong credentials", func(r *csi.NodePublishVolumeRequest) { r.Secrets = map[string]string{"akId": ak, "akSecret": "wrong"} }, codes.PermissionDenied,
			"the credentials of the volume's secret (nodePublishSecretRef), access key "},
		{"anonymous on a private bucket", func(r *csi.NodePublishVolumeRequest) { r.Secrets = nil }, codes.PermissionDenied,
			"anonymous access (the volume has no secret and the node no OSS_ACCESS_KEY_ID) was refused by OSS: list oss://models/qwen/: access denied"},
		{"missing model", func(r *csi.NodePublishVolumeRequest) { r.VolumeContext["ossPath"] = "oss://models/nothing-here/" }, codes.NotFound, "oss://models/nothing-here/: not found"},
		{"missing bucket", func(r *csi.NodePublishVolumeRequest) { r.VolumeContext["ossPath"] = "oss://no-such-bucket/qwen/" }, codes.NotFound, "not found"},
		{"traversal keys in the bucket", func(r *csi.NodePublishVolumeRequest) { r.VolumeContext["ossPath"] = "oss://models/evil/" }, codes.FailedPrecondition, `unsafe object key "evil/../../etc/cron.d/x"`},
		{"bad endpoint", func(r *csi.NodePublishVolumeRequest) { r.VolumeContext["endpoint"] = "ftp://oss.example.com" }, codes.InvalidArgument, "scheme must be http or https"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := publishReq("oss://models/qwen/", target(t, "pod"))
			tc.mutate(req)
			_, err := p.node.NodePublishVolume(t.Context(), req)
			if got := status.Code(err); got != tc.code {
				t.Fatalf("code %v (%v), want %v", got, err, tc.code)
			}
			msg := status.Convert(err).Message()
			if !strings.Contains(msg, tc.hint) {
				t.Errorf("message %q lacks %q", msg, tc.hint)
			}
			if strings.Contains(msg, sk) || strings.Contains(msg, "wrong") && tc.name == "wrong credentials" {
				t.Errorf("message reveals a secret: %q", msg)
			}
			if req.TargetPath != "" && filepath.IsAbs(req.TargetPath) {
				if mounted, _ := isMountPoint(req.TargetPath); mounted {
					t.Errorf("a failed publish left a mount at the target")
				}
			}
		})
	}
	// Unpublish needs its IDs too, and an absolute target path.
	for _, r := range []*csi.NodeUnpublishVolumeRequest{{TargetPath: "/x"}, {VolumeId: "v"}, {VolumeId: "v", TargetPath: "pods/x/mount"}} {
		if _, err := p.node.NodeUnpublishVolume(t.Context(), r); status.Code(err) != codes.InvalidArgument {
			t.Errorf("unpublish %+v: %v, want InvalidArgument", r, err)
		}
	}
}

// TestEphemeralInlineVolume: kubelet asks for an inline volume with a single-node writer mode,
// whatever the pod says; it is accepted and still mounted read-only.
func TestEphemeralInlineVolume(t *testing.T) {
	srv := emu(t)
	files := genModel(t, srv, "qwen/", 1<<20)
	p := startPlugin(t, inProcess{srv}, "")
	tg := target(t, "pod-a")
	req := publishReq("oss://models/qwen/", tg)
	req.VolumeId = "csi-0123456789abcdef"
	req.VolumeCapability.AccessMode.Mode = csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER
	req.Readonly = false
	req.VolumeContext["csi.storage.k8s.io/ephemeral"] = "true"
	if _, err := p.node.NodePublishVolume(t.Context(), req); err != nil {
		t.Fatal(err)
	}
	checkMounted(t, tg, files)
}

func isMountPoint(path string) (bool, error) {
	var st, parent unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return false, err
	}
	if err := unix.Stat(filepath.Dir(path), &parent); err != nil {
		return false, err
	}
	return st.Dev != parent.Dev, nil
}
