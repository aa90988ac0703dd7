package cache

import (
	"bytes"
	"context"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"testing"
	"time"
)

const pinHolder = "modelcache/ml/qwen"

// controlModel stages a model and releases it at once: it expires ExpireAfter from now. Its
// expiry tells that the janitor looked at every model at the clock's time then (one pass
// under one lock).
func controlModel(t *testing.T, s *Store, prefix string) Model {
	t.Helper()
	files := sizedFiles(10)
	m := testModel(t, prefix, files)
	holder := "/pods/control/" + prefix
	if _, err := s.Acquire(t.Context(), m, newMemSource(files), holder); err != nil {
		t.Fatal(err)
	}
	if err := s.Release(holder); err != nil {
		t.Fatal(err)
	}
	return m
}

// TestPinOutlivesExpiryAndEviction: a pinned model is never expired and never evicted, however
// long nobody mounts it and whatever needs the room; released, it expires ExpireAfter later,
// like a model whose last pod left.
func TestPinOutlivesExpiryAndEviction(t *testing.T) {
	e := newEnv(t, 0)
	e.cfg.ExpireAfter = 30 * time.Second
	const size = 1 << 20
	e.cfg.SoftCap = 2*size + size/2 // room for two models of size
	s := e.open(t)
	model := func(name string) (Model, *memSource) {
		files := map[string][]byte{"w.bin": bytes.Repeat([]byte(name), size/len(name))}
		return testModel(t, name+"/", files), newMemSource(files)
	}

	p, psrc := model("pppp")
	dir, err := s.Pin(t.Context(), p, psrc, pinHolder)
	if err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, filepath.Join(dir, "w.bin")); len(got) != size {
		t.Fatalf("pinned model's file: %d bytes, want %d", len(got), size)
	}
	if _, err := s.Pin(t.Context(), p, psrc, pinHolder); err != nil {
		t.Fatalf("pinning again: %v", err)
	}
	if got := s.Pins(); !maps.Equal(got, map[string]string{pinHolder: p.Key()}) {
		t.Fatalf("Pins() = %v", got)
	}
	other, osrc := model("oooo")
	if _, err := s.Pin(t.Context(), other, osrc, pinHolder); !errors.Is(err, ErrHolderConflict) {
		t.Errorf("pinning another model for the same holder: %v, want ErrHolderConflict", err)
	}

	// Far past ExpireAfter: a control model released meanwhile expires, the pinned one stays.
	c1 := controlModel(t, s, "c1/")
	e.clock.Step(10 * time.Minute)
	eventually(t, "the control model to expire", func() bool { return !s.Has(c1.Key()) })
	if !s.Has(p.Key()) {
		t.Fatal("a pinned model expired")
	}

	// Under the soft cap, staging y evicts the idle x, not the pinned p; staging z with
	// nothing left to evict goes past the cap and p stays.
	x, xsrc := model("xxxx")
	if _, err := s.Acquire(t.Context(), x, xsrc, "/pods/x/mount"); err != nil {
		t.Fatal(err)
	}
	if err := s.Release("/pods/x/mount"); err != nil {
		t.Fatal(err)
	}
	e.clock.Step(time.Second)
	for _, name := range []string{"yyyy", "zzzz"} {
		m, src := model(name)
		if _, err := s.Acquire(t.Context(), m, src, "/pods/"+name+"/mount"); err != nil {
			t.Fatal(err)
		}
	}
	if !s.Has(p.Key()) || s.Has(x.Key()) {
		t.Fatalf("after staging past the soft cap: pinned model kept %v, idle model kept %v; want the pinned one kept and the idle one evicted", s.Has(p.Key()), s.Has(x.Key()))
	}
	if n := psrc.fetches.Load(); n != 1 {
		t.Errorf("%d fetches of the pinned model, want 1", n)
	}
	if st := s.Stats(); st.Pins != 1 || st.Evicted != 1 {
		t.Errorf("stats: %d pins, %d evicted; want 1 and 1", st.Pins, st.Evicted)
	}

	// Released, it expires ExpireAfter after the release, not before.
	c2 := controlModel(t, s, "c2/")
	e.clock.Step(10 * time.Second)
	if err := s.Release(pinHolder); err != nil {
		t.Fatal(err)
	}
	if got := s.Pins(); len(got) != 0 {
		t.Fatalf("Pins() after the release = %v", got)
	}
	e.clock.Step(25 * time.Second) // c2 due 5 s ago, the released model in 5 s
	eventually(t, "the second control model to expire", func() bool { return !s.Has(c2.Key()) })
	if !s.Has(p.Key()) {
		t.Fatal("the released model expired before ExpireAfter")
	}
	e.clock.Step(6 * time.Second)
	eventually(t, "the released model to expire", func() bool { return !s.Has(p.Key()) })
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("the expired model's directory: %v", err)
	}
}

