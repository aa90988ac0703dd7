// Package chaintest runs model broadcasting end to end: node agents (csi-plugin agent: the
// node's cache, chain and data plane) as separate OS processes on distinct loopback addresses,
// a real redis-server, and the OSS emulator.
package chaintest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
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

	"github.com/modelcast/modelcast/test/ossemu"
	"github.com/modelcast/modelcast/test/promtest"
	"github.com/modelcast/modelcast/test/redistest"
)

const (
	region = "cn-test"
	ak     = "LTAI5tChainE2EKey"
	sk     = "chain-e2e-secret"
	tenant = "team"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// pluginBinary builds csi-plugin once for the package.
func pluginBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "chaintest-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "csi-plugin")
		out, err := exec.Command("go", "build", "-tags", "modelcast_testhooks", "-o", binPath, "github.com/modelcast/modelcast/cmd/csi-plugin").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %w: %s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// world is a Redis, an emulator with the model oss://models/qwen/, and the agents' settings.
type world struct {
	t       *testing.T
	emu     *ossemu.Server
	redis   *redistest.Server
	port    int // every agent's bind port, each on its own loopback address
	files   map[string][]byte
	size    int64
	dbUser  string
	dbPass  string
	dbTLS   map[string]any // extra broadcast.db keys (tls, caFile, …) for agents started next
	headCon int
}

func newWorld(t *testing.T, size int64, ropts redistest.Options) *world {
	t.Helper()
	w := &world{
		t:       t,
		emu:     ossemu.Start(t, ossemu.Options{Region: region, Credentials: []ossemu.Credential{{AccessKeyID: ak, AccessKeySecret: sk}}}),
		redis:   redistest.Start(t, ropts),
		port:    freePort(t),
		files:   map[string][]byte{},
		dbUser:  ropts.Username,
		dbPass:  ropts.Password,
		headCon: 4,
	}
	src := t.TempDir()
	objs, err := w.emu.GenerateModel("models", "qwen/", ossemu.ModelSpec{Size: size, Seed: 9, Dir: src})
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		rel := strings.TrimPrefix(o.Key, "qwen/")
		b, err := os.ReadFile(filepath.Join(src, rel))
		if err != nil {
			t.Fatal(err)
		}
		w.files[rel] = b
		w.size += int64(len(b))
	}
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

// syncBuffer is a buffer the process writes while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// agent is one node agent process.
type agent struct {
	name      string
	ip        string
	cacheRoot string
	cmd       *exec.Cmd
	stderr    *syncBuffer
	mu        sync.Mutex
	events    []event
	change    chan struct{} // closed and replaced on every event
	exited    chan struct{}
}

type agentOpt struct {
	dbPass    string // overrides the world's
	corrupt   int    // test hook chunk, -1 none
	noRedis   bool
	tmpfs     bool // the cache on a tmpfs of its own (root only)
	verbosity int  // klog -v (at least 2)
}

// start runs agent i (address 127.0.0.<10+i>) staging the model.
func (w *world) start(i int, o agentOpt) *agent {
	t := w.t
	t.Helper()
	name := fmt.Sprintf("node-%d", i)
	ip := fmt.Sprintf("127.0.0.%d", 10+i)
	dir := t.TempDir()
	pass := w.dbPass
	if o.dbPass != "" {
		pass = o.dbPass
	}
	host, port, _ := net.SplitHostPort(w.redis.Addr())
	if o.noRedis {
		host = ""
	}
	p, _ := strconv.Atoi(port)
	db := map[string]any{"host": host, "port": p, "username": w.dbUser, "password": pass}
	maps.Copy(db, w.dbTLS)
	cfg := map[string]any{
		"expireTimeSec": 600,
		"prefetch":      map[string]any{"vcpus": 2, "workers": 4},
		"broadcast": map[string]any{"enableBroadcast": true, "tenant": tenant, "headConcurrency": w.headCon,
			"db": db},
		"bindPort": w.port,
		"cache":    map[string]any{"root": filepath.Join(dir, "cache"), "tmpfs": o.tmpfs, "tmpfsSize": "256m"},
	}
	b, _ := json.Marshal(cfg)
	cfgPath := filepath.Join(dir, "config.json")
	if err := os.WriteFile(cfgPath, b, 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"agent", "--config", cfgPath, "--node-id", name, "--node-ip", ip, "--verify", "--interval", "100ms",
		"--http-endpoint", ip + ":0", "-v", strconv.Itoa(max(2, o.verbosity))}
	if o.corrupt >= 0 {
		args = append(args, "--test-corrupt-chunk", strconv.Itoa(o.corrupt))
	}
	cmd := exec.Command(pluginBinary(t), append(args, "oss://models/qwen/")...)
	cmd.Env = append(os.Environ(), "OSS_ENDPOINT="+w.emu.Endpoint(), "OSS_REGION="+region, "OSS_ACCESS_KEY_ID="+ak, "OSS_ACCESS_KEY_SECRET="+sk)
	a := &agent{name: name, ip: ip, cmd: cmd, cacheRoot: filepath.Join(dir, "cache"), stderr: &syncBuffer{}, change: make(chan struct{}), exited: make(chan struct{})}
	cmd.Stderr = a.stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go a.read(out)
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-a.exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-a.exited
		}
		if t.Failed() {
			t.Logf("%s stderr (last 3 KB):\n%s", name, tail(a.stderr.String(), 3000))
		}
	})
	return a
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func (a *agent) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		var e event
		if json.Unmarshal(sc.Bytes(), &e) != nil {
			continue
		}
		a.mu.Lock()
		a.events = append(a.events, e)
		close(a.change)
		a.change = make(chan struct{})
		a.mu.Unlock()
	}
	_ = a.cmd.Wait()
	close(a.exited)
}

