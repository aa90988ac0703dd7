package cache

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/modelcast/modelcast/internal/units"
	"github.com/modelcast/modelcast/pkg/ossclient"
)

// Defaults of Config.
const (
	DefaultRoot          = "/var/lib/modelcast/cache"
	DefaultExpireAfter   = 120 * time.Second // OSS Connector's expireTimeSec
	DefaultMemoryReserve = 1_000_000_000     // 1 GB, as messages print it
	// DefaultRetryHold is how long a model is kept, after its staging ends, for a holder that
	// stopped waiting for it: a caller that retries with a capped exponential backoff comes
	// back within its cap (kubelet's: 2m2s between a failed NodePublishVolume and the next),
	// plus a margin.
	DefaultRetryHold = 2*time.Minute + 2*time.Second + 30*time.Second
)

// Config of a Store. Zero values mean the defaults.
type Config struct {
	// Root is the cache directory.
	Root string
	// Tmpfs says whether and how the store mounts a tmpfs at Root.
	Tmpfs TmpfsConfig
	// ExpireAfter is how long a model nobody holds is kept.
	ExpireAfter time.Duration
	// SoftCap is the size in bytes the cache tries to stay under by evicting models nobody
	// holds, least recently used first, before staging another (maxCacheAdviseGB); 0: none.
	// It is soft: models in use are never evicted to honour it.
	SoftCap int64
	// MemoryReserve is the memory a new model must leave available on the node.
	MemoryReserve int64
	// RetryHold is how long after its staging ends a model is kept for a holder whose Acquire
	// stopped waiting for it (a pending hold): the holder's retry finds it, however short
	// ExpireAfter is. The hold ends earlier when the holder acquires the model, acquires
	// another, or is released; then, or when it lapses, the model is released as by Release.
	RetryHold time.Duration
	// OnRelease, if set, is told (off the store's lock) of every model removed from the cache,
	// expired or evicted: a broadcast node stops serving it and leaves its chain.
	OnRelease func(key string)
	// OnStaged, if set, is told (off the store's lock) of every staging that ended.
	OnStaged func(StageResult)

	// Seams, for tests.
	Clock     clock.WithTickerAndDelayedExecution // default: the real clock
	MountInfo string                              // default: /proc/self/mountinfo
	MemInfo   string                              // default: /proc/meminfo
}

// TmpfsConfig: the tmpfs at the cache root.
type TmpfsConfig struct {
	// Mount a tmpfs at Root unless one is there already (then it is adopted). When false, Root
	// is used as it is.
	Mount bool
	// Size is the tmpfs size option: bytes with a k/m/g suffix, or a percentage of RAM ("80%").
	Size string
	// Huge is the tmpfs huge option, "within_size" by choice (docs/benchmarks.md).
	Huge string
}

// Store is a node's model cache. Its methods are safe for concurrent use.
type Store struct {
	cfg                                      Config
	clock                                    clock.WithTickerAndDelayedExecution
	root, incoming, models, meta, trash, dbf string
	pinsf                                    string // state/pins.json: the holders that are pins

	ctx    context.Context // ends with Close; stagings and the janitor run under it
	cancel context.CancelFunc
	wg     sync.WaitGroup
	wake   chan struct{} // tells the janitor a model may have become releasable

	mu       sync.Mutex
	entries  map[string]*entry       // committed models by key
	stagings map[string]*staging     // stagings in flight by key
	holders  map[string]string       // holder → key
	pins     map[string]string       // holder → key, for the holders that are pins (a subset of holders)
	pending  map[string]*pendingHold // holder → the model its Acquire stopped waiting for
	trashSeq int
	closed   bool

	count counters
}

type entry struct {
	meta    Meta
	holders map[string]struct{}
	// manifest is the one the model was staged from; nil for a model recovered from disk
	// without its manifest file (staged by an older version) until a listing brings it.
	manifest *ossclient.Manifest
	// listers are the Model.Lister tokens that listed manifest, least recent first (at most
	// maxListers): Find hands the model only to them.
	listers []string
}

// maxListers bounds the listers kept per model: credentials that rotate (STS) add one each.
const maxListers = 16

// pendingHold keeps a model for a holder that stopped waiting for its staging, until the
// holder comes back or the hold lapses. until is zero while the staging is in flight.
type pendingHold struct {
	key   string
	until time.Time
}

type staging struct {
	model    Model
	src      Source
	started  time.Time
	done     chan struct{} // closed when err (and the entry, on success) are set
	err      error
	fetching bool // past the room check (guarded by Store.mu): its bytes are counted
	bytes    atomic.Int64
	total    atomic.Int64
	from     atomic.Pointer[string]
	// fromOSS and fromPeers are the highest counts reported; they feed the store's counters.
	fromOSS, fromPeers atomic.Int64
	count              *counters
}

func (st *staging) report(p Progress) {
	st.bytes.Store(p.Done)
	st.total.Store(p.Total)
	raise(&st.fromOSS, p.FromOSS, &st.count.receivedOSS)
	raise(&st.fromPeers, p.FromPeers, &st.count.receivedPeers)
	if cur := st.from.Load(); cur == nil || *cur != p.From {
		from := p.From
		st.from.Store(&from)
	}
}