// TestPinKeptAcrossRestart: a pin has no mount, yet a restarted store keeps it (and its model
// stays pinned), while a pod's reference without its mount is dropped. A released pin does
// not come back, and neither does a pin recorded without its reference (a crash between the
// two writes of Pin).
func TestPinKeptAcrossRestart(t *testing.T) {
	e := newEnv(t, 0)
	e.cfg.ExpireAfter = 30 * time.Second
	s := e.open(t)
	files := sizedFiles(1000)
	p, q := testModel(t, "pinned/", files), testModel(t, "mounted/", files)
	src := newMemSource(files)
	if _, err := s.Pin(t.Context(), p, src, pinHolder); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Acquire(t.Context(), q, src, "/pods/a/mount"); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s = e.open(t)
	if !s.Holds(pinHolder) || s.Holds("/pods/a/mount") {
		t.Fatalf("after a restart: pin kept %v, reference without a mount kept %v; want true, false", s.Holds(pinHolder), s.Holds("/pods/a/mount"))
	}
	if got := s.Pins(); !maps.Equal(got, map[string]string{pinHolder: p.Key()}) {
		t.Fatalf("Pins() after a restart = %v", got)
	}
	if st := s.Models(); len(st) != 2 {
		t.Fatalf("models after a restart: %+v", st)
	} else {
		for _, ms := range st {
			if want := ms.Key == p.Key(); (ms.Holders == 1 && ms.Pins == 1) != want {
				t.Errorf("model %s: %d holders, %d pins", ms.URI, ms.Holders, ms.Pins)
			}
		}
	}
	c := controlModel(t, s, "c/")
	e.clock.Step(time.Hour)
	eventually(t, "the unreferenced model to expire", func() bool { return !s.Has(q.Key()) && !s.Has(c.Key()) })
	if !s.Has(p.Key()) {
		t.Fatal("the pinned model expired after a restart")
	}
	if err := s.Release(pinHolder); err != nil {
		t.Fatal(err)
	}
	s.Close()

	// The released pin stays released; a pin in pins.json without its reference in
	// holders.json is dropped.
	if err := writeJSON(filepath.Join(e.cfg.Root, "state", "pins.json"), map[string]string{"modelcache/ml/half": p.Key()}); err != nil {
		t.Fatal(err)
	}
	s = e.open(t)
	if s.Holds(pinHolder) || s.Holds("modelcache/ml/half") || len(s.Pins()) != 0 {
		t.Fatalf("after a restart: holds the released pin %v, the half-recorded pin %v; pins %v", s.Holds(pinHolder), s.Holds("modelcache/ml/half"), s.Pins())
	}
	e.clock.Step(time.Hour)
	eventually(t, "the released model to expire", func() bool { return !s.Has(p.Key()) })
}

// TestPinStopsWaiting: a Pin whose context ends mid-staging pins nothing yet, and the staging
// goes on; the next Pin takes the staged model without fetching it again.
func TestPinStopsWaiting(t *testing.T) {
	e := newEnv(t, 0)
	s := e.open(t)
	files := sizedFiles(1000)
	m := testModel(t, "qwen/", files)
	src := newMemSource(files)
	src.gate = make(chan struct{})
	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() {
		_, err := s.Pin(ctx, m, src, pinHolder)
		errc <- err
	}()
	<-src.halfway
	cancel()
	if err := <-errc; !errors.Is(err, ErrStaging) {
		t.Fatalf("Pin after its caller stopped waiting = %v, want ErrStaging", err)
	}
	if len(s.Pins()) != 0 || s.Holds(pinHolder) {
		t.Fatalf("pinned before the model was staged: %v", s.Pins())
	}
	close(src.gate)
	eventually(t, "the staging to commit", func() bool { return s.Has(m.Key()) })
	if _, err := s.Pin(t.Context(), m, src, pinHolder); err != nil {
		t.Fatal(err)
	}
	if n := src.fetches.Load(); n != 1 || !maps.Equal(s.Pins(), map[string]string{pinHolder: m.Key()}) {
		t.Errorf("%d fetches (want 1), pins %v", n, s.Pins())
	}
}
