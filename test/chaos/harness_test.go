//go:build linux

// Package chaos is a chaos soak of model broadcasting: csi-plugin agent processes on
// 127.0.0.x addresses (each its own directory; a restarted agent keeps its node name and
// address, with a fresh cache), a real redis-server and the OSS emulator (object-store
// profile, a total egress cap), with agents killed, frozen, released and restarted, late
// joiners, Redis killed and restarted empty, and OSS faults (503s, a slow first byte, a
// reset), drawn from a seed, while invariants are checked every 250 ms and at the end:
//
//  0. agents exit only when the soak ends them, report no error, and all get ready after the
//     last fault;
//  1. a ready agent has verified its files against OSS's CRC-64s; at the end every agent's
//     files equal the source;
//  2. no live staging agent goes without progress for longer than the chain's stall timeout
//     and a margin while a live node has more bytes;
//  3. OSS serves no more than the bound the injected events allow (oss_test.go);
//  4. every Redis key has a TTL, the tenant token included;
//  5. after SIGTERM to every agent: no agent process, no mount under the agents'
//     directories, no chain listing a node, a TTL on every key left.
//
// `make chaos` runs it for CHAOS_S seconds (300); `go test ./...` runs a 60 s variant.
// CHAOS_SEED replays a seed (the same faults on the same agents, in the same order; CHAOS_S
// and CHAOS_N must match too), CHAOS_N sets the number of agents (6). It needs redis-server,
// not root: the agents' caches are plain directories.
package chaos

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/modelcast/modelcast/pkg/agent"
	"github.com/modelcast/modelcast/pkg/config"
	"github.com/modelcast/modelcast/test/agenttest"
	"github.com/modelcast/modelcast/test/freeport"
	"github.com/modelcast/modelcast/test/ossemu"
	"github.com/modelcast/modelcast/test/redistest"
)

const (
	region      = "cn-chaos"
	ak          = "LTAI5tChaosSoakKey01"
	sk          = "chaos-soak-secret"
	tenant      = "chaos"
	bucket      = "models"
	modelPrefix = "soak/"
	mib         = 1 << 20
	// Where the model's bytes come from, as agents log it (klog -v 2).
	logOSSHead  = "Fetching from OSS as the chain's head"
	logTakeover = "Taking over as the chain's head"
	logNoChain  = "Cannot read the chain; continuing from OSS"
	logFallback = "Broadcast coordination unavailable; fetching from OSS directly"
	logStepBack = "moved to the chain's tail"
	logRelink   = "Re-linking"
)

// settings of one soak.
type settings struct {
	seed       uint64
	seedSet    bool
	duration   time.Duration // the whole soak: faults, then a quiet end
	quiet      time.Duration // no faults in the last part
	agents     int
	late       int // agents that start as late joiners
	size       int64
	egress     int64 // OSS bytes per second, all connections together
	headConc   int   // broadcast.headConcurrency
	readyLimit time.Duration
	stallLimit time.Duration
}

func settingsFromEnv(t *testing.T) settings {
	s := settings{
		duration:   60 * time.Second,
		agents:     6,
		size:       64 * mib,
		egress:     8 * mib, // eight seconds for one copy
		headConc:   4,
		readyLimit: 2 * time.Minute,
		// The chain's StallTimeout (10 s) and a margin: the harness and Redis restarts add delay.
		stallLimit: 25 * time.Second,
	}
	if v := os.Getenv("CHAOS_S"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 20 {
			t.Fatalf("CHAOS_S=%q: want seconds, at least 20", v)
		}
		s.duration = time.Duration(n) * time.Second
	}
	if v := os.Getenv("CHAOS_N"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < minLive+1 || n > 100 {
			t.Fatalf("CHAOS_N=%q: want %d to 100 agents", v, minLive+1)
		}
		s.agents = n
	}
	if v := os.Getenv("CHAOS_SEED"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("CHAOS_SEED=%q: %v", v, err)
		}
		s.seed, s.seedSet = n, true
	} else {
		s.seed = uint64(time.Now().UnixNano()) % 1_000_000_000
	}
	s.late = max(1, s.agents/3)
	s.quiet = min(max(s.duration/6, 15*time.Second), 45*time.Second)
	return s
}

