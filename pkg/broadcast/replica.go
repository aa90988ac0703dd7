package broadcast

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/utils/clock"

	"github.com/modelcast/modelcast/pkg/cache"
	"github.com/modelcast/modelcast/pkg/coord"
	"github.com/modelcast/modelcast/pkg/ossclient"
)

var (
	// errReleased: the model was released while a stream was serving or waiting for it.
	errReleased = errors.New("model released")
	// errMoved: the sender moved to its chain's tail; its successor re-links past it.
	errMoved = errors.New("the peer moved in its chain")
)

// local is a model this node stages or holds, shared by the code that fills it (from OSS or a
// peer) and the data plane that serves it onward. Chunks arrive in any order (a head reads
// many parts of the model at once); each is served onward as soon as it is verified, in the
// order it was verified.
type replica struct {
	clock       clock.WithTicker
	tenant, key string
	info        coord.ModelInfo
	layout      *ossclient.Layout
	dir         string
	files       []*os.File // per object: read-write handle (nil for empty objects)
	maps        [][]byte   // per object: its shared mapping, on a huge-page tmpfs (else nil)

	fromOSS, fromPeers atomic.Int64 // bytes received, by source
	pos                atomic.Int64 // the node's position in the model's chain, as last known

	mu          sync.Mutex
	crcs        []uint64 // per chunk, valid where have is set
	have        []bool   // chunks verified: they can be served
	order       []int    // the verified chunks in the order they were verified: what streams send
	bytes       int64    // verified bytes
	partials    map[int]partial
	objVerified []bool
	complete    bool
	closed      bool
	from        origin         // where bytes come from now
	released    chan struct{}  // closed when the model is released: streams end
	streams     []*outStream   // streams to successors, sent on as chunks are verified (copied on change)
	samples     []rateSample   // verified bytes over the last rateHistory, oldest first
	steppedBack bool           // moved to its chain's tail for being slow (once per staging)
	writers     int            // receivers writing into the files now (see beginWrite)
	moved       chan struct{}  // closed when the node moves in its chain: streams to successors end
	sums        map[int]uint64 // CRC-64s the OSS reader published, as read from Redis
	sumsRead    time.Time
}

// partial is the start of a chunk received from a peer whose stream broke off: its bytes,
// with their running CRC, kept so that another peer or OSS continues where it stopped.
type partial struct {
	bytes int64
	crc   uint64
}

