//go:build linux

package chaos

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/modelcast/modelcast/test/ossemu"
)

// actKind is what one step of the plan does.
type actKind int

const (
	actKill     actKind = iota // SIGKILL an agent; a restart (fresh cache) follows
	actStop                    // SIGSTOP an agent; SIGCONT follows
	actRelease                 // SIGTERM an agent (it leaves its chain); a start follows
	actJoin                    // a late joiner's first start
	actRedis                   // kill redis-server; a restart (no data) follows
	actOSS                     // inject an OSS fault
	actRestart                 // follow-up: start the agent again, same name and IP, fresh cache
	actCont                    // follow-up: SIGCONT
	actRedisUp                 // follow-up: redis-server back, empty
	actOSSClear                // follow-up: the OSS faults nobody met are dropped
)

var actNames = [...]string{"kill", "stop", "release", "join", "redis", "oss", "restart", "cont", "redis-up", "oss-clear"}

func (k actKind) String() string { return actNames[k] }

// followUp reports whether the step only undoes an earlier fault.
func (k actKind) followUp() bool { return k >= actRestart }

// action is one step of the plan, at offset At from the start of the soak.
type action struct {
	At    time.Duration
	Kind  actKind
	Agent int           // -1 when the step targets no agent
	Hold  time.Duration // kill, stop, release, redis: until the follow-up
	Fault ossemu.Fault  // actOSS
}

// label names the fault for the summary: "kill", "oss-503", …
func (a action) label() string {
	if a.Kind != actOSS {
		return a.Kind.String()
	}
	switch a.Fault.Kind {
	case ossemu.FaultStatus:
		return fmt.Sprintf("oss-%d", a.Fault.Status)
	case ossemu.FaultSlowFirstByte:
		return "oss-slow-first-byte"
	}
	return "oss-" + a.Fault.Kind.String()
}

func (a action) describe(name func(int) string) string {
	s := a.Kind.String()
	if a.Agent >= 0 {
		s += " " + name(a.Agent)
	}
	switch a.Kind {
	case actKill:
		s += fmt.Sprintf(" (SIGKILL; restart in %.1fs)", a.Hold.Seconds())
	case actStop:
		s += fmt.Sprintf(" (SIGSTOP for %.1fs)", a.Hold.Seconds())
	case actRelease:
		s += fmt.Sprintf(" (SIGTERM: leaves its chain; back in %.1fs)", a.Hold.Seconds())
	case actRedis:
		s += fmt.Sprintf(" (kill redis-server; back, empty, in %.1fs)", a.Hold.Seconds())
	case actOSS:
		op := string(a.Fault.Op)
		if op == "" {
			op = "any request"
		}
		s = fmt.Sprintf("oss %s ×%d on %s, for %.1fs at most", a.Fault.Kind, a.Fault.Count, op, a.Hold.Seconds())
		if a.Fault.Kind == ossemu.FaultSlowFirstByte {
			s += fmt.Sprintf(" (%.1fs)", a.Fault.Delay.Seconds())
		}
	}
	return s
}

// slotState is an agent's state as the plan (and the soak's bookkeeping) sees it.
type slotState int

const (
	stIdle   slotState = iota // not started yet (a late joiner)
	stUp                      // running
	stFrozen                  // SIGSTOPped
	stDown                    // killed or released, to be started again
)

// Fault weights: how often each kind is drawn among the eligible ones.
var weights = map[actKind]int{actKill: 3, actStop: 2, actRelease: 2, actJoin: 2, actRedis: 2, actOSS: 3}

// minLive is how many agents stay running (not stopped, killed or released) at all times.
const minLive = 2

// OSS faults are "a few": each is dropped ossFaultLife after it was injected, and the failures
// (503s, resets) injected within any ossBudgetWindow stay under ossBudget, so that no request
// meets more failures in a row than its client retries: 5 attempts for the SDK's HEAD and LIST
// (about 3 s of back-off), 8 failures in a row for a ranged GET (about 16 s).
const (
	ossFaultLife    = 5 * time.Second
	ossBudgetWindow = 25 * time.Second
	ossBudget       = 4
)

