package driver

import (
	"context"
	"strings"

	"k8s.io/klog/v2"

	"github.com/modelcast/modelcast/pkg/leader"
)

// TotalsLeaseName is the Lease the controller's replicas elect the ModelCaches' totals writer
// with: the driver's name as a Lease may be named (as the csi-provisioner sidecar names its
// own: oss-csi-modelcast-io), then "-totals". Two installs in one namespace have two drivers,
// hence two leases.
func TotalsLeaseName(driverName string) string {
	name := strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-':
			return r
		case r >= 'A' && r <= 'Z':
			return r - 'A' + 'a'
		default:
			return '-'
		}
	}, driverName)
	return name + "-totals"
}

// underLease runs work as the one writer among the controller's replicas: under the Lease of
// Options.LeaderElection (leader.Run: work stops when the lease is lost, and the lease is
// released once work has returned), or at once when that has no namespace.
func (d *Driver) underLease(ctx context.Context, work func(context.Context) error) error {
	cfg := d.opts.LeaderElection
	if cfg.Namespace == "" {
		klog.InfoS("No namespace for the totals' lease (--leader-election-namespace): writing ModelCaches' totals " +
			"without leader election; every controller started so writes them")
		return work(ctx)
	}
	return leader.Run(ctx, d.opts.KubeClient.CoordinationV1(), cfg, work)
}