func (st *staging) progress() Progress {
	p := Progress{Done: st.bytes.Load(), Total: st.total.Load(), FromOSS: st.fromOSS.Load(), FromPeers: st.fromPeers.Load()}
	if p.Total == 0 {
		p.Total = st.model.Manifest.Size()
	}
	if f := st.from.Load(); f != nil {
		p.From = *f
	}
	return p
}

// New opens the store at cfg.Root: mounts or adopts its tmpfs, drops what a crash left
// half-done, and reconciles the persisted references with the mount table, so every bind
// mount made before a restart keeps its model.
func New(cfg Config) (*Store, error) {
	if cfg.Root == "" {
		cfg.Root = DefaultRoot
	}
	if cfg.ExpireAfter <= 0 {
		cfg.ExpireAfter = DefaultExpireAfter
	}
	if cfg.MemoryReserve <= 0 {
		cfg.MemoryReserve = DefaultMemoryReserve
	}
	if cfg.RetryHold <= 0 {
		cfg.RetryHold = DefaultRetryHold
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.MountInfo == "" {
		cfg.MountInfo = "/proc/self/mountinfo"
	}
	if cfg.MemInfo == "" {
		cfg.MemInfo = "/proc/meminfo"
	}
	if err := os.MkdirAll(cfg.Root, 0o755); err != nil {
		return nil, fmt.Errorf("cache root: %w", err)
	}
	root, err := absolute(cfg.Root)
	if err != nil {
		return nil, fmt.Errorf("cache root: %w", err)
	}
	table, err := readMountTable(cfg.MountInfo)
	if err != nil {
		return nil, err
	}
	if cfg.Tmpfs.Mount {
		if err := ensureTmpfs(table, root, cfg.Tmpfs); err != nil {
			return nil, err
		}
		if table, err = readMountTable(cfg.MountInfo); err != nil {
			return nil, err
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Store{
		cfg: cfg, clock: cfg.Clock, root: root,
		incoming: filepath.Join(root, "incoming"), models: filepath.Join(root, "models"),
		meta: filepath.Join(root, "meta"), trash: filepath.Join(root, "trash"),
		dbf: filepath.Join(root, "state", "holders.json"), pinsf: filepath.Join(root, "state", "pins.json"),
		ctx: ctx, cancel: cancel, wake: make(chan struct{}, 1),
		entries: map[string]*entry{}, stagings: map[string]*staging{}, holders: map[string]string{},
		pins: map[string]string{}, pending: map[string]*pendingHold{},
	}
	for _, d := range []string{s.incoming, s.models, s.meta, s.trash, filepath.Dir(s.dbf)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			cancel()
			return nil, fmt.Errorf("cache: %w", err)
		}
	}
	if err := s.recover(table); err != nil {
		cancel()
		return nil, err
	}
	s.wg.Add(1)
	go s.janitor()
	return s, nil
}

// recover rebuilds the index from disk and the mount table (New only: no lock needed yet).
func (s *Store) recover(table *mountTable) error {
	for _, d := range []string{s.incoming, s.trash} {
		if err := emptyDir(d); err != nil {
			return fmt.Errorf("cache: clean %s: %w", d, err)
		}
	}
	binds, err := table.bindsOf(s.models)
	if err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	mounted := map[string]bool{}
	for _, key := range binds {
		mounted[key] = true
	}
	dirs, err := os.ReadDir(s.models)
	if err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	for _, d := range dirs {
		key := d.Name()
		var m Meta
		if err := readJSON(s.metaPath(key), &m); err != nil || m.Key != key {
			if mounted[key] {
				// A pod still reads it: keep it, with what can be known.
				m = Meta{Key: key, Size: dirSize(filepath.Join(s.models, key)), LastUsed: s.clock.Now()}
				klog.InfoS("Kept a mounted model without metadata", "key", key)
			} else {
				klog.InfoS("Removing a model without metadata", "key", key, "err", err)
				if err := os.RemoveAll(filepath.Join(s.models, key)); err != nil {
					return fmt.Errorf("cache: %w", err)
				}
				continue
			}
		}
		e := &entry{meta: m, holders: map[string]struct{}{}}
		switch man, listers, err := s.readManifest(key, m.Endpoint); {
		case errors.Is(err, fs.ErrNotExist):
			klog.V(2).InfoS("A cached model has no manifest beside it: it is served again once OSS lists it", "key", key, "model", m.URI)
		case err != nil:
			klog.InfoS("Ignoring the manifest beside a cached model: it is served again once OSS lists it", "key", key, "model", m.URI, "err", err)
		default:
			e.manifest, e.listers = man, listers
		}
		s.entries[key] = e
	}
	metas, err := os.ReadDir(s.meta)
	if err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	for _, f := range metas {
		key, ok := strings.CutSuffix(f.Name(), manifestSuffix)
		if !ok {
			key, ok = strings.CutSuffix(f.Name(), ".json")
		}
		if !ok || s.entries[key] == nil {
			_ = os.Remove(filepath.Join(s.meta, f.Name()))
		}
	}

	persisted := map[string]string{}
	if err := readJSON(s.dbf, &persisted); err != nil {
		klog.ErrorS(err, "Ignoring unreadable cache references; the mount table is the truth")
	}
	// A pin has no mount: it is kept when both files record it (a crash between Pin's two
	// writes loses it, and its owner pins again when it starts).
	pins := map[string]string{}
	if err := readJSON(s.pinsf, &pins); err != nil {
		klog.ErrorS(err, "Ignoring unreadable cache pins; their owners pin the models again")
	}
	for holder, key := range persisted {
		switch {
		case s.entries[key] == nil:
			klog.InfoS("Dropped a reference to a model no longer cached", "holder", holder, "key", key)
		case binds[holder] == key:
			s.addHolderLocked(s.entries[key], holder, key)
		case pins[holder] == key:
			klog.InfoS("Kept a pinned model", "holder", holder, "key", key, "model", s.entries[key].meta.URI)
			s.addHolderLocked(s.entries[key], holder, key)
			s.pins[holder] = key
		default:
			klog.InfoS("Dropped a reference whose mount is gone", "holder", holder, "key", key)
		}
	}
	for holder, key := range binds {
		if _, ok := s.holders[holder]; !ok && s.entries[key] != nil {
			klog.InfoS("Adopted a mount of a cached model", "holder", holder, "key", key)
			s.addHolderLocked(s.entries[key], holder, key)
		}
	}
	if err := s.saveHoldersLocked(); err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	if err := s.savePinsLocked(); err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	klog.InfoS("Opened the model cache", "root", s.root, "models", len(s.entries), "holders", len(s.holders), "pins", len(s.pins))
	return nil
}

// Acquire returns the directory of model m, staged, verified and referenced by holder. Without
// it on the node, the first Acquire starts a staging from src; concurrent Acquires of the same
// model wait for that one staging. When ctx ends first, Acquire returns a *StagingError
// (errors.Is ErrStaging) with the progress, and the staging goes on; a later Acquire joins it.
// Acquire is idempotent per (holder, model).
//
// A holder that stopped waiting keeps a pending hold on the model: once staged, the model is
// kept for it (RetryHold after the staging ends) until it comes back, and Pending reports it.
func (s *Store) Acquire(ctx context.Context, m Model, src Source, holder string) (string, error) {
	key := m.Key()
	dir, err := s.acquire(ctx, m, src, holder, key)
	s.mu.Lock()
	defer s.mu.Unlock()
	if errors.Is(err, ErrStaging) {
		s.holdPendingLocked(holder, key)
	} else {
		s.dropPendingLocked(holder)
	}
	return dir, err
}

// Pin is Acquire for a holder that is not a mount, such as a ModelCache's claim on this node
// (holder "modelcache/<namespace>/<name>"; never an absolute path, which names a pod's mount). Like
// any holder it keeps the model from expiring and from eviction until Release(holder); unlike
// a pod's mount, which the mount table vouches for after a restart, a pin is recorded in
// state/pins.json and kept by the next Store as it is. Its owner must release the pins it no
// longer wants when it starts (Pins lists them): a ModelCache deleted while the plugin was
// down. A closed store keeps its tmpfs while a pin is left (UnmountIfIdle), as for a pod.
//
// When ctx ends before the staging does, Pin returns a *StagingError as Acquire does and
// nothing is pinned yet: the staging goes on (with a pending hold for holder), and a later Pin
// takes the model.
func (s *Store) Pin(ctx context.Context, m Model, src Source, holder string) (string, error) {
	dir, err := s.Acquire(ctx, m, src, holder)
	if err != nil {
		return "", err
	}
	key := m.Key()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.holders[holder] != key {
		// Released (or released and acquired again for another model) meanwhile.
		return "", fmt.Errorf("pin %s for %s: released while it was being pinned", m, holder)
	}
	if s.pins[holder] == key {
		return dir, nil
	}
	s.pins[holder] = key
	if err := s.savePinsLocked(); err != nil {
		delete(s.pins, holder)
		return "", fmt.Errorf("pin %s for %s: %w", m, holder, err)
	}
	klog.V(2).InfoS("Pinned model", "holder", holder, "model", m.String(), "key", key)
	return dir, nil
}

// Pins returns the pinned holders and the keys of their models (holder → key).
func (s *Store) Pins() map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.pins)
}