// makePlan draws the soak's faults from seed: one every 1.5 to 3 s from first until end,
// kinds and targets chosen among what the plan's own state allows (so a seed gives the same
// sequence whatever the timing), every follow-up (restart, SIGCONT, Redis back) by end, and
// at end the late joiners that have not joined yet. Agents 0 … agents-late-1 start first.
func makePlan(seed uint64, agents, late int, first, end time.Duration) []action {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	between := func(lo, hi time.Duration) time.Duration { return lo + time.Duration(rng.Int64N(int64(hi-lo))) }
	state := make([]slotState, agents)
	for i := range agents - late {
		state[i] = stUp
	}
	redisDown := false
	var plan, pending, ossFaults []action
	apply := func(upTo time.Duration) {
		slices.SortStableFunc(pending, func(a, b action) int { return int(a.At - b.At) })
		for len(pending) > 0 && pending[0].At <= upTo {
			a := pending[0]
			pending = pending[1:]
			switch a.Kind {
			case actRestart, actCont:
				state[a.Agent] = stUp
			case actRedisUp:
				redisDown = false
			}
			plan = append(plan, a)
		}
	}
	follow := func(a action, kind actKind, hold time.Duration) action {
		a.Hold = min(hold, end-a.At)
		pending = append(pending, action{At: a.At + a.Hold, Kind: kind, Agent: a.Agent})
		return a
	}
	for at := first; at < end; at += between(1500*time.Millisecond, 3*time.Second) {
		apply(at)
		var live, idle []int
		for i, s := range state {
			switch s {
			case stUp:
				live = append(live, i)
			case stIdle:
				idle = append(idle, i)
			}
		}
		budget := ossBudget
		for _, f := range ossFaults {
			if f.At > at-ossBudgetWindow && f.Fault.Kind != ossemu.FaultSlowFirstByte {
				budget -= f.Fault.Count
			}
		}
		var kinds []actKind
		total := 0
		for k := actKill; k <= actOSS; k++ {
			ok := true
			switch k {
			case actKill, actStop, actRelease:
				ok = len(live) > minLive
			case actJoin:
				ok = len(idle) > 0
			case actRedis:
				ok = !redisDown
			case actOSS:
				ok = budget > 0
			}
			if ok {
				kinds = append(kinds, k)
				total += weights[k]
			}
		}
		pick := rng.IntN(total)
		kind := kinds[0]
		for _, k := range kinds {
			if pick < weights[k] {
				kind = k
				break
			}
			pick -= weights[k]
		}
		a := action{At: at, Kind: kind, Agent: -1}
		switch kind {
		case actKill:
			a.Agent = live[rng.IntN(len(live))]
			state[a.Agent] = stDown
			a = follow(a, actRestart, between(500*time.Millisecond, 4*time.Second))
		case actStop:
			a.Agent = live[rng.IntN(len(live))]
			state[a.Agent] = stFrozen
			// Either side of the node TTL (6 s): a short freeze, or one peers must route around.
			a = follow(a, actCont, between(2*time.Second, 9*time.Second))
		case actRelease:
			a.Agent = live[rng.IntN(len(live))]
			state[a.Agent] = stDown
			a = follow(a, actRestart, between(time.Second, 5*time.Second))
		case actJoin:
			a.Agent = idle[rng.IntN(len(idle))]
			state[a.Agent] = stUp
		case actRedis:
			redisDown = true
			a = follow(a, actRedisUp, between(0, 3*time.Second))
		case actOSS:
			a.Fault = drawOSSFault(rng, budget)
			ossFaults = append(ossFaults, a)
			a = follow(a, actOSSClear, ossFaultLife)
		}
		plan = append(plan, a)
	}
	apply(end)
	for i, s := range state {
		if s == stIdle {
			plan = append(plan, action{At: end, Kind: actJoin, Agent: i})
		}
	}
	return plan
}

// drawOSSFault draws a few 503s (at most budget), a slow first byte or a reset, on GetObject
// (the model's bytes) or, a third of the time, on any request (a restarting node's LIST and
// HEADs too).
func drawOSSFault(rng *rand.Rand, budget int) ossemu.Fault {
	f := ossemu.Fault{Op: ossemu.OpGet, KeyPrefix: modelPrefix}
	if rng.IntN(3) == 0 {
		f.Op = ""
	}
	switch rng.IntN(3) {
	case 0:
		f.Kind, f.Status, f.Count = ossemu.FaultStatus, 503, min(1+rng.IntN(3), budget)
	case 1:
		f.Kind, f.Count = ossemu.FaultSlowFirstByte, 1+rng.IntN(2)
		f.Delay = time.Second + time.Duration(rng.Int64N(int64(3*time.Second)))
	default:
		f.Kind, f.Count = ossemu.FaultReset, 1
	}
	return f
}

// TestPlanReplays: a seed gives the same plan; the plan keeps two agents running, brings every
// agent back and starts every late joiner before the quiet end.
func TestPlanReplays(t *testing.T) {
	for seed := range uint64(200) {
		const agents, late = 6, 2
		first, end := 2*time.Second, 4*time.Minute
		p := makePlan(seed, agents, late, first, end)
		if q := makePlan(seed, agents, late, first, end); !slices.Equal(p, q) {
			t.Fatalf("seed %d: two plans differ", seed)
		}
		state := make([]slotState, agents)
		for i := range agents - late {
			state[i] = stUp
		}
		var last time.Duration
		kinds := map[actKind]int{}
		for _, a := range p {
			if a.At < last || a.At > end {
				t.Fatalf("seed %d: %v at %v after %v (end %v)", seed, a.Kind, a.At, last, end)
			}
			last = a.At
			kinds[a.Kind]++
			switch a.Kind {
			case actKill, actRelease:
				state[a.Agent] = stDown
			case actStop:
				state[a.Agent] = stFrozen
			case actJoin, actRestart, actCont:
				state[a.Agent] = stUp
			}
			live := 0
			for _, s := range state {
				if s == stUp {
					live++
				}
			}
			if live < minLive {
				t.Fatalf("seed %d: %d agents running after %v at %v", seed, live, a.Kind, a.At)
			}
		}
		for i, s := range state {
			if s != stUp {
				t.Errorf("seed %d: agent %d ends in state %d", seed, i, s)
			}
		}
		if kinds[actRedis] != kinds[actRedisUp] || kinds[actStop] != kinds[actCont] || kinds[actKill]+kinds[actRelease] != kinds[actRestart] ||
			kinds[actOSS] != kinds[actOSSClear] {
			t.Errorf("seed %d: unbalanced plan %v", seed, kinds)
		}
		for i, a := range p {
			if a.Kind != actOSS || a.Fault.Kind == ossemu.FaultSlowFirstByte {
				continue
			}
			failures := 0
			for _, b := range p[:i+1] {
				if b.Kind == actOSS && b.Fault.Kind != ossemu.FaultSlowFirstByte && b.At > a.At-ossBudgetWindow {
					failures += b.Fault.Count
				}
			}
			if failures > ossBudget || a.Fault.Count < 1 {
				t.Fatalf("seed %d: %d OSS failures injected within %v of %v", seed, failures, ossBudgetWindow, a.At)
			}
		}
	}
	if slices.Equal(makePlan(1, 6, 2, 0, time.Minute), makePlan(2, 6, 2, 0, time.Minute)) {
		t.Errorf("seeds 1 and 2 give the same plan")
	}
}
