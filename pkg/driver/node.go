package driver

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
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
	Held(holder string) (string, bool)
	Pending(holder string) (string, bool)
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
	// cacheRoot is the cache's directory (symlink-free): no target may lie in it or above it.
	cacheRoot string
	// published remembers the volume each target was published for (since this process
	// started), so another volume on the same target is refused.
	pubMu     sync.Mutex
	published map[string]publication
	// maxWait caps a NodePublishVolume's wait (0: none); margin is how long before the
	// deadline it answers (with the staging's progress) so kubelet gets the message, not a
	// timeout of its own.
	maxWait, margin time.Duration
	progressEvery   time.Duration
	// authz, when set, is mount authorization: a pod mounts only a model a ModelCache of its
	// namespace declares.
	authz *mountAuthorizer
}

// publication is what a target was published for.
type publication struct {
	volumeID, model, endpoint string
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

// checkTarget checks what a publish and an unpublish both need, a volume ID and an absolute
// target path, and returns the target cleaned.
func checkTarget(volumeID, target string) (string, error) {
	switch {
	case volumeID == "":
		return "", fmt.Errorf("%w: volume ID is required", errInvalid)
	case target == "":
		return "", fmt.Errorf("%w: target path is required", errInvalid)
	case !filepath.IsAbs(target):
		return "", fmt.Errorf("%w: target path %q is not absolute", errInvalid, target)
	}
	return filepath.Clean(target), nil
}

func (n *nodeServer) publish(ctx context.Context, req *csi.NodePublishVolumeRequest) error {
	target, err := checkTarget(req.GetVolumeId(), req.GetTargetPath())
	if err != nil {
		return err
	}
	spec, err := parseVolume(req.GetVolumeContext())
	if err != nil {
		return err
	}
	if err := checkCapability(req.GetVolumeCapability(), spec.Ephemeral); err != nil {
		return err
	}
	// Before anything reaches OSS or the cache: a refused pod learns nothing of the model.
	if n.authz != nil {
		if err := n.authz.authorize(spec); err != nil {
			return err
		}
	}
	unlock, ok := n.locks.TryLock(target)
	if !ok {
		return fmt.Errorf("%w: an operation on target %s is already in progress", errBusy, target)
	}
	defer unlock()
	if err := n.checkTarget(target); err != nil {
		return err
	}
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
		// Published already: kubelet's retry after a success, if it asks for the same volume.
		return n.samePublication(target, req.GetVolumeId(), spec, req.GetSecrets())
	case mounted:
		return fmt.Errorf("%w: target %s is already a mount point that modelcast did not make", errInvalid, target)
	}

	// Listing and staging share one wait: until shortly before the deadline (or maxWait).
	wctx, cancel := n.waitContext(ctx)
	defer cancel()
	res, err := n.res.resolve(wctx, spec, req.GetSecrets())
	if err != nil {
		return err
	}
	model, src := res.model, res.src
	if res.unchecked != nil {
		n.events.Event(spec.Pod, true, ReasonUnchecked, fmt.Sprintf("OSS did not answer the listing of %s (%v); using the version listed before, without checking OSS for a newer one", model, res.unchecked))
	}
	key := model.Key()
	staged := n.store.Has(key)
	// waited: an earlier publish of this target waited for this model's staging and answered
	// Unavailable (kubelet retries). Its pod has had its StagingModel Event for that staging,
	// and is owed ModelReady when this publish succeeds, staged or not by now.
	pendingKey, waited := n.store.Pending(target)
	waited = waited && pendingKey == key
	stopReports := func() {}
	if !staged {
		stopReports = n.reportStaging(spec.Pod, model, src, waited)
	}
	dir, err := n.store.Acquire(wctx, model, src, target)
	stopReports()
	if err != nil {
		if !errors.Is(err, cache.ErrStaging) {
			n.events.Event(spec.Pod, true, ReasonStagingFailed, fmt.Sprintf("Staging %s failed: %v", model, err))
		}
		return err
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
	n.pubMu.Lock()
	n.published[target] = publication{volumeID: req.GetVolumeId(), model: spec.URI.String(), endpoint: model.Endpoint}
	n.pubMu.Unlock()
	if !staged || waited {
		if meta, ok := n.store.Info(key); ok {
			n.events.Event(spec.Pod, false, ReasonReady, readyMessage(meta))
		}
	}
	logger.V(2).Info("Published model", "key", key, "cacheHit", staged && !waited)
	return nil
}

// samePublication accepts a publish on a target that holds a model already when it asks for
// what is there (the same volume, the same model from the same endpoint), and refuses
// anything else with errAlreadyExists: the CSI spec's answer to an incompatible publish.
func (n *nodeServer) samePublication(target, volumeID string, spec VolumeSpec, secrets map[string]string) error {
	n.pubMu.Lock()
	pub, known := n.published[target]
	n.pubMu.Unlock()
	if known && pub.volumeID != volumeID {
		return fmt.Errorf("%w: target %s holds volume %s (%s); refusing to publish volume %s there", errAlreadyExists, target, pub.volumeID, pub.model, volumeID)
	}
	endpoint, err := n.res.endpoint(spec, secrets)
	if err != nil {
		return err
	}
	held := publication{model: pub.model, endpoint: pub.endpoint}
	if key, ok := n.store.Held(target); ok {
		if meta, ok := n.store.Info(key); ok && meta.URI != "" {
			held.model, held.endpoint = meta.URI, meta.Endpoint
		}
	}
	if held.model != "" && (held.model != spec.URI.String() || held.endpoint != "" && held.endpoint != endpoint) {
		return fmt.Errorf("%w: target %s holds model %s from %s; refusing to publish %s from %s there", errAlreadyExists, target, held.model, held.endpoint, spec.URI, endpoint)
	}
	return nil
}

// checkTarget refuses a target path the node must not mount at or unmount: one that is a
// symbolic link or lies under one (the mount would land on the link's destination), and one
// inside the cache (or above it: the mount would hide the cache). target is clean and
// absolute.
func (n *nodeServer) checkTarget(target string) error {
	if fi, err := os.Lstat(target); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
		return fmt.Errorf("%w: target path %s is a symbolic link; modelcast mounts only at a real directory", errInvalid, target)
	}
	parent := filepath.Dir(target)
	real, err := resolveExisting(parent)
	if err != nil {
		return fmt.Errorf("check target %s: %w", target, err)
	}
	if real != parent {
		return fmt.Errorf("%w: target path %s lies under a symbolic link (%s resolves to %s); modelcast mounts only at a path without links", errInvalid, target, parent, real)
	}
	if n.cacheRoot != "" && (within(target, n.cacheRoot) || within(n.cacheRoot, target)) {
		return fmt.Errorf("%w: target path %s is inside the model cache %s (or contains it); a pod's volume must be elsewhere", errInvalid, target, n.cacheRoot)
	}
	return nil
}

