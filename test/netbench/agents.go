package netbench

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"
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
	Seconds   float64 `json:"seconds"`
	Error     string  `json:"error"`
}

// agent is one node agent process in its host's namespace.
type agent struct {
	name    string
	started time.Time
	cmd     *exec.Cmd
	logPath string

	mu     sync.Mutex
	last   Event
	ready  *Event
	readyT time.Duration // from start to the ready line
	failed string
	change chan struct{}
	exited chan struct{}
	cpu    time.Duration // user + system, once exited
	user   time.Duration
	sys    time.Duration
}

type agentSpec struct {
	host      Host
	plugin    string
	dir       string
	model     string // oss:// path
	endpoint  string
	redis     string // host:port; "" for broadcast off
	tenant    string
	cacheSize int64
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
		"bindPort": 19898,
		"cache":    map[string]any{"root": filepath.Join(s.dir, "cache"), "tmpfs": true, "tmpfsSize": strconv.FormatInt(s.cacheSize, 10)},
	}
	b, _ := json.Marshal(cfg)
	cfgPath := filepath.Join(s.dir, "config.json")
	if err := os.WriteFile(cfgPath, b, 0o600); err != nil {
		return nil, err
	}
	name := s.host.NS
	cmd := exec.Command("ip", "netns", "exec", s.host.NS, s.plugin, "agent", "--config", cfgPath,
		"--node-id", name, "--node-ip", s.host.IP, "--verify", "--interval", "250ms", s.model)
	cmd.Env = append(os.Environ(), "OSS_ENDPOINT="+s.endpoint, "OSS_REGION="+region,
		"OSS_ACCESS_KEY_ID="+accessKeyID, "OSS_ACCESS_KEY_SECRET="+accessKeySecret)
	a := &agent{name: name, logPath: filepath.Join(s.dir, "agent.log"), cmd: cmd, change: make(chan struct{}), exited: make(chan struct{})}
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
		switch e.Event {
		case "ready":
			e := e
			a.ready, a.readyT = &e, time.Since(a.started)
		case "error":
			a.failed = e.Error
		}
		close(a.change)
		a.change = make(chan struct{})
		a.mu.Unlock()
	}
	_ = a.cmd.Wait()
	logf.Close()
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