func (s *Store) acquire(ctx context.Context, m Model, src Source, holder, key string) (string, error) {
	for {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return "", errors.New("cache is closed")
		}
		if held, ok := s.holders[holder]; ok {
			s.mu.Unlock()
			if held != key {
				return "", fmt.Errorf("%w: %s holds %s, not %s (%s)", ErrHolderConflict, holder, held, key, m)
			}
			return s.modelDir(key), nil
		}
		if e := s.entries[key]; e != nil {
			s.addHolderLocked(e, holder, key)
			e.meta.LastUsed = s.clock.Now()
			err := s.saveHoldersLocked()
			if err != nil {
				s.removeHolderLocked(holder)
			} else {
				s.noteListerLocked(e, m)
			}
			s.mu.Unlock()
			if err != nil {
				return "", fmt.Errorf("reference %s for %s: %w", m, holder, err)
			}
			return s.modelDir(key), nil
		}
		st := s.stagings[key]
		if st == nil {
			st = &staging{model: m, src: src, started: s.clock.Now(), done: make(chan struct{}), count: &s.count}
			s.stagings[key] = st
			s.wg.Add(1)
			go s.stage(key, st)
		}
		s.mu.Unlock()

		select {
		case <-st.done:
			if st.err != nil {
				return "", st.err
			}
			// Committed: loop to take the reference.
		case <-ctx.Done():
			p := st.progress()
			return "", &StagingError{Model: m.String(), Done: p.Done, Total: p.Total, From: p.From, Err: ctx.Err()}
		}
	}
}

