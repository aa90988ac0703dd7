package driver_test

import (
	"context"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/utils/ptr"

	"github.com/modelcast/modelcast/pkg/apis/modelcast/v1alpha1"
	"github.com/modelcast/modelcast/pkg/driver"
	"github.com/modelcast/modelcast/pkg/leader"
	"github.com/modelcast/modelcast/pkg/prewarm"
	"github.com/modelcast/modelcast/test/leasetest"
)

// TestTotalsUnderLease: two controller replicas race for the totals' lease in one API
// (client-go's fake clientset, with the API server's optimistic concurrency on Leases): one
// writes the ModelCaches' totals while the other keeps asking for the lease and writes
// nothing; when the writer stops, it releases the lease and the other takes it at once (well
// within the lease's minute: not by expiry) and writes them.
//
// Each replica reads the ModelCaches through a dynamic fake of its own, alike, so that each
// one's applies are counted apart. The fakes do not keep an applied status: the replica that
// takes over finds the totals unwritten, and writes them.
func TestTotalsUnderLease(t *testing.T) {
	const ns = "kube-system"
	kube := leasetest.Clientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1"}})
	var (
		mu       sync.Mutex
		renewals = map[string]int{} // updates of the Lease, by the holder they write
	)
	kube.PrependReactor("update", "leases", func(action k8stesting.Action) (bool, runtime.Object, error) {
		l := action.(k8stesting.UpdateAction).GetObject().(*coordinationv1.Lease)
		mu.Lock()
		defer mu.Unlock()
		renewals[ptr.Deref(l.Spec.HolderIdentity, "")]++
		return false, nil, nil
	})
	leaseGets := func() int { // not under mu: the reactor takes mu under the fake's lock
		n := 0
		for _, a := range kube.Actions() {
			if a.Matches("get", "leases") {
				n++
			}
		}
		return n
	}
	holder := func() string {
		l, err := kube.Tracker().Get(coordinationv1.SchemeGroupVersion.WithResource("leases"), ns, driver.TotalsLeaseName(driver.DefaultDriverName))
		if err != nil {
			return ""
		}
		return ptr.Deref(l.(*coordinationv1.Lease).Spec.HolderIdentity, "")
	}

	start := func(id string) *controllerReplica {
		r := &controllerReplica{id: id, served: make(chan error, 1)}
		dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{prewarm.Resource: "ModelCacheList"},
			modelCache("qwen", v1alpha1.ModelCacheSpec{OSSPath: "oss://models/qwen/", NodeNames: []string{"node-1"}}))
		dyn.PrependReactor("patch", "modelcaches", func(action k8stesting.Action) (bool, runtime.Object, error) {
			p := action.(k8stesting.PatchActionImpl)
			r.mu.Lock()
			defer r.mu.Unlock()
			if p.GetSubresource() == "status" && p.GetPatchType() == types.ApplyPatchType && p.GetPatchOptions().FieldManager == prewarm.ControllerFieldManager {
				r.applies++
			} else {
				r.bad = append(r.bad, string(p.GetPatchType())+" "+p.GetSubresource()+" "+p.GetPatchOptions().FieldManager)
			}
			return true, &unstructured.Unstructured{Object: map[string]any{"apiVersion": v1alpha1.GroupVersion.String(), "kind": "ModelCache"}}, nil
		})
		d, err := driver.New(driver.Options{
			Mode: driver.ModeController, Endpoint: "unix://" + filepath.Join(t.TempDir(), "csi.sock"),
			KubeClient: kube, DynamicClient: dyn,
			// Renewed every 50ms; taken over only when released, or after a minute.
			LeaderElection: leader.Config{Namespace: ns, Identity: id,
				LeaseDuration: time.Minute, RenewDeadline: 30 * time.Second, RetryPeriod: 50 * time.Millisecond},
		})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		r.cancel = cancel
		go func() { r.served <- d.Serve(ctx) }()
		t.Cleanup(func() { _ = r.stop(t) })
		return r
	}
	a, b := start("controller-a"), start("controller-b")

	var writer, other *controllerReplica
	waitUntil(t, "a replica to write the totals", func() bool {
		na, nb := a.writes(), b.writes()
		switch {
		case na > 0 && nb > 0:
			t.Fatalf("both replicas wrote the totals (%d and %d applies)", na, nb)
		case na > 0:
			writer, other = a, b
		case nb > 0:
			writer, other = b, a
		}
		return writer != nil
	})
	if h := holder(); h != writer.id {
		t.Fatalf("%s writes the totals; the lease's holder is %q", writer.id, h)
	}
	// The writer renews its lease; the other keeps asking for it, and writes nothing.
	g0 := leaseGets()
	waitUntil(t, "the writer to renew the lease and the other to ask for it", func() bool {
		n := leaseGets()
		mu.Lock()
		defer mu.Unlock()
		return renewals[writer.id] >= 10 && n >= g0+5
	})
	if n := other.writes(); n != 0 {
		t.Fatalf("%s wrote the totals %d times while %s held the lease", other.id, n, writer.id)
	}

	if err := writer.stop(t); err != nil {
		t.Errorf("%s: Serve: %v", writer.id, err)
	}
	mu.Lock()
	released := renewals[""]
	mu.Unlock()
	if released == 0 {
		t.Errorf("%s stopped without releasing the lease", writer.id)
	}
	waitUntil(t, "the other replica to take over and write the totals", func() bool { return other.writes() > 0 })
	if h := holder(); h != other.id {
		t.Errorf("%s writes the totals; the lease's holder is %q", other.id, h)
	}
	for _, r := range []*controllerReplica{a, b} {
		r.mu.Lock()
		if len(r.bad) > 0 {
			t.Errorf("%s: patches that are not the totals' apply: %q", r.id, r.bad)
		}
		r.mu.Unlock()
	}
}

// controllerReplica is a controller driver serving in a goroutine.
type controllerReplica struct {
	id      string
	cancel  context.CancelFunc
	served  chan error
	mu      sync.Mutex
	applies int // of the totals
	bad     []string
}

// writes is how many times the replica applied the totals.
func (r *controllerReplica) writes() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.applies
}

// stop ends the replica's context and waits for Serve to return.
func (r *controllerReplica) stop(t *testing.T) error {
	t.Helper()
	r.cancel()
	select {
	case err := <-r.served:
		r.served <- err // for the next stop
		return err
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: Serve did not return within 30s of its context's end", r.id)
		return nil
	}
}

// TestTotalsLease: the lease is named after the driver, as a Lease may be named, and a lease
// without an identity is refused before anything starts.
func TestTotalsLease(t *testing.T) {
	for in, want := range map[string]string{
		driver.DefaultDriverName: "oss-csi-modelcast-io-totals",
		"Models.Example.COM":     "models-example-com-totals",
	} {
		if got := driver.TotalsLeaseName(in); got != want {
			t.Errorf("TotalsLeaseName(%q) = %q, want %q", in, got, want)
		}
	}
	_, err := driver.New(driver.Options{Mode: driver.ModeController, Endpoint: "unix://" + filepath.Join(t.TempDir(), "csi.sock"),
		LeaderElection: leader.Config{Namespace: "kube-system"}})
	if err == nil || !strings.Contains(err.Error(), "identity") {
		t.Errorf("New with a lease but no identity: %v", err)
	}
}
