package broadcast

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/modelcast/modelcast/internal/crc64ecma"
	"github.com/modelcast/modelcast/pkg/cache"
	"github.com/modelcast/modelcast/pkg/coord"
	"github.com/modelcast/modelcast/pkg/ossclient"
	"github.com/modelcast/modelcast/test/ossemu"
	"github.com/modelcast/modelcast/test/redistest"
)

// orderWorld is a model in the emulator, read into memory, and its layout.
type orderWorld struct {
	emu    *ossemu.Server
	rdb    *redis.Client
	oss    *ossclient.Client
	m      *ossclient.Manifest
	layout *ossclient.Layout
	files  map[string][]byte
}

func newOrderWorld(t *testing.T, size int64) *orderWorld {
	t.Helper()
	w := &orderWorld{emu: ossemu.Start(t, ossemu.Options{})}
	var err error
	if w.files, _, err = w.emu.GenerateModelFiles("models", "m/", ossemu.ModelSpec{Size: size, Seed: 5, Dir: t.TempDir()}); err != nil {
		t.Fatal(err)
	}
	if w.oss, err = ossclient.New(ossclient.Config{Endpoint: w.emu.Endpoint(), Region: "cn-test"}); err != nil {
		t.Fatal(err)
	}
	if w.m, err = w.oss.Manifest(t.Context(), ossclient.URI{Bucket: "models", Prefix: "m/"}); err != nil {
		t.Fatal(err)
	}
	w.layout = ossclient.NewLayout(w.m, DefaultChunkSize)
	w.rdb = redis.NewClient(&redis.Options{Addr: redistest.Start(t, redistest.Options{}).Addr()})
	t.Cleanup(func() { _ = w.rdb.Close() })
	return w
}

func (w *orderWorld) node(t *testing.T, id string) *Broadcaster {
	t.Helper()
	n, err := New(Config{NodeID: id, Addr: "127.0.0.1:0", Tenant: "team", Heartbeat: 200 * time.Millisecond}, w.rdb)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Close)
	return n
}

// local opens the model on n at position pos of its chain (the heartbeat joins it there).
func (w *orderWorld) local(t *testing.T, n *Broadcaster, pos int) *replica {
	t.Helper()
	l, err := openReplica("team", "k", w.layout, t.TempDir(), n.cfg.Clock)
	if err != nil {
		t.Fatal(err)
	}
	l.pos.Store(int64(pos))
	n.reg.add(l)
	t.Cleanup(l.close)
	return l
}

// bytesOf returns chunk i's bytes.
func (w *orderWorld) bytesOf(i int) []byte {
	c := w.layout.Chunk(i)
	return w.files[w.m.Path(c.Object)][c.Offset : c.Offset+c.Size]
}

// put writes the first n bytes of chunk i into l; a whole chunk is recorded as verified.
func (w *orderWorld) put(t *testing.T, l *replica, i int, n int64) {
	t.Helper()
	c := w.layout.Chunk(i)
	b := w.bytesOf(i)[:n]
	if _, err := l.files[c.Object].WriteAt(b, c.Offset); err != nil {
		t.Fatal(err)
	}
	if n < c.Size {
		l.setPartial(i, partial{bytes: n, crc: crc64ecma.Update(0, b)})
		return
	}
	if err := l.chunkDone(i, crc64ecma.Update(0, b)); err != nil {
		t.Fatal(err)
	}
}

func (w *orderWorld) check(t *testing.T, l *replica) {
	t.Helper()
	if !l.isComplete() {
		t.Fatalf("the model is not complete: %d of %d chunks", len(l.order), w.layout.Len())
	}
	for rel, want := range w.files {
		got, err := os.ReadFile(filepath.Join(l.dir, rel))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s differs (%v)", rel, err)
		}
	}
}

