package netbench

import (
	"context"
	"fmt"
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
	Ready     []time.Duration // per node (survivors), from its own start to ready
	OSSBytes  int64
	PeerBytes int64
	Forwarded int64   // bytes the agents served to peers
	CPU       float64 // core-seconds of all agents
	Killed    string  // the node killed, in a failure run
}

// Env is a built topology with its services, for a series of scenarios.
type Env struct {
	Bin   Binaries
	Topo  *Topology
	Redis *Redis
	OSS   *OSS
	Dir   string
	Log   func(format string, args ...any)
}

// Run runs s on the env's first s.N hosts.
func (e *Env) Run(ctx context.Context, s Scenario, seq int) (*Result, error) {
	if s.N > len(e.Topo.Hosts) {
		return nil, fmt.Errorf("%d hosts, %d needed", len(e.Topo.Hosts), s.N)
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
		return startAgent(agentSpec{host: e.Topo.Hosts[i], plugin: e.Bin.Plugin, dir: filepath.Join(runDir, fmt.Sprint(i)),
			model: "oss://models/" + s.Model, endpoint: e.OSS.Endpoint, redis: redis, tenant: tenant, cacheSize: s.Size + s.Size/4 + 64<<20})
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
	// Nodes start together (as pods of a scaled-out Deployment do); their order of arrival
	// in Redis decides the chain.
	for i := range first {
		a, err := launch(i)
		if err != nil {
			return nil, err
		}
		agents = append(agents, a)
	}
	deadline := time.Now().Add(15 * time.Minute)
	res := &Result{Scenario: s}
	var victim *agent
	if s.Kind == Fail && s.N >= 3 {
		// A middle node of the chain (not its head, not its tail), by position in Redis's order.
		want := fmt.Sprintf("(position %d of ", (s.N+1)/2)
		for victim == nil {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("no node reported chain position %s", want)
			}
			for _, a := range agents {
				a.mu.Lock()
				if strings.Contains(a.last.From, want) {
					victim = a
				}
				a.mu.Unlock()
			}
			time.Sleep(20 * time.Millisecond)
		}
		err := victim.waitUntil(ctx, deadline, func(a *agent) bool { return a.last.Total > 0 && a.last.Done >= a.last.Total/2 })
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
		res.Ready = append(res.Ready, a.readyT)
		res.PeerBytes += r.FromPeers
		res.Forwarded += a.last.Served
		a.mu.Unlock()
	}
	agents = nil
	_ = os.RemoveAll(runDir)
	return res, nil
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
