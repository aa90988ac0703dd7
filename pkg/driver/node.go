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

	"github.com/modelcast/modelcast/internal/units"
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

// waitContext bounds the wait for a staging: maxWait, and shortly before the caller's deadline.
func (n *nodeServer) waitContext(ctx context.Context) (context.Context, context.CancelFunc) {
	deadline, ok := ctx.Deadline()
	if !ok {
		return context.WithTimeout(ctx, n.maxWait)
	}
	left := deadline.Sub(n.clock.Now())
	margin := min(n.margin, left/4)
	return context.WithTimeout(ctx, min(left-margin, n.maxWait))
}

// reportStaging posts the staging's Events on the pod until the function it returns is
// called: the start as soon as the source knows where the bytes come from (the chain position)
// or after firstEventWait, progress with rate and time left every progressEvery, and a
// re-link as soon as the source changes.
func (n *nodeServer) reportStaging(pod PodRef, m cache.Model, src cache.Source) func() {
	if pod.Name == "" {
		return func() {}
	}
	key := m.Key()
	from := "OSS"
	if d, ok := src.(interface{ Describe() string }); ok {
		from = d.Describe()
	}
	size := m.Manifest.Size()
	start := func(origin string) {
		n.events.Event(pod, false, ReasonStaging, fmt.Sprintf("Staging model %s (%s, %d files) from %s", m, units.Bytes(size), len(m.Manifest.Objects), origin))
	}
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		t := n.clock.NewTicker(pollEvery)
		defer t.Stop()
		began := n.clock.Now()
		started, origin := false, ""
		var last progressSample
		for {
			select {
			case <-stop:
				if !started {
					if meta, ok := n.store.Info(key); ok && meta.From != "" {
						from = meta.From // staged before the source said more: say it now
					}
					start(from)
				}
				return
			case <-t.C():
			}
			p, ok := n.store.Staging(key)
			if !ok {
				continue
			}
			now := n.clock.Now()
			switch {
			case !started && (p.From != "" || now.Sub(began) >= firstEventWait):
				if p.From != "" {
					from = p.From
				}
				start(from)
				started, origin, last = true, p.From, progressSample{at: now, done: p.Done}
			case started && p.From != "" && p.From != origin:
				n.events.Event(pod, false, ReasonProgress, progressMessage(m, p, last, now, "now from"))
				origin = p.From
			case started && now.Sub(last.at) >= n.progressEvery:
				n.events.Event(pod, false, ReasonProgress, progressMessage(m, p, last, now, "from"))
				last = progressSample{at: now, done: p.Done}
			}
		}
	}()
	return func() { close(stop); <-done }
}

// pollEvery is how often a waiting publish looks at its staging; firstEventWait how long the
// first Event waits for the source to say where the bytes come from.
const (
	pollEvery      = 250 * time.Millisecond
	firstEventWait = 2 * time.Second
)

type progressSample struct {
	at   time.Time
	done int64
}

// progressMessage: "Staging oss://b/qwen/: 45% (61.0 GB of 135.4 GB) at 2.1 GB/s, about 35s
// left, from node gpu-7 (position 5 of 12)". lead comes before the source: "from", "now from".
func progressMessage(m cache.Model, p cache.Progress, last progressSample, now time.Time, lead string) string {
	total := p.Total
	if total <= 0 {
		total = m.Manifest.Size()
	}
	msg := fmt.Sprintf("Staging %s: %d%% (%s of %s)", m, percent(p.Done, total), units.Bytes(p.Done), units.Bytes(total))
	if dt := now.Sub(last.at).Seconds(); dt > 0 && p.Done > last.done {
		rate := float64(p.Done-last.done) / dt
		left := time.Duration(float64(total-p.Done) / rate * float64(time.Second))
		eta := "under a second"
		if left >= time.Second {
			eta = "about " + left.Round(time.Second).String()
		}
		msg += fmt.Sprintf(" at %s/s, %s left", units.Bytes(int64(rate)), eta)
	}
	if p.From != "" {
		msg += ", " + lead + " " + p.From
	}
	return msg
}

func percent(done, total int64) int64 {
	if total <= 0 {
		return 100
	}
	return done * 100 / total
}

// readyMessage: "Ready: 135.4 GB in 41.2 s (peer 135.4 GB, OSS 0 B)".
func readyMessage(m cache.Meta) string {
	return fmt.Sprintf("Ready: %s in %.1f s (peer %s, OSS %s)", units.Bytes(m.Size), m.StageSeconds, units.Bytes(m.FromPeers), units.Bytes(m.FromOSS))
}

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
