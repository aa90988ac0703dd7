package broadcast_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/modelcast/modelcast/pkg/broadcast"
	"github.com/modelcast/modelcast/pkg/cache"
	"github.com/modelcast/modelcast/pkg/coord"
	"github.com/modelcast/modelcast/pkg/ossclient"
	"github.com/modelcast/modelcast/test/ossemu"
	"github.com/modelcast/modelcast/test/redistest"
)

const (
	region = "cn-test"
	ak     = "LTAI5tChainTestKey"
	sk     = "chain-test-secret"
)

// world is one emulator, one Redis, and the model "oss://models/qwen/".
type world struct {
	emu   *ossemu.Server
	redis *redistest.Server
	files map[string][]byte
	size  int64
}

func newWorld(t *testing.T, size int64, _ int) *world {
	t.Helper()
	w := &world{
		emu:   ossemu.Start(t, ossemu.Options{Region: region, Credentials: []ossemu.Credential{{AccessKeyID: ak, AccessKeySecret: sk}}}),
		redis: redistest.Start(t, redistest.Options{}),
	}
	var err error
	if w.files, w.size, err = w.emu.GenerateModelFiles("models", "qwen/", ossemu.ModelSpec{Size: size, Seed: 3, Dir: t.TempDir()}); err != nil {
		t.Fatal(err)
	}
	return w
}

// node is one in-process node: a cache and its chain part.
type node struct {
	id    string
	chain *broadcast.Broadcaster
	store *cache.Store
	oss   *ossclient.Client
}

func (w *world) node(t *testing.T, id string, mutate ...func(*broadcast.Config)) *node {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: w.redis.Addr(), MaxRetries: 1})
	t.Cleanup(func() { _ = rdb.Close() })
	cfg := broadcast.Config{NodeID: id, Addr: "127.0.0.1:0", Tenant: "team", ChunkSize: 256 << 10, Heartbeat: 200 * time.Millisecond,
		StallTimeout: 2 * time.Second}
	for _, f := range mutate {
		f(&cfg)
	}
	cn, err := broadcast.New(cfg, rdb)
	if err != nil {
		t.Fatal(err)
	}
	store, err := cache.New(cache.Config{Root: t.TempDir(), ExpireAfter: time.Hour, MemoryReserve: 1, OnRelease: cn.Release})
	if err != nil {
		t.Fatal(err)
	}
	oc, err := ossclient.New(ossclient.Config{Endpoint: w.emu.Endpoint(), Region: region,
		Credentials: ossclient.Credentials{AccessKeyID: ak, AccessKeySecret: sk},
		Retry:       ossclient.RetryPolicy{BaseDelay: time.Millisecond, MaxDelay: 10 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	n := &node{id: id, chain: cn, store: store, oss: oc}
	t.Cleanup(func() { store.Close(); cn.Close() })
	return n
}

// key is the cache key of the world's model as n stages it.
func (w *world) key(t *testing.T, n *node) string {
	t.Helper()
	m, err := n.oss.Manifest(t.Context(), ossclient.URI{Bucket: "models", Prefix: "qwen/"})
	if err != nil {
		t.Fatal(err)
	}
	return cache.Model{Endpoint: n.oss.Endpoint(), Manifest: m}.Key()
}

// waitJoined waits until node id has a place in the chain of key (or fails the test).
func (w *world) waitJoined(t *testing.T, key, id string) {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: w.redis.Addr()})
	defer rdb.Close()
	c := coord.NewCoordinator(rdb)
	deadline := time.Now().Add(30 * time.Second)
	for {
		members, err := c.Members(t.Context(), "team", key)
		for _, m := range members {
			if m.Node == id {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never joined the chain of %s (members %+v, %v)", id, key, members, err)
		}
		time.Sleep(10 * time.Millisecond) // polling with a deadline
	}
}

// stage resolves the model through the chain (published manifest) and stages it.
func (n *node) stage(ctx context.Context) (string, string, error) {
	u := ossclient.URI{Bucket: "models", Prefix: "qwen/"}
	m, err := n.chain.ResolveManifest(ctx, "team", n.oss, u)
	if err != nil {
		return "", "", err
	}
	model := cache.Model{Endpoint: n.oss.Endpoint(), Manifest: m}
	src := n.chain.Source(cache.OSSSource{Client: n.oss, Options: ossclient.DownloadOptions{Concurrency: 8}}, "team")
	dir, err := n.store.Acquire(ctx, model, src, "pod")
	return dir, model.Key(), err
}

func (w *world) checkDir(t *testing.T, dir string) {
	t.Helper()
	for rel, want := range w.files {
		got, err := os.ReadFile(filepath.Join(dir, rel))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s/%s differs (%v)", dir, rel, err)
		}
	}
}

