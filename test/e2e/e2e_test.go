//go:build e2e

// Package e2e runs modelcast on a real single-node Kubernetes (hack/e2e/cluster.sh): the Helm
// chart installed with helm, the plugin image imported into containerd, a real kubelet calling
// the node plugin, the OSS emulator and a real redis-server on the host. `make e2e` runs it;
// it needs the cluster's environment (cluster.sh env) and root.
package e2e

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/modelcast/modelcast/pkg/apis/modelcast/v1alpha1"
	"github.com/modelcast/modelcast/pkg/ossclient"
	"github.com/modelcast/modelcast/pkg/prewarm"
	"github.com/modelcast/modelcast/test/ossemu"
	"github.com/modelcast/modelcast/test/promtest"
	"github.com/modelcast/modelcast/test/redistest"
)

const (
	release    = "mc"
	namespace  = "kube-system"
	driverName = "oss.csi.modelcast.io"
	image      = "modelcast/csi-plugin:e2e"
	region     = "cn-e2e"
	accessKey  = "LTAIe2e0000modelcast"
	secretKey  = "e2e-secret-not-for-production"
	smallSize  = 48 << 20
	slowSize   = 40 << 20
	slowRate   = 1 << 20   // bytes/s: the slow model takes ~40 s, four NodePublish calls of 10 s
	startSize  = 256 << 20 // the warm-start case's two models, cold/ and warm/
	startRate  = 64 << 20  // bytes/s of OSS egress in the warm-start case
	poolSize   = 64 << 20  // the model four nodes pre-warm
	poolLabel  = "modelcast.io/e2e-pool"
	expireSec  = 10
	httpPort   = 19899
	testNS     = "default"
)

type env struct {
	kube       kubernetes.Interface
	dyn        dynamic.Interface
	kubeletDir string
	nodeName   string
	nodeIP     string
	dir        string // the e2e state directory
	repo       string
	helm       string
	emu        *ossemu.Process
	oss        *ossclient.Client
	cacheRoot  string
}

func need(t *testing.T, name string) string {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		t.Fatalf("$%s is not set: run the suite with `make e2e` (it sources hack/e2e/cluster.sh env)", name)
	}
	return v
}