// TestOutOfOrderRelay: a sender that verifies chunks in a shuffled order streams them in that
// order, as it verifies them; a receiver that already has scattered chunks and the start of
// two others gets exactly the rest, each partial chunk from where its bytes end.
func TestOutOfOrderRelay(t *testing.T) {
	w := newOrderWorld(t, 12<<20)
	a, b := w.node(t, "a"), w.node(t, "b")
	la, lb := w.local(t, a, 1), w.local(t, b, 2)
	n := w.layout.Len()
	perm := rand.New(rand.NewPCG(1, 2)).Perm(n)

	// b has every fifth chunk and the first bytes of two more.
	var present int64
	partials := map[int]int64{}
	for i := range n {
		switch {
		case i%5 == 0:
			w.put(t, lb, i, w.layout.Chunk(i).Size)
			present += w.layout.Chunk(i).Size
		case i%7 == 3 && len(partials) < 2 && w.layout.Chunk(i).Size > 1000:
			partials[i] = 1000
			w.put(t, lb, i, 1000)
			present += 1000
		}
	}
	if len(partials) != 2 {
		t.Fatalf("the model has too few chunks for this test: %d", n)
	}
	// a has a third of its chunks before b asks, the rest come while b streams.
	for _, i := range perm[:n/3] {
		w.put(t, la, i, w.layout.Chunk(i).Size)
	}
	done := make(chan error, 1)
	go func() { done <- b.pull(t.Context(), lb, coord.Member{Node: "a", Addr: a.Addr()}, 2) }()
	for _, i := range perm[n/3:] {
		w.put(t, la, i, w.layout.Chunk(i).Size)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(time.Minute):
		t.Fatal("the stream did not complete within a minute")
	}
	w.check(t, lb)
	if got, want := lb.fromPeers.Load(), w.m.Size()-present; got != want {
		t.Errorf("received %d bytes, want exactly the %d missing", got, want)
	}
	// b verified the chunks it lacked in a's order, stripe by stripe (each stripe is a
	// connection of its own).
	got := lb.order[len(lb.order)-(n-(n+4)/5):]
	for s := range b.cfg.Stripes {
		var want, gotS []int
		for _, i := range perm {
			if i%5 != 0 && i%b.cfg.Stripes == s {
				want = append(want, i)
			}
		}
		for _, i := range got {
			if i%b.cfg.Stripes == s {
				gotS = append(gotS, i)
			}
		}
		if !slices.Equal(gotS, want) {
			t.Errorf("stripe %d: chunks arrived in the order %v, want a's order %v", s, gotS, want)
		}
	}
	if s := a.Stats(); s.Served != w.m.Size()-present {
		t.Errorf("a served %d bytes, want %d", s.Served, w.m.Size()-present)
	}
}

// TestTakeoverFetchesOnlyMissingChunks: a node with scattered chunks and a partial one (what an
// out-of-order stream left when its predecessor died) becomes the head: OSS serves exactly the
// bytes it lacks, and every object is checked.
func TestTakeoverFetchesOnlyMissingChunks(t *testing.T) {
	w := newOrderWorld(t, 8<<20)
	b := w.node(t, "b")
	lb := w.local(t, b, 1)
	var present int64
	for i := range w.layout.Len() {
		if i%3 == 1 {
			w.put(t, lb, i, w.layout.Chunk(i).Size)
			present += w.layout.Chunk(i).Size
		}
	}
	w.put(t, lb, 2, 4096)
	present += 4096
	w.emu.ResetStats()
	oss := cache.OSSSource{Client: w.oss, Options: ossclient.DownloadOptions{Concurrency: 16, PartSize: 1 << 20}}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if err := b.head(ctx, lb, oss); err != nil {
		t.Fatal(err)
	}
	w.check(t, lb)
	if served := w.emu.Stats().BytesServed; served != w.m.Size()-present {
		t.Errorf("OSS served %d bytes, want exactly the %d missing", served, w.m.Size()-present)
	}
	if got := lb.fromOSS.Load(); got != w.m.Size()-present {
		t.Errorf("counted %d bytes from OSS, want %d", got, w.m.Size()-present)
	}
}

