package netbench

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Kinds of scenario.
const (
	Direct = "direct"              // broadcast off: every node downloads from OSS (the status quo)
	Chain  = "chain"               // broadcast on
	Late   = "chain, late joiners" // half the nodes start once the first half is ready
	Fail   = "chain, failure"      // a middle node is SIGKILLed at half the model
	// SlowHost: one of the N hosts has a link at a quarter of the others' rate (each way) and
	// joins the chain second, right behind the head; the others join after it.
	SlowHost = "chain, one slow host"
)

// Scenario is one run.
type Scenario struct {
	Kind  string
	N     int
	Model string // prefix under bucket "models"
	Size  int64
	Link  string // tc rate of every host's link, for the report
}

// Result is what a run measured.
type Result struct {
	Scenario
	Ready     []time.Duration // per node (survivors; not the slow host), from its own start to ready
	OSSBytes  int64
	PeerBytes int64
	Forwarded int64   // bytes the agents served to peers
	CPU       float64 // core-seconds of all agents
	Killed    string  // the node killed, in a failure run
	Slow      *Slow   // the slow host, in a SlowHost run
	Relay     *Relay  // a middle node of the chain (N ≥ 3)
}

// Slow is the slow host of a SlowHost run.
type Slow struct {
	Name, Rate string
	Position   int           // its place in the chain when it joined (2 as planned)
	Ready      time.Duration // from its own start
}

// Relay is what one middle node of a chain (not its head, not its tail: it received from a
// peer and forwarded to one) spent.
type Relay struct {
	Node         string
	Position, Of int
	CPU          float64 // its core-seconds when it stopped serving (stop line, else exit)
	VerifyCPU    float64 // of which its --verify re-read
	StartCPU     float64 // of which before its start line (process and driver start-up)
	Served       int64   // bytes it forwarded
}

// PerGB is the relay's core-seconds per GB forwarded: from its start line (the process and
// driver start-up left out) to its stop, less its --verify re-read.
func (r *Relay) PerGB() float64 {
	return (r.CPU - r.StartCPU - r.VerifyCPU) / (float64(r.Served) / 1e9)
}

// Env is a built topology with its services, for a series of scenarios.
type Env struct {
	Bin     Binaries
	Topo    *Topology
	Regular []Host // hosts on links at EnvConfig.LinkRate
	Slow    []Host // hosts on links at EnvConfig.SlowRate
	Redis   *Redis
	OSS     *OSS
	Dir     string
	Log     func(format string, args ...any)
}

// hosts are the hosts of s in order of start: the first s.N regular hosts, or for SlowHost the
// first regular host, the first slow host, then s.N-2 more regular hosts.
func (e *Env) hosts(s Scenario) ([]Host, error) {
	if s.Kind != SlowHost {
		if s.N > len(e.Regular) {
			return nil, fmt.Errorf("%d hosts, %d needed", len(e.Regular), s.N)
		}
		return e.Regular[:s.N], nil
	}
	if s.N < 2 || len(e.Slow) == 0 || s.N-1 > len(e.Regular) {
		return nil, fmt.Errorf("%d hosts and %d slow ones; %s N=%d needs %d and one", len(e.Regular), len(e.Slow), s.Kind, s.N, s.N-1)
	}
	return append([]Host{e.Regular[0], e.Slow[0]}, e.Regular[1:s.N-1]...), nil
}