func setup(t *testing.T, ctx context.Context) *env {
	t.Helper()
	e := &env{kubeletDir: need(t, "KUBELET_DIR"), nodeName: need(t, "NODE_NAME"), nodeIP: need(t, "NODE_IP"), dir: need(t, "E2E_DIR")}
	rc, err := clientcmd.BuildConfigFromFlags("", need(t, "KUBECONFIG"))
	if err != nil {
		t.Fatal(err)
	}
	if e.kube, err = kubernetes.NewForConfig(rc); err != nil {
		t.Fatal(err)
	}
	if e.dyn, err = dynamic.NewForConfig(rc); err != nil {
		t.Fatal(err)
	}
	if e.repo, err = filepath.Abs("../.."); err != nil {
		t.Fatal(err)
	}
	e.helm = filepath.Join(e.repo, "bin/tools/helm")
	e.cacheRoot = filepath.Join(e.dir, "modelcast/cache")

	// OSS on the node's address, where both the host-network node plugin and the controller's
	// pod reach it, answering as an object store does (first-byte latency, a rate cap per
	// connection); the models are generated safetensors-like files with OSS CRC-64s.
	e.emu, err = ossemu.StartProcess(ctx, "--listen", e.nodeIP+":0", "--region", region, "--profile", "object-store",
		"--access-key-id", accessKey, "--access-key-secret", secretKey, "--bucket", "models",
		"--generate", fmt.Sprintf("models/small/=%d", smallSize), "--generate", fmt.Sprintf("models/slow/=%d", slowSize),
		"--generate", fmt.Sprintf("models/cold/=%d", startSize), "--generate", fmt.Sprintf("models/warm/=%d", startSize),
		"--generate", fmt.Sprintf("models/pool/=%d", poolSize))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.emu.Stop() })
	if e.oss, err = ossclient.New(ossclient.Config{Endpoint: e.emu.Endpoint, Region: region,
		Credentials: ossclient.Credentials{AccessKeyID: accessKey, AccessKeySecret: secretKey}}); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *env) run(t *testing.T, ctx context.Context, name string, args ...string) string {
	t.Helper()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// waitFor polls cond until it holds or the deadline passes; the last state is in the failure.
func waitFor(t *testing.T, ctx context.Context, within time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(within)
	last := ""
	for {
		ok, state := cond()
		if ok {
			return
		}
		last = state
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("%s: not within %v; last: %s", what, within, last)
		}
		select {
		case <-ctx.Done():
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func TestE2E(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 25*time.Minute)
	defer cancel()
	e := setup(t, ctx)

	// Redis for broadcasting: a real redis-server with an ACL user, its password in a Secret.
	rds := redistest.Start(t, redistest.Options{Username: "modelcast", Password: "e2e-redis-password"})
	e.secret(t, ctx, namespace, "e2e-redis", map[string]string{"password": "e2e-redis-password"})
	e.secret(t, ctx, testNS, "oss-credentials", map[string]string{"akId": accessKey, "akSecret": secretKey})
	host, port, _ := strings.Cut(rds.Addr(), ":")

	t.Log("helm install")
	e.run(t, ctx, e.helm, "install", release, filepath.Join(e.repo, "charts/modelcast"), "--namespace", namespace,
		"--set", "image.repository=modelcast/csi-plugin,image.tag=e2e,image.pullPolicy=Never",
		"--set", "kubeletDir="+e.kubeletDir,
		"--set", "node.registration=builtin,node.livenessProbe.sidecar=false", // no sidecar images here
		"--set", "redis.mode=external,redis.external.host="+host+",redis.external.port="+port+",redis.external.username=modelcast,redis.external.existingSecret=e2e-redis",
		"--set", "oss.endpoint="+e.emu.Endpoint+",oss.region="+region+",oss.accessKeyId="+accessKey+",oss.accessKeySecret="+secretKey,
		"--set", "config.expireTimeSec="+strconv.Itoa(expireSec)+",config.cache.root="+e.cacheRoot+",config.cache.tmpfsSize=1g",
		"--set", "config.broadcast.tenant=e2e",
		"--set", "modelCache.secretNamespaces={"+testNS+"}", // ModelCaches there may name a Secret
		"--set", "node.extraArgs[0]=--publish-wait=10s,node.extraArgs[1]=--progress-every=5s",
	)
	uninstalled := false
	t.Cleanup(func() {
		if !uninstalled {
			_ = exec.Command(e.helm, "uninstall", release, "--namespace", namespace, "--wait", "--timeout", "2m").Run()
		}
	})

	// The node plugin registers itself with the kubelet (no registrar image here).
	waitFor(t, ctx, 2*time.Minute, "the node plugin registered in CSINode", func() (bool, string) {
		n, err := e.kube.StorageV1().CSINodes().Get(ctx, e.nodeName, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		for _, d := range n.Spec.Drivers {
			if d.Name == driverName {
				return true, ""
			}
		}
		return false, fmt.Sprintf("drivers %v; plugin pods: %s", n.Spec.Drivers, e.podsState(ctx, "node"))
	})
	waitFor(t, ctx, time.Minute, "the node plugin Ready (/readyz: cache mounted)", func() (bool, string) {
		return e.componentReady(ctx, "node")
	})
	scrape := func() *promtest.Samples {
		s, err := promtest.Scrape(ctx, fmt.Sprintf("http://%s:%d/metrics", e.nodeIP, httpPort))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}

	small, err := e.oss.Manifest(ctx, ossclient.URI{Bucket: "models", Prefix: "small/"})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.emu.ResetStats(); err != nil {
		t.Fatal(err)
	}

	t.Run("inline ephemeral volume", func(t *testing.T) {
		pod := readerPod("reader-inline", corev1.VolumeSource{CSI: &corev1.CSIVolumeSource{
			Driver: driverName, ReadOnly: ptr(true),
			VolumeAttributes: map[string]string{"ossPath": "oss://models/small/"},
		}})
		e.runReader(t, ctx, pod, small, 3*time.Minute)
		if m := scrape(); m.Get("modelcast_received_bytes_total", "source", "oss") != smallSize {
			t.Errorf("metrics: received from OSS %v, want %d", m.Get("modelcast_received_bytes_total", "source", "oss"), smallSize)
		}
	})

	t.Run("static PV from CreateVolume, second pod from cache", func(t *testing.T) {
		vol := e.createVolume(t, ctx)
		if got := vol.CapacityBytes; got != smallSize {
			t.Errorf("CreateVolume capacity %d, want the model's size %d (the controller lists OSS)", got, smallSize)
		}
		pv := &corev1.PersistentVolume{
			ObjectMeta: metav1.ObjectMeta{Name: "e2e-static"},
			Spec: corev1.PersistentVolumeSpec{
				Capacity:                      corev1.ResourceList{corev1.ResourceStorage: *resource.NewQuantity(vol.CapacityBytes, resource.BinarySI)},
				AccessModes:                   []corev1.PersistentVolumeAccessMode{corev1.ReadOnlyMany},
				PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimRetain,
				ClaimRef:                      &corev1.ObjectReference{Namespace: testNS, Name: "e2e-static"},
				PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{
					Driver: driverName, VolumeHandle: vol.VolumeId, ReadOnly: true, VolumeAttributes: vol.VolumeContext,
					NodePublishSecretRef: &corev1.SecretReference{Name: "oss-credentials", Namespace: testNS},
				}},
			},
		}
		if _, err := e.kube.CoreV1().PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		pvc := &corev1.PersistentVolumeClaim{
			ObjectMeta: metav1.ObjectMeta{Name: "e2e-static", Namespace: testNS},
			Spec: corev1.PersistentVolumeClaimSpec{
				StorageClassName: ptr(""), VolumeName: "e2e-static",
				AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadOnlyMany},
				Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: *resource.NewQuantity(vol.CapacityBytes, resource.BinarySI)}},
			},
		}
		if _, err := e.kube.CoreV1().PersistentVolumeClaims(testNS).Create(ctx, pvc, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, ctx, time.Minute, "the PVC bound", func() (bool, string) {
			c, err := e.kube.CoreV1().PersistentVolumeClaims(testNS).Get(ctx, "e2e-static", metav1.GetOptions{})
			if err != nil {
				return false, err.Error()
			}
			return c.Status.Phase == corev1.ClaimBound, string(c.Status.Phase)
		})
		pod := readerPod("reader-pv", corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "e2e-static", ReadOnly: true}})
		start := time.Now()
		e.runReader(t, ctx, pod, small, 2*time.Minute)
		t.Logf("second pod on the model ready in %v", time.Since(start).Round(time.Millisecond))
		st, err := e.emu.Stats()
		if err != nil {
			t.Fatal(err)
		}
		if st.BytesServed != smallSize {
			t.Errorf("the emulator served %d bytes for two pods of a %d-byte model: want one copy", st.BytesServed, smallSize)
		}
		if m := scrape(); m.Get("modelcast_cache_references") != 2 || m.Get("modelcast_cache_models") != 1 {
			t.Errorf("metrics: references %v, models %v; want 2 and 1", m.Get("modelcast_cache_references"), m.Get("modelcast_cache_models"))
		}
	})

	t.Run("staging longer than a NodePublishVolume call", func(t *testing.T) {
		slow, err := e.oss.Manifest(ctx, ossclient.URI{Bucket: "models", Prefix: "slow/"})
		if err != nil {
			t.Fatal(err)
		}
		if err := e.emu.SetEgressRate(slowRate); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = e.emu.SetEgressRate(0) }()
		if err := e.emu.ResetStats(); err != nil {
			t.Fatal(err)
		}
		pod := readerPod("reader-slow", corev1.VolumeSource{CSI: &corev1.CSIVolumeSource{
			Driver: driverName, ReadOnly: ptr(true),
			VolumeAttributes: map[string]string{"ossPath": "oss://models/slow/"},
		}})
		// When the emulator served the model's last byte: the staging's end, give or take the
		// commit (polling with a deadline, in the background while the pod starts).
		served := make(chan time.Time, 1)
		wctx, stopWatch := context.WithCancel(ctx)
		defer stopWatch()
		go func() {
			for wctx.Err() == nil {
				if st, err := e.emu.Stats(); err == nil && st.BytesServed >= slowSize {
					served <- time.Now()
					return
				}
				time.Sleep(100 * time.Millisecond) // polling with a deadline (the subtest's)
			}
		}()
		start := time.Now()
		e.runReader(t, ctx, pod, slow, 4*time.Minute)
		took := time.Since(start)
		// The model was staged once, though expireTimeSec (10 s) is shorter than kubelet's
		// backoff between the publishes that answered Unavailable.
		if st, err := e.emu.Stats(); err != nil || st.BytesServed != slowSize {
			t.Errorf("the emulator served %d bytes (%v) for the %d-byte slow model: want one copy", st.BytesServed, err, slowSize)
		}
		// The gap between the staging's end and the container's start: kubelet's backoff when the
		// staging ends between two of its retries (--publish-wait 10 s here).
		var ended time.Time
		select {
		case ended = <-served:
		default:
			t.Errorf("never saw the emulator serve the whole slow model")
		}
		if p, err := e.kube.CoreV1().Pods(testNS).Get(ctx, "reader-slow", metav1.GetOptions{}); err == nil && !ended.IsZero() {
			for _, cs := range p.Status.ContainerStatuses {
				var began time.Time
				switch {
				case cs.State.Terminated != nil:
					began = cs.State.Terminated.StartedAt.Time
				case cs.State.Running != nil:
					began = cs.State.Running.StartedAt.Time
				}
				if !began.IsZero() {
					t.Logf("container started %.0f s after the staging ended (±1 s: a container's start time is truncated to the second; --publish-wait 10 s, so the publish that mounted it was a kubelet retry)", began.Sub(ended).Seconds())
				}
			}
		}
		if took < 20*time.Second {
			t.Errorf("the slow model was ready in %v: the test needs a staging that outlasts a 10 s call", took)
		}
		evs := e.eventsString(ctx, "reader-slow")
		for _, want := range []string{"StagingModel: Staging model oss://models/slow/", "StagingProgress: Staging oss://models/slow/", "ModelReady: Ready: "} {
			if !strings.Contains(evs, want) {
				t.Errorf("the pod's Events lack %q:\n%s", want, evs)
			}
		}
		if strings.Contains(evs, "%!") {
			t.Errorf("an Event's message was mangled by a format function:\n%s", evs)
		}
		if !strings.Contains(evs, "FailedMount") || !strings.Contains(evs, "staging oss://models/slow/: ") {
			t.Errorf("kubelet did not retry a NodePublishVolume that answered while staging:\n%s", evs)
		}
		t.Logf("slow model (%d bytes at %d B/s) ready in %v; events:\n%s", slowSize, slowRate, took.Round(time.Second), evs)
	})

	t.Run("a ModelCache pre-warms the node, a pod starts on it without OSS, deleting it releases the model", func(t *testing.T) {
		coldM, err := e.oss.Manifest(ctx, ossclient.URI{Bucket: "models", Prefix: "cold/"})
		if err != nil {
			t.Fatal(err)
		}
		warmM, err := e.oss.Manifest(ctx, ossclient.URI{Bucket: "models", Prefix: "warm/"})
		if err != nil {
			t.Fatal(err)
		}
		if err := e.emu.SetEgressRate(startRate); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = e.emu.SetEgressRate(0) }()
		base := scrape()
		baseRefs, baseModels := base.Get("modelcast_cache_references"), base.Get("modelcast_cache_models")

		// A cold node: the pod's publish stages the model from OSS.
		if err := e.emu.ResetStats(); err != nil {
			t.Fatal(err)
		}
		coldPod := readerPod("start-cold", corev1.VolumeSource{CSI: &corev1.CSIVolumeSource{
			Driver: driverName, ReadOnly: ptr(true), VolumeAttributes: map[string]string{"ossPath": "oss://models/cold/"}}})
		coldTook := e.startPod(t, ctx, coldPod, 3*time.Minute)
		e.waitReader(t, ctx, coldPod, coldM, time.Minute)
		if st, err := e.emu.Stats(); err != nil || st.BytesServed != startSize {
			t.Errorf("the emulator served %d bytes (%v) for the cold pod's %d-byte model: want one copy", st.BytesServed, err, startSize)
		}

		// A ModelCache naming the node stages the other model before any pod asks.
		if err := e.emu.ResetStats(); err != nil {
			t.Fatal(err)
		}
		refs := scrape().Get("modelcast_cache_references")
		created := time.Now()
		e.createModelCache(t, ctx, &v1alpha1.ModelCache{ObjectMeta: metav1.ObjectMeta{Name: "e2e-warm", Namespace: testNS},
			Spec: v1alpha1.ModelCacheSpec{OSSPath: "oss://models/warm/", NodeNames: []string{e.nodeName},
				SecretRef: &v1alpha1.SecretReference{Name: "oss-credentials"}}}) // read through the chart's Role in testNS
		mc := e.waitModelCache(t, ctx, testNS, "e2e-warm", 2*time.Minute, "the node's status entry Ready", func(mc *v1alpha1.ModelCache) bool {
			n, ok := entry(mc, e.nodeName)
			return ok && n.State == v1alpha1.NodeReady
		})
		stagedIn := time.Since(created)
		if n, _ := entry(mc, e.nodeName); n.Bytes != startSize || n.TotalBytes != startSize {
			t.Errorf("Ready entry %+v: want %d of %d bytes", n, startSize, startSize)
		}
		// The controller's totals (its own field manager, through its ClusterRole).
		mc = e.waitModelCache(t, ctx, testNS, "e2e-warm", time.Minute, "the totals readyNodes == desiredNodes == 1, Ready", allReady(1))
		if mc.Status.Size != startSize {
			t.Errorf("status.size %d, want %d", mc.Status.Size, startSize)
		}
		if got := scrape().Get("modelcast_cache_references"); got != refs+1 {
			t.Errorf("references %v with the ModelCache's pin, want %v", got, refs+1)
		}
		// The node's Events on the ModelCache, and the totals' writer holding its lease.
		evs := e.eventsIn(ctx, testNS, "e2e-warm")
		for _, want := range []string{"StagingModel: Staging oss://models/warm/ on node " + e.nodeName, "ModelReady: Model oss://models/warm/ ready on node " + e.nodeName} {
			if !strings.Contains(evs, want) {
				t.Errorf("the ModelCache's Events lack %q:\n%s", want, evs)
			}
		}
		t.Logf("the ModelCache's Events:\n%s", evs)
		lease, err := e.kube.CoordinationV1().Leases(namespace).Get(ctx, "oss-csi-modelcast-io-totals", metav1.GetOptions{})
		if err != nil {
			t.Errorf("the totals' lease: %v", err)
		} else if h := lease.Spec.HolderIdentity; h == nil || !strings.HasPrefix(*h, release+"-modelcast-controller-") {
			t.Errorf("the totals' lease is held by %v, want the controller's pod", h)
		}
		if st, err := e.emu.Stats(); err != nil || st.BytesServed != startSize {
			t.Errorf("the emulator served %d bytes (%v) for a %d-byte model: want one copy", st.BytesServed, err, startSize)
		}

		// A pod on the warmed node: a cache hit, not one byte from OSS.
		if err := e.emu.ResetStats(); err != nil {
			t.Fatal(err)
		}
		warmPod := readerPod("start-warm", corev1.VolumeSource{CSI: &corev1.CSIVolumeSource{
			Driver: driverName, ReadOnly: ptr(true), VolumeAttributes: map[string]string{"ossPath": "oss://models/warm/"}}})
		warmTook := e.startPod(t, ctx, warmPod, 2*time.Minute)
		e.waitReader(t, ctx, warmPod, warmM, time.Minute)
		if st, err := e.emu.Stats(); err != nil || st.BytesServed != 0 || st.Requests[ossemu.OpGet] != 0 {
			t.Errorf("the emulator served %d bytes in %d GETs (%v) to the pod on the warmed node: want none", st.BytesServed, st.Requests[ossemu.OpGet], err)
		}
		t.Logf("pod creation to container running: cold node %v, warmed node %v (the ModelCache staged the model in %v)",
			coldTook.Round(10*time.Millisecond), warmTook.Round(10*time.Millisecond), stagedIn.Round(100*time.Millisecond))
		if warmTook >= coldTook {
			t.Errorf("the pod on the warmed node took %v to start, the one on the cold node %v", warmTook, coldTook)
		}
		writeWarmStart(t, e.repo, startSize, startRate, coldTook, warmTook, stagedIn)

		// Without pods, the pin keeps the warm model while the cold one expires.
		e.deletePod(t, ctx, "start-warm")
		e.deletePod(t, ctx, "start-cold")
		released := time.Now()
		waitFor(t, ctx, time.Duration(expireSec+60)*time.Second, "the cold model expired, the pinned one kept", func() (bool, string) {
			m := scrape()
			refs, models := m.Get("modelcast_cache_references"), m.Get("modelcast_cache_models")
			return refs == baseRefs+1 && models == baseModels+1, fmt.Sprintf("references %v, models %v; want %v and %v", refs, models, baseRefs+1, baseModels+1)
		})
		if took := time.Since(released); took < expireSec*time.Second-2*time.Second {
			t.Errorf("the cold model was removed %v after its pod left, before expireTimeSec (%d s)", took, expireSec)
		}
		// Deleting the ModelCache releases the model: it expires expireTimeSec later.
		e.deleteModelCache(t, ctx, testNS, "e2e-warm")
		waitFor(t, ctx, time.Minute, "the pin released", func() (bool, string) {
			got := scrape().Get("modelcast_cache_references")
			return got == baseRefs, fmt.Sprintf("references %v, want %v", got, baseRefs)
		})
		released = time.Now()
		waitFor(t, ctx, time.Duration(expireSec+60)*time.Second, "the warm model expired", func() (bool, string) {
			got := scrape().Get("modelcast_cache_models")
			return got == baseModels, fmt.Sprintf("models %v, want %v", got, baseModels)
		})
		if took := time.Since(released); took < expireSec*time.Second-2*time.Second {
			t.Errorf("the warm model was removed %v after its ModelCache was deleted, before expireTimeSec (%d s)", took, expireSec)
		}
	})

	t.Run("a ModelCache's node selector: four nodes pre-warm with one OSS copy", func(t *testing.T) {
		if err := e.emu.ResetStats(); err != nil {
			t.Fatal(err)
		}
		warm := "warm"
		fakes := e.startFakeNodes(t, ctx, 3, rds.Addr(), map[string]string{poolLabel: warm})
		t.Cleanup(func() { e.labelNode(t, context.Background(), e.nodeName, poolLabel, nil) })
		refs := scrape().Get("modelcast_cache_references")
		e.createModelCache(t, ctx, &v1alpha1.ModelCache{ObjectMeta: metav1.ObjectMeta{Name: "e2e-pool", Namespace: testNS},
			Spec: v1alpha1.ModelCacheSpec{OSSPath: "oss://models/pool/", NodeSelector: map[string]string{poolLabel: warm}}})
		mc := e.waitModelCache(t, ctx, testNS, "e2e-pool", 3*time.Minute, "three labelled nodes Ready", allReady(3))
		if _, ok := entry(mc, e.nodeName); ok {
			t.Errorf("the unlabelled node has an entry: %+v", mc.Status.Nodes)
		}
		// The label arrives on the real node: it joins and takes the model from its peers.
		e.labelNode(t, ctx, e.nodeName, poolLabel, &warm)
		e.waitModelCache(t, ctx, testNS, "e2e-pool", 2*time.Minute, "four nodes Ready", allReady(4))
		// What a user sees (the README shows this output).
		t.Logf("kubectl get modelcaches:\n%s", e.run(t, ctx, "kubectl", "get", "modelcaches", "-n", testNS))
		t.Logf("kubectl get modelcache e2e-pool -o jsonpath=…:\n%s", e.run(t, ctx, "kubectl", "get", "modelcache", "e2e-pool", "-n", testNS,
			"-o", `jsonpath={range .status.nodes[*]}{.node} {.state} {.bytes}/{.totalBytes}{"\n"}{end}`))
		st, err := e.emu.Stats()
		if err != nil {
			t.Fatal(err)
		}
		if st.BytesServed != poolSize {
			t.Errorf("the emulator served %d bytes to four nodes pre-warming a %d-byte model: want one copy", st.BytesServed, poolSize)
		}
		if got := scrape().Get("modelcast_received_bytes_total", "source", "peer"); got < poolSize {
			t.Errorf("the node received %v bytes from peers, want the whole %d-byte model (it joined last)", got, poolSize)
		}
		var fromOSS float64
		for _, f := range fakes {
			m := f.scrape(t, ctx)
			fromOSS += m.Get("modelcast_received_bytes_total", "source", "oss")
			if m.Get("modelcast_cache_references") != 1 {
				t.Errorf("%s: references %v, want the pin", f.name, m.Get("modelcast_cache_references"))
			}
		}
		t.Logf("four nodes pre-warmed %d MiB with %d bytes from OSS (the fake nodes' metrics: %v from OSS)", poolSize>>20, st.BytesServed, fromOSS)

		// The label leaves the node: its entry goes, its pin is released.
		e.labelNode(t, ctx, e.nodeName, poolLabel, nil)
		e.waitModelCache(t, ctx, testNS, "e2e-pool", time.Minute, "the unlabelled node's entry gone", func(mc *v1alpha1.ModelCache) bool {
			_, ok := entry(mc, e.nodeName)
			return !ok && mc.Status.DesiredNodes == 3 && mc.Status.ReadyNodes == 3
		})
		waitFor(t, ctx, time.Minute, "the node's pin released", func() (bool, string) {
			got := scrape().Get("modelcast_cache_references")
			return got == refs, fmt.Sprintf("references %v, want %v", got, refs)
		})
		// A node that leaves the cluster: the controller drops its entry (as that node's field
		// manager) on the real API server.
		gone := fakes[2]
		gone.stop(t)
		if err := e.kube.CoreV1().Nodes().Delete(ctx, gone.name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		e.waitModelCache(t, ctx, testNS, "e2e-pool", time.Minute, "the deleted node's entry dropped", func(mc *v1alpha1.ModelCache) bool {
			_, ok := entry(mc, gone.name)
			return !ok && len(mc.Status.Nodes) == 2 && mc.Status.DesiredNodes == 2 && mc.Status.ReadyNodes == 2
		})
		e.deleteModelCache(t, ctx, testNS, "e2e-pool")
		for _, f := range fakes[:2] {
			waitFor(t, ctx, time.Minute, f.name+"'s pin released", func() (bool, string) {
				got := f.scrape(t, ctx).Get("modelcast_cache_references")
				return got == 0, fmt.Sprintf("references %v", got)
			})
		}
	})

	t.Run("mount authorization: a namespace mounts only the models its ModelCaches declare", func(t *testing.T) {
		// A pin survives the node plugin's restart that the upgrade brings: the restarted plugin
		// keeps the model and reports it Ready again without fetching it.
		e.createModelCache(t, ctx, &v1alpha1.ModelCache{ObjectMeta: metav1.ObjectMeta{Name: "e2e-survivor", Namespace: testNS},
			Spec: v1alpha1.ModelCacheSpec{OSSPath: "oss://models/warm/", NodeNames: []string{e.nodeName}}})
		e.waitModelCache(t, ctx, testNS, "e2e-survivor", 2*time.Minute, "the node's entry Ready", func(mc *v1alpha1.ModelCache) bool {
			n, ok := entry(mc, e.nodeName)
			return ok && n.State == v1alpha1.NodeReady
		})
		before := scrape()
		if err := e.emu.ResetStats(); err != nil {
			t.Fatal(err)
		}
		restarted := time.Now().Truncate(time.Second) // lastUpdateTime has seconds
		t.Log("helm upgrade --set node.authorizeMounts=true")
		e.run(t, ctx, e.helm, "upgrade", release, filepath.Join(e.repo, "charts/modelcast"), "--namespace", namespace,
			"--reuse-values", "--set", "node.authorizeMounts=true")
		waitFor(t, ctx, 3*time.Minute, "the node plugin restarted with --authorize-mounts and Ready", func() (bool, string) {
			pods, err := e.kube.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/instance=" + release + ",app.kubernetes.io/component=node"})
			if err != nil || len(pods.Items) != 1 {
				return false, fmt.Sprintf("%v; %s", err, e.podsState(ctx, "node"))
			}
			p := pods.Items[0]
			on := false
			for _, c := range p.Spec.Containers {
				on = on || slices.Contains(c.Args, "--authorize-mounts")
			}
			ready, state := e.componentReady(ctx, "node")
			return on && ready && p.DeletionTimestamp == nil, fmt.Sprintf("flag %v, %s", on, state)
		})
		e.waitModelCache(t, ctx, testNS, "e2e-survivor", 2*time.Minute, "the restarted plugin's entry Ready", func(mc *v1alpha1.ModelCache) bool {
			n, ok := entry(mc, e.nodeName)
			return ok && n.State == v1alpha1.NodeReady && n.LastUpdateTime != nil && !n.LastUpdateTime.Time.Before(restarted)
		})
		after := scrape()
		for _, m := range []string{"modelcast_cache_references", "modelcast_cache_models"} {
			if after.Get(m) != before.Get(m) {
				t.Errorf("%s %v after the plugin's restart, %v before", m, after.Get(m), before.Get(m))
			}
		}
		if st, err := e.emu.Stats(); err != nil || st.BytesServed != 0 {
			t.Errorf("the emulator served %d bytes (%v) across the plugin's restart: want none (the pin kept the model)", st.BytesServed, err)
		}
		e.deleteModelCache(t, ctx, testNS, "e2e-survivor")
		const other = "e2e-other"
		if _, err := e.kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: other}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = e.kube.CoreV1().Namespaces().Delete(context.Background(), other, metav1.DeleteOptions{}) })
		if err := e.emu.ResetStats(); err != nil {
			t.Fatal(err)
		}
		pod := readerPod("reader-other", corev1.VolumeSource{CSI: &corev1.CSIVolumeSource{
			Driver: driverName, ReadOnly: ptr(true), VolumeAttributes: map[string]string{"ossPath": "oss://models/small/"}}})
		pod.Namespace = other
		if _, err := e.kube.CoreV1().Pods(other).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		var evs string
		waitFor(t, ctx, 2*time.Minute, "the pod refused: FailedMount with PermissionDenied and a MountNotAuthorized Warning", func() (bool, string) {
			evs = e.eventsIn(ctx, other, "reader-other")
			return strings.Contains(evs, "MountNotAuthorized: ") && strings.Contains(evs, "FailedMount: ") &&
				strings.Contains(evs, "PermissionDenied"), evs
		})
		for _, want := range []string{`namespace "e2e-other" may not mount oss://models/small/`, "no ModelCache in \"e2e-other\" declares this model"} {
			if !strings.Contains(evs, want) {
				t.Errorf("the refusal's Events lack %q:\n%s", want, evs)
			}
		}
		t.Logf("the refused pod's Events:\n%s", evs)
		if st, err := e.emu.Stats(); err != nil || st.BytesServed != 0 || len(st.Requests) != 0 {
			t.Errorf("OSS saw %v requests and %d bytes (%v) for a refused mount: want none", st.Requests, st.BytesServed, err)
		}
		// A ModelCache naming a Secret in a namespace the chart did not grant fails, saying so.
		e.secret(t, ctx, other, "oss", map[string]string{"akId": accessKey, "akSecret": secretKey})
		e.createModelCache(t, ctx, &v1alpha1.ModelCache{ObjectMeta: metav1.ObjectMeta{Name: "with-secret", Namespace: other},
			Spec: v1alpha1.ModelCacheSpec{OSSPath: "oss://models/pool/", NodeNames: []string{e.nodeName}, SecretRef: &v1alpha1.SecretReference{Name: "oss"}}})
		mc := e.waitModelCache(t, ctx, other, "with-secret", time.Minute, "the node's entry Failed, SecretForbidden", func(mc *v1alpha1.ModelCache) bool {
			n, ok := entry(mc, e.nodeName)
			return ok && n.State == v1alpha1.NodeFailed && n.Reason == prewarm.ReasonSecretForbidden
		})
		n, _ := entry(mc, e.nodeName)
		if !strings.Contains(n.Message, "modelCache.secretNamespaces") {
			t.Errorf("the SecretForbidden message does not say how to grant it: %q", n.Message)
		}
		waitFor(t, ctx, time.Minute, "a SecretForbidden Warning on the ModelCache", func() (bool, string) {
			evs := e.eventsIn(ctx, other, "with-secret")
			return strings.Contains(evs, "SecretForbidden: "), evs
		})
		e.deleteModelCache(t, ctx, other, "with-secret")

		// A ModelCache in the namespace declares the model: kubelet's next retry mounts it.
		e.createModelCache(t, ctx, &v1alpha1.ModelCache{ObjectMeta: metav1.ObjectMeta{Name: "small", Namespace: other},
			Spec: v1alpha1.ModelCacheSpec{OSSPath: "oss://models/small/", NodeNames: []string{e.nodeName}}})
		e.waitReader(t, ctx, pod, small, 3*time.Minute)
		if err := e.kube.CoreV1().Pods(other).Delete(ctx, "reader-other", metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(0))}); err != nil {
			t.Fatal(err)
		}
		e.deleteModelCache(t, ctx, other, "small")
	})

	t.Run("release after expireTimeSec, uninstall leaves no mount", func(t *testing.T) {
		for _, p := range []string{"reader-inline", "reader-pv", "reader-slow"} {
			if err := e.kube.CoreV1().Pods(testNS).Delete(ctx, p, metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(0))}); err != nil {
				t.Fatal(err)
			}
		}
		waitFor(t, ctx, 2*time.Minute, "the pods gone and their mounts released", func() (bool, string) {
			m := scrape()
			return m.Get("modelcast_cache_references") == 0, fmt.Sprintf("references %v", m.Get("modelcast_cache_references"))
		})
		released := time.Now()
		waitFor(t, ctx, time.Duration(expireSec+60)*time.Second, "the models expired", func() (bool, string) {
			m := scrape()
			return m.Get("modelcast_cache_models") == 0, fmt.Sprintf("models %v", m.Get("modelcast_cache_models"))
		})
		if took := time.Since(released); took < expireSec*time.Second-2*time.Second {
			t.Errorf("models removed %v after release, before expireTimeSec (%d s)", took, expireSec)
		}
		if ents, err := os.ReadDir(filepath.Join(e.cacheRoot, "models")); err != nil || len(ents) != 0 {
			t.Errorf("cache models directory: %v entries, %v", len(ents), err)
		}

		e.run(t, ctx, e.helm, "uninstall", release, "--namespace", namespace, "--wait", "--timeout", "3m")
		uninstalled = true
		waitFor(t, ctx, 2*time.Minute, "the plugin pods gone", func() (bool, string) {
			s := e.podsState(ctx, "")
			return s == "", s
		})
		waitFor(t, ctx, 30*time.Second, "no mount left behind", func() (bool, string) {
			left := mountsUnder(t, e.kubeletDir+"/pods", e.cacheRoot)
			return len(left) == 0, strings.Join(left, "; ")
		})
		if _, err := os.Stat(filepath.Join(e.kubeletDir, "plugins_registry", driverName+"-reg.sock")); !os.IsNotExist(err) {
			t.Errorf("the registration socket is still there (%v)", err)
		}
	})
}