// openLocal prepares dir's files for the model (creating them, keeping what they hold) and
// opens them.
func openReplica(tenant, key string, layout *ossclient.Layout, dir string, clk clock.WithTicker) (*replica, error) {
	m := layout.Manifest()
	if err := ossclient.Preallocate(m, dir); err != nil {
		return nil, err
	}
	l := &replica{
		clock: clk, tenant: tenant, key: key, layout: layout, dir: dir, sums: map[int]uint64{}, partials: map[int]partial{},
		info:  coord.ModelInfo{URI: m.URI().String(), Size: m.Size(), Files: len(m.Objects)},
		files: make([]*os.File, len(m.Objects)), crcs: make([]uint64, layout.Len()), have: make([]bool, layout.Len()),
		order: make([]int, 0, layout.Len()), objVerified: make([]bool, len(m.Objects)), released: make(chan struct{}),
		moved: make(chan struct{}),
	}
	for i, o := range m.Objects {
		if o.Size == 0 {
			l.objVerified[i] = true
			continue
		}
		f, err := os.OpenFile(filepath.Join(dir, filepath.FromSlash(m.Path(i))), os.O_RDWR, 0)
		if err != nil {
			l.closeFilesLocked()
			return nil, err
		}
		l.files[i] = f
	}
	// On a huge-page tmpfs, chunks from peers are read from the socket straight into the
	// file's pages: one copy instead of two (read, then pwrite), as Download does.
	if ossclient.HugeTmpfs(dir) {
		l.maps = make([][]byte, len(m.Objects))
		for i, f := range l.files {
			if f == nil {
				continue
			}
			data, err := unix.Mmap(int(f.Fd()), 0, int(m.Objects[i].Size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
			if err != nil {
				l.closeFilesLocked()
				return nil, fmt.Errorf("map %s: %w", m.Path(i), err)
			}
			l.maps[i] = data
		}
	}
	l.complete = layout.Len() == 0
	return l, nil
}

// closeFilesLocked unmaps and closes the model's files (once).
func (l *replica) closeFilesLocked() {
	for i, data := range l.maps {
		if data != nil {
			_ = unix.Munmap(data)
			l.maps[i] = nil
		}
	}
	for i, f := range l.files {
		if f != nil {
			_ = f.Close()
			l.files[i] = nil
		}
	}
}

// chunkDone records chunk i as verified with its CRC and makes it servable. When that
// completes an object, the object's CRC-64 is checked against OSS's: a failure is returned
// (and the chunk is kept out). The caller then sends the chunk on to the successors' streams
// itself, as far as their sockets take it without waiting (see outStream).
func (l *replica) chunkDone(i int, crc uint64) error {
	streams, err := l.verified(i, crc)
	for _, st := range streams {
		st.kick()
	}
	return err
}

// verified records chunk i (chunkDone) and returns the streams to send it on.
func (l *replica) verified(i int, crc uint64) ([]*outStream, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.have[i] {
		return nil, nil
	}
	l.crcs[i], l.have[i] = crc, true
	o := l.layout.Chunk(i).Object
	if first, end := l.layout.ObjectChunks(o); !l.objVerified[o] && l.allLocked(first, end) {
		if err := l.layout.VerifyObject(o, func(j int) uint64 { return l.crcs[j] }); err != nil {
			l.have[i] = false
			return nil, err
		}
		l.objVerified[o] = true
	}
	delete(l.partials, i)
	l.order = append(l.order, i)
	l.bytes += l.layout.Chunk(i).Size
	l.complete = len(l.order) == len(l.have)
	return l.streams, nil
}

// orderAt returns the k-th chunk this node verified and its CRC, if there is one yet.
func (l *replica) orderAt(k int) (i int, crc uint64, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if k >= len(l.order) {
		return 0, 0, false
	}
	i = l.order[k]
	return i, l.crcs[i], true
}

// signals returns what ends a stream starting now early: moved, when the node moves in its
// chain (nil once it has moved already: its successors know), and released.
func (l *replica) signals() (moved, released <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.steppedBack {
		moved = l.moved
	}
	return moved, l.released
}

// addStream registers st to be sent each chunk as it is verified.
func (l *replica) addStream(st *outStream) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.streams = append(slices.Clip(l.streams), st)
}

// removeStream stops sending chunks to st.
func (l *replica) removeStream(st *outStream) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if k := slices.Index(l.streams, st); k >= 0 {
		l.streams = slices.Delete(slices.Clone(l.streams), k, k+1)
	}
}

func (l *replica) allLocked(first, end int) bool {
	for j := first; j < end; j++ {
		if !l.have[j] {
			return false
		}
	}
	return true
}

// objectVerified reports whether object o passed OSS's CRC-64.
func (l *replica) objectVerified(o int) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.objVerified[o]
}

// partialOf returns the bytes of chunk i already received (zero when none).
func (l *replica) partialOf(i int) partial {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.partials[i]
}

// setPartial records the bytes of chunk i received so far (none: forget them).
func (l *replica) setPartial(i int, p partial) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.have[i]:
	case p.bytes == 0:
		delete(l.partials, i)
	default:
		l.partials[i] = p
	}
}

// wants is what this node asks a peer for: every chunk it lacks, the partial ones from
// where they broke off.
func (l *replica) wants() want {
	l.mu.Lock()
	defer l.mu.Unlock()
	w := want{have: slices.Clone(l.have), offsets: make(map[int]int64, len(l.partials))}
	for i, p := range l.partials {
		w.offsets[i] = p.bytes
	}
	return w
}

