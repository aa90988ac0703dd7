package netbench

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Event is one line of an agent (see cmd/csi-plugin/agent.go).
type Event struct {
	Event     string  `json:"event"`
	Node      string  `json:"node"`
	Done      int64   `json:"done"`
	Total     int64   `json:"total"`
	From      string  `json:"from"`
	FromOSS   int64   `json:"fromOSS"`
	FromPeers int64   `json:"fromPeers"`
	Served    int64   `json:"served"`
	Verified  bool    `json:"verified"`
	Seconds   float64 `json:"seconds"` // ready: from its start line to the model staged, before --verify
	Error     string  `json:"error"`
	CPU       float64 `json:"cpu"`       // the agent's core-seconds so far (user + system)
	VerifyCPU float64 `json:"verifyCPU"` // ready: core-seconds of the --verify re-read alone
}

// positionRE finds a node's place in its chain in an event's From: "OSS (position 1 of 8)".
var positionRE = regexp.MustCompile(`\(position (\d+) of (\d+)`)

// agent is one node agent process in its host's namespace.
type agent struct {
	name    string
	started time.Time
	cmd     *exec.Cmd
	logPath string

	unmount string // its cache tmpfs, to unmount once it exits (it runs in this mount namespace)

	mu       sync.Mutex
	last     Event
	ready    *Event
	readyT   time.Duration // from start to the ready line
	stopped  *Event        // its stop line
	startCPU float64       // its CPU at its start line: process and driver start-up
	position int           // its place in the chain, as last reported (0: not yet)
	of       int           // the chain's length then
	failed   string
	change   chan struct{}
	exited   chan struct{}
	cpu      time.Duration // user + system, once exited
	user     time.Duration
	sys      time.Duration
}

type agentSpec struct {
	host      Host // NS "": the agent runs in this machine's namespaces
	name      string
	plugin    string
	dir       string
	model     string // oss:// path
	endpoint  string
	redis     string // host:port; "" for broadcast off
	tenant    string
	cacheSize int64
	bindPort  int // its data plane's; 0: 19898
}

func startAgent(s agentSpec) (*agent, error) {
	if err := os.MkdirAll(s.dir, 0o755); err != nil {
		return nil, err
	}
	host, port := "", 0
	if s.redis != "" {
		h, p, _ := splitHostPort(s.redis)
		host, port = h, p
	}
	cfg := map[string]any{
		"expireTimeSec": 3600,
		"broadcast": map[string]any{"enableBroadcast": s.redis != "", "tenant": s.tenant,
			"db": map[string]any{"host": host, "port": max(port, 1)}},
		"bindPort": cmp.Or(s.bindPort, 19898),
		"cache":    map[string]any{"root": filepath.Join(s.dir, "cache"), "tmpfs": true, "tmpfsSize": strconv.FormatInt(s.cacheSize, 10)},
	}
	b, _ := json.Marshal(cfg)
	cfgPath := filepath.Join(s.dir, "config.json")
	if err := os.WriteFile(cfgPath, b, 0o600); err != nil {
		return nil, err
	}
	name := cmp.Or(s.name, s.host.NS)
	args := []string{"agent", "--config", cfgPath, "--node-id", name, "--node-ip", s.host.IP, "--verify", "--interval", "250ms", s.model}
	cmd := exec.Command(s.plugin, args...)
	if s.host.NS != "" {
		// ip netns exec gives the agent a mount namespace of its own too: its tmpfs goes with it.
		cmd = exec.Command("ip", append([]string{"netns", "exec", s.host.NS, s.plugin}, args...)...)
	}
	cmd.Env = append(os.Environ(), "OSS_ENDPOINT="+s.endpoint, "OSS_REGION="+region,
		"OSS_ACCESS_KEY_ID="+accessKeyID, "OSS_ACCESS_KEY_SECRET="+accessKeySecret)
	a := &agent{name: name, logPath: filepath.Join(s.dir, "agent.log"), cmd: cmd, change: make(chan struct{}), exited: make(chan struct{})}
	if s.host.NS == "" {
		a.unmount = filepath.Join(s.dir, "cache")
	}
	logf, err := os.Create(a.logPath)
	if err != nil {
		return nil, err
	}
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	a.started = time.Now()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	go a.read(out, logf)
	return a, nil
}

