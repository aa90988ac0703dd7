package cache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestModelKey(t *testing.T) {
	files := sizedFiles(10)
	a, b := testModel(t, "qwen/", files), testModel(t, "qwen/", files)
	if a.Key() != b.Key() || len(a.Key()) != 32 {
		t.Errorf("same model, keys %q and %q", a.Key(), b.Key())
	}
	other := b
	other.Endpoint = "http://oss.other"
	moved := testModel(t, "qwen2/", files)
	changed := testModel(t, "qwen/", sizedFiles(11))
	for name, m := range map[string]Model{"endpoint": other, "prefix": moved, "content": changed} {
		if m.Key() == a.Key() {
			t.Errorf("another %s, same key", name)
		}
	}
}

func TestAcquireStagesOncePerModel(t *testing.T) {
	e := newEnv(t, 0)
	s := e.open(t)
	files := sizedFiles(1 << 20)
	m := testModel(t, "qwen/", files)
	src := newMemSource(files)
	src.gate = make(chan struct{})

	const holders = 8
	dirs := make([]string, holders)
	errs := make([]error, holders)
	var wg sync.WaitGroup
	for i := range holders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dirs[i], errs[i] = s.Acquire(t.Context(), m, src, fmt.Sprintf("/pods/%d/mount", i))
		}()
	}
	<-src.halfway
	if s.Has(m.Key()) {
		t.Errorf("the model is visible before its staging finished")
	}
	if _, err := os.Stat(filepath.Join(s.Root(), "models", m.Key())); !os.IsNotExist(err) {
		t.Errorf("models/<key> exists mid-staging: %v", err)
	}
	close(src.gate)
	wg.Wait()
	for i := range holders {
		if errs[i] != nil || dirs[i] != dirs[0] {
			t.Fatalf("holder %d: %q, %v", i, dirs[i], errs[i])
		}
	}
	if n := src.fetches.Load(); n != 1 {
		t.Errorf("%d fetches for %d concurrent acquires, want 1", n, holders)
	}
	if got := readFile(t, filepath.Join(dirs[0], "weights.bin")); !bytes.Equal(got, files["weights.bin"]) {
		t.Errorf("staged file differs")
	}
	if st := s.Models(); len(st) != 1 || st[0].Holders != holders || st[0].From != "memory" || st[0].Size != m.Manifest.Size() {
		t.Errorf("Models() = %+v", st)
	}
	// Idempotent per holder; another model for the same holder is a conflict.
	if dir, err := s.Acquire(t.Context(), m, src, "/pods/0/mount"); err != nil || dir != dirs[0] {
		t.Errorf("re-acquire: %q, %v", dir, err)
	}
	other := testModel(t, "llama/", sizedFiles(5))
	if _, err := s.Acquire(t.Context(), other, newMemSource(sizedFiles(5)), "/pods/0/mount"); !errors.Is(err, ErrHolderConflict) {
		t.Errorf("acquire of another model by a holder: %v, want ErrHolderConflict", err)
	}
	if n := src.fetches.Load(); n != 1 {
		t.Errorf("re-acquire fetched again")
	}
}

func TestWaiterGivesUpStagingGoesOn(t *testing.T) {
	e := newEnv(t, 0)
	s := e.open(t)
	files := map[string][]byte{"a.bin": make([]byte, 600), "b.bin": make([]byte, 400)}
	m := testModel(t, "qwen/", files)
	src := newMemSource(files)
	src.gate = make(chan struct{})

	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() {
		_, err := s.Acquire(ctx, m, src, "/pods/a/mount")
		errc <- err
	}()
	<-src.halfway
	cancel()
	err := <-errc
	var se *StagingError
	if !errors.Is(err, ErrStaging) || !errors.As(err, &se) || !errors.Is(err, context.Canceled) {
		t.Fatalf("Acquire after cancel = %v, want a StagingError", err)
	}
	if se.Done != 600 || se.Total != 1000 || se.From != "memory" || err.Error() != "staging oss://models/qwen/: 600 B of 1.0 kB from memory" {
		t.Errorf("staging error %+v: %q", se, err)
	}
	if p, ok := s.Staging(m.Key()); !ok || p.Done != 600 {
		t.Errorf("Staging() = %+v, %v: the staging should go on", p, ok)
	}
	// A retry joins the staging in flight; nothing is fetched twice.
	go func() {
		_, err := s.Acquire(t.Context(), m, src, "/pods/a/mount")
		errc <- err
	}()
	close(src.gate)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if n := src.fetches.Load(); n != 1 {
		t.Errorf("%d fetches, want 1", n)
	}
}