func ptr[T any](v T) *T { return &v }

// readerPod runs the plugin image's `csi-plugin sum` over the mounted model (CRC-64 and size
// of every file), checks the mount is read-only, and stays up.
func readerPod(name string, src corev1.VolumeSource) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: testNS},
		Spec: corev1.PodSpec{
			RestartPolicy:                 corev1.RestartPolicyNever,
			AutomountServiceAccountToken:  ptr(false),
			TerminationGracePeriodSeconds: ptr(int64(0)),
			Containers: []corev1.Container{{
				Name: "reader", Image: image, ImagePullPolicy: corev1.PullNever,
				Command:      []string{"/bin/sh", "-c", "/csi-plugin sum /model && if touch /model/x 2>/dev/null; then echo WRITABLE; fi; echo DONE; exec sleep 3600"},
				VolumeMounts: []corev1.VolumeMount{{Name: "model", MountPath: "/model", ReadOnly: true}},
			}},
			Volumes: []corev1.Volume{{Name: "model", VolumeSource: src}},
		},
	}
}

// runReader creates the pod, waits for its output and checks every file against the manifest.
func (e *env) runReader(t *testing.T, ctx context.Context, pod *corev1.Pod, m *ossclient.Manifest, within time.Duration) {
	t.Helper()
	if _, err := e.kube.CoreV1().Pods(testNS).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitReader(t, ctx, pod, m, within)
}