// Release drops holder's reference, a pin's too. A model nobody holds is removed ExpireAfter
// later. Releasing an unknown holder is not an error.
func (s *Store) Release(holder string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dropPendingLocked(holder)
	key, ok := s.holders[holder]
	if !ok {
		return nil
	}
	e := s.removeHolderLocked(holder)
	if err := s.saveHoldersLocked(); err != nil {
		s.addHolderLocked(e, holder, key)
		return fmt.Errorf("release %s: %w", holder, err)
	}
	if _, pinned := s.pins[holder]; pinned {
		delete(s.pins, holder)
		// Harmless if it fails: a pin is kept at recovery only if holders.json has it too.
		if err := s.savePinsLocked(); err != nil {
			klog.ErrorS(err, "Could not record the release of a pin; the next start drops it anyway", "holder", holder, "key", key)
		}
		klog.V(2).InfoS("Unpinned model", "holder", holder, "key", key)
	}
	s.count.releases.Add(1)
	if e != nil && len(e.holders) == 0 {
		s.releasedLocked(e, s.clock.Now())
		s.poke()
	}
	return nil
}

// Close stops stagings and expiry. Models, references and mounts stay for the next Store.
func (s *Store) Close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
}

// UnmountIfIdle unmounts the cache tmpfs of a closed store when no holder is left: its
// models are only a cache, and a plugin being removed must leave no mount behind. It reports
// whether it unmounted. A store that did not mount its root, or whose models are held, keeps it.
func (s *Store) UnmountIfIdle() (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		return false, errors.New("the store is open")
	}
	if !s.cfg.Tmpfs.Mount || len(s.holders) > 0 {
		return false, nil
	}
	if err := unix.Unmount(s.root, 0); err != nil {
		return false, fmt.Errorf("unmount the cache tmpfs at %s: %w", s.root, err)
	}
	klog.InfoS("Unmounted the cache tmpfs: no pod holds a model", "root", s.root, "models", len(s.entries))
	return true, nil
}

// Has reports whether the model with this key is staged.
func (s *Store) Has(key string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.entries[key] != nil
}

// Holds reports whether holder holds a model.
func (s *Store) Holds(holder string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.holders[holder]
	return ok
}

// Held returns the key of the model holder holds, if any.
func (s *Store) Held(holder string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	key, ok := s.holders[holder]
	return key, ok
}

// Pending returns the key of the model holder's last Acquire stopped waiting for, while its
// pending hold lasts: the staging is in flight, or the model is staged and kept for holder.
func (s *Store) Pending(holder string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if h := s.pending[holder]; h != nil && (h.until.IsZero() || h.until.After(s.clock.Now())) {
		return h.key, true
	}
	return "", false
}

// Info returns the metadata of a staged model.
func (s *Store) Info(key string) (Meta, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.entries[key]; e != nil {
		return e.meta, true
	}
	return Meta{}, false
}

// Staging returns the progress of the model's staging, if one is in flight.
func (s *Store) Staging(key string) (Progress, bool) {
	s.mu.Lock()
	st := s.stagings[key]
	s.mu.Unlock()
	if st == nil {
		return Progress{}, false
	}
	return st.progress(), true
}

// Manifest returns the manifest a staged model was staged from, after a restart too: it is
// kept beside the model. (A model staged by a version that did not keep it has none until a
// listing of it is acquired again.)
func (s *Store) Manifest(key string) (*ossclient.Manifest, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.entries[key]; e != nil && e.manifest != nil {
		return e.manifest, true
	}
	return nil, false
}