func TestFailedStagingLeavesNothing(t *testing.T) {
	e := newEnv(t, 0)
	s := e.open(t)
	files := sizedFiles(1000)
	m := testModel(t, "qwen/", files)
	src := newMemSource(files)
	src.fail = errBoom
	if _, err := s.Acquire(t.Context(), m, src, "/pods/a/mount"); !errors.Is(err, errBoom) || !strings.Contains(err.Error(), "oss://models/qwen/") {
		t.Fatalf("Acquire = %v, want the source's error naming the model", err)
	}
	for _, d := range []string{"incoming", "models", "meta"} {
		if entries, _ := os.ReadDir(filepath.Join(s.Root(), d)); len(entries) != 0 {
			t.Errorf("%s/ holds %d entries after a failed staging", d, len(entries))
		}
	}
	if s.Has(m.Key()) {
		t.Errorf("a failed model is indexed")
	}
	src.fail = nil
	if _, err := s.Acquire(t.Context(), m, src, "/pods/a/mount"); err != nil {
		t.Fatalf("retry after a failure: %v", err)
	}
	if n := src.fetches.Load(); n != 2 {
		t.Errorf("%d fetches, want a fresh one after the failure", n)
	}
}

func TestDelayedRelease(t *testing.T) {
	e := newEnv(t, 0)
	s := e.open(t)
	files := sizedFiles(100)
	m := testModel(t, "qwen/", files)
	src := newMemSource(files)
	dir, err := s.Acquire(t.Context(), m, src, "/pods/a/mount")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Acquire(t.Context(), m, src, "/pods/b/mount"); err != nil {
		t.Fatal(err)
	}
	// Held: time passing changes nothing.
	e.clock.Step(time.Hour)
	if !s.Has(m.Key()) {
		t.Fatal("a held model expired")
	}
	if err := s.Release("/pods/a/mount"); err != nil {
		t.Fatal(err)
	}
	if err := s.Release("/pods/a/mount"); err != nil {
		t.Errorf("second release: %v", err)
	}
	e.clock.Step(time.Hour)
	if !s.Has(m.Key()) {
		t.Fatal("a model still held by b expired")
	}
	if err := s.Release("/pods/b/mount"); err != nil {
		t.Fatal(err)
	}
	// Nobody holds it: it stays ExpireAfter, and a new holder before then keeps it.
	e.clock.Step(50 * time.Second)
	if !s.Has(m.Key()) {
		t.Fatal("released before ExpireAfter")
	}
	if _, err := s.Acquire(t.Context(), m, src, "/pods/c/mount"); err != nil {
		t.Fatal(err)
	}
	e.clock.Step(time.Hour)
	if !s.Has(m.Key()) {
		t.Fatal("re-acquired model expired")
	}
	if err := s.Release("/pods/c/mount"); err != nil {
		t.Fatal(err)
	}
	e.clock.Step(59 * time.Second)
	if !s.Has(m.Key()) {
		t.Fatal("released before ExpireAfter")
	}
	e.clock.Step(2 * time.Second)
	eventually(t, "the model to expire", func() bool { return !s.Has(m.Key()) })
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("expired model's directory: %v", err)
	}
	if n := src.fetches.Load(); n != 1 {
		t.Errorf("%d fetches, want 1", n)
	}
}