func TestChainInProcess(t *testing.T) {
	w := newWorld(t, 24<<20, 0)
	w.emu.SetEgressRate(32 << 20) // the head streams for a while: the others follow it
	var nodes []*node
	for i := range 4 {
		nodes = append(nodes, w.node(t, fmt.Sprintf("n%d", i)))
	}
	w.emu.ResetStats()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	dirs := make([]string, len(nodes))
	keys := make([]string, len(nodes))
	errs := make([]error, len(nodes))
	key := w.key(t, nodes[0])
	for i, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dirs[i], keys[i], errs[i] = n.stage(ctx)
		}()
		w.waitJoined(t, key, n.id) // one after another, as pods start: join order decides the chain
	}
	wg.Wait()
	var fromOSS, fromPeers int64
	for i, n := range nodes {
		if errs[i] != nil {
			t.Fatalf("%s: %v", n.id, errs[i])
		}
		w.checkDir(t, dirs[i])
		tr, ok := n.chain.Transfer(keys[i])
		if !ok || tr.FromOSS+tr.FromPeers != w.size {
			t.Errorf("%s received %+v, want the model's %d bytes once", n.id, tr, w.size)
		}
		fromOSS += tr.FromOSS
		fromPeers += tr.FromPeers
	}
	if served := w.emu.Stats().BytesServed; served > w.size+int64(len(w.files))*512 { // HEADs aside, one copy
		t.Errorf("OSS served %d bytes for a %d-byte model (%.2fx)", served, w.size, float64(served)/float64(w.size))
	}
	if fromOSS != w.size || fromPeers != 3*w.size {
		t.Errorf("bytes from OSS %d, from peers %d; want %d and %d", fromOSS, fromPeers, w.size, 3*w.size)
	}
}

// TestSeveralChains: with broadcast.chains = 2, nodes are dealt into two chains, each with a
// head reading OSS: two streams from OSS, none more.
func TestSeveralChains(t *testing.T) {
	w := newWorld(t, 8<<20, 0)
	w.emu.SetEgressRate(16 << 20)
	var nodes []*node
	for i := range 4 {
		nodes = append(nodes, w.node(t, fmt.Sprintf("n%d", i), func(c *broadcast.Config) { c.Chains = 2 }))
	}
	w.emu.ResetStats()
	results := w.stageAll(t, nodes)
	heads := 0
	for i, r := range results {
		w.checkDir(t, r.dir)
		if r.tr.FromOSS == w.size {
			heads++
		} else if r.tr.FromPeers != w.size {
			t.Errorf("n%d: %+v", i, r.tr)
		}
	}
	if served := w.emu.Stats().BytesServed; heads != 2 || served != 2*w.size {
		t.Errorf("%d heads, OSS served %d bytes; want 2 heads and two copies (%d)", heads, served, 2*w.size)
	}
}