// resolveExisting resolves the symbolic links of the longest existing prefix of p and joins
// the rest to it: a path whose directories do not all exist yet (they are made before the
// mount) resolves to itself unless an existing part of it is a link.
func resolveExisting(p string) (string, error) {
	rest := ""
	for {
		real, err := filepath.EvalSymlinks(p)
		if err == nil {
			return filepath.Join(real, rest), nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return "", err
		}
		parent := filepath.Dir(p)
		if parent == p {
			return "", err
		}
		rest = filepath.Join(filepath.Base(p), rest)
		p = parent
	}
}

// within reports whether path p is dir or lies under it (both clean and absolute).
func within(p, dir string) bool {
	return p == dir || strings.HasPrefix(p, strings.TrimSuffix(dir, "/")+"/")
}

// waitContext bounds the wait for the listing and the staging: until margin before the
// caller's deadline (kubelet's is kubeletPublishTimeout), so that a staging that ends while
// kubelet's call is open starts the pod at once; maxWait, when set, caps it. A caller without
// a deadline waits maxWait, or as long as kubelet's call would.
func (n *nodeServer) waitContext(ctx context.Context) (context.Context, context.CancelFunc) {
	deadline, ok := ctx.Deadline()
	if !ok {
		wait := n.maxWait
		if wait <= 0 {
			wait = kubeletPublishTimeout - n.margin
		}
		return context.WithTimeout(ctx, wait)
	}
	// The deadline is the caller's, on the wall clock (an injected clock is not its time).
	left := time.Until(deadline)
	wait := left - min(n.margin, left/4)
	if n.maxWait > 0 {
		wait = min(wait, n.maxWait)
	}
	return context.WithTimeout(ctx, wait)
}

// kubeletPublishTimeout is the deadline kubelet gives a NodePublishVolume (csiTimeout in
// kubelet's pkg/volume/csi). After a failed call kubelet waits before the next one, 0.5 s
// doubling with each failure up to kubeletMaxBackoff (its exponential backoff).
const (
	kubeletPublishTimeout = 2 * time.Minute
	kubeletMaxBackoff     = 2*time.Minute + 2*time.Second
	// retryMargin is added to kubeletMaxBackoff for the time kubelet's retry takes to come.
	retryMargin = 30 * time.Second
)

// reportStaging posts the staging's Events on the pod until the function it returns is
// called: the start as soon as the source knows where the bytes come from (the chain position)
// or after firstEventWait, progress with rate and time left every progressEvery, and a
// re-link as soon as the source changes. announced says the pod had the start already (an
// earlier publish of the same target waited for this staging): it is not posted again.
func (n *nodeServer) reportStaging(pod PodRef, m cache.Model, src cache.Source, announced bool) func() {
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
		started, origin := announced, ""
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
			if last.at.IsZero() && announced {
				// The start was posted by an earlier publish: progress counts from here.
				last, origin = progressSample{at: now, done: p.Done}, p.From
				continue
			}
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
	if err := n.unpublish(ctx, req); err != nil {
		return nil, toStatus(err)
	}
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

func (n *nodeServer) unpublish(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) error {
	target, err := checkTarget(req.GetVolumeId(), req.GetTargetPath())
	if err != nil {
		return err
	}
	unlock, ok := n.locks.TryLock(target)
	if !ok {
		return fmt.Errorf("%w: an operation on target %s is already in progress", errBusy, target)
	}
	defer unlock()
	if err := n.checkTarget(target); err != nil {
		return err
	}
	if err := unmountTarget(n.mounter, target); err != nil {
		return err
	}
	if err := n.store.Release(target); err != nil {
		return err
	}
	n.pubMu.Lock()
	delete(n.published, target)
	n.pubMu.Unlock()
	klog.FromContext(ctx).V(2).Info("Unpublished", "volumeID", req.GetVolumeId(), "targetPath", target)
	return nil
}