func TestEvictionLeastRecentlyUsedUnderSoftCap(t *testing.T) {
	e := newEnv(t, 0)
	const size = 1 << 20
	e.cfg.SoftCap = 2*size + size/2 // room for two models
	s := e.open(t)
	stage := func(name, holder string) Model {
		t.Helper()
		files := map[string][]byte{"w.bin": bytes.Repeat([]byte(name), size/len(name))}
		m := testModel(t, name+"/", files)
		if _, err := s.Acquire(t.Context(), m, newMemSource(files), holder); err != nil {
			t.Fatal(err)
		}
		e.clock.Step(time.Second)
		return m
	}
	a := stage("aaaa", "/pods/a/mount")
	b := stage("bbbb", "/pods/b/mount")
	// Release a, then b: a is the least recently used.
	for _, h := range []string{"/pods/a/mount", "/pods/b/mount"} {
		if err := s.Release(h); err != nil {
			t.Fatal(err)
		}
		e.clock.Step(time.Second)
	}
	c := stage("cccc", "/pods/c/mount")
	if s.Has(a.Key()) || !s.Has(b.Key()) || !s.Has(c.Key()) {
		t.Errorf("after staging c over the cap: a %v b %v c %v, want a evicted (least recently used)", s.Has(a.Key()), s.Has(b.Key()), s.Has(c.Key()))
	}
	// Models in use are never evicted: with c held and b free, staging d evicts b only,
	// and e goes over the soft cap rather than touching c or d.
	d := stage("dddd", "/pods/d/mount")
	if s.Has(b.Key()) || !s.Has(c.Key()) || !s.Has(d.Key()) {
		t.Errorf("after d: b %v c %v d %v", s.Has(b.Key()), s.Has(c.Key()), s.Has(d.Key()))
	}
	x := stage("eeee", "/pods/e/mount")
	if !s.Has(c.Key()) || !s.Has(d.Key()) || !s.Has(x.Key()) {
		t.Errorf("a held model was evicted to honour the soft cap")
	}
}