// Find returns the staged model of uri from endpoint that lister listed before (Model.Lister)
// — the most recently staged one when several versions are cached — with its manifest: what a
// publish can use when OSS cannot be asked whether the model changed. Models recovered after a
// restart are found too. An empty lister finds nothing.
func (s *Store) Find(endpoint string, uri ossclient.URI, lister string) (Model, bool) {
	if lister == "" {
		return Model{}, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var best *entry
	for _, e := range s.entries {
		m := e.manifest
		if m == nil || e.meta.Endpoint != endpoint || m.Bucket != uri.Bucket || m.Prefix != uri.Prefix || !slices.Contains(e.listers, lister) {
			continue
		}
		if best == nil || e.meta.StagedAt.After(best.meta.StagedAt) {
			best = e
		}
	}
	if best == nil {
		return Model{}, false
	}
	return Model{Endpoint: best.meta.Endpoint, Manifest: best.manifest, Lister: lister}, true
}

// StagingStatus is a staging in flight.
type StagingStatus struct {
	Key      string
	Model    string
	Progress Progress
}

// StagingModels lists the stagings in flight.
func (s *Store) StagingModels() []StagingStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]StagingStatus, 0, len(s.stagings))
	for key, st := range s.stagings {
		out = append(out, StagingStatus{Key: key, Model: st.model.String(), Progress: st.progress()})
	}
	return out
}

// ModelStatus is one staged model as the store sees it.
type ModelStatus struct {
	Meta
	// Holders counts its references, Pins those of them that are pins.
	Holders, Pins int
}

// Models lists the staged models, most recently used first.
func (s *Store) Models() []ModelStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]ModelStatus, 0, len(s.entries))
	for _, e := range s.entries {
		ms := ModelStatus{Meta: e.meta, Holders: len(e.holders)}
		for h := range e.holders {
			if _, ok := s.pins[h]; ok {
				ms.Pins++
			}
		}
		out = append(out, ms)
	}
	slices.SortFunc(out, func(a, b ModelStatus) int { return b.LastUsed.Compare(a.LastUsed) })
	return out
}

// Root is the cache's directory.
func (s *Store) Root() string { return s.root }

// Check reports whether the store can serve: open, its directories in place, and its root
// still a tmpfs when it mounted or adopted one (an unmounted cache would fill the node's disk).
func (s *Store) Check() error {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return errors.New("cache is closed")
	}
	var st unix.Statfs_t
	if err := unix.Statfs(s.models, &st); err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	if s.cfg.Tmpfs.Mount && st.Type != unix.TMPFS_MAGIC {
		return fmt.Errorf("cache root %s is no longer a tmpfs", s.root)
	}
	return nil
}

func (s *Store) modelDir(key string) string { return filepath.Join(s.models, key) }
func (s *Store) metaPath(key string) string { return filepath.Join(s.meta, key+".json") }
func (s *Store) manifestPath(key string) string {
	return filepath.Join(s.meta, key+manifestSuffix)
}

// readManifest reads the manifest kept beside a committed model and checks that it is the
// model's (the same key). A missing file is fs.ErrNotExist.
func (s *Store) readManifest(key, endpoint string) (*ossclient.Manifest, []string, error) {
	data, err := os.ReadFile(s.manifestPath(key))
	if err != nil {
		return nil, nil, err
	}
	var w manifestWire
	if err := json.Unmarshal(data, &w); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", s.manifestPath(key), err)
	}
	m, err := ossclient.DecodeManifest(w.Manifest)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", s.manifestPath(key), err)
	}
	if got := (Model{Endpoint: endpoint, Manifest: m}).Key(); got != key {
		return nil, nil, fmt.Errorf("%s describes model %s, not %s", s.manifestPath(key), got, key)
	}
	if len(w.Listers) > maxListers {
		w.Listers = w.Listers[len(w.Listers)-maxListers:]
	}
	return m, w.Listers, nil
}

// noteListerLocked records, on a cache hit, who listed the model (most recent last) and the
// manifest of a model recovered without one, and keeps them beside the model.
func (s *Store) noteListerLocked(e *entry, m Model) {
	changed := false
	if e.manifest == nil && m.Manifest != nil {
		e.manifest, changed = m.Manifest, true
	}
	if m.Lister != "" {
		if i := slices.Index(e.listers, m.Lister); i < 0 || i != len(e.listers)-1 {
			if i >= 0 {
				e.listers = slices.Delete(e.listers, i, i+1)
			}
			e.listers = append(e.listers, m.Lister)
			if n := len(e.listers); n > maxListers {
				e.listers = slices.Delete(e.listers, 0, n-maxListers)
			}
			changed = true
		}
	}
	if !changed || e.manifest == nil {
		return
	}
	if err := writeJSON(s.manifestPath(e.meta.Key), manifestFile{Manifest: e.manifest, Listers: e.listers}); err != nil {
		klog.ErrorS(err, "Could not keep the model's manifest beside it", "key", e.meta.Key, "model", e.meta.URI)
	}
}

func (s *Store) addHolderLocked(e *entry, holder, key string) {
	e.holders[holder] = struct{}{}
	s.holders[holder] = key
}

func (s *Store) removeHolderLocked(holder string) *entry {
	key := s.holders[holder]
	delete(s.holders, holder)
	e := s.entries[key]
	if e != nil {
		delete(e.holders, holder)
	}
	return e
}