// resume describes the chunks present, for a download from OSS that fetches the rest, and
// how many bytes they hold.
func (l *replica) resume() (*ossclient.Resume, int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := &ossclient.Resume{Have: slices.Clone(l.have), CRCs: slices.Clone(l.crcs), Partial: make(map[int]ossclient.PartialChunk, len(l.partials))}
	present := l.bytes
	for i, p := range l.partials {
		r.Partial[i] = ossclient.PartialChunk{Bytes: p.bytes, CRC: p.crc}
		present += p.bytes
	}
	return r, present
}

// verifiedBytes is how much of the model is verified, in whatever chunks.
func (l *replica) verifiedBytes() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.bytes
}

func (l *replica) isComplete() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.complete
}

// progress is what the node publishes about the model.
func (l *replica) progress() coord.NodeProgress {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clock.Now()
	l.sampleLocked(now)
	return coord.NodeProgress{Bytes: l.bytes, Complete: l.complete, From: l.from.name(), Rate: l.steadyRateLocked(now)}
}

// rateWindow is the span over which a node's receive rate is measured for slow-node detection.
const rateWindow = 1500 * time.Millisecond

// steadyRateWindow is the span of the rate a node publishes (`csi-plugin status` shows it, with
// the time left at that rate, and a successor compares its own with it); samples are kept for
// rateHistory.
const (
	steadyRateWindow = 10 * time.Second
	rateHistory      = time.Minute
)

type rateSample struct {
	at    time.Time
	bytes int64
}

// rate is the node's receive rate (verified bytes per second) over the last rateWindow, and
// how long that measure spans.
func (l *replica) rate() (float64, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clock.Now()
	l.sampleLocked(now)
	first := l.samples[l.sampleBeforeLocked(now, rateWindow)]
	r := 0.0
	if dt := now.Sub(first.at).Seconds(); dt >= 0.25 {
		r = float64(l.bytes-first.bytes) / dt
	}
	return r, now.Sub(first.at)
}

// sampleLocked records the verified bytes at now (at most every 100 ms) and forgets samples
// older than rateHistory, keeping the newest of them as where the history starts.
func (l *replica) sampleLocked(now time.Time) {
	if n := len(l.samples); n == 0 || now.Sub(l.samples[n-1].at) >= 100*time.Millisecond {
		l.samples = append(l.samples, rateSample{now, l.bytes})
	}
	for len(l.samples) > 2 && now.Sub(l.samples[1].at) >= rateHistory {
		l.samples = l.samples[1:]
	}
}

// sampleBeforeLocked is the index of the newest sample at least window old (the oldest sample
// when none is).
func (l *replica) sampleBeforeLocked(now time.Time, window time.Duration) int {
	for i := len(l.samples) - 1; i > 0; i-- {
		if now.Sub(l.samples[i].at) >= window {
			return i
		}
	}
	return 0
}