func TestRefusesBeforeWritingWhenMemoryIsShort(t *testing.T) {
	e := newEnv(t, 0)
	meminfo := filepath.Join(t.TempDir(), "meminfo")
	if err := os.WriteFile(meminfo, []byte("MemTotal:       1000000 kB\nMemFree:         2000 kB\nMemAvailable:    3000 kB\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	e.cfg.MemInfo = meminfo
	e.cfg.MemoryReserve = 1000 << 10
	s := e.open(t)
	files := sizedFiles(4 << 20) // 4 MiB > 3000 kB - 1000 kB
	m := testModel(t, "big/", files)
	src := newMemSource(files)
	_, err := s.Acquire(t.Context(), m, src, "/pods/a/mount")
	if !errors.Is(err, ErrNoSpace) {
		t.Fatalf("Acquire = %v, want ErrNoSpace", err)
	}
	// Sizes read right at any scale (not "needs 0.0 GB"), in the units pod Events use.
	for _, want := range []string{"oss://models/big/ needs 4.2 MB;", "the node 3.1 MB of memory available (keeping 1.0 MB in reserve)"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("message %q lacks %q", err, want)
		}
	}
	if n := src.fetches.Load(); n != 0 {
		t.Errorf("the source was asked for bytes (%d fetches) although the model cannot fit", n)
	}
}

func TestRefusesBeforeWritingWhenTmpfsIsFull(t *testing.T) {
	requireRoot(t)
	e := newEnv(t, 8<<20)
	s := e.open(t)
	small := sizedFiles(3 << 20)
	ms := testModel(t, "small/", small)
	if _, err := s.Acquire(t.Context(), ms, newMemSource(small), "/pods/a/mount"); err != nil {
		t.Fatal(err)
	}
	big := sizedFiles(6 << 20)
	mb := testModel(t, "big/", big)
	src := newMemSource(big)
	_, err := s.Acquire(t.Context(), mb, src, "/pods/b/mount")
	if !errors.Is(err, ErrNoSpace) || !strings.Contains(err.Error(), "needs 6.3 MB;") || !strings.Contains(err.Error(), " free of 8.4 MB ") ||
		!strings.Contains(err.Error(), "; 3.1 MB of cached models are in use") {
		t.Fatalf("Acquire = %v, want ErrNoSpace with the tmpfs numbers", err)
	}
	if src.fetches.Load() != 0 || !s.Has(ms.Key()) {
		t.Errorf("fetches %d, small model kept %v", src.fetches.Load(), s.Has(ms.Key()))
	}
	// Once the small model is released, it is evicted to make room.
	if err := s.Release("/pods/a/mount"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Acquire(t.Context(), mb, src, "/pods/b/mount"); err != nil {
		t.Fatalf("after release: %v", err)
	}
	if s.Has(ms.Key()) {
		t.Errorf("the released small model was not evicted for the big one")
	}
}

func TestTmpfsMountedThenAdopted(t *testing.T) {
	requireRoot(t)
	root := t.TempDir()
	t.Cleanup(func() { _ = unix.Unmount(root, unix.MNT_DETACH) })
	cfg := Config{Root: root, Tmpfs: TmpfsConfig{Mount: true, Size: "32m", Huge: "within_size"}}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	table, err := readMountTable("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	mi, ok := table.at(root)
	if !ok || mi.FSType != "tmpfs" || !strings.Contains(mi.VFSOptions, "huge=within_size") {
		t.Fatalf("cache root mount: %+v, %v", mi, ok)
	}
	files := sizedFiles(1000)
	m := testModel(t, "qwen/", files)
	if _, err := s.Acquire(t.Context(), m, newMemSource(files), "/pods/a/mount"); err != nil {
		t.Fatal(err)
	}
	s.Close()
	// A restarted store adopts the tmpfs (no second mount) with its model.
	s2, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	table, _ = readMountTable("/proc/self/mountinfo")
	count := 0
	for _, e := range table.entries {
		if e.Mountpoint == root {
			count++
		}
	}
	if count != 1 || !s2.Has(m.Key()) {
		t.Errorf("%d mounts at the root after restart (want 1); model kept: %v", count, s2.Has(m.Key()))
	}

	// A mount of another kind at the root is refused, not silently used.
	other := t.TempDir()
	if err := unix.Mount(other, other, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(other, unix.MNT_DETACH)
	if _, err := New(Config{Root: other, Tmpfs: TmpfsConfig{Mount: true}}); err == nil || !strings.Contains(err.Error(), "not tmpfs") {
		t.Errorf("New on a non-tmpfs mount: %v", err)
	}
}

// TestRestartKeepsReferences: a store restarted with a model bind-mounted into a pod keeps
// the reference (and the mount keeps serving); a reference whose mount is gone is dropped; a
// mount nobody recorded is adopted.
func TestRestartKeepsReferences(t *testing.T) {
	requireRoot(t)
	e := newEnv(t, 0)
	s := e.open(t)
	files := sizedFiles(5000)
	m := testModel(t, "qwen/", files)
	src := newMemSource(files)
	pods := t.TempDir()
	target := func(name string) string {
		p := filepath.Join(pods, name)
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	mounted, unmounted, unrecorded := target("mounted"), target("unmounted"), target("unrecorded")
	for _, h := range []string{mounted, unmounted} {
		dir, err := s.Acquire(t.Context(), m, src, h)
		if err != nil {
			t.Fatal(err)
		}
		if h == mounted {
			bindReadOnly(t, dir, h)
		}
	}
	s.Close()
	// A pod mount made outside the store's records (crash between mount and record).
	bindReadOnly(t, filepath.Join(e.cfg.Root, "models", m.Key()), unrecorded)

	s2 := e.open(t)
	if got := readFile(t, filepath.Join(mounted, "weights.bin")); len(got) != 5000 {
		t.Errorf("the pod's mount lost its files")
	}
	st := s2.Models()
	if len(st) != 1 || st[0].Holders != 2 {
		t.Fatalf("after restart: %+v, want one model with 2 holders (mounted, unrecorded)", st)
	}
	// Released by both mounted holders (the stale one is not counted), it expires.
	for _, h := range []string{mounted, unrecorded} {
		if err := s2.Release(h); err != nil {
			t.Fatal(err)
		}
	}
	e.clock.Step(2 * time.Minute)
	eventually(t, "expiry after the last release", func() bool { return !s2.Has(m.Key()) })
}

func bindReadOnly(t *testing.T, src, dst string) {
	t.Helper()
	if err := unix.Mount(src, dst, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("", dst, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(dst, unix.MNT_DETACH) })
}

func TestRecoverCleansLeftovers(t *testing.T) {
	e := newEnv(t, 0)
	s := e.open(t)
	files := sizedFiles(10)
	m := testModel(t, "qwen/", files)
	if _, err := s.Acquire(t.Context(), m, newMemSource(files), "/pods/a/mount"); err != nil {
		t.Fatal(err)
	}
	s.Close()
	root := e.cfg.Root
	for _, p := range []string{"incoming/abc/half.bin", "trash/x-1/f", "models/orphan/f"} {
		full := filepath.Join(root, p)
		_ = os.MkdirAll(filepath.Dir(full), 0o755)
		if err := os.WriteFile(full, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	_ = os.WriteFile(filepath.Join(root, "meta", "gone.json"), []byte(`{"key":"gone"}`), 0o644)
	s2 := e.open(t)
	for _, p := range []string{"incoming/abc", "trash/x-1", "models/orphan", "meta/gone.json"} {
		if _, err := os.Stat(filepath.Join(root, p)); !os.IsNotExist(err) {
			t.Errorf("%s survived recovery: %v", p, err)
		}
	}
	// The model is kept; its holder had no mount, so it was dropped and the model expires.
	if !s2.Has(m.Key()) || s2.Models()[0].Holders != 0 {
		t.Errorf("after recovery: %+v", s2.Models())
	}
}

func TestOnRelease(t *testing.T) {
	e := newEnv(t, 0)
	var mu sync.Mutex
	var released []string
	e.cfg.OnRelease = func(key string) { mu.Lock(); released = append(released, key); mu.Unlock() }
	e.cfg.SoftCap = 1500
	s := e.open(t)
	a, b := testModel(t, "a/", sizedFiles(1000)), testModel(t, "b/", sizedFiles(1000))
	if _, err := s.Acquire(t.Context(), a, newMemSource(sizedFiles(1000)), "/pods/a"); err != nil {
		t.Fatal(err)
	}
	if err := s.Release("/pods/a"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Acquire(t.Context(), b, newMemSource(sizedFiles(1000)), "/pods/b"); err != nil {
		t.Fatal(err)
	}
	if err := s.Release("/pods/b"); err != nil {
		t.Fatal(err)
	}
	e.clock.Step(time.Hour)
	eventually(t, "both releases reported", func() bool { mu.Lock(); defer mu.Unlock(); return len(released) == 2 })
	if released[0] != a.Key() || released[1] != b.Key() {
		t.Errorf("released %v, want a (evicted for b) then b (expired)", released)
	}
}

// TestNoEvictionForAModelThatCannotFit: a model bigger than the tmpfs could ever give it,
// even with every idle model evicted, fails at once and evicts nothing.
func TestNoEvictionForAModelThatCannotFit(t *testing.T) {
	requireRoot(t)
	e := newEnv(t, 8<<20)
	s := e.open(t)
	small := sizedFiles(3 << 20)
	ms := testModel(t, "small/", small)
	if _, err := s.Acquire(t.Context(), ms, newMemSource(small), "/pods/a/mount"); err != nil {
		t.Fatal(err)
	}
	if err := s.Release("/pods/a/mount"); err != nil {
		t.Fatal(err)
	}
	huge := sizedFiles(9 << 20) // more than the whole 8 MiB tmpfs
	src := newMemSource(huge)
	_, err := s.Acquire(t.Context(), testModel(t, "huge/", huge), src, "/pods/b/mount")
	if !errors.Is(err, ErrNoSpace) {
		t.Fatalf("Acquire = %v, want ErrNoSpace", err)
	}
	if !s.Has(ms.Key()) {
		t.Errorf("the idle model was evicted for a model that could not fit anyway")
	}
	if src.fetches.Load() != 0 {
		t.Errorf("the source was asked for bytes")
	}
}

// TestNoEvictionWhenMemoryCannotFit: the same with available memory as the limit.
func TestNoEvictionWhenMemoryCannotFit(t *testing.T) {
	e := newEnv(t, 0)
	meminfo := filepath.Join(t.TempDir(), "meminfo")
	setAvailable := func(kb int) {
		t.Helper()
		if err := os.WriteFile(meminfo, fmt.Appendf(nil, "MemTotal: 1000000 kB\nMemAvailable: %d kB\n", kb), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	setAvailable(100000)
	e.cfg.MemInfo = meminfo
	e.cfg.MemoryReserve = 1000 << 10
	s := e.open(t)
	small := sizedFiles(1 << 20)
	ms := testModel(t, "small/", small)
	if _, err := s.Acquire(t.Context(), ms, newMemSource(small), "/pods/a/mount"); err != nil {
		t.Fatal(err)
	}
	if err := s.Release("/pods/a/mount"); err != nil {
		t.Fatal(err)
	}
	setAvailable(3000) // 2000 kB above the reserve, 3 MiB with the idle model evicted
	big := sizedFiles(4 << 20)
	src := newMemSource(big)
	_, err := s.Acquire(t.Context(), testModel(t, "big/", big), src, "/pods/b/mount")
	if !errors.Is(err, ErrNoSpace) || !strings.Contains(err.Error(), "if every model not in use were evicted") {
		t.Fatalf("Acquire = %v, want ErrNoSpace saying what eviction could free", err)
	}
	if !s.Has(ms.Key()) {
		t.Errorf("the idle model was evicted for a model that could not fit anyway")
	}
	if src.fetches.Load() != 0 {
		t.Errorf("the source was asked for bytes")
	}
}