func (s *Store) saveHoldersLocked() error { return writeJSON(s.dbf, s.holders) }
func (s *Store) savePinsLocked() error    { return writeJSON(s.pinsf, s.pins) }

// holdPendingLocked keeps key for holder, whose Acquire stopped waiting for it: while the
// staging is in flight (until it ends), or RetryHold from now if it is committed already. A
// staging that failed meanwhile leaves nothing to hold.
func (s *Store) holdPendingLocked(holder, key string) {
	s.dropPendingLocked(holder)
	h := &pendingHold{key: key}
	switch {
	case s.stagings[key] != nil:
	case s.entries[key] != nil:
		h.until = s.clock.Now().Add(s.cfg.RetryHold)
		s.poke()
	default:
		return
	}
	s.pending[holder] = h
}

// startPendingLocked starts the clock of the pending holds on key, whose staging has just
// been committed: each lasts RetryHold from now.
func (s *Store) startPendingLocked(key, uri string) {
	until := s.clock.Now().Add(s.cfg.RetryHold)
	for holder, h := range s.pending {
		if h.key == key {
			h.until = until
			klog.V(2).InfoS("Keeping a staged model for a holder that stopped waiting for it", "holder", holder, "model", uri, "key", key, "until", until)
		}
	}
}

// dropPendingOfLocked ends the pending holds on key, whose staging failed: nothing to hold.
func (s *Store) dropPendingOfLocked(key string) {
	for holder, h := range s.pending {
		if h.key == key {
			delete(s.pending, holder)
		}
	}
}

// dropPendingLocked ends holder's pending hold, if any. A model nobody else holds is then
// released as by Release: it expires ExpireAfter from now.
func (s *Store) dropPendingLocked(holder string) {
	h := s.pending[holder]
	if h == nil {
		return
	}
	delete(s.pending, holder)
	if e := s.entries[h.key]; e != nil && len(e.holders) == 0 {
		s.releasedLocked(e, s.clock.Now())
		s.poke()
	}
}

// releasedLocked records that e's last holder (or pending hold) left at t.
func (s *Store) releasedLocked(e *entry, t time.Time) {
	if t.After(e.meta.LastUsed) {
		e.meta.LastUsed = t
	}
	if err := writeJSON(s.metaPath(e.meta.Key), e.meta); err != nil {
		klog.ErrorS(err, "Could not record the model's last use", "key", e.meta.Key)
	}
}

// pendingLocked reports whether a pending hold keeps key at now, and until when (zero: until
// its staging ends, and RetryHold after).
func (s *Store) pendingLocked(key string, now time.Time) (until time.Time, held bool) {
	for _, h := range s.pending {
		switch {
		case h.key != key:
		case h.until.IsZero():
			return time.Time{}, true
		case h.until.After(now) && h.until.After(until):
			until, held = h.until, true
		}
	}
	return until, held
}

// inUseLocked reports whether e is held, by a holder or a pending hold.
func (s *Store) inUseLocked(e *entry, now time.Time) bool {
	if len(e.holders) > 0 {
		return true
	}
	_, held := s.pendingLocked(e.meta.Key, now)
	return held
}

// poke wakes the janitor without blocking.
func (s *Store) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// janitor removes models nobody has held for ExpireAfter. It sleeps until the next one is due
// or a release pokes it. Decisions use the clock's time when they are made, so an injected
// clock drives it entirely.
func (s *Store) janitor() {
	defer s.wg.Done()
	for {
		s.mu.Lock()
		now := s.clock.Now()
		var trash, released []string
		next := time.Duration(-1)
		s.lapsePendingLocked(now)
		for _, e := range s.entries {
			if len(e.holders) > 0 {
				continue
			}
			if until, held := s.pendingLocked(e.meta.Key, now); held {
				if due := until.Sub(now); !until.IsZero() && (next < 0 || due < next) {
					next = due
				}
				continue
			}
			due := e.meta.LastUsed.Add(s.cfg.ExpireAfter).Sub(now)
			if due <= 0 {
				dir, err := s.evictLocked(e, reasonExpired, "")
				if err != nil {
					klog.ErrorS(err, "Could not release an expired model", "key", e.meta.Key)
					continue
				}
				trash, released = append(trash, dir), append(released, e.meta.Key)
			} else if next < 0 || due < next {
				next = due
			}
		}
		s.mu.Unlock()
		for _, dir := range trash {
			s.removeTrash(dir)
		}
		for _, key := range released {
			s.released(key)
		}
		var timer clock.Timer
		var fired <-chan time.Time
		if next >= 0 {
			// Due at now+next: removing files, or a clock stepped meanwhile, took some of it.
			due := now.Add(next)
			timer = s.clock.NewTimer(due.Sub(s.clock.Now()))
			if !s.clock.Now().Before(due) {
				// Due already (before the timer was set, or while it was): another pass now.
				// A timer set for a time already past fires at once on the real clock but
				// only at the next step of a fake one.
				timer.Stop()
				continue
			}
			fired = timer.C()
		}
		select {
		case <-s.ctx.Done():
			return
		case <-fired:
		case <-s.wake:
		}
		if timer != nil {
			timer.Stop()
		}
	}
}

