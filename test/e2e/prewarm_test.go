//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"

	"github.com/modelcast/modelcast/pkg/apis/modelcast/v1alpha1"
	"github.com/modelcast/modelcast/pkg/config"
	"github.com/modelcast/modelcast/pkg/prewarm"
	"github.com/modelcast/modelcast/test/agenttest"
	"github.com/modelcast/modelcast/test/freeport"
	"github.com/modelcast/modelcast/test/promtest"
)

// createModelCache creates mc (in its namespace) and deletes it when the test ends, if it is
// still there.
func (e *env) createModelCache(t *testing.T, ctx context.Context, mc *v1alpha1.ModelCache) {
	t.Helper()
	mc.TypeMeta = metav1.TypeMeta{APIVersion: v1alpha1.GroupVersion.String(), Kind: "ModelCache"}
	obj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(mc)
	if err != nil {
		t.Fatal(err)
	}
	mcs := e.dyn.Resource(prewarm.Resource).Namespace(mc.Namespace)
	if _, err := mcs.Create(ctx, &unstructured.Unstructured{Object: obj}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ns, name := mc.Namespace, mc.Name
	t.Cleanup(func() {
		err := e.dyn.Resource(prewarm.Resource).Namespace(ns).Delete(context.Background(), name, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("delete modelcache %s/%s: %v", ns, name, err)
		}
	})
}

func (e *env) deleteModelCache(t *testing.T, ctx context.Context, ns, name string) {
	t.Helper()
	if err := e.dyn.Resource(prewarm.Resource).Namespace(ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
}

func (e *env) modelCache(ctx context.Context, ns, name string) (*v1alpha1.ModelCache, error) {
	u, err := e.dyn.Resource(prewarm.Resource).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	mc := &v1alpha1.ModelCache{}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, mc); err != nil {
		return nil, err
	}
	return mc, nil
}

// waitModelCache waits until cond holds of the ModelCache ns/name; the last status read is in
// the failure.
func (e *env) waitModelCache(t *testing.T, ctx context.Context, ns, name string, within time.Duration, what string, cond func(*v1alpha1.ModelCache) bool) *v1alpha1.ModelCache {
	t.Helper()
	var mc *v1alpha1.ModelCache
	waitFor(t, ctx, within, what, func() (bool, string) {
		got, err := e.modelCache(ctx, ns, name)
		if err != nil {
			return false, err.Error()
		}
		mc = got
		return cond(got), fmt.Sprintf("status %+v", got.Status)
	})
	return mc
}

// entry is node's entry of mc's status.nodes, if any.
func entry(mc *v1alpha1.ModelCache, node string) (v1alpha1.NodeStatus, bool) {
	for _, n := range mc.Status.Nodes {
		if n.Node == node {
			return n, true
		}
	}
	return v1alpha1.NodeStatus{}, false
}

// allReady says whether the totals show ready == desired == n, with the Ready condition true,
// and n Ready entries.
func allReady(n int32) func(*v1alpha1.ModelCache) bool {
	return func(mc *v1alpha1.ModelCache) bool {
		st := mc.Status
		ready := 0
		for _, e := range st.Nodes {
			if e.State == v1alpha1.NodeReady {
				ready++
			}
		}
		return st.DesiredNodes == n && st.ReadyNodes == n && ready == int(n) && len(st.Nodes) == int(n) &&
			len(st.Conditions) == 1 && st.Conditions[0].Status == metav1.ConditionTrue
	}
}

// startPod creates pod and returns how long it took, as seen from here, from its creation to
// its container running (the figure a user waits for; the kubelet's own times are truncated
// to the second).
func (e *env) startPod(t *testing.T, ctx context.Context, pod *corev1.Pod, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	if _, err := e.kube.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := start.Add(within)
	for {
		p, err := e.kube.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
		if err == nil {
			for _, cs := range p.Status.ContainerStatuses {
				if cs.State.Running != nil || cs.State.Terminated != nil {
					return time.Since(start)
				}
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("%s: its container did not start within %v (%v); events:\n%s", pod.Name, within, err, e.eventsString(ctx, pod.Name))
		}
		select { // polling with a deadline: 50 ms is the figure's resolution
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (e *env) deletePod(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	if err := e.kube.CoreV1().Pods(testNS).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(0))}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, ctx, 2*time.Minute, name+" gone", func() (bool, string) {
		_, err := e.kube.CoreV1().Pods(testNS).Get(ctx, name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), fmt.Sprint(err)
	})
}

// labelNode sets (value non-nil) or removes (nil) the label key of the Node name.
func (e *env) labelNode(t *testing.T, ctx context.Context, name, key string, value *string) {
	t.Helper()
	v := "null"
	if value != nil {
		v = strconv.Quote(*value)
	}
	patch := fmt.Sprintf(`{"metadata":{"labels":{%q:%s}}}`, key, v)
	if _, err := e.kube.CoreV1().Nodes().Patch(ctx, name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}

// fakeNode is a `csi-plugin node` process on this host standing for another node of the
// cluster: a Node object without a kubelet, and a node plugin with its own tmpfs cache, peer
// port and metrics, that watches ModelCaches as the DaemonSet's does and joins the same
// chains through the same Redis. No kubelet calls it: it pre-warms, it mounts nothing.
type fakeNode struct {
	name    string
	cache   string
	metrics string // URL
	cmd     *exec.Cmd
	done    chan error
	stopped bool
}

// startFakeNodes creates n Node objects (named e2e-fake-<i>, with labels) and starts their node
// plugins; the test's end stops them, unmounts their caches and deletes the Nodes.
func (e *env) startFakeNodes(t *testing.T, ctx context.Context, n int, redisAddr string, nodeLabels map[string]string) []*fakeNode {
	t.Helper()
	bin, err := agenttest.BuildPlugin()
	if err != nil {
		t.Fatal(err)
	}
	db, err := agenttest.RedisDB(redisAddr)
	if err != nil {
		t.Fatal(err)
	}
	db.Username = "modelcast"
	var nodes []*fakeNode
	for i := range n {
		name := fmt.Sprintf("e2e-fake-%d", i+1)
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: nodeLabels}}
		if _, err := e.kube.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			err := e.kube.CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{})
			if err != nil && !apierrors.IsNotFound(err) {
				t.Errorf("delete node %s: %v", name, err)
			}
		})
		dir := filepath.Join(e.dir, "fake-nodes", name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		f := &fakeNode{name: name, cache: filepath.Join(dir, "cache"), done: make(chan error, 1)}
		cfgPath, err := agenttest.WriteConfig(dir, config.Config{ExpireTimeSec: expireSec, BindPort: freeport.Must(t),
			Broadcast: config.Broadcast{EnableBroadcast: true, Tenant: "e2e", DB: db},
			Cache:     config.Cache{Root: f.cache, TmpfsSize: "256m"}})
		if err != nil {
			t.Fatal(err)
		}
		httpAddr := fmt.Sprintf("127.0.0.1:%d", freeport.Must(t))
		f.metrics = "http://" + httpAddr + "/metrics"
		f.cmd = exec.Command(bin, "node", "--config", cfgPath, "--endpoint", "unix://"+filepath.Join(dir, "csi.sock"),
			"--node-id", name, "--node-ip", e.nodeIP, "--http-endpoint", httpAddr, "--kubeconfig", os.Getenv("KUBECONFIG"), "-v", "2")
		f.cmd.Env = append(os.Environ(), agenttest.OSSEnv(e.emu.Endpoint, region, accessKey, secretKey)...)
		f.cmd.Env = append(f.cmd.Env, config.EnvRedisPassword+"=e2e-redis-password")
		logf, err := os.Create(filepath.Join(e.dir, "logs", name+".log"))
		if err != nil {
			t.Fatal(err)
		}
		f.cmd.Stdout, f.cmd.Stderr = logf, logf
		if err := f.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { f.done <- f.cmd.Wait(); logf.Close() }()
		t.Cleanup(func() {
			f.stop(t)
			_ = syscall.Unmount(f.cache, syscall.MNT_DETACH) // a pin keeps the tmpfs past SIGTERM
		})
		nodes = append(nodes, f)
	}
	for _, f := range nodes {
		waitFor(t, ctx, time.Minute, f.name+"'s plugin serving metrics", func() (bool, string) {
			select {
			case err := <-f.done:
				f.stopped = true
				t.Fatalf("%s's plugin exited: %v (log: %s)", f.name, err, filepath.Join(e.dir, "logs", f.name+".log"))
			default:
			}
			_, err := promtest.Scrape(ctx, f.metrics)
			return err == nil, fmt.Sprint(err)
		})
	}
	return nodes
}