// waitReader waits for the reader pod's output and checks every file against the manifest.
func (e *env) waitReader(t *testing.T, ctx context.Context, pod *corev1.Pod, m *ossclient.Manifest, within time.Duration) {
	t.Helper()
	var logs string
	waitFor(t, ctx, within, pod.Name+" read its model", func() (bool, string) {
		b, err := e.kube.CoreV1().Pods(pod.Namespace).GetLogs(pod.Name, &corev1.PodLogOptions{}).DoRaw(ctx)
		if err != nil {
			return false, err.Error() + "; events: " + e.eventsIn(ctx, pod.Namespace, pod.Name)
		}
		logs = string(b)
		return strings.Contains(logs, "DONE"), logs
	})
	if strings.Contains(logs, "WRITABLE") {
		t.Errorf("%s could write into its model", pod.Name)
	}
	got := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(logs))
	for sc.Scan() {
		if f := strings.SplitN(sc.Text(), " ", 3); len(f) == 3 {
			got[f[2]] = f[0] + " " + f[1]
		}
	}
	if len(got) != len(m.Objects) {
		t.Errorf("%s saw %d files, the model has %d:\n%s", pod.Name, len(got), len(m.Objects), logs)
	}
	for i, o := range m.Objects {
		want := fmt.Sprintf("%d %d", o.CRC64, o.Size)
		if got[m.Path(i)] != want {
			t.Errorf("%s: %s is %q (crc64 size), OSS says %q", pod.Name, m.Path(i), got[m.Path(i)], want)
		}
	}
}

