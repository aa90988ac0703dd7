package cache

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moby/sys/mountinfo"
)

// TestStats: the counters and gauges follow a model through staging, use, release, expiry
// and eviction, and a failed staging; OnStaged hears of every staging that ended.
func TestStats(t *testing.T) {
	e := newEnv(t, 0)
	const size = 1 << 20
	e.cfg.SoftCap = 2*size + size/2 // room for two models
	var mu sync.Mutex
	var results []StageResult
	e.cfg.OnStaged = func(r StageResult) {
		mu.Lock()
		results = append(results, r)
		mu.Unlock()
	}
	s := e.open(t)
	filesA := map[string][]byte{"w.bin": make([]byte, size)}
	a := testModel(t, "a/", filesA)
	if _, err := s.Acquire(t.Context(), a, newMemSource(filesA), "/pods/1/mount"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Acquire(t.Context(), a, newMemSource(filesA), "/pods/2/mount"); err != nil {
		t.Fatal(err)
	}
	got := s.Stats()
	want := Stats{Models: 1, Referenced: 1, Holders: 2, ModelBytes: size, SoftCap: e.cfg.SoftCap, ReceivedPeers: size, Staged: 1}
	if !sameCounts(got, want) {
		t.Errorf("after staging a: %+v, want %+v", got, want)
	}
	if got.FSSize <= 0 || got.FSFree <= 0 || got.FSFree > got.FSSize {
		t.Errorf("file system: size %d, free %d", got.FSSize, got.FSFree)
	}

	for _, h := range []string{"/pods/1/mount", "/pods/2/mount"} {
		if err := s.Release(h); err != nil {
			t.Fatal(err)
		}
	}
	e.clock.Step(2 * time.Minute)
	eventually(t, "a to expire", func() bool { return !s.Has(a.Key()) })
	want = Stats{SoftCap: e.cfg.SoftCap, ReceivedPeers: size, Staged: 1, Releases: 2, Expired: 1}
	if got := s.Stats(); !sameCounts(got, want) {
		t.Errorf("after a expired: %+v, want %+v", got, want)
	}

	// Three models under a cap of two and a half: staging the third evicts the first (b).
	for _, name := range []string{"b", "c", "d"} {
		files := map[string][]byte{"w.bin": make([]byte, size)}
		m := testModel(t, name+"/", files)
		if _, err := s.Acquire(t.Context(), m, newMemSource(files), "/pods/"+name+"/mount"); err != nil {
			t.Fatal(err)
		}
		if err := s.Release("/pods/" + name + "/mount"); err != nil {
			t.Fatal(err)
		}
		e.clock.Step(time.Second)
	}
	broken := newMemSource(filesA)
	broken.fail = errBoom
	if _, err := s.Acquire(t.Context(), testModel(t, "broken/", filesA), broken, "/pods/x/mount"); !errors.Is(err, errBoom) {
		t.Fatalf("broken staging: %v", err)
	}
	// The broken staging made room before it failed: d alone is left.
	want = Stats{Models: 1, ModelBytes: size, SoftCap: e.cfg.SoftCap, ReceivedPeers: 5 * size, Staged: 4, StageFailures: 1, Releases: 5, Expired: 1, Evicted: 2}
	if got := s.Stats(); !sameCounts(got, want) {
		t.Errorf("at the end: %+v, want %+v", got, want)
	}

	mu.Lock()
	defer mu.Unlock()
	if len(results) != 5 {
		t.Fatalf("OnStaged heard of %d stagings, want 5", len(results))
	}
	for i, r := range results {
		if wantErr := i == 4; (r.Err != nil) != wantErr || r.Size != size || r.FromPeers != size || r.Seconds < 0 {
			t.Errorf("staging %d: %+v", i, r)
		}
	}
	if results[0].Key != a.Key() || results[0].Model != a.String() {
		t.Errorf("first staging: %+v, want %s", results[0], a)
	}
}

// sameCounts compares everything but the file system figures, which belong to the machine.
func sameCounts(a, b Stats) bool {
	a.FSSize, a.FSFree, b.FSSize, b.FSFree = 0, 0, 0, 0
	return a == b
}

// TestRaiseOutOfOrder: progress reports arriving out of order never make a counter shrink,
// and the total ends at the highest report.
func TestRaiseOutOfOrder(t *testing.T) {
	var v, total atomic.Int64
	for _, n := range []int64{5, 3, 9, 9, 7, 12} {
		before := total.Load()
		raise(&v, n, &total)
		if total.Load() < before {
			t.Fatalf("total shrank from %d to %d at report %d", before, total.Load(), n)
		}
	}
	if total.Load() != 12 || v.Load() != 12 {
		t.Errorf("total %d, value %d, want 12", total.Load(), v.Load())
	}
}

// TestCheck: a store is ready on its tmpfs, and not once the tmpfs is gone or it is closed.
func TestCheck(t *testing.T) {
	requireRoot(t)
	e := newEnv(t, 0)
	e.cfg.Tmpfs = TmpfsConfig{Mount: true}
	s := e.open(t)
	if err := s.Check(); err != nil {
		t.Fatalf("fresh store: %v", err)
	}
	s.Close()
	if err := s.Check(); err == nil {
		t.Error("a closed store reports ready")
	}
}

// TestUnmountIfIdle: a closed store unmounts its tmpfs only when no holder is left; a store
// with pods' references or pins keeps it for the next plugin to adopt.
func TestUnmountIfIdle(t *testing.T) {
	requireRoot(t)
	e := newEnv(t, 0)
	e.cfg.Tmpfs = TmpfsConfig{Mount: true}
	files := map[string][]byte{"w.bin": make([]byte, 4096)}
	m := testModel(t, "a/", files)

	s := e.open(t)
	if _, err := s.UnmountIfIdle(); err == nil {
		t.Error("an open store unmounted its cache")
	}
	if _, err := s.Acquire(t.Context(), m, newMemSource(files), "/pods/1/mount"); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if done, err := s.UnmountIfIdle(); done || err != nil || !isMountPoint(t, e.cfg.Root) {
		t.Fatalf("held cache: unmounted %v (%v), mounted %v", done, err, isMountPoint(t, e.cfg.Root))
	}

	// Reopened, it adopts the tmpfs with the model, and drops the holder whose bind mount
	// is not in the mount table (this test never mounted it): nobody holds the model now.
	s = e.open(t)
	if !s.Has(m.Key()) || s.Holds("/pods/1/mount") {
		t.Fatalf("reopened: has the model %v, holds %v", s.Has(m.Key()), s.Holds("/pods/1/mount"))
	}
	// A pin keeps the tmpfs as a pod's reference does, and the next store keeps the pin.
	if _, err := s.Pin(t.Context(), m, newMemSource(files), "modelcache/ml/a"); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if done, err := s.UnmountIfIdle(); done || err != nil || !isMountPoint(t, e.cfg.Root) {
		t.Fatalf("pinned cache: unmounted %v (%v), mounted %v", done, err, isMountPoint(t, e.cfg.Root))
	}
	s = e.open(t)
	if !s.Has(m.Key()) || !s.Holds("modelcache/ml/a") {
		t.Fatalf("reopened: has the model %v, holds the pin %v", s.Has(m.Key()), s.Holds("modelcache/ml/a"))
	}
	if err := s.Release("modelcache/ml/a"); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if done, err := s.UnmountIfIdle(); !done || err != nil || isMountPoint(t, e.cfg.Root) {
		t.Fatalf("idle cache: unmounted %v (%v), still mounted %v", done, err, isMountPoint(t, e.cfg.Root))
	}
}

func isMountPoint(t *testing.T, path string) bool {
	t.Helper()
	m, err := mountinfo.Mounted(path)
	return err == nil && m
}
