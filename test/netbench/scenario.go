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

	"github.com/modelcast/modelcast/pkg/agent"
	"github.com/modelcast/modelcast/test/agenttest"
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
	Staged    []time.Duration // the same nodes, to their model staged: Ready less the --verify re-read
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
	launch := func(i int) (*node, error) {
		return startAgent(agentSpec{host: hosts[i], plugin: e.Bin.Plugin, dir: filepath.Join(runDir, fmt.Sprint(i)),
			model: "oss://models/" + s.Model, endpoint: e.OSS.Endpoint, redis: redis, tenant: tenant, cacheSize: cacheSize(s.Size)})
	}
	var agents []*node
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
			joined := func(e agent.Event) bool { return hasPosition(e) || agenttest.IsReady(e) }
			if err := a.waitFor(ctx, deadline, joined); err != nil {
				return nil, fmt.Errorf("waiting for %s to join the chain: %w", a.Name, err)
			}
		}
	}
	var slow *node
	if s.Kind == SlowHost {
		slow = agents[1]
		pos, _ := slow.position()
		res.Slow = &Slow{Name: slow.Name, Rate: hosts[1].Rate, Position: pos}
		if res.Slow.Position != 2 {
			e.Log("  the slow host %s joined at position %d, not 2", slow.Name, res.Slow.Position)
		}
	}
	var victim *node
	if s.Kind == Fail && s.N >= 3 {
		// A middle node of the chain (not its head, not its tail), by position in Redis's order.
		want := fmt.Sprintf("(position %d of ", (s.N+1)/2)
		victim, err = waitAny(ctx, deadline, agents, func(e agent.Event) bool { return strings.Contains(e.From, want) })
		if err != nil {
			return nil, fmt.Errorf("waiting for a node to report chain position %s: %w", want, err)
		}
		err = victim.waitFor(ctx, deadline, func(e agent.Event) bool { return e.Total > 0 && e.Done >= e.Total/2 })
		if err != nil {
			return nil, err
		}
		victim.kill()
		res.Killed = fmt.Sprintf("%s position %d of %d", victim.Name, (s.N+1)/2, s.N)
		last := victim.last()
		e.Log("  killed %s at %d%%", res.Killed, last.Done*100/max(last.Total, 1))
	}
	for _, a := range agents {
		if a == victim {
			continue
		}
		if err := a.waitFor(ctx, deadline, agenttest.IsReady); err != nil {
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
		if err := a.waitFor(ctx, deadline, agenttest.IsReady); err != nil {
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
		last := a.last()
		if os.Getenv("NETBENCH_DEBUG") != "" {
			user, sys := a.cpuTimes()
			e.Log("  %s: ready %v user %.2fs sys %.2fs fromOSS %d fromPeers %d served %d", a.Name, a.readyTime(), user.Seconds(), sys.Seconds(), last.FromOSS, last.FromPeers, last.Served)
			if log, err := os.ReadFile(a.logPath); err == nil {
				e.Log("%s", log)
			}
		}
		res.CPU += a.cpu()
		if a == victim {
			continue
		}
		r := a.line(agent.EventReady)
		if !r.Verified {
			return nil, fmt.Errorf("%s: ready without its CRC-64 check of every file", a.Name)
		}
		if r.FromOSS+r.FromPeers < s.Size {
			return nil, fmt.Errorf("%s: received %d bytes of a %d-byte model", a.Name, r.FromOSS+r.FromPeers, s.Size)
		}
		if a == slow {
			res.Slow.Ready = a.readyTime()
		} else {
			res.Ready = append(res.Ready, a.readyTime())
			res.Staged = append(res.Staged, a.stagedTime())
		}
		res.PeerBytes += r.FromPeers
		res.Forwarded += last.Served
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
func middle(agents []*node, n int, skip ...*node) *Relay {
	var best *Relay
	dist := 0.0
	for _, a := range agents {
		if slices.Contains(skip, a) {
			continue
		}
		served := a.last().Served
		if stopped := a.line(agent.EventStop); stopped != nil {
			served = stopped.Served
		}
		pos, _ := a.position()
		r := &Relay{Node: a.Name, Position: pos, Of: n, Served: served}
		if start := a.line(agent.EventStart); start != nil {
			r.StartCPU = start.CPU
		}
		ready := a.line(agent.EventReady)
		if ready == nil || ready.FromPeers == 0 || served == 0 {
			continue
		}
		r.VerifyCPU = ready.VerifyCPU
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

// MedianStaged is the median of the staged times (Median's rank).
func (r *Result) MedianStaged() time.Duration {
	s := slices.Clone(r.Staged)
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

// CPUFloor is the least wall time in which cpus processors could have done all the agents' work
// of the run (their user + system time over cpus). Agents start together and share the
// machine, so when it comes near the run's slowest ready time the machine's processors, not
// the chain, bound the run. It leaves out the emulator's and Redis's CPU: a lower bound.
func (r *Result) CPUFloor(cpus int) time.Duration {
	return time.Duration(r.CPU / float64(cpus) * float64(time.Second))
}
