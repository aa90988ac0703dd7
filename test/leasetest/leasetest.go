// Package leasetest is client-go's fake clientset with what leader election needs of the API
// server and the fake does not do: optimistic concurrency on Leases.
package leasetest

import (
	"fmt"
	"strconv"
	"sync/atomic"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// Clientset returns a fake clientset holding objs whose Leases carry a resourceVersion, and on
// which an update of a Lease that is not the stored version is a Conflict, as on the API
// server. The fake's tracker takes any update: two replicas renewing or taking one Lease at
// once would both succeed and both lead, which the API server never lets happen.
func Clientset(objs ...runtime.Object) *fake.Clientset {
	c := fake.NewSimpleClientset(objs...)
	// The fake runs one action's reactors, these and then its tracker's, under one lock: the
	// check and the write are one step, as on the API server.
	var version atomic.Int64
	next := func() string { return strconv.FormatInt(version.Add(1), 10) }
	c.PrependReactor("create", "leases", func(action k8stesting.Action) (bool, runtime.Object, error) {
		if l, ok := action.(k8stesting.CreateAction).GetObject().(*coordinationv1.Lease); ok {
			l.ResourceVersion = next()
		}
		return false, nil, nil // the tracker stores it (or refuses a second one)
	})
	c.PrependReactor("update", "leases", func(action k8stesting.Action) (bool, runtime.Object, error) {
		l, ok := action.(k8stesting.UpdateAction).GetObject().(*coordinationv1.Lease)
		if !ok {
			return false, nil, nil
		}
		cur, err := c.Tracker().Get(action.GetResource(), l.Namespace, l.Name)
		if err != nil {
			return false, nil, nil // the tracker answers NotFound
		}
		if stored := cur.(*coordinationv1.Lease).ResourceVersion; l.ResourceVersion != stored {
			return true, nil, apierrors.NewConflict(action.GetResource().GroupResource(), l.Name,
				fmt.Errorf("resourceVersion %q, stored %q", l.ResourceVersion, stored))
		}
		l.ResourceVersion = next()
		return false, nil, nil
	})
	return c
}