func (e *env) secret(t *testing.T, ctx context.Context, ns, name string, data map[string]string) {
	t.Helper()
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, StringData: data}
	if _, err := e.kube.CoreV1().Secrets(ns).Create(ctx, s, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.kube.CoreV1().Secrets(ns).Delete(context.Background(), name, metav1.DeleteOptions{}) })
}

// podsState lists the release's pods of a component ("" for all) and their phases.
func (e *env) podsState(ctx context.Context, component string) string {
	sel := "app.kubernetes.io/instance=" + release
	if component != "" {
		sel += ",app.kubernetes.io/component=" + component
	}
	pods, err := e.kube.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		return err.Error()
	}
	var s []string
	for _, p := range pods.Items {
		st := string(p.Status.Phase)
		for _, c := range p.Status.ContainerStatuses {
			if c.State.Waiting != nil {
				st += fmt.Sprintf(" %s:%s", c.Name, c.State.Waiting.Reason)
			}
		}
		s = append(s, p.Name+" "+st)
	}
	return strings.Join(s, ", ")
}

func (e *env) componentReady(ctx context.Context, component string) (bool, string) {
	pods, err := e.kube.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/instance=" + release + ",app.kubernetes.io/component=" + component})
	if err != nil || len(pods.Items) == 0 {
		return false, fmt.Sprintf("no pod (%v)", err)
	}
	for _, c := range pods.Items[0].Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue, fmt.Sprintf("%s: %s", c.Reason, c.Message)
		}
	}
	return false, string(pods.Items[0].Status.Phase)
}