// steadyRateLocked is the receive rate (verified bytes, in whatever chunks, per second) over
// the last steadyRateWindow, measured so that bursts do not sway it. Chunks are verified in
// bursts when many parallel parts progress in step (a head's ranged GETs at a low rate each
// complete a chunk at about the same time, seconds apart): a fixed window then holds one burst
// more or less, and a window of a second or two often none. So the rate is measured between
// the ends of bursts (samples after which the verified bytes stop growing for a while): the
// bytes of the bursts after the first one in the window, over the time from the end of that
// one to the end of the last (reaching back up to rateHistory for two of them), plus the
// silence since the last beyond the usual time between them, which makes a stalled staging's
// rate fall. A flow that grows at every sample is one burst: its rate is the plain rate over
// the window.
func (l *replica) steadyRateLocked(now time.Time) float64 {
	n := len(l.samples)
	grew := func(i int) bool { return i > 0 && l.samples[i].bytes > l.samples[i-1].bytes }
	// Samples that end a burst, oldest first. A burst may be spread over samples, even with a
	// quiet one among them when the machine is busy; counting a part of it as a burst's end
	// would spread that part's share over a whole period. So a pause (no growth after a sample
	// that grew) ends a burst if it lasted at least half the longest finished pause: one
	// between bursts, not within one. The newest sample is no end even if it grew.
	type pause struct {
		end    int           // the last sample that grew before it
		length time.Duration // until the next sample that grew
	}
	var pauses []pause
	var longest time.Duration
	ongoing := 0 // the sample before a pause that goes on, if one does
	for i := 1; i < n-1; i++ {
		if !grew(i) || grew(i+1) {
			continue
		}
		j := i + 2
		for j < n && !grew(j) {
			j++
		}
		if j == n {
			ongoing = i
			break
		}
		d := l.samples[j].at.Sub(l.samples[i].at)
		pauses = append(pauses, pause{i, d})
		longest = max(longest, d)
	}
	var ends []int
	for _, p := range pauses {
		if p.length >= longest/2 {
			ends = append(ends, p.end)
		}
	}
	if ongoing > 0 {
		// A pause that goes on ends a burst once it is that long, or at once if the burst is
		// whole: at least 3/4 of the bytes of the one before (the first counted from the
		// history's start).
		prev, before := l.samples[0].bytes, l.samples[0].bytes
		if k := len(ends); k > 0 {
			prev = l.samples[ends[k-1]].bytes
			if k > 1 {
				before = l.samples[ends[k-2]].bytes
			}
		}
		if now.Sub(l.samples[ongoing].at) >= longest/2 || 4*(l.samples[ongoing].bytes-prev) >= 3*(prev-before) {
			ends = append(ends, ongoing)
		}
	}
	if len(ends) < 2 {
		first := l.samples[l.sampleBeforeLocked(now, steadyRateWindow)]
		if dt := now.Sub(first.at).Seconds(); dt >= 0.25 {
			return float64(l.bytes-first.bytes) / dt
		}
		return 0
	}
	k := len(ends) - 2
	for k > 0 && now.Sub(l.samples[ends[k-1]].at) <= steadyRateWindow {
		k--
	}
	first, last := l.samples[ends[k]], l.samples[ends[len(ends)-1]]
	span := last.at.Sub(first.at)
	gap := span / time.Duration(len(ends)-1-k)
	span += max(0, now.Sub(last.at)-gap)
	return float64(last.bytes-first.bytes) / span.Seconds()
}

// stepBack records that the node moves to its chain's tail, once: streams to successors end
// (they re-link past it). It reports false if the node stepped back already.
func (l *replica) stepBack() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.steppedBack {
		return false
	}
	l.steppedBack = true
	close(l.moved)
	return true
}

// reportEvery reports the staging's progress to the cache until stopped (and once more then).
func (l *replica) reportEvery(d time.Duration, report func(cache.Progress)) (stop func()) {
	send := func() {
		oss, peers := l.fromOSS.Load(), l.fromPeers.Load()
		report(cache.Progress{Done: oss + peers, Total: l.layout.Manifest().Size(), FromOSS: oss, FromPeers: peers, From: l.origin().String()})
	}
	done, finished := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(finished)
		t := l.clock.NewTicker(d)
		defer t.Stop()
		for {
			send()
			select {
			case <-done:
				send()
				return
			case <-t.C():
			}
		}
	}()
	return func() { close(done); <-finished }
}

func (l *replica) publishedSum(i int) (uint64, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	crc, ok := l.sums[i]
	return crc, ok
}

// mayFetchSums rate-limits reads of the published sums to one every 200 ms.
func (l *replica) mayFetchSums() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.clock.Since(l.sumsRead) < 200*time.Millisecond {
		return false
	}
	l.sumsRead = l.clock.Now()
	return true
}

func (l *replica) storeSums(first int, sums []uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for j, crc := range sums {
		if crc != 0 {
			l.sums[first+j] = crc
		}
	}
}

func (l *replica) isClosed() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.closed
}

func (l *replica) setOrigin(from origin) {
	l.mu.Lock()
	l.from = from
	l.mu.Unlock()
}

func (l *replica) origin() origin {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.from
}

