package cache

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/modelcast/modelcast/pkg/ossclient"
)

// memSource is a Source serving files from memory. It can hold a fetch midway (gate) and
// fail it (fail), and counts the fetches it ran.
type memSource struct {
	files   map[string][]byte
	fetches atomic.Int32
	gate    chan struct{} // when set, Fetch writes half, reports, then waits for it to close
	fail    error
	halfway chan struct{} // closed (once) when a gated fetch is waiting
	once    sync.Once
}

func newMemSource(files map[string][]byte) *memSource {
	return &memSource{files: files, halfway: make(chan struct{})}
}

func (s *memSource) Fetch(ctx context.Context, m Model, dir string, report func(Progress)) error {
	s.fetches.Add(1)
	total := m.Manifest.Size()
	var done int64
	for i := range m.Manifest.Objects {
		rel := m.Manifest.Path(i)
		p := filepath.Join(dir, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		data := s.files[rel]
		if err := os.WriteFile(p, data, 0o644); err != nil {
			return err
		}
		done += int64(len(data))
		report(Progress{Done: done, Total: total, FromPeers: done, From: "memory"})
		if s.gate != nil && done*2 >= total {
			s.once.Do(func() { close(s.halfway) })
			select {
			case <-s.gate:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
	return s.fail
}

// testModel builds a Model whose manifest describes files (the CRCs are not checked by memSource).
func testModel(t testing.TB, prefix string, files map[string][]byte) Model {
	t.Helper()
	var objs []ossclient.Object
	for rel, data := range files {
		objs = append(objs, ossclient.Object{Key: prefix + rel, Size: int64(len(data)), ETag: fmt.Sprintf(`"%x"`, len(data)), CRC64: uint64(len(data))})
	}
	m, err := ossclient.NewManifest("models", prefix, objs)
	if err != nil {
		t.Fatal(err)
	}
	return Model{Endpoint: "http://oss.test", Manifest: m}
}

func sizedFiles(n int) map[string][]byte {
	return map[string][]byte{"config.json": []byte("{}"), "weights.bin": make([]byte, n)}
}

type env struct {
	cfg   Config
	clock *clocktesting.FakeClock
}

// newEnv prepares a store configuration on a fresh directory: a tmpfs of its own when root
// (size in bytes, 0 for 64 MiB), else a plain temporary directory.
func newEnv(t *testing.T, tmpfsSize int64) *env {
	t.Helper()
	root := t.TempDir()
	if os.Geteuid() == 0 {
		if tmpfsSize == 0 {
			tmpfsSize = 64 << 20
		}
		if err := unix.Mount("tmpfs", root, "tmpfs", 0, fmt.Sprintf("size=%d", tmpfsSize)); err != nil {
			t.Fatalf("mount tmpfs: %v", err)
		}
		t.Cleanup(func() { _ = unix.Unmount(root, unix.MNT_DETACH) })
	}
	c := clocktesting.NewFakeClock(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
	return &env{cfg: Config{Root: root, Clock: c, ExpireAfter: time.Minute, MemoryReserve: 1}, clock: c}
}

func (e *env) open(t *testing.T) *Store {
	t.Helper()
	s, err := New(e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for tmpfs and bind mounts")
	}
}

// eventually waits for cond with a deadline.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var errBoom = errors.New("boom")