// createVolume calls the controller plugin's CreateVolume over its socket, as the
// external-provisioner would (its image cannot be pulled here): the socket is in the
// controller pod's emptyDir, on this host.
func (e *env) createVolume(t *testing.T, ctx context.Context) *csi.Volume {
	t.Helper()
	var sock string
	waitFor(t, ctx, 2*time.Minute, "the controller plugin's socket", func() (bool, string) {
		pods, err := e.kube.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/instance=" + release + ",app.kubernetes.io/component=controller"})
		if err != nil || len(pods.Items) == 0 {
			return false, fmt.Sprintf("no controller pod (%v)", err)
		}
		sock = filepath.Join(e.kubeletDir, "pods", string(pods.Items[0].UID), "volumes/kubernetes.io~empty-dir/socket-dir/csi.sock")
		_, err = os.Stat(sock)
		return err == nil, fmt.Sprintf("%v; %s", err, e.podsState(ctx, "controller"))
	})
	// The socket's path is longer than a sockaddr_un holds: dial it through a short symlink.
	link := filepath.Join(os.TempDir(), fmt.Sprintf("mc-e2e-%d", os.Getpid()))
	_ = os.Remove(link)
	if err := os.Symlink(filepath.Dir(sock), link); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(link)
	conn, err := grpc.NewClient("unix://"+filepath.Join(link, "csi.sock"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	resp, err := csi.NewControllerClient(conn).CreateVolume(cctx, &csi.CreateVolumeRequest{
		Name:       "pvc-e2e-static",
		Parameters: map[string]string{"ossPath": "oss://models/small/", "endpoint": e.emu.Endpoint, "region": region},
		Secrets:    map[string]string{"akId": accessKey, "akSecret": secretKey},
		VolumeCapabilities: []*csi.VolumeCapability{{
			AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY},
		}},
	})
	if err != nil {
		t.Fatalf("CreateVolume: %v", err)
	}
	return resp.Volume
}

func (e *env) eventsString(ctx context.Context, pod string) string {
	return e.eventsIn(ctx, testNS, pod)
}

// eventsIn lists the Events on the object name of namespace ns, one "Reason: message" a line.
func (e *env) eventsIn(ctx context.Context, ns, name string) string {
	evs, err := e.kube.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + name})
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	for _, ev := range evs.Items {
		fmt.Fprintf(&b, "%s: %s\n", ev.Reason, ev.Message)
	}
	return b.String()
}

// mountsUnder lists the mount points under any of the roots.
func mountsUnder(t *testing.T, roots ...string) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 5 {
			continue
		}
		for _, r := range roots {
			if f[4] == r || strings.HasPrefix(f[4], r+"/") {
				out = append(out, f[4])
			}
		}
	}
	return out
}