// pluginBinary builds csi-plugin once for the package.
func pluginBinary(t *testing.T) string {
	t.Helper()
	bin, err := agenttest.BuildPlugin()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// logLines hands fn the agent's log a line at a time (exec's copy of its stderr is the one
// writer).
type logLines struct {
	fn   func(line []byte)
	part []byte
}

func (l *logLines) Write(p []byte) (int, error) {
	l.part = append(l.part, p...)
	rest := l.part
	for {
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			break
		}
		l.fn(rest[:i])
		rest = rest[i+1:]
	}
	l.part = append(l.part[:0], rest...)
	return len(p), nil
}

// slot is one agent: a node name and address that runs after run (each a process, with a
// fresh cache directory).
type slot struct {
	i        int
	name, ip string
	dir      string
	// Guarded by world.mu:
	state     slotState
	liveSince time.Time // started or continued last
	runs      []*run
}

func (s *slot) cur() *run {
	if len(s.runs) == 0 {
		return nil
	}
	return s.runs[len(s.runs)-1]
}

// mark is a line of an agent's log worth counting: where its bytes came from.
type mark struct {
	at   time.Duration
	what string
}

// run is one process of an agent.
type run struct {
	slot   *slot
	gen    int
	p      *agenttest.Proc
	pid    int
	begun  time.Time
	stderr *agenttest.Log
	ready  chan struct{} // closed at the ready event

	mu         sync.Mutex
	done       int64 // bytes staged so far (progress), the model's size once ready
	total      int64
	lastGrowth time.Time
	from       string
	fromOSS    int64
	fromPeers  int64
	readyEv    *agent.Event
	readyAt    time.Duration // on the soak's clock
	errEv      *agent.Event
	unverified bool // a ready event without verified: true
	staging    bool // it reported progress: its model is in the chain and served
	fallback   bool // staged from OSS directly, Redis out of reach
	signaled   bool // the soak ended it: its exit is expected
	marks      []mark
}

// world is the soak's Redis, emulator, agents and bookkeeping.
type world struct {
	t     *testing.T
	set   settings
	bin   string
	root  string
	emu   *ossemu.Server
	redis *redistest.Server
	rdb   *redis.Client
	port  int
	files map[string][]byte
	size  int64
	t0    time.Time

	mu        sync.Mutex
	slots     []*slot
	redisDown bool
	chainKey  string
	acct      accounting
	oss       ossAcct
	lastPos   map[string]int // the chain as last read from Redis
	inv       [6]invariant   // 1-5 as the spec numbers them; 0: the agents' own health
	counts    map[string]int // steps executed, by label
	injected  map[string]int // OSS fault requests injected, by kind
	abort     chan struct{}
	aborted   bool
}

func newWorld(t *testing.T, set settings) *world {
	t.Helper()
	port, err := freeport.Get()
	if err != nil {
		t.Fatal(err)
	}
	w := &world{
		t:        t,
		set:      set,
		bin:      pluginBinary(t),
		root:     t.TempDir(),
		emu:      ossemu.Start(t, ossemu.Options{Region: region, Credentials: []ossemu.Credential{{AccessKeyID: ak, AccessKeySecret: sk}}, EgressBytesPerSec: set.egress}),
		redis:    redistest.Start(t, redistest.Options{}),
		port:     port,
		files:    map[string][]byte{},
		abort:    make(chan struct{}),
		counts:   map[string]int{},
		injected: map[string]int{},
		acct: accounting{stalled: map[*run]bool{}, noTTLSince: map[string]time.Time{}, ttlFailed: map[string]bool{},
			reported: map[*run]bool{}},
		oss: ossAcct{runs: map[*run]*runAcct{}, events: map[string]int{}, initialFree: true},
	}
	prof, err := ossemu.ProfileByName(ossemu.ObjectStoreProfile)
	if err != nil {
		t.Fatal(err)
	}
	w.emu.SetProfile(prof)
	w.rdb = redis.NewClient(&redis.Options{Addr: w.redis.Addr(), DialTimeout: time.Second, ReadTimeout: 2 * time.Second,
		WriteTimeout: time.Second, MaxRetries: -1, PoolSize: 4, DisableIdentity: true})
	t.Cleanup(func() { _ = w.rdb.Close() })
	src := filepath.Join(w.root, "source")
	objs, err := w.emu.GenerateModel(bucket, modelPrefix, ossemu.ModelSpec{Size: set.size, Shards: 3, Seed: int64(set.seed % 1000), Dir: src})
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		rel := strings.TrimPrefix(o.Key, modelPrefix)
		b, err := os.ReadFile(filepath.Join(src, rel))
		if err != nil {
			t.Fatal(err)
		}
		w.files[rel] = b
		w.size += int64(len(b))
	}
	for i := range set.agents {
		s := &slot{i: i, name: fmt.Sprintf("chaos-%d", i), ip: fmt.Sprintf("127.0.0.%d", 100+i), dir: filepath.Join(w.root, fmt.Sprintf("agent-%d", i))}
		if err := os.MkdirAll(s.dir, 0o755); err != nil {
			t.Fatal(err)
		}
		w.slots = append(w.slots, s)
	}
	t.Cleanup(w.killAll) // a failed soak leaves no process behind
	return w
}