func (a *agent) read(r io.Reader, logf *os.File) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		var e Event
		if json.Unmarshal(sc.Bytes(), &e) != nil {
			continue
		}
		a.mu.Lock()
		a.last = e
		if m := positionRE.FindStringSubmatch(e.From); m != nil {
			a.position, _ = strconv.Atoi(m[1])
			a.of, _ = strconv.Atoi(m[2])
		}
		switch e.Event {
		case "ready":
			e := e
			a.ready, a.readyT = &e, time.Since(a.started)
		case "start":
			a.startCPU = e.CPU
		case "stop":
			e := e
			a.stopped = &e
		case "error":
			a.failed = e.Error
		}
		close(a.change)
		a.change = make(chan struct{})
		a.mu.Unlock()
	}
	_ = a.cmd.Wait()
	logf.Close()
	if a.unmount != "" {
		_ = unix.Unmount(a.unmount, unix.MNT_DETACH) // EINVAL if the agent did
	}
	a.mu.Lock()
	if st := a.cmd.ProcessState; st != nil {
		a.cpu = st.UserTime() + st.SystemTime()
		a.user, a.sys = st.UserTime(), st.SystemTime()
	}
	if a.ready == nil && a.failed == "" {
		a.failed = "exited before ready; see " + a.logPath
	}
	close(a.change)
	a.change = make(chan struct{})
	a.mu.Unlock()
	close(a.exited)
}

// cpuAtStop is the agent's CPU time when it stopped serving: its stop line's, else (killed,
// or an agent that does not report it) user + system at its exit.
func (a *agent) cpuAtStop() float64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.stopped != nil && a.stopped.CPU > 0 {
		return a.stopped.CPU
	}
	return a.cpu.Seconds()
}

// waitUntil waits for cond on the agent's state, or the deadline (or ctx).
func (a *agent) waitUntil(ctx context.Context, deadline time.Time, cond func(a *agent) bool) error {
	for {
		a.mu.Lock()
		ok, failed, ch := cond(a), a.failed, a.change
		a.mu.Unlock()
		if ok {
			return nil
		}
		if failed != "" {
			return fmt.Errorf("%s: %s", a.name, failed)
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Until(deadline)):
			return fmt.Errorf("%s: timed out", a.name)
		}
	}
}

// waitAny waits until cond holds for one of agents and returns it, or the deadline (or ctx).
func waitAny(ctx context.Context, deadline time.Time, agents []*agent, cond func(a *agent) bool) (*agent, error) {
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	for {
		cases := []reflect.SelectCase{
			{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(ctx.Done())},
			{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(timer.C)},
		}
		for _, a := range agents {
			a.mu.Lock()
			ok, failed, ch := cond(a), a.failed, a.change
			a.mu.Unlock()
			if ok {
				return a, nil
			}
			if failed != "" {
				return nil, fmt.Errorf("%s: %s", a.name, failed)
			}
			cases = append(cases, reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(ch)})
		}
		switch i, _, _ := reflect.Select(cases); i {
		case 0:
			return nil, ctx.Err()
		case 1:
			return nil, fmt.Errorf("timed out")
		}
	}
}

func (a *agent) kill() {
	_ = a.cmd.Process.Kill()
	<-a.exited
}

func (a *agent) stop() {
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.exited:
	case <-time.After(15 * time.Second):
		_ = a.cmd.Process.Kill()
		<-a.exited
	}
}

func splitHostPort(s string) (string, int, error) {
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == ':' {
			p, err := strconv.Atoi(s[i+1:])
			return s[:i], p, err
		}
	}
	return s, 0, fmt.Errorf("no port in %q", s)
}
