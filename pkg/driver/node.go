package driver

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/modelcast/modelcast/pkg/cache"
)

// ModelStore is what the node needs of the cache; *cache.Store satisfies it.
type ModelStore interface {
	Acquire(ctx context.Context, m cache.Model, src cache.Source, holder string) (string, error)
	Release(holder string) error
	Has(key string) bool
	Holds(holder string) bool
	Staging(key string) (cache.Progress, bool)
	Info(key string) (cache.Meta, bool)
}

type nodeServer struct {
	csi.UnimplementedNodeServer
	nodeID  string
	store   ModelStore
	mounter Mounter
	res     *resolver
	events  Events
	clock   clock.WithTicker
	locks   *keyLock
	// maxWait bounds a NodePublishVolume without a deadline; margin is how long before the
	// deadline it answers (with the staging's progress) so kubelet gets the message, not a
	// timeout of its own.
	maxWait, margin time.Duration
	progressEvery   time.Duration
}

func (n *nodeServer) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{NodeId: n.nodeID}, nil
}

func (n *nodeServer) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	// No STAGE_UNSTAGE_VOLUME: the cache is shared per model, not per volume.
	return &csi.NodeGetCapabilitiesResponse{}, nil
}

func (n *nodeServer) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	if err := n.publish(ctx, req); err != nil {
		return nil, toStatus(err)
	}
	return &csi.NodePublishVolumeResponse{}, nil
}

func (n *nodeServer) publish(ctx context.Context, req *csi.NodePublishVolumeRequest) error {
	target := req.GetTargetPath()
	switch {
	case req.GetVolumeId() == "":
		return fmt.Errorf("%w: volume ID is required", errInvalid)
	case target == "":
		return fmt.Errorf("%w: target path is required", errInvalid)
	case !filepath.IsAbs(target):
		return fmt.Errorf("%w: target path %q is not absolute", errInvalid, target)
	}
	target = filepath.Clean(target)
	spec, err := parseVolume(req.GetVolumeContext())
	if err != nil {
		return err
	}
	if err := checkCapability(req.GetVolumeCapability(), spec.Ephemeral); err != nil {
		return err
	}
	unlock, ok := n.locks.TryLock(target)
	if !ok {
		return status.Errorf(codes.Aborted, "an operation on target %s is already in progress", target)
	}
	defer unlock()
	logger := klog.FromContext(ctx).WithValues("volumeID", req.GetVolumeId(), "targetPath", target, "model", spec.URI.String())

	_, mounted, corrupted, err := mountState(n.mounter, target)
	if err != nil {
		return fmt.Errorf("check target %s: %w", target, err)
	}
	switch {
	case corrupted:
		logger.Info("Target is a corrupted mount; mounting again")
		if err := unmountTarget(n.mounter, target); err != nil {
			return err
		}
	case mounted && n.store.Holds(target):
		return nil // published already: kubelet's retry after a success
	case mounted:
		return fmt.Errorf("%w: target %s is already a mount point that modelcast did not make", errInvalid, target)
	}

	model, src, err := n.res.model(ctx, spec, req.GetSecrets())
	if err != nil {
		return err
	}
	key := model.Key()
	staged := n.store.Has(key)
	stopReports := func() {}
	if !staged {
		stopReports = n.reportStaging(spec.Pod, model, src)
	}
	wctx, cancel := n.waitContext(ctx)
	dir, err := n.store.Acquire(wctx, model, src, target)
	cancel()
	stopReports()
	if err != nil {
		if !errors.Is(err, cache.ErrStaging) {
			n.events.Event(spec.Pod, true, ReasonStagingFailed, fmt.Sprintf("Staging %s failed: %v", model, err))
		}
		return err
	}
	if !staged {
		if meta, ok := n.store.Info(key); ok {
			n.events.Event(spec.Pod, false, ReasonReady, readyMessage(meta))
		}
	}
	if err := bindReadOnly(n.mounter, dir, target); err != nil {
		if uerr := unmountTarget(n.mounter, target); uerr != nil {
			logger.Error(uerr, "Could not clean up the target after a failed mount")
		}
		if rerr := n.store.Release(target); rerr != nil {
			logger.Error(rerr, "Could not release the model after a failed mount")
		}
		return err
	}
	logger.V(2).Info("Published model", "key", key, "cacheHit", staged)
	return nil
}

// waitContext bounds the wait for a staging: shortly before the caller's deadline, or maxWait.
func (n *nodeServer) waitContext(ctx context.Context) (context.Context, context.CancelFunc) {
	deadline, ok := ctx.Deadline()
	if !ok {
		return context.WithTimeout(ctx, n.maxWait)
	}
	left := deadline.Sub(n.clock.Now())
	margin := min(n.margin, left/4)
	return context.WithTimeout(ctx, left-margin)
}

// reportStaging posts the staging's start, then its progress every progressEvery, on the pod.
// It returns the function that stops it.
func (n *nodeServer) reportStaging(pod PodRef, m cache.Model, src cache.Source) func() {
	from := "OSS"
	if d, ok := src.(interface{ Describe() string }); ok {
		from = d.Describe()
	}
	n.events.Event(pod, false, ReasonStaging, fmt.Sprintf("Staging model %s (%s GB, %d files) from %s",
		m, gb(m.Manifest.Size()), len(m.Manifest.Objects), from))
	if pod.Name == "" {
		return func() {}
	}
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		t := n.clock.NewTicker(n.progressEvery)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C():
				if p, ok := n.store.Staging(m.Key()); ok {
					n.events.Event(pod, false, ReasonProgress, (&cache.StagingError{Model: m.String(), Done: p.Done, Total: p.Total, From: p.From}).Error())
				}
			}
		}
	}()
	return func() { close(stop); <-done }
}

func readyMessage(m cache.Meta) string {
	rate := 0.0
	if m.StageSeconds > 0 {
		rate = float64(m.Size) / m.StageSeconds / 1e9
	}
	return fmt.Sprintf("Ready: %s GB in %.1f s (%.2f GB/s) from %s", gb(m.Size), m.StageSeconds, rate, m.From)
}

func gb(n int64) string { return fmt.Sprintf("%.1f", float64(n)/1e9) }

func (n *nodeServer) NodeUnpublishVolume(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	target := req.GetTargetPath()
	switch {
	case req.GetVolumeId() == "":
		return nil, toStatus(fmt.Errorf("%w: volume ID is required", errInvalid))
	case target == "":
		return nil, toStatus(fmt.Errorf("%w: target path is required", errInvalid))
	}
	target = filepath.Clean(target)
	unlock, ok := n.locks.TryLock(target)
	if !ok {
		return nil, status.Errorf(codes.Aborted, "an operation on target %s is already in progress", target)
	}
	defer unlock()
	if err := unmountTarget(n.mounter, target); err != nil {
		return nil, toStatus(err)
	}
	if err := n.store.Release(target); err != nil {
		return nil, toStatus(err)
	}
	klog.FromContext(ctx).V(2).Info("Unpublished", "volumeID", req.GetVolumeId(), "targetPath", target)
	return &csi.NodeUnpublishVolumeResponse{}, nil
}
