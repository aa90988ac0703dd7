package netbench

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/modelcast/modelcast/pkg/agent"
	"github.com/modelcast/modelcast/pkg/config"
	"github.com/modelcast/modelcast/test/agenttest"
)

// positionRE finds a node's place in its chain in an event's From: "OSS (position 1 of 8)".
var positionRE = regexp.MustCompile(`\(position (\d+) of (\d+)`)

// hasPosition: the line says where the node is in its chain.
func hasPosition(e agent.Event) bool { return positionRE.MatchString(e.From) }

// node is one node agent process in its host's namespace.
type node struct {
	*agenttest.Proc
	started time.Time
	logPath string

	unmount string // its cache tmpfs, to unmount once it exits (it runs in this mount namespace)

	mu     sync.Mutex
	readyT time.Duration // from start to the ready line
	staged time.Duration // from start to the model staged: readyT less the --verify pass
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

func startAgent(s agentSpec) (*node, error) {
	if err := os.MkdirAll(s.dir, 0o755); err != nil {
		return nil, err
	}
	cfg := config.Config{
		ExpireTimeSec: 3600,
		Broadcast:     config.Broadcast{EnableBroadcast: s.redis != "", Tenant: s.tenant},
		BindPort:      cmp.Or(s.bindPort, 19898),
		Cache:         config.Cache{Root: filepath.Join(s.dir, "cache"), Tmpfs: agenttest.Ptr(true), TmpfsSize: strconv.FormatInt(s.cacheSize, 10)},
	}
	if s.redis != "" {
		db, err := agenttest.RedisDB(s.redis)
		if err != nil {
			return nil, err
		}
		cfg.Broadcast.DB = db
	}
	cfgPath, err := agenttest.WriteConfig(s.dir, cfg)
	if err != nil {
		return nil, err
	}
	a := &node{logPath: filepath.Join(s.dir, "agent.log")}
	if s.host.NS == "" {
		a.unmount = filepath.Join(s.dir, "cache")
	}
	logf, err := os.Create(a.logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close() // the agent has its own descriptor
	spec := agenttest.Spec{Bin: s.plugin, Config: cfgPath, NodeID: cmp.Or(s.name, s.host.NS), NodeIP: s.host.IP,
		Flags: []string{"--verify", "--interval", "250ms"}, Model: s.model,
		Env:    agenttest.OSSEnv(s.endpoint, region, accessKeyID, accessKeySecret),
		Stderr: logf, OnEvent: a.onEvent}
	if s.host.NS != "" {
		// ip netns exec gives the agent a mount namespace of its own too: its tmpfs goes with it.
		spec.Wrap = []string{"ip", "netns", "exec", s.host.NS}
	}
	a.started = time.Now()
	if a.Proc, err = agenttest.Start(spec); err != nil {
		return nil, err
	}
	return a, nil
}

func (a *node) onEvent(e agent.Event) {
	if e.Event == agent.EventReady {
		a.mu.Lock()
		a.readyT = time.Since(a.started)
		a.staged = a.readyT - time.Duration(e.VerifySeconds*float64(time.Second))
		a.mu.Unlock()
	}
}

// last is the agent's last line so far.
func (a *node) last() agent.Event {
	e, _ := a.Latest(nil)
	return e
}

// line is the agent's last line of kind (start, ready, stop), nil if none.
func (a *node) line(kind string) *agent.Event {
	e, ok := a.Latest(func(e agent.Event) bool { return e.Event == kind })
	if !ok {
		return nil
	}
	return &e
}

// readyTime is from the agent's start to its ready line.
func (a *node) readyTime() time.Duration {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.readyT
}

// stagedTime is from the agent's start to its model staged (its in-line checks passed: what a
// pod waits for), without the --verify re-read that comes before its ready line.
func (a *node) stagedTime() time.Duration {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.staged
}

// position is the agent's place in its chain and the chain's length then, as its lines last
// said (0: not yet).
func (a *node) position() (pos, of int) {
	e, ok := a.Latest(hasPosition)
	if !ok {
		return 0, 0
	}
	m := positionRE.FindStringSubmatch(e.From)
	pos, _ = strconv.Atoi(m[1])
	of, _ = strconv.Atoi(m[2])
	return pos, of
}

// cpuTimes are the exited agent's user and system time (0 while it runs).
func (a *node) cpuTimes() (user, sys time.Duration) {
	if st := a.State(); st != nil {
		return st.UserTime(), st.SystemTime()
	}
	return 0, 0
}

// cpu is user + system of the exited agent, in core-seconds.
func (a *node) cpu() float64 {
	user, sys := a.cpuTimes()
	return (user + sys).Seconds()
}

// cpuAtStop is the agent's CPU time when it stopped serving: its stop line's, else (killed,
// or an agent that does not report it) user + system at its exit.
func (a *node) cpuAtStop() float64 {
	if stopped := a.line(agent.EventStop); stopped != nil && stopped.CPU > 0 {
		return stopped.CPU
	}
	return a.cpu()
}

// waitFor waits for a line that satisfies cond, or the deadline (or ctx); an error line or the
// agent's exit first is an error.
func (a *node) waitFor(ctx context.Context, deadline time.Time, cond func(agent.Event) bool) error {
	ctx, cancel := context.WithDeadlineCause(ctx, deadline, errors.New("timed out"))
	defer cancel()
	if _, err := a.WaitForContext(ctx, cond); err != nil {
		return fmt.Errorf("%w; see %s", err, a.logPath)
	}
	return nil
}

// waitAny waits until one of agents prints a line that satisfies cond and returns it, or the
// deadline (or ctx); an error line or an exit of any of them first is an error.
func waitAny(ctx context.Context, deadline time.Time, agents []*node, cond func(agent.Event) bool) (*node, error) {
	ctx, cancel := context.WithDeadlineCause(ctx, deadline, errors.New("timed out"))
	defer cancel()
	type result struct {
		a   *node
		err error
	}
	results := make(chan result, len(agents))
	for _, a := range agents {
		go func() {
			_, err := a.WaitForContext(ctx, cond)
			results <- result{a, err}
		}()
	}
	var err error
	for range agents {
		r := <-results
		if r.err == nil {
			return r.a, nil
		}
		if err == nil {
			err = r.err
			cancel() // the first failure decides; the others end with ctx
		}
	}
	return nil, err
}

// kill sends SIGKILL and waits for the agent to exit.
func (a *node) kill() {
	a.Kill()
	a.cleanUp()
}

// stop sends SIGTERM and waits for the agent to exit (killing it after 15 s).
func (a *node) stop() {
	a.Stop(15 * time.Second)
	a.cleanUp()
}

// cleanUp unmounts the exited agent's cache tmpfs, if it ran in this mount namespace.
func (a *node) cleanUp() {
	if a.unmount != "" {
		_ = unix.Unmount(a.unmount, unix.MNT_DETACH) // EINVAL if the agent did
	}
}
