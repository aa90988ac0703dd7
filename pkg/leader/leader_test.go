package leader_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/utils/ptr"

	"github.com/modelcast/modelcast/pkg/leader"
	"github.com/modelcast/modelcast/test/leasetest"
)

const ns, name = "kube-system", "modelcast-test"

// wait is the longest a test waits for something that takes milliseconds on an idle machine.
const wait = 30 * time.Second

// config is a lease whose holder renews it every 50ms, and that nobody takes over for a
// minute unless it is released: a takeover within the tests' deadlines comes from a release.
func config(identity string) leader.Config {
	return leader.Config{Namespace: ns, Name: name, Identity: identity,
		LeaseDuration: time.Minute, RenewDeadline: 30 * time.Second, RetryPeriod: 50 * time.Millisecond}
}

// holder is the Lease's holder ("" when released or absent).
func holder(t *testing.T, c *fake.Clientset) string {
	t.Helper()
	l, err := c.Tracker().Get(coordinationv1.SchemeGroupVersion.WithResource("leases"), ns, name)
	if err != nil {
		return ""
	}
	return ptr.Deref(l.(*coordinationv1.Lease).Spec.HolderIdentity, "")
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, wait)
		}
		time.Sleep(5 * time.Millisecond) // polling with a deadline
	}
}

// replica runs leader.Run in a goroutine; its work records whether it runs.
type replica struct {
	id      string
	cancel  context.CancelFunc
	done    chan error
	mu      sync.Mutex
	running bool
	starts  int
	work    func(ctx context.Context) error // default: until ctx ends
}

func start(t *testing.T, c *fake.Clientset, cfg leader.Config, work func(ctx context.Context) error) *replica {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	r := &replica{id: cfg.Identity, cancel: cancel, done: make(chan error, 1), work: work}
	go func() {
		r.done <- leader.Run(ctx, c.CoordinationV1(), cfg, func(ctx context.Context) error {
			r.mu.Lock()
			r.running, r.starts = true, r.starts+1
			r.mu.Unlock()
			defer func() {
				r.mu.Lock()
				r.running = false
				r.mu.Unlock()
			}()
			if r.work != nil {
				return r.work(ctx)
			}
			<-ctx.Done()
			return nil
		})
	}()
	t.Cleanup(func() { r.stop(t) })
	return r
}

func (r *replica) state() (running bool, starts int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.running, r.starts
}

// stop ends the replica's context and waits for Run to return.
func (r *replica) stop(t *testing.T) error {
	t.Helper()
	r.cancel()
	return r.wait(t)
}

// wait waits for Run to return and returns its error.
func (r *replica) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-r.done:
		r.done <- err // for the next wait
		return err
	case <-time.After(wait):
		t.Fatalf("%s: Run did not return within %s", r.id, wait)
		return nil
	}
}

// TestOneRunsAndTheOtherTakesOver: two replicas race for one lease; one runs the work and
// holds the lease while the other waits (it keeps asking for the lease); when the first one's
// context ends, it keeps the lease until its work has returned, then releases it, and the
// other takes the lease at once (well within the lease's minute) and runs the work.
func TestOneRunsAndTheOtherTakesOver(t *testing.T) {
	c := leasetest.Clientset()
	// Every write of the Lease, with whether a replica's work was running then.
	var (
		mu       sync.Mutex
		replicas []*replica
		releases []string // the work running when the lease was released, if any
		renewals = map[string]int{}
	)
	c.PrependReactor("update", "leases", func(action k8stesting.Action) (bool, runtime.Object, error) {
		l := action.(k8stesting.UpdateAction).GetObject().(*coordinationv1.Lease)
		mu.Lock()
		defer mu.Unlock()
		h := ptr.Deref(l.Spec.HolderIdentity, "")
		renewals[h]++
		if h == "" {
			for _, r := range replicas {
				if running, _ := r.state(); running {
					releases = append(releases, r.id)
				}
			}
		}
		return false, nil, nil
	})
	// The work, once its context ends, returns only when finish is closed: as a write in
	// flight, it is still under the lease.
	finish := make(chan struct{})
	finished := sync.OnceFunc(func() { close(finish) })
	work := func(ctx context.Context) error {
		<-ctx.Done()
		<-finish
		return nil
	}
	a := start(t, c, config("a"), work)
	b := start(t, c, config("b"), work)
	t.Cleanup(finished) // before the replicas' cleanups stop them
	mu.Lock()
	replicas = []*replica{a, b}
	mu.Unlock()

	var first, second *replica
	eventually(t, "a replica runs the work", func() bool {
		ra, _ := a.state()
		rb, _ := b.state()
		switch {
		case ra && rb:
			t.Fatal("both replicas run the work")
		case ra:
			first, second = a, b
		case rb:
			first, second = b, a
		}
		return first != nil
	})
	if h := holder(t, c); h != first.id {
		t.Fatalf("replica %s runs the work, the lease's holder is %q", first.id, h)
	}
	// The other keeps asking while the holder renews: it never runs the work.
	gets := func() int {
		n := 0
		for _, a := range c.Actions() {
			if a.Matches("get", "leases") {
				n++
			}
		}
		return n
	}
	g0 := gets()
	eventually(t, "the holder renews the lease and the other asks for it", func() bool {
		n := gets() // outside mu: the reactor takes mu under the fake's lock
		mu.Lock()
		defer mu.Unlock()
		return renewals[first.id] >= 10 && n >= g0+5
	})
	if running, starts := second.state(); running || starts != 0 {
		t.Fatalf("replica %s ran the work (%d times) while %s held the lease", second.id, starts, first.id)
	}

	// The first one's context ends: until its work returns it keeps the lease, and the other
	// keeps asking in vain.
	first.cancel()
	g1 := gets()
	eventually(t, "the other asks for the lease", func() bool {
		if h := holder(t, c); h != first.id {
			t.Fatalf("the lease's holder is %q while the work of %s has not returned", h, first.id)
		}
		return gets() >= g1+5
	})
	if running, starts := second.state(); running || starts != 0 {
		t.Fatalf("replica %s ran the work while the work of %s had not returned", second.id, first.id)
	}
	finished()
	if err := first.wait(t); err != nil {
		t.Errorf("%s: Run = %v", first.id, err)
	}
	eventually(t, "the other replica takes over", func() bool {
		running, _ := second.state()
		return running
	})
	if h := holder(t, c); h != second.id {
		t.Errorf("replica %s runs the work, the lease's holder is %q", second.id, h)
	}
	mu.Lock()
	defer mu.Unlock()
	if renewals[""] == 0 {
		t.Errorf("%s did not release the lease", first.id)
	}
	if len(releases) > 0 {
		t.Errorf("the lease was released while the work of %v ran", releases)
	}
}