// TestReleasedPredecessor: a node that shuts down mid-transfer (its cache stops the staging,
// its chain part leaves) is replaced by its successor's predecessor's; no byte is lost.
func TestReleasedPredecessor(t *testing.T) {
	w := newWorld(t, 16<<20, 0)
	w.emu.SetEgressRate(4 << 20) // four seconds: n1 is still receiving when n2 has some of it
	n0, n1, n2 := w.node(t, "n0"), w.node(t, "n1"), w.node(t, "n2")
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	type res struct {
		dir, key string
		err      error
	}
	out := make([]chan res, 3)
	key := w.key(t, n0)
	for i, n := range []*node{n0, n1, n2} {
		out[i] = make(chan res, 1)
		go func() {
			d, k, err := n.stage(ctx)
			out[i] <- res{d, k, err}
		}()
		w.waitJoined(t, key, n.id)
	}
	// n1 shuts down once n2 has a few chunks from it (and n1 must not have finished: then
	// there would be nothing to test).
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case r := <-out[1]:
			t.Fatalf("n1 finished (%v) before n2 had 1 MiB from it: the machine is too slow for this test's timing", r.err)
		case r := <-out[2]:
			t.Fatalf("n2 finished (%v) before it was seen with 1 MiB: the machine is too slow for this test's timing", r.err)
		default:
		}
		if ms := n2.store.StagingModels(); len(ms) == 1 && ms[0].Progress.Done >= 1<<20 {
			n1.store.Close()
			n1.chain.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("n2 never got going")
		}
		time.Sleep(10 * time.Millisecond) // polling with a deadline
	}
	for i, n := range []*node{n0, n2} {
		r := <-out[i*2]
		if r.err != nil {
			t.Fatalf("%s: %v", n.id, r.err)
		}
		w.checkDir(t, r.dir)
		tr, _ := n.chain.Transfer(r.key)
		if tr.FromOSS+tr.FromPeers != w.size {
			t.Errorf("%s received %+v: bytes lost or fetched twice", n.id, tr)
		}
	}
	if r := <-out[1]; r.err == nil {
		t.Errorf("n1's staging survived its shutdown")
	}
	if served := w.emu.Stats().BytesServed; served != w.size {
		t.Errorf("OSS served %d bytes for %d", served, w.size)
	}
}

// TestStalledPeerReplaced: a predecessor that answers and then sends nothing, while Redis says
// it has the bytes, is abandoned after the stall timeout; the node finishes from OSS.
func TestStalledPeerReplaced(t *testing.T) {
	w := newWorld(t, 4<<20, 0)
	ctx := t.Context()
	// A fake peer: joined first, alive, claims the whole model, streams nothing.
	stuck := make(chan struct{})
	defer close(stuck)
	fake := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		rw.WriteHeader(200)
		rw.(http.Flusher).Flush()
		select {
		case <-stuck:
		case <-r.Context().Done():
		}
	}))
	defer fake.Close()
	n := w.node(t, "n1", func(c *broadcast.Config) { c.StallTimeout = 400 * time.Millisecond })
	u := ossclient.URI{Bucket: "models", Prefix: "qwen/"}
	m, err := n.chain.ResolveManifest(ctx, "team", n.oss, u)
	if err != nil {
		t.Fatal(err)
	}
	model := cache.Model{Endpoint: n.oss.Endpoint(), Manifest: m}
	rdb := redis.NewClient(&redis.Options{Addr: w.redis.Addr()})
	defer rdb.Close()
	c := coord.NewCoordinator(rdb)
	if _, err := c.Join(ctx, "team", model.Key(), "fake", coord.ModelInfo{URI: model.String()}, coord.NodeProgress{Bytes: w.size, Complete: true}, 0); err != nil {
		t.Fatal(err)
	}
	if err := c.Register(ctx, "team", "fake", strings.TrimPrefix(fake.URL, "http://"), time.Minute); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	src := n.chain.Source(cache.OSSSource{Client: n.oss}, "team")
	dir, err := n.store.Acquire(ctx, model, src, "pod")
	if err != nil {
		t.Fatal(err)
	}
	w.checkDir(t, dir)
	tr, _ := n.chain.Transfer(model.Key())
	if tr.FromOSS != w.size || time.Since(start) > 20*time.Second {
		t.Errorf("after %v: %+v; want the model from OSS once the stalled peer was given up", time.Since(start), tr)
	}
}

type stageResult struct {
	dir, key string
	tr       broadcast.Transfer
}

// stageAll stages the model on every node, starting each once the one before it joined.
func (w *world) stageAll(t *testing.T, nodes []*node) []stageResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	out := make([]stageResult, len(nodes))
	errs := make([]error, len(nodes))
	key := w.key(t, nodes[0])
	var wg sync.WaitGroup
	for i, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i].dir, out[i].key, errs[i] = n.stage(ctx)
			out[i].tr, _ = n.chain.Transfer(out[i].key)
		}()
		w.waitJoined(t, key, n.id)
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("%s: %v", nodes[i].id, err)
		}
	}
	return out
}