// lapsePendingLocked ends the pending holds whose time is up: their models are released then
// (expiring ExpireAfter after the hold's end).
func (s *Store) lapsePendingLocked(now time.Time) {
	for holder, h := range s.pending {
		if h.until.IsZero() || h.until.After(now) {
			continue
		}
		delete(s.pending, holder)
		klog.V(2).InfoS("A pending hold lapsed: its holder did not come back", "holder", holder, "key", h.key)
		if e := s.entries[h.key]; e != nil && len(e.holders) == 0 {
			if _, held := s.pendingLocked(h.key, now); !held {
				s.releasedLocked(e, h.until)
			}
		}
	}
}

// Why a model leaves the cache.
const (
	reasonExpired = "expired" // nobody held it for ExpireAfter
	reasonEvicted = "evicted" // room for another model
)

// evictLocked takes an unreferenced model out of the index and moves its files to the trash
// (one rename: no reader can find a half-deleted model); the caller removes them unlocked.
// forModel names the model it makes room for, if any.
func (s *Store) evictLocked(e *entry, reason, forModel string) (string, error) {
	key := e.meta.Key
	s.trashSeq++
	trash := filepath.Join(s.trash, fmt.Sprintf("%s-%d", key, s.trashSeq))
	if err := os.Rename(s.modelDir(key), trash); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	delete(s.entries, key)
	_ = os.Remove(s.metaPath(key))
	_ = os.Remove(s.manifestPath(key))
	if reason == reasonExpired {
		s.count.expired.Add(1)
	} else {
		s.count.evicted.Add(1)
	}
	klog.V(2).InfoS("Released model", "model", e.meta.URI, "key", key, "bytes", e.meta.Size, "reason", reason, "for", forModel)
	return trash, nil
}

func (s *Store) released(key string) {
	if s.cfg.OnRelease != nil {
		s.cfg.OnRelease(key)
	}
}

func (s *Store) removeTrash(dir string) {
	if err := os.RemoveAll(dir); err != nil {
		klog.ErrorS(err, "Could not remove a released model", "dir", dir)
	}
}

// stage runs one staging: room, fetch, commit. It owns st until it closes st.done.
func (s *Store) stage(key string, st *staging) {
	defer s.wg.Done()
	var meta Meta
	err := s.makeRoom(st)
	if err == nil {
		meta, err = s.fetch(key, st)
	}
	// Counted and reported before the waiters hear of it: whoever a staging returned to
	// sees it in the figures.
	if err != nil {
		s.count.stageFailures.Add(1)
		klog.ErrorS(err, "Staging failed", "model", st.model.String(), "key", key)
	} else {
		s.count.staged.Add(1)
	}
	if s.cfg.OnStaged != nil {
		s.cfg.OnStaged(StageResult{Key: key, Model: st.model.String(), Size: st.model.Manifest.Size(),
			Seconds: s.clock.Since(st.started).Seconds(), FromOSS: st.fromOSS.Load(), FromPeers: st.fromPeers.Load(), Err: err})
	}
	s.mu.Lock()
	delete(s.stagings, key)
	if err == nil {
		// Held by nobody until the waiters take their references; it expires if none comes back
		// (holders that stopped waiting keep it RetryHold from now: their pending holds).
		s.entries[key] = &entry{meta: meta, holders: map[string]struct{}{}, manifest: st.model.Manifest, listers: listersOf(st.model)}
		s.startPendingLocked(key, meta.URI)
		s.poke()
	} else {
		s.dropPendingOfLocked(key)
	}
	st.err = err
	close(st.done)
	s.mu.Unlock()
}