// TestReleaseSparesANewStaging: the cache tells the node it released a model only after
// removing its files; if a pod asked for the model again meanwhile, a new staging of the same
// key is under way. The release closes the old copy (replaced when the new one registered) and
// leaves the new one alone.
func TestReleaseSparesANewStaging(t *testing.T) {
	w := newOrderWorld(t, 2<<20)
	n := w.node(t, "a")
	old := w.local(t, n, 1)
	for i := range w.layout.Len() {
		w.put(t, old, i, w.layout.Chunk(i).Size)
	}
	fresh := w.local(t, n, 1) // a new staging of the same model registers
	if !old.isClosed() {
		t.Errorf("the replaced copy is still open")
	}
	if _, err := old.reader(0); !errors.Is(err, errReleased) {
		t.Errorf("reading a closed copy: %v, want errReleased (its descriptors may be reused)", err)
	}
	n.Release("k")
	if fresh.isClosed() || n.reg.get("team", "k") != fresh {
		t.Errorf("the release of the old copy dropped the new staging")
	}
	for i := range w.layout.Len() {
		w.put(t, fresh, i, w.layout.Chunk(i).Size)
	}
	n.Release("k")
	if !fresh.isClosed() || n.reg.get("team", "k") != nil {
		t.Errorf("a release of the complete model left it registered")
	}
}

// TestBadReadTakesBackItsSums: when an object read from OSS fails its CRC-64, the checksums
// the head published for its chunks are taken back, so a retry is not refused for them.
func TestBadReadTakesBackItsSums(t *testing.T) {
	w := newOrderWorld(t, 4<<20)
	n := w.node(t, "a")
	l := w.local(t, n, 1)
	big := 0
	for o, obj := range w.m.Objects {
		if obj.Size > w.m.Objects[big].Size {
			big = o
		}
	}
	w.emu.InjectFault(ossemu.Fault{Kind: ossemu.FaultCorrupt, Key: w.m.Objects[big].Key, After: 100, Count: -1})
	oss := cache.OSSSource{Client: w.oss, Options: ossclient.DownloadOptions{Concurrency: 4, PartSize: 1 << 20}}
	if err := n.head(t.Context(), l, oss); !errors.Is(err, ossclient.ErrIntegrity) {
		t.Fatalf("head: %v, want ErrIntegrity", err)
	}
	first, end := w.layout.ObjectChunks(big)
	sums, err := n.coord.Sums(t.Context(), "team", "k", first, end-first)
	if err != nil {
		t.Fatal(err)
	}
	for j, crc := range sums {
		if crc != 0 {
			t.Errorf("chunk %d of the object that failed keeps its published CRC %x", first+j, crc)
		}
	}
}

// dropDuringJoin is a Redis hook that, once armed, drops a copy from its node just before the
// first chain join reaches Redis: the race between the heartbeat's renewal and a release.
type dropDuringJoin struct {
	armed atomic.Bool
	drop  func()
}

func (h *dropDuringJoin) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *dropDuringJoin) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		// The node's heartbeat is off: its first script once armed is the renewal's Join.
		if name := cmd.Name(); (name == "evalsha" || name == "eval") && h.armed.CompareAndSwap(true, false) {
			h.drop()
		}
		return next(ctx, cmd)
	}
}

