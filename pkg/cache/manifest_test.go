package cache

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/modelcast/modelcast/pkg/ossclient"
)

// pollUntil waits for cond, checking every few milliseconds, until a deadline.
func pollUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline.C:
			t.Fatalf("timed out waiting for %s", what)
		case <-tick.C:
		}
	}
}

// TestManifestKeptAcrossRestart: a committed model's manifest, and who listed it, stay beside
// it; after a restart the store still knows the manifest and finds the model for those who
// listed it (and for nobody else), the newest version first; eviction removes the file.
func TestManifestKeptAcrossRestart(t *testing.T) {
	e := newEnv(t, 0)
	s := e.open(t)
	files := sizedFiles(100)
	m := testModel(t, "qwen/", files)
	m.Lister = "lister-a"
	key := m.Key()
	src := newMemSource(files)
	if _, err := s.Acquire(t.Context(), m, src, "/pods/a/mount"); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s = e.open(t)
	got, ok := s.Manifest(key)
	if !ok || got.Fingerprint() != m.Manifest.Fingerprint() {
		t.Fatalf("after a restart: Manifest(%s) = %v, %v; want the manifest it was staged from", key, got, ok)
	}
	uri := m.Manifest.URI()
	if f, ok := s.Find(m.Endpoint, uri, "lister-a"); !ok || f.Key() != key || f.Lister != "lister-a" {
		t.Errorf("Find for the lister after a restart = %+v, %v; want the model", f, ok)
	}
	for name, try := range map[string]func() (Model, bool){
		"another lister":   func() (Model, bool) { return s.Find(m.Endpoint, uri, "lister-b") },
		"no lister":        func() (Model, bool) { return s.Find(m.Endpoint, uri, "") },
		"another endpoint": func() (Model, bool) { return s.Find("http://oss.other", uri, "lister-a") },
		"another prefix": func() (Model, bool) {
			return s.Find(m.Endpoint, ossclient.URI{Bucket: uri.Bucket, Prefix: "llama/"}, "lister-a")
		},
	} {
		if f, ok := try(); ok {
			t.Errorf("Find with %s = %+v; want nothing", name, f)
		}
	}

	// A cache hit by other credentials records them, across the next restart too.
	mb := m
	mb.Lister = "lister-b"
	if _, err := s.Acquire(t.Context(), mb, src, "/pods/b/mount"); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = e.open(t)
	for _, l := range []string{"lister-a", "lister-b"} {
		if _, ok := s.Find(m.Endpoint, uri, l); !ok {
			t.Errorf("after a second restart, Find for %s found nothing", l)
		}
	}
	if n := src.fetches.Load(); n != 1 {
		t.Errorf("%d fetches, want 1", n)
	}

	// A newer version of the same model, listed by a: Find gives it to a, the old one to b.
	e.clock.Step(time.Second)
	files2 := sizedFiles(200)
	m2 := testModel(t, "qwen/", files2)
	m2.Lister = "lister-a"
	if _, err := s.Acquire(t.Context(), m2, newMemSource(files2), "/pods/c/mount"); err != nil {
		t.Fatal(err)
	}
	if f, ok := s.Find(m.Endpoint, uri, "lister-a"); !ok || f.Key() != m2.Key() {
		t.Errorf("Find for a with two versions cached = %v, %v; want the newer %s", f.Manifest.Fingerprint(), ok, m2.Key())
	}
	if f, ok := s.Find(m.Endpoint, uri, "lister-b"); !ok || f.Key() != key {
		t.Errorf("Find for b with two versions cached: %v; want the one b listed", ok)
	}

	// Released and expired: the manifest goes with the model.
	for _, h := range []string{"/pods/b/mount", "/pods/c/mount"} {
		if err := s.Release(h); err != nil {
			t.Fatal(err)
		}
	}
	e.clock.Step(2 * time.Minute)
	pollUntil(t, "both versions to expire", func() bool { return !s.Has(key) && !s.Has(m2.Key()) })
	for _, k := range []string{key, m2.Key()} {
		if _, err := os.Stat(filepath.Join(e.cfg.Root, "meta", k+manifestSuffix)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("the manifest of an expired model is still there: %v", err)
		}
	}
	if _, ok := s.Find(m.Endpoint, uri, "lister-a"); ok {
		t.Error("Find found an expired model")
	}
}

// TestRecoveredModelTakesItsManifestFromAListing: a model kept by a version that did not keep
// its manifest (or with a manifest file of another model) has none after a restart; the next
// cache hit records the listing's, and it is kept from then on. The listers kept are bounded.
func TestRecoveredModelTakesItsManifestFromAListing(t *testing.T) {
	e := newEnv(t, 0)
	s := e.open(t)
	files := sizedFiles(100)
	m := testModel(t, "qwen/", files)
	key := m.Key()
	src := newMemSource(files)
	if _, err := s.Acquire(t.Context(), m, src, "/pods/a/mount"); err != nil {
		t.Fatal(err)
	}
	s.Close()
	path := filepath.Join(e.cfg.Root, "meta", key+manifestSuffix)
	other := testModel(t, "llama/", files)
	data, err := json.Marshal(manifestFile{Manifest: other.Manifest, Listers: []string{"x"}})
	if err != nil {
		t.Fatal(err)
	}
	for name, write := range map[string]func() error{
		"none":                 func() error { return os.Remove(path) },
		"another model's file": func() error { return os.WriteFile(path, data, 0o644) },
		"not JSON":             func() error { return os.WriteFile(path, []byte("{"), 0o644) },
	} {
		if err := write(); err != nil {
			t.Fatal(err)
		}
		s = e.open(t)
		if got, ok := s.Manifest(key); ok {
			t.Errorf("%s: the recovered model has manifest %s", name, got.URI())
		}
		if !s.Has(key) {
			t.Fatalf("%s: the model was not recovered", name)
		}
		s.Close()
	}

	s = e.open(t)
	for i := range maxListers + 4 {
		ml := m
		ml.Lister = fmt.Sprintf("lister-%d", i)
		if _, err := s.Acquire(t.Context(), ml, src, fmt.Sprintf("/pods/%d/mount", i)); err != nil {
			t.Fatal(err)
		}
	}
	if n := src.fetches.Load(); n != 1 {
		t.Errorf("%d fetches, want 1: the recovered model is a cache hit", n)
	}
	if got, ok := s.Manifest(key); !ok || got.Fingerprint() != m.Manifest.Fingerprint() {
		t.Fatalf("after a cache hit: Manifest = %v, %v; want the listing's", got, ok)
	}
	s.Close()
	s = e.open(t)
	if _, ok := s.Manifest(key); !ok {
		t.Error("the manifest a cache hit brought was not kept")
	}
	var kept manifestWire
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &kept); err != nil {
		t.Fatal(err)
	}
	last := fmt.Sprintf("lister-%d", maxListers+3)
	if len(kept.Listers) != maxListers || kept.Listers[len(kept.Listers)-1] != last {
		t.Errorf("listers kept: %q; want the %d most recent, ending with %s", kept.Listers, maxListers, last)
	}
	if _, ok := s.Find(m.Endpoint, m.Manifest.URI(), "lister-0"); ok {
		t.Error("the oldest lister is still found past the bound")
	}
	if _, ok := s.Find(m.Endpoint, m.Manifest.URI(), last); !ok {
		t.Error("the most recent lister is not found")
	}
}