// since is the soak's clock.
func (w *world) since() time.Duration { return time.Since(w.t0) }

// logf prints a line stamped with the soak's clock.
func (w *world) logf(format string, args ...any) {
	w.t.Logf("[%7.2fs] %s", w.since().Seconds(), fmt.Sprintf(format, args...))
}

func (w *world) name(i int) string { return w.slots[i].name }

// startRun starts slot s's next process, with a fresh cache directory. Callers hold no lock.
func (w *world) startRun(s *slot) *run {
	t := w.t
	w.mu.Lock()
	gen := len(s.runs)
	prev := s.cur()
	w.mu.Unlock()
	if prev != nil && prev.hasExited() {
		// The last run's cache goes: every run starts from scratch (a recovered model has no
		// manifest to --verify against), and the disk holds one copy per agent.
		_ = os.RemoveAll(filepath.Join(s.dir, fmt.Sprintf("run-%d", prev.gen), "cache"))
	}
	dir := filepath.Join(s.dir, fmt.Sprintf("run-%d", gen))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	db, err := agenttest.RedisDB(w.redis.Addr())
	if err != nil {
		t.Fatal(err)
	}
	cfgPath, err := agenttest.WriteConfig(dir, config.Config{
		ExpireTimeSec: 3600,
		Prefetch:      config.Prefetch{VCPUs: 2, Workers: 4},
		Broadcast:     config.Broadcast{EnableBroadcast: true, Tenant: tenant, HeadConcurrency: w.set.headConc, DB: db},
		BindPort:      w.port,
		Cache:         config.Cache{Root: filepath.Join(dir, "cache"), Tmpfs: agenttest.Ptr(false)},
	})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	r := &run{slot: s, gen: gen, begun: now, stderr: &agenttest.Log{Max: 64 << 10}, ready: make(chan struct{}), lastGrowth: now}
	r.p, err = agenttest.Start(agenttest.Spec{Bin: w.bin, Config: cfgPath, NodeID: s.name, NodeIP: s.ip,
		Flags: []string{"--verify", "--interval", "200ms", "--http-endpoint", s.ip + ":0", "-v", "2"},
		Model: "oss://" + bucket + "/" + modelPrefix, Env: agenttest.OSSEnv(w.emu.Endpoint(), region, ak, sk),
		Stderr: io.MultiWriter(r.stderr, &logLines{fn: func(line []byte) { w.mark(r, line) }}), OnEvent: func(e agent.Event) { w.onEvent(r, e) }})
	if err != nil {
		t.Fatal(err)
	}
	r.pid = r.p.Pid()
	w.mu.Lock()
	s.runs = append(s.runs, r)
	s.state, s.liveSince = stUp, now
	w.mu.Unlock()
	return r
}

