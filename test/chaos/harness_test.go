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
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

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

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// pluginBinary builds csi-plugin once for the package.
func pluginBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "chaos-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "csi-plugin")
		out, err := exec.Command("go", "build", "-o", binPath, "github.com/modelcast/modelcast/cmd/csi-plugin").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %w: %s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// event is one JSON line of an agent.
type event struct {
	Event     string  `json:"event"`
	Node      string  `json:"node"`
	Done      int64   `json:"done"`
	Total     int64   `json:"total"`
	From      string  `json:"from"`
	Seconds   float64 `json:"seconds"`
	FromOSS   int64   `json:"fromOSS"`
	FromPeers int64   `json:"fromPeers"`
	Served    int64   `json:"served"`
	Verified  bool    `json:"verified"`
	Dir       string  `json:"dir"`
	Addr      string  `json:"addr"`
	HTTP      string  `json:"http"`
	Error     string  `json:"error"`
}

// tailBuffer keeps the last bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	b   []byte
	max int
}

func (tb *tailBuffer) Write(p []byte) (int, error) {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	tb.b = append(tb.b, p...)
	if len(tb.b) > 2*tb.max {
		tb.b = append([]byte(nil), tb.b[len(tb.b)-tb.max:]...)
	}
	return len(p), nil
}

func (tb *tailBuffer) tail(n int) string {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	if len(tb.b) > n {
		return string(tb.b[len(tb.b)-n:])
	}
	return string(tb.b)
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
	cmd    *exec.Cmd
	pid    int
	begun  time.Time
	stderr *tailBuffer
	start  chan struct{} // closed at the start event
	ready  chan struct{} // closed at the ready event
	exited chan struct{} // closed once the process is reaped

	mu         sync.Mutex
	done       int64 // bytes staged so far (progress), the model's size once ready
	total      int64
	lastGrowth time.Time
	from       string
	fromOSS    int64
	fromPeers  int64
	readyEv    *event
	readyAt    time.Duration // on the soak's clock
	errEv      *event
	unverified bool // a ready event without verified: true
	staging    bool // it reported progress: its model is in the chain and served
	fallback   bool // staged from OSS directly, Redis out of reach
	signaled   bool // the soak ended it: its exit is expected
	exitErr    error
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
	w := &world{
		t:        t,
		set:      set,
		bin:      pluginBinary(t),
		root:     t.TempDir(),
		emu:      ossemu.Start(t, ossemu.Options{Region: region, Credentials: []ossemu.Credential{{AccessKeyID: ak, AccessKeySecret: sk}}, EgressBytesPerSec: set.egress}),
		redis:    redistest.Start(t, redistest.Options{}),
		port:     freePort(t),
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

func freePort(t *testing.T) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
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
	host, port, _ := net.SplitHostPort(w.redis.Addr())
	p, _ := strconv.Atoi(port)
	cfg := map[string]any{
		"expireTimeSec": 3600,
		"prefetch":      map[string]any{"vcpus": 2, "workers": 4},
		"broadcast": map[string]any{"enableBroadcast": true, "tenant": tenant, "headConcurrency": w.set.headConc,
			"db": map[string]any{"host": host, "port": p}},
		"bindPort": w.port,
		"cache":    map[string]any{"root": filepath.Join(dir, "cache"), "tmpfs": false},
	}
	b, _ := json.Marshal(cfg)
	cfgPath := filepath.Join(dir, "config.json")
	if err := os.WriteFile(cfgPath, b, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(w.bin, "agent", "--config", cfgPath, "--node-id", s.name, "--node-ip", s.ip, "--verify",
		"--interval", "200ms", "--http-endpoint", s.ip+":0", "-v", "2", "oss://"+bucket+"/"+modelPrefix)
	cmd.Env = append(os.Environ(), "OSS_ENDPOINT="+w.emu.Endpoint(), "OSS_REGION="+region, "OSS_ACCESS_KEY_ID="+ak, "OSS_ACCESS_KEY_SECRET="+sk)
	// The kernel kills the agent if the test process dies without its cleanups.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	r := &run{slot: s, gen: gen, cmd: cmd, pid: cmd.Process.Pid, begun: now, stderr: &tailBuffer{max: 64 << 10},
		start: make(chan struct{}), ready: make(chan struct{}), exited: make(chan struct{}), lastGrowth: now}
	w.mu.Lock()
	s.runs = append(s.runs, r)
	s.state, s.liveSince = stUp, now
	w.mu.Unlock()
	var pipes sync.WaitGroup
	pipes.Add(2)
	go func() {
		defer pipes.Done()
		w.readEvents(r, stdout)
	}()
	go func() {
		defer pipes.Done()
		w.readLog(r, stderr)
	}()
	go func() {
		pipes.Wait()
		err := cmd.Wait()
		r.mu.Lock()
		r.exitErr = err
		r.mu.Unlock()
		close(r.exited)
	}()
	return r
}

// readEvents follows the agent's JSON lines.
func (w *world) readEvents(r *run, out io.Reader) {
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		var e event
		if json.Unmarshal(sc.Bytes(), &e) != nil {
			continue
		}
		now := time.Now()
		r.mu.Lock()
		switch e.Event {
		case "start":
			close(r.start)
		case "progress":
			r.staging = true
			if e.Done > r.done {
				r.done, r.lastGrowth = e.Done, now
			}
			r.total, r.from, r.fromOSS, r.fromPeers = e.Total, e.From, e.FromOSS, e.FromPeers
			if strings.Contains(e.From, "broadcast off") {
				r.fallback = true
			}
		case "ready":
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
		case "error":
			r.errEv = &e
		}
		r.mu.Unlock()
	}
	_, _ = io.Copy(io.Discard, out)
}

// readLog keeps the agent's stderr tail and marks the lines that say where bytes come from.
func (w *world) readLog(r *run, errs io.Reader) {
	sc := bufio.NewScanner(errs)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		_, _ = r.stderr.Write(append(line, '\n'))
		for _, m := range []string{logOSSHead, logTakeover, logNoChain, logFallback, logStepBack, logRelink} {
			if bytes.Contains(line, []byte(m)) {
				r.mu.Lock()
				r.marks = append(r.marks, mark{w.since(), m})
				r.mu.Unlock()
			}
		}
	}
	_, _ = io.Copy(io.Discard, errs)
}

// signal sends sig to the run's process; end marks its exit as expected.
func (r *run) signal(sig syscall.Signal, end bool) {
	if end {
		r.mu.Lock()
		r.signaled = true
		r.mu.Unlock()
	}
	_ = r.cmd.Process.Signal(sig)
}

// hasExited reports whether the process has exited and been reaped.
func (r *run) hasExited() bool {
	select {
	case <-r.exited:
		return true
	default:
		return false
	}
}

// waitExit waits until the process has exited, at most d.
func (r *run) waitExit(d time.Duration) bool {
	select {
	case <-r.exited:
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
		select {
		case <-r.exited:
			continue
		default:
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