// makeRoom evicts models nobody holds, least recently used first, until st's model fits
// under the soft cap, in the tmpfs and in available memory. Eviction stops at the models in
// use: past the soft cap the staging goes on; past the hard limits it fails, before writing.
func (s *Store) makeRoom(st *staging) error {
	need := st.model.Manifest.Size()
	for {
		s.mu.Lock()
		room, err := measureRoom(s.root, s.cfg.MemInfo)
		if err != nil {
			s.mu.Unlock()
			return err
		}
		var inflight, inflightTotal int64
		for _, o := range s.stagings {
			if o != st && o.fetching {
				inflight += max(0, o.model.Manifest.Size()-o.bytes.Load())
				inflightTotal += o.model.Manifest.Size()
			}
		}
		var committed, inUse int64
		now := s.clock.Now()
		for _, e := range s.entries {
			committed += e.meta.Size
			if s.inUseLocked(e, now) {
				inUse += e.meta.Size
			}
		}
		free := room.FSFree - inflight
		mem := room.MemAvailable - inflight - s.cfg.MemoryReserve
		fits := need <= free && need <= mem
		underCap := s.cfg.SoftCap <= 0 || committed+inflightTotal+need <= s.cfg.SoftCap
		if fits && underCap {
			st.fetching = true
			s.mu.Unlock()
			return nil
		}
		// Before evicting anything: could the model fit at all, once every model nobody holds
		// is gone (their tmpfs pages become free space and available memory)? A model that
		// cannot fails now, and the cache keeps what it has.
		if evictable := committed - inUse; need > free+evictable || need > mem+evictable {
			s.mu.Unlock()
			return fmt.Errorf("%w: %s needs %s; the cache tmpfs has %s free of %s and the node %s of memory available (keeping %s in reserve), with %s more if every model not in use were evicted; %s of cached models are in use",
				ErrNoSpace, st.model, units.Bytes(need), units.Bytes(max(0, free)), units.Bytes(room.FSTotal), units.Bytes(max(0, room.MemAvailable-inflight)),
				units.Bytes(s.cfg.MemoryReserve), units.Bytes(evictable), units.Bytes(inUse))
		}
		victim := s.lruVictimLocked()
		if victim == nil {
			if fits {
				klog.InfoS("Staging past the soft cap: every cached model is in use", "model", st.model.String(),
					"bytes", need, "cachedBytes", committed+inflightTotal, "softCap", s.cfg.SoftCap)
				st.fetching = true
				s.mu.Unlock()
				return nil
			}
			s.mu.Unlock()
			return fmt.Errorf("%w: %s needs %s; the cache tmpfs has %s free of %s and the node %s of memory available (keeping %s in reserve), after evicting every model not in use; %s of cached models are in use",
				ErrNoSpace, st.model, units.Bytes(need), units.Bytes(max(0, free)), units.Bytes(room.FSTotal), units.Bytes(max(0, room.MemAvailable-inflight)),
				units.Bytes(s.cfg.MemoryReserve), units.Bytes(inUse))
		}
		trash, err := s.evictLocked(victim, reasonEvicted, st.model.String())
		s.mu.Unlock()
		if err != nil {
			return fmt.Errorf("evict %s: %w", victim.meta.URI, err)
		}
		s.removeTrash(trash)
		s.released(victim.meta.Key)
	}
}

func (s *Store) lruVictimLocked() *entry {
	var victim *entry
	now := s.clock.Now()
	for _, e := range s.entries {
		if !s.inUseLocked(e, now) && (victim == nil || e.meta.LastUsed.Before(victim.meta.LastUsed)) {
			victim = e
		}
	}
	return victim
}

// fetch stages the model into incoming/<key>/ and commits it to models/<key>/.
func (s *Store) fetch(key string, st *staging) (Meta, error) {
	dir := filepath.Join(s.incoming, key)
	if err := os.RemoveAll(dir); err != nil {
		return Meta{}, err
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		return Meta{}, err
	}
	start := s.clock.Now()
	klog.V(2).InfoS("Staging model", "model", st.model.String(), "key", key, "bytes", st.model.Manifest.Size())
	if err := st.src.Fetch(s.ctx, st.model, dir, st.report); err != nil {
		_ = os.RemoveAll(dir)
		return Meta{}, fmt.Errorf("stage %s: %w", st.model, err)
	}
	now := s.clock.Now()
	p := st.progress()
	meta := Meta{
		Key: key, URI: st.model.String(), Endpoint: st.model.Endpoint, Fingerprint: st.model.Manifest.Fingerprint(),
		Size: st.model.Manifest.Size(), Objects: len(st.model.Manifest.Objects), From: p.From,
		FromOSS: p.FromOSS, FromPeers: p.FromPeers, StagedAt: now, StageSeconds: now.Sub(start).Seconds(), LastUsed: now,
	}
	// The manifest, then the metadata, then the model: a committed model always has both
	// beside it (recovery removes what a crash left of them without a model).
	if err := writeJSON(s.manifestPath(key), manifestFile{Manifest: st.model.Manifest, Listers: listersOf(st.model)}); err != nil {
		_ = os.RemoveAll(dir)
		return Meta{}, fmt.Errorf("stage %s: keep its manifest: %w", st.model, err)
	}
	if err := writeJSON(s.metaPath(key), meta); err != nil {
		_ = os.RemoveAll(dir)
		_ = os.Remove(s.manifestPath(key))
		return Meta{}, fmt.Errorf("stage %s: %w", st.model, err)
	}
	_ = os.RemoveAll(s.modelDir(key)) // nothing there unless a crash left it
	if err := os.Rename(dir, s.modelDir(key)); err != nil {
		_ = os.RemoveAll(dir)
		_ = os.Remove(s.metaPath(key))
		_ = os.Remove(s.manifestPath(key))
		return Meta{}, fmt.Errorf("commit %s: %w", st.model, err)
	}
	klog.V(2).InfoS("Staged model", "model", meta.URI, "key", key, "bytes", meta.Size, "seconds", meta.StageSeconds, "from", meta.From)
	return meta, nil
}

// listersOf is the listers a staging's model starts with.
func listersOf(m Model) []string {
	if m.Lister == "" {
		return nil
	}
	return []string{m.Lister}
}

func emptyDir(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

func dirSize(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if info, err := d.Info(); err == nil {
				n += info.Size()
			}
		}
		return nil
	})
	return n
}