// onEvent follows the agent's JSON lines.
func (w *world) onEvent(r *run, e agent.Event) {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	switch e.Event {
	case agent.EventProgress:
		r.staging = true
		if e.Done > r.done {
			r.done, r.lastGrowth = e.Done, now
		}
		r.total, r.from, r.fromOSS, r.fromPeers = e.Total, e.From, e.FromOSS, e.FromPeers
		if strings.Contains(e.From, "broadcast off") {
			r.fallback = true
		}
	case agent.EventReady:
		r.readyEv, r.readyAt = &e, w.since()
		r.done, r.total, r.lastGrowth = e.Total, e.Total, now
		r.fromOSS, r.fromPeers = e.FromOSS, e.FromPeers
		if !e.Verified {
			r.unverified = true
		}
		if strings.Contains(e.From, "broadcast off") {
			r.fallback = true
		}
		close(r.ready)
	case agent.EventError:
		r.errEv = &e
	}
}

// mark notes a line of the agent's log that says where bytes come from.
func (w *world) mark(r *run, line []byte) {
	for _, m := range []string{logOSSHead, logTakeover, logNoChain, logFallback, logStepBack, logRelink} {
		if bytes.Contains(line, []byte(m)) {
			r.mu.Lock()
			r.marks = append(r.marks, mark{w.since(), m})
			r.mu.Unlock()
		}
	}
}

// signal sends sig to the run's process; end marks its exit as expected.
func (r *run) signal(sig syscall.Signal, end bool) {
	if end {
		r.mu.Lock()
		r.signaled = true
		r.mu.Unlock()
	}
	_ = r.p.Signal(sig)
}

// hasExited reports whether the process has exited and been reaped.
func (r *run) hasExited() bool {
	select {
	case <-r.p.Exited():
		return true
	default:
		return false
	}
}

// waitExit waits until the process has exited, at most d.
func (r *run) waitExit(d time.Duration) bool {
	select {
	case <-r.p.Exited():
		return true
	case <-time.After(d):
		return false
	}
}

// killAll ends every process still running (cleanup).
func (w *world) killAll() {
	w.mu.Lock()
	var runs []*run
	for _, s := range w.slots {
		runs = append(runs, s.runs...)
	}
	w.mu.Unlock()
	for _, r := range runs {
		if r.hasExited() {
			continue
		}
		r.signal(syscall.SIGKILL, true)
		r.waitExit(10 * time.Second)
	}
}

// positions reads the model's chain from Redis: node → position. The chain key is found once
// a node has joined; nil, nil before.
func (w *world) positions(ctx context.Context) (map[string]int, error) {
	w.mu.Lock()
	key := w.chainKey
	w.mu.Unlock()
	if key == "" {
		keys, _, err := w.rdb.Scan(ctx, 0, "modelcast:{"+tenant+"/*}:chain", 1000).Result()
		if err != nil {
			return nil, err
		}
		if len(keys) == 0 {
			return nil, nil
		}
		key = keys[0]
		w.mu.Lock()
		w.chainKey = key
		w.mu.Unlock()
	}
	zs, err := w.rdb.ZRangeWithScores(ctx, key, 0, -1).Result()
	if err != nil {
		return nil, err
	}
	pos := make(map[string]int, len(zs))
	for _, z := range zs {
		if node, ok := z.Member.(string); ok {
			pos[node] = int(z.Score)
		}
	}
	return pos, nil
}

// scanTTLs returns every key in Redis with its TTL (-1: none).
func (w *world) scanTTLs(ctx context.Context) (map[string]time.Duration, error) {
	var keys []string
	iter := w.rdb.Scan(ctx, 0, "*", 1000).Iterator()
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
	}
	if err := iter.Err(); err != nil {
		return nil, err
	}
	cmds := make([]*redis.DurationCmd, len(keys))
	_, err := w.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, k := range keys {
			cmds[i] = p.PTTL(ctx, k)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	out := make(map[string]time.Duration, len(keys))
	for i, k := range keys {
		d := cmds[i].Val()
		if d == -2 || d == -2*time.Millisecond || d == -2*time.Nanosecond {
			continue // gone meanwhile
		}
		out[k] = d
	}
	return out, nil
}

// noTTL reports a PTTL answer meaning "no expiry" (go-redis reports -1 as -1 ns or -1 ms
// depending on its version).
func noTTL(d time.Duration) bool { return d == -1 || d == -time.Millisecond || d == -time.Nanosecond }

func tokenKey() string { return "modelcast:{" + tenant + "}:token" }