// TestLostLeaseStopsWork: when another process takes the lease (here: rewrites it, as one
// whose clock says it expired would), the holder cannot renew it: its work's context ends
// within RenewDeadline, and it campaigns again, running the work again once the other's lease
// has expired.
func TestLostLeaseStopsWork(t *testing.T) {
	c := leasetest.Clientset()
	cfg := config("a")
	cfg.LeaseDuration, cfg.RenewDeadline = 3*time.Second, 2*time.Second
	works := make(chan context.Context, 10)
	var runs int // under Run's goroutine only
	r := start(t, c, cfg, func(ctx context.Context) error {
		works <- ctx
		<-ctx.Done()
		if runs++; runs == 1 {
			return errors.New("stopped") // logged, not returned: the lease was lost
		}
		return nil
	})
	var first context.Context
	select {
	case first = <-works:
	case <-time.After(wait):
		t.Fatal("the work did not start")
	}
	// Another holder, whose lease lasts 5s from when the replica sees it: longer than the
	// replica's RenewDeadline, so the replica gives up renewing before it expires.
	now := metav1.NewMicroTime(time.Now())
	eventually(t, "another process takes the lease", func() bool {
		l, err := c.CoordinationV1().Leases(ns).Get(t.Context(), name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		l.Spec.HolderIdentity, l.Spec.LeaseDurationSeconds = ptr.To("thief"), ptr.To[int32](5)
		l.Spec.AcquireTime, l.Spec.RenewTime = &now, &now
		_, err = c.CoordinationV1().Leases(ns).Update(t.Context(), l, metav1.UpdateOptions{})
		return err == nil // a Conflict with a renewal: again
	})
	select {
	case <-first.Done():
	case <-time.After(wait):
		t.Fatal("the work's context did not end when the lease was lost")
	}
	// The thief never renews: once its lease expires (5s from when the replica saw it), the
	// replica takes it again.
	select {
	case <-works:
	case <-time.After(wait):
		t.Fatal("the work did not start again")
	}
	if h := holder(t, c); h != "a" {
		t.Errorf("the lease's holder is %q, want a", h)
	}
	if err := r.stop(t); err != nil {
		t.Errorf("Run = %v", err)
	}
}

// TestWorkThatReturnsReleases: work that returns by itself (a failure) releases the lease,
// and Run returns its error: another replica takes over at once.
func TestWorkThatReturnsReleases(t *testing.T) {
	c := leasetest.Clientset()
	failed := errors.New("watch modelcaches: no such resource")
	a := start(t, c, config("a"), func(context.Context) error { return failed })
	if err := a.wait(t); !errors.Is(err, failed) {
		t.Errorf("Run = %v, want %v", err, failed)
	}
	if h := holder(t, c); h != "" {
		t.Errorf("the lease's holder is %q: not released", h)
	}
	b := start(t, c, config("b"), nil)
	eventually(t, "another replica takes over", func() bool {
		running, _ := b.state()
		return running
	})
}

// TestConfig: a lease and an identity are required, durations default to controller-runtime's,
// and durations the elector refuses are an error, not a panic.
func TestConfig(t *testing.T) {
	c := leasetest.Clientset()
	never := func(context.Context) error { t.Error("the work ran"); return nil }
	for _, tc := range []struct {
		cfg  leader.Config
		want string
	}{
		{leader.Config{Name: name, Identity: "a"}, "namespace"},
		{leader.Config{Namespace: ns, Identity: "a"}, "lease"},
		{leader.Config{Namespace: ns, Name: name}, "identity"},
		{leader.Config{Namespace: ns, Name: name, Identity: "a", LeaseDuration: time.Second}, "leaseDuration must be greater than renewDeadline"},
		{leader.Config{Namespace: ns, Name: name, Identity: "a", LeaseDuration: 500 * time.Millisecond, RenewDeadline: 200 * time.Millisecond,
			RetryPeriod: 10 * time.Millisecond}, "a second or more"},
	} {
		err := leader.Run(t.Context(), c.CoordinationV1(), tc.cfg, never)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Run(%+v) = %v, want an error saying %q", tc.cfg, err, tc.want)
		}
	}
	// Defaults: the holder's lease lasts 15s.
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var seconds int32
	err := leader.Run(ctx, c.CoordinationV1(), leader.Config{Namespace: ns, Name: name, Identity: "a"}, func(ctx context.Context) error {
		defer cancel()
		l, err := c.CoordinationV1().Leases(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		seconds = ptr.Deref(l.Spec.LeaseDurationSeconds, 0)
		return nil
	})
	if err != nil || seconds != 15 {
		t.Errorf("Run = %v; the lease lasted %ds, want 15", err, seconds)
	}
}