// stop ends the plugin with SIGTERM, as a DaemonSet's pod is stopped.
func (f *fakeNode) stop(t *testing.T) {
	if f.stopped {
		return
	}
	f.stopped = true
	_ = f.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-f.done:
	case <-time.After(30 * time.Second):
		_ = f.cmd.Process.Kill()
		<-f.done
		t.Errorf("%s's plugin did not stop within 30 s of SIGTERM", f.name)
	}
}

func (f *fakeNode) scrape(t *testing.T, ctx context.Context) *promtest.Samples {
	t.Helper()
	s, err := promtest.Scrape(ctx, f.metrics)
	if err != nil {
		t.Fatalf("%s: %v", f.name, err)
	}
	return s
}

// writeWarmStart writes the warm-start case's figures into docs/bench/warm-start.md, which
// make bench puts into docs/benchmarks.md.
func writeWarmStart(t *testing.T, repo string, size int64, rate int64, cold, warm time.Duration, stagedIn time.Duration) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "## Warm start: a pod on a ModelCache-warmed node against a cold node\n\n")
	fmt.Fprintf(&b, "Measured by `make e2e` (test/e2e, case \"a ModelCache pre-warms the node\") on a real kubelet, %s.\n", time.Now().UTC().Format("2006-01-02"))
	fmt.Fprintf(&b, "Two models of %d MiB; the OSS emulator with the object-store profile (20 ms first-byte latency,\n", size>>20)
	fmt.Fprintf(&b, "50 MB/s per connection) and %d MiB/s of egress in total, a node's share of a busy OSS.\n", rate>>20)
	fmt.Fprintf(&b, "Time from the pod's creation to its container running, as the API server shows it (polled every 50 ms):\n\n")
	fmt.Fprintf(&b, "| node | pod creation → container running | OSS bytes for the pod |\n|---|---|---|\n")
	fmt.Fprintf(&b, "| cold: the model is not on the node | %.2f s | %d MiB |\n", cold.Seconds(), size>>20)
	fmt.Fprintf(&b, "| warmed: a ModelCache staged it before (in %.1f s) | %.2f s | 0 |\n\n", stagedIn.Seconds(), warm.Seconds())
	fmt.Fprintf(&b, "On the warmed node the pod waits for the listing (OSS still vouches for the model), the bind mount and\n")
	fmt.Fprintf(&b, "its container; on the cold node it also waits for the model's size over OSS's rate, which grows with\n")
	fmt.Fprintf(&b, "the model (a 135 GB model at this rate: 35 minutes; at the OSS Connector's 12.8 GB/s: 11 s).\n")
	path := filepath.Join(repo, "docs/bench/warm-start.md")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Errorf("write %s: %v", path, err)
	}
	t.Logf("wrote %s:\n%s", path, b.String())
}