func (h *dropDuringJoin) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// TestHeartbeatDoesNotResurrectADroppedCopy: a copy released while the heartbeat's renewal of
// it is on its way to Redis (the release's Leave lands first, then the Join) must not stay in
// the chain as a phantom member that answers 404.
func TestHeartbeatDoesNotResurrectADroppedCopy(t *testing.T) {
	w := newOrderWorld(t, 2<<20)
	rdb := redis.NewClient(&redis.Options{Addr: w.rdb.Options().Addr})
	t.Cleanup(func() { _ = rdb.Close() })
	hook := &dropDuringJoin{}
	rdb.AddHook(hook)
	n, err := New(Config{NodeID: "a", Addr: "127.0.0.1:0", Tenant: "team", Heartbeat: time.Hour}, rdb)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Close)
	// The heartbeat's first round runs at once (the next in an hour): let it end before the
	// copy exists, so that no renewal but the test's own is in flight when it checks the chain.
	for deadline := time.Now().Add(10 * time.Second); n.beats.Load() == 0; {
		if time.Now().After(deadline) {
			t.Fatal("the heartbeat's first round did not end within 10 s")
		}
		runtime.Gosched()
	}
	l := w.local(t, n, 0)
	for i := range w.layout.Len() {
		w.put(t, l, i, w.layout.Chunk(i).Size)
	}
	n.renew(t.Context(), l)
	members, err := n.coord.Members(t.Context(), "team", "k")
	if err != nil || find(members, "a") == nil {
		t.Fatalf("the copy did not join its chain: %v %v", members, err)
	}

	hook.drop = func() { n.Release("k") }
	hook.armed.Store(true)
	n.renew(t.Context(), l)
	if hook.armed.Load() {
		t.Fatal("the renewal never joined: the race was not staged")
	}
	if !l.isClosed() || n.reg.get("team", "k") != nil {
		t.Fatal("the release did not drop the copy")
	}
	if members, err = n.coord.Members(t.Context(), "team", "k"); err != nil {
		t.Fatal(err)
	}
	if m := find(members, "a"); m != nil {
		t.Errorf("a dropped copy is back in its chain after a heartbeat raced the release: %+v", *m)
	}
}

// TestSlowNodeDetection: on a fake clock, a node receiving at a tenth of its predecessor's rate
// is judged to hold its chain back once its rate spans most of the window and it has fallen
// 1.5 s of the predecessor's rate behind, and only while a successor waits on it; a node at
// the predecessor's pace, a complete predecessor or no successor never are.
func TestSlowNodeDetection(t *testing.T) {
	w := newOrderWorld(t, 8<<20)
	clk := clocktesting.NewFakeClock(time.Unix(1e9, 0))
	n, err := New(Config{NodeID: "me", Addr: "127.0.0.1:0", Tenant: "team", Heartbeat: time.Hour, Clock: clk}, w.rdb)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Close)
	l := w.local(t, n, 2)
	me := coord.Member{Node: "me", Position: 2, Addr: "x"}
	succ := coord.Member{Node: "succ", Position: 3, Addr: "y"}
	const predRate = 100e6
	pred := func(bytes int64, complete bool) coord.Member {
		return coord.Member{Node: "pred", Position: 1, Addr: "z", Progress: coord.NodeProgress{Bytes: bytes, Rate: predRate, Complete: complete}}
	}
	step := 100 * time.Millisecond
	// 1 chunk (256 KiB or less) per 100 ms: under 3 MB/s against the predecessor's 100 MB/s.
	var judged time.Duration
	for i := 0; i < w.layout.Len()-1 && judged == 0; i++ {
		l.rate() // a sample, as the progress publisher takes them
		if n.slowBehind(l, me, pred(l.verifiedBytes()+200e6, false), []coord.Member{me, succ}) {
			judged = time.Duration(i) * step
		}
		w.put(t, l, i, w.layout.Chunk(i).Size)
		clk.Step(step)
	}
	if judged < rateWindow*2/3 || judged > 2*time.Second {
		t.Fatalf("a node at a tenth of its predecessor's rate was judged slow after %v, want after %v and within 2 s", judged, rateWindow*2/3)
	}
	behind := pred(l.verifiedBytes()+200e6, false)
	if n.slowBehind(l, me, behind, []coord.Member{me}) {
		t.Errorf("judged slow with no successor waiting")
	}
	if n.slowBehind(l, me, pred(l.verifiedBytes()+200e6, true), []coord.Member{me, succ}) {
		t.Errorf("judged slow behind a complete predecessor")
	}
	if n.slowBehind(l, me, pred(l.verifiedBytes()+slowLag/2, false), []coord.Member{me, succ}) {
		t.Errorf("judged slow though less than %d bytes behind", slowLag)
	}
	rate, _ := l.rate()
	even := coord.Member{Node: "pred", Position: 1, Addr: "z", Progress: coord.NodeProgress{Bytes: l.verifiedBytes() + 200e6, Rate: rate}}
	if n.slowBehind(l, me, even, []coord.Member{me, succ}) {
		t.Errorf("judged slow at its predecessor's own rate (%.0f B/s)", rate)
	}
}