// origin is where a node's bytes of a model come from — a peer, or OSS — and the node's place
// in its chain then. The zero value is "not known yet".
type origin struct {
	peer         string // the predecessor; "" with oss or when not known
	oss          bool
	position, of int    // 1-based rank in the chain, and the chain's length (0: unknown)
	note         string // why, when it is not what broadcasting would give
}

// name is what the node publishes in Redis: "OSS", the peer's name, or "".
func (o origin) name() string {
	if o.oss {
		return "OSS"
	}
	return o.peer
}

// String is for people: "node gpu-7 (position 3 of 8)", "OSS (position 1 of 8)".
func (o origin) String() string {
	from := o.name()
	if o.peer != "" {
		from = "node " + o.peer
	}
	if o.note != "" {
		return from + " directly (" + o.note + ")"
	}
	if o.position == 0 {
		return from
	}
	return fmt.Sprintf("%s (position %d of %d)", from, o.position, o.of)
}

// reader opens object o anew, so a stream reads with an offset of its own (and sendfile): the
// handle is reopened through /proc, which keeps working after the cache renames or removes
// the file. It holds the lock close takes, so the descriptor it reopens is the object's.
func (l *replica) reader(o int) (*os.File, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, errReleased
	}
	f := l.files[o]
	if f == nil {
		return nil, fmt.Errorf("object %d is empty", o)
	}
	return os.Open(fmt.Sprintf("/proc/self/fd/%d", f.Fd()))
}

// beginWrite lets a receiver write chunk c's bytes [from, from+n): it returns where (the
// object's mapping, or nil to write with pwrite) and false once the model is closed. Every
// true must be followed by endWrite: a closed model unmaps its files only when the last
// writer is done.
func (l *replica) beginWrite(c ossclient.Chunk, from, n int64) ([]byte, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, false
	}
	l.writers++
	if l.maps == nil {
		return nil, true
	}
	return l.maps[c.Object][c.Offset+from : c.Offset+from+n], true
}

func (l *replica) endWrite() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.writers--
	if l.closed && l.writers == 0 {
		l.closeFilesLocked()
	}
}

// close releases the model: waiting streams end (those waiting for chunks on released, those
// waiting for room in their sockets interrupted), files close (open readers keep theirs) once
// no receiver writes into them any more.
func (l *replica) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.closed {
		l.closed = true
		close(l.released)
		for _, st := range l.streams {
			st.interrupt()
		}
	}
	if l.writers == 0 {
		l.closeFilesLocked()
	}
}

// replicas holds the models this node can serve, by tenant and key.
type replicas struct {
	mu     sync.Mutex
	models map[string]*replica
}

func regKey(tenant, key string) string { return tenant + "/" + key }

func (r *replicas) get(tenant, key string) *replica {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.models[regKey(tenant, key)]
}

// add registers l. A copy of the same model it replaces (released by the cache, which tells
// the node only after removing its files) is closed: its chain membership is l's now.
func (r *replicas) add(l *replica) {
	r.mu.Lock()
	old := r.models[regKey(l.tenant, l.key)]
	r.models[regKey(l.tenant, l.key)] = l
	r.mu.Unlock()
	if old != nil && old != l {
		old.close()
	}
}

// remove drops the model if it is still l.
func (r *replicas) remove(l *replica) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.models[regKey(l.tenant, l.key)] == l {
		delete(r.models, regKey(l.tenant, l.key))
	}
}

// hasTenant reports whether the node holds or stages a model of tenant.
func (r *replicas) hasTenant(tenant string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, l := range r.models {
		if l.tenant == tenant {
			return true
		}
	}
	return false
}

// byKey returns every tenant's entry for a cache key.
func (r *replicas) byKey(key string) []*replica {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*replica
	for _, l := range r.models {
		if l.key == key {
			out = append(out, l)
		}
	}
	return out
}

func (r *replicas) all() []*replica {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*replica, 0, len(r.models))
	for _, l := range r.models {
		out = append(out, l)
	}
	return out
}