// waitFor waits until an event satisfies ok (or the deadline), and returns it.
func (a *agent) waitFor(t *testing.T, what string, timeout time.Duration, ok func(event) bool) event {
	t.Helper()
	deadline := time.After(timeout)
	seen := 0
	for {
		a.mu.Lock()
		evs, ch := a.events[seen:], a.change
		seen = len(a.events)
		a.mu.Unlock()
		for _, e := range evs {
			if e.Event == "error" {
				t.Fatalf("%s failed: %s\n%s", a.name, e.Error, tail(a.stderr.String(), 3000))
			}
			if ok(e) {
				return e
			}
		}
		select {
		case <-ch:
		case <-a.exited:
			a.mu.Lock()
			n := len(a.events)
			a.mu.Unlock()
			if n == seen {
				t.Fatalf("%s exited before %s\n%s", a.name, what, tail(a.stderr.String(), 3000))
			}
		case <-deadline:
			t.Fatalf("%s: no %s within %s\n%s", a.name, what, timeout, tail(a.stderr.String(), 3000))
		}
	}
}

func (a *agent) ready(t *testing.T) event {
	return a.waitFor(t, "ready", 2*time.Minute, func(e event) bool { return e.Event == "ready" })
}

// metrics scrapes the agent's /metrics.
func (a *agent) metrics(t *testing.T) *promtest.Samples {
	t.Helper()
	start := a.waitFor(t, "start", 30*time.Second, func(e event) bool { return e.Event == "start" })
	s, err := promtest.Scrape(t.Context(), "http://"+start.HTTP+"/metrics")
	if err != nil {
		t.Fatalf("%s: %v", a.name, err)
	}
	return s
}

func (a *agent) kill() {
	_ = a.cmd.Process.Kill()
	<-a.exited
}

// checkModel reads the agent's staged model and compares every file with the source.
func (w *world) checkModel(t *testing.T, name string, e event) {
	t.Helper()
	if !e.Verified {
		t.Errorf("%s: ready without its end-to-end CRC-64 check", name)
	}
	for rel, want := range w.files {
		got, err := os.ReadFile(filepath.Join(e.Dir, rel))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s: %s differs (%v)", name, rel, err)
		}
	}
}