// Run runs s on the env's hosts (see hosts).
func (e *Env) Run(ctx context.Context, s Scenario, seq int) (*Result, error) {
	hosts, err := e.hosts(s)
	if err != nil {
		return nil, err
	}
	if err := warmMemory(e.Dir, int64(s.N)*cacheSize(s.Size)); err != nil {
		return nil, err
	}
	if err := e.OSS.Reset(); err != nil {
		return nil, err
	}
	runDir := filepath.Join(e.Dir, fmt.Sprintf("run-%02d", seq))
	tenant := fmt.Sprintf("bench-%d-%d", seq, time.Now().UnixNano()%1e6) // a fresh key space per run
	redis := e.Redis.Addr
	if s.Kind == Direct {
		redis = ""
	}
	launch := func(i int) (*agent, error) {
		return startAgent(agentSpec{host: hosts[i], plugin: e.Bin.Plugin, dir: filepath.Join(runDir, fmt.Sprint(i)),
			model: "oss://models/" + s.Model, endpoint: e.OSS.Endpoint, redis: redis, tenant: tenant, cacheSize: cacheSize(s.Size)})
	}
	var agents []*agent
	defer func() {
		for _, a := range agents {
			a.stop()
		}
	}()
	first := s.N
	if s.Kind == Late {
		first = (s.N + 1) / 2
	}
	deadline := time.Now().Add(15 * time.Minute)
	res := &Result{Scenario: s}
	// Nodes start together (as pods of a scaled-out Deployment do); their order of arrival
	// in Redis decides the chain. For SlowHost, the head and then the slow host start alone,
	// each once the one before has joined (it reports its chain position).
	for i := range first {
		a, err := launch(i)
		if err != nil {
			return nil, err
		}
		agents = append(agents, a)
		if s.Kind == SlowHost && i < 2 {
			joined := func(a *agent) bool { return a.position > 0 || a.ready != nil }
			if err := a.waitUntil(ctx, deadline, joined); err != nil {
				return nil, fmt.Errorf("waiting for %s to join the chain: %w", a.name, err)
			}
		}
	}
	var slow *agent
	if s.Kind == SlowHost {
		slow = agents[1]
		slow.mu.Lock()
		res.Slow = &Slow{Name: slow.name, Rate: hosts[1].Rate, Position: slow.position}
		slow.mu.Unlock()
		if res.Slow.Position != 2 {
			e.Log("  the slow host %s joined at position %d, not 2", slow.name, res.Slow.Position)
		}
	}
	var victim *agent
	if s.Kind == Fail && s.N >= 3 {
		// A middle node of the chain (not its head, not its tail), by position in Redis's order.
		want := fmt.Sprintf("(position %d of ", (s.N+1)/2)
		victim, err = waitAny(ctx, deadline, agents, func(a *agent) bool { return strings.Contains(a.last.From, want) })
		if err != nil {
			return nil, fmt.Errorf("waiting for a node to report chain position %s: %w", want, err)
		}
		err = victim.waitUntil(ctx, deadline, func(a *agent) bool { return a.last.Total > 0 && a.last.Done >= a.last.Total/2 })
		if err != nil {
			return nil, err
		}
		victim.kill()
		res.Killed = victim.name + " " + strings.Trim(want, "()")
		e.Log("  killed %s at %d%%", res.Killed, victim.last.Done*100/max(victim.last.Total, 1))
	}
	for _, a := range agents {
		if a == victim {
			continue
		}
		if err := a.waitUntil(ctx, deadline, func(a *agent) bool { return a.ready != nil }); err != nil {
			return nil, err
		}
	}
	for i := first; i < s.N; i++ {
		a, err := launch(i)
		if err != nil {
			return nil, err
		}
		agents = append(agents, a)
	}
	for _, a := range agents[first:] {
		if err := a.waitUntil(ctx, deadline, func(a *agent) bool { return a.ready != nil }); err != nil {
			return nil, err
		}
	}
	served, err := e.OSS.Served()
	if err != nil {
		return nil, err
	}
	res.OSSBytes = served
	for _, a := range agents {
		if a != victim {
			a.stop()
		}
	}
	for _, a := range agents {
		a.mu.Lock()
		if os.Getenv("NETBENCH_DEBUG") != "" {
			e.Log("  %s: ready %v user %.2fs sys %.2fs fromOSS %d fromPeers %d served %d", a.name, a.readyT, a.user.Seconds(), a.sys.Seconds(), a.last.FromOSS, a.last.FromPeers, a.last.Served)
			if log, err := os.ReadFile(a.logPath); err == nil {
				e.Log("%s", log)
			}
		}
		res.CPU += a.cpu.Seconds()
		if a == victim {
			a.mu.Unlock()
			continue
		}
		r := a.ready
		if !r.Verified {
			a.mu.Unlock()
			return nil, fmt.Errorf("%s: ready without its CRC-64 check of every file", a.name)
		}
		if r.FromOSS+r.FromPeers < s.Size {
			a.mu.Unlock()
			return nil, fmt.Errorf("%s: received %d bytes of a %d-byte model", a.name, r.FromOSS+r.FromPeers, s.Size)
		}
		if a == slow {
			res.Slow.Ready = a.readyT
		} else {
			res.Ready = append(res.Ready, a.readyT)
		}
		res.PeerBytes += r.FromPeers
		res.Forwarded += a.last.Served
		a.mu.Unlock()
	}
	if s.Kind != Direct && s.N >= 3 {
		res.Relay = middle(agents, s.N, victim, slow)
	}
	agents = nil
	_ = os.RemoveAll(runDir)
	return res, nil
}

// middle picks the relay nearest the middle of a chain of n (by the position it reported)
// among the agents that received from a peer and forwarded to one, skip left out; nil if none.
func middle(agents []*agent, n int, skip ...*agent) *Relay {
	var best *Relay
	dist := 0.0
	for _, a := range agents {
		if slices.Contains(skip, a) {
			continue
		}
		a.mu.Lock()
		served := a.last.Served
		if a.stopped != nil {
			served = a.stopped.Served
		}
		r := &Relay{Node: a.name, Position: a.position, Of: n, Served: served, StartCPU: a.startCPU}
		relay := a.ready != nil && a.ready.FromPeers > 0 && served > 0
		if relay {
			r.VerifyCPU = a.ready.VerifyCPU
		}
		a.mu.Unlock()
		if !relay {
			continue
		}
		r.CPU = a.cpuAtStop()
		d := math.Abs(float64(r.Position) - float64(n+1)/2)
		if best == nil || d < dist {
			best, dist = r, d
		}
	}
	return best
}

// Stats of ready times.
func (r *Result) Min() time.Duration { return slices.Min(r.Ready) }
func (r *Result) Max() time.Duration { return slices.Max(r.Ready) }
func (r *Result) Median() time.Duration {
	s := slices.Clone(r.Ready)
	slices.Sort(s)
	return s[len(s)/2]
}

// OSSRatio is OSS egress ÷ model size.
func (r *Result) OSSRatio() float64 { return float64(r.OSSBytes) / float64(r.Size) }

// CPUPerGB is agent core-seconds per GB forwarded to peers (0 when nothing was forwarded).
func (r *Result) CPUPerGB() float64 {
	if r.Forwarded == 0 {
		return 0
	}
	return r.CPU / (float64(r.Forwarded) / 1e9)
}
