// Package leader runs work only while this process holds a Lease (client-go's leader election),
// so that one of several replicas does it: the work stops when the lease is lost, and the
// lease is released when the work stops, so that another replica takes over at once.
package leader

import (
	"context"
	"errors"
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	coordinationv1 "k8s.io/client-go/kubernetes/typed/coordination/v1"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/klog/v2"
)

// The durations of the lease when Config leaves them zero: controller-runtime's (and
// kube-controller-manager's) defaults.
const (
	DefaultLeaseDuration = 15 * time.Second
	DefaultRenewDeadline = 10 * time.Second
	DefaultRetryPeriod   = 2 * time.Second
)

// Config names the Lease and this process's claim to it.
type Config struct {
	// Namespace and Name are the Lease's.
	Namespace, Name string
	// Identity is this process's name in the Lease's holderIdentity: unique among the
	// processes that share the Lease.
	Identity string
	// LeaseDuration is how long the others wait, without seeing the lease renewed, before they
	// take it; RenewDeadline how long the holder keeps trying to renew it before it stops its
	// work; RetryPeriod the wait between tries. Zero: the defaults above.
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
}

func (c *Config) defaults() {
	if c.LeaseDuration == 0 {
		c.LeaseDuration = DefaultLeaseDuration
	}
	if c.RenewDeadline == 0 {
		c.RenewDeadline = DefaultRenewDeadline
	}
	if c.RetryPeriod == 0 {
		c.RetryPeriod = DefaultRetryPeriod
	}
}

// Validate checks that the Lease and the identity are named, and that the lease lasts a
// second or more (the elector checks the durations against each other).
func (c *Config) Validate() error {
	var errs []error
	if c.Namespace == "" || c.Name == "" {
		errs = append(errs, fmt.Errorf("lease %q in namespace %q: both must be set", c.Name, c.Namespace))
	}
	if c.Identity == "" {
		errs = append(errs, errors.New("the identity in the lease is empty"))
	}
	if c.LeaseDuration != 0 && c.LeaseDuration < time.Second {
		// The Lease holds whole seconds: less would be written as 0, a lease expired at once.
		errs = append(errs, fmt.Errorf("lease duration %s: must be a second or more", c.LeaseDuration))
	}
	return errors.Join(errs...)
}

// Run runs work while this process holds the lease, until ctx ends:
//
//   - it campaigns for the lease, and once it holds it runs work with a context that ends when
//     ctx ends or the lease is lost (not renewed within RenewDeadline);
//   - when the lease is lost, it waits for work to return, then campaigns again;
//   - when ctx ends, it waits for work to return, then releases the lease (another replica
//     takes it at its next try, without waiting for the lease to expire) and returns work's
//     error (nil when ctx ended before this process held the lease);
//   - when work returns by itself while holding the lease, it releases the lease and returns
//     work's error (nil: work is done): this process stops campaigning, and another replica
//     takes the lease.
//
// Work runs on Run's goroutine, so that it has returned whenever Run has.
func Run(ctx context.Context, leases coordinationv1.LeasesGetter, cfg Config, work func(context.Context) error) error {
	cfg.defaults()
	if err := cfg.Validate(); err != nil {
		return err
	}
	klog.InfoS("Campaigning for the lease", "lease", klog.KRef(cfg.Namespace, cfg.Name), "identity", cfg.Identity)
	for {
		stop, err := term(ctx, leases, cfg, work)
		if stop {
			return err
		}
	}
}

// term is one campaign: it waits for the lease, runs work while it holds it, and returns once
// work has returned and the elector has stopped, having released the lease if it still held
// it. stop says whether Run returns (ctx ended, work ended by itself, or a bad Config).
func term(ctx context.Context, leases coordinationv1.LeasesGetter, cfg Config, work func(context.Context) error) (stop bool, err error) {
	lease := klog.KRef(cfg.Namespace, cfg.Name)
	// The elector runs under its own context, with ctx's values but not its cancellation: it
	// must outlive work, so that the lease is released only once work has returned.
	ectx, endElection := context.WithCancel(context.WithoutCancel(ctx))
	defer endElection()
	started := make(chan context.Context, 1) // OnStartedLeading runs once per elector at most
	le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock: &resourcelock.LeaseLock{
			LeaseMeta:  metav1.ObjectMeta{Namespace: cfg.Namespace, Name: cfg.Name},
			Client:     leases,
			LockConfig: resourcelock.ResourceLockConfig{Identity: cfg.Identity},
		},
		LeaseDuration:   cfg.LeaseDuration,
		RenewDeadline:   cfg.RenewDeadline,
		RetryPeriod:     cfg.RetryPeriod,
		ReleaseOnCancel: true,
		Name:            cfg.Name,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(lctx context.Context) { started <- lctx },
			OnStoppedLeading: func() {},
			OnNewLeader: func(holder string) {
				if holder != cfg.Identity {
					klog.V(2).InfoS("The lease is held by another replica", "lease", lease, "holder", holder)
				}
			},
		},
	})
	if err != nil {
		return true, fmt.Errorf("leader election on lease %s: %w", lease, err)
	}
	elected := make(chan struct{})
	go func() {
		defer close(elected)
		le.Run(ectx)
	}()
	defer func() {
		endElection()
		<-elected // the lease released, if this process held it
	}()

	var lctx context.Context // ends when the lease is lost
	select {
	case <-ctx.Done():
		return true, nil
	case <-elected:
		return false, nil // it held the lease and lost it at once: campaign again
	case lctx = <-started:
	}
	wctx, stopWork := context.WithCancel(ctx)
	defer stopWork()
	defer context.AfterFunc(lctx, stopWork)()
	err = work(wctx)
	switch {
	case ctx.Err() != nil:
		return true, err
	case lctx.Err() != nil:
		if err != nil {
			klog.ErrorS(err, "Work under the lease failed as the lease was lost", "lease", lease)
		}
		klog.InfoS("Lost the lease: the work under it stopped; campaigning again", "lease", lease, "identity", cfg.Identity)
		return false, nil
	default:
		klog.InfoS("The work under the lease returned: releasing the lease", "lease", lease, "identity", cfg.Identity)
		return true, err
	}
}
