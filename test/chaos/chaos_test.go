//go:build linux

package chaos

import (
	"context"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/modelcast/modelcast/pkg/coord"
)

// rebuildTime is how long after Redis answers again the soak still counts as an outage: the
// nodes' heartbeats (every 2 s) put the chain back, two of them and a margin.
const rebuildTime = 8 * time.Second

// TestChaos is the soak; see the package comment.
func TestChaos(t *testing.T) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Skipf("redis-server is not installed (%v): hack/ensure-deps.sh installs it", err)
	}
	set := settingsFromEnv(t)
	redis.SetLogger(quietRedis{}) // the soak's own client fails while Redis is down, by design
	w := newWorld(t, set)
	faultEnd := set.duration - set.quiet
	const firstFault = 4 * time.Second
	plan := makePlan(set.seed, set.agents, set.late, firstFault, faultEnd)
	faults := 0
	for _, a := range plan {
		if !a.Kind.followUp() {
			faults++
		}
	}
	from := "drawn at random"
	if set.seedSet {
		from = "from CHAOS_SEED"
	}
	t.Logf("chaos: seed %d (%s) — replay with CHAOS_SEED=%d CHAOS_S=%d CHAOS_N=%d make chaos",
		set.seed, from, set.seed, int(set.duration.Seconds()), set.agents)
	t.Logf("chaos: %s, %d agents (%d late joiners), a %s model in %d files at %s/s from OSS (%s profile), "+
		"%d faults from +%s to +%s, then %s without faults (every agent ready within %s)",
		set.duration, set.agents, set.late, mibs(w.size), len(w.files), mibs(set.egress), "object-store",
		faults, firstFault, faultEnd, set.quiet, set.readyLimit)

	w.t0 = time.Now()
	chains := coord.NewCoordinator(w.rdb)
	for i := range set.agents - set.late {
		s := w.slots[i]
		r := w.startRun(s)
		w.logf("start %s (%s, pid %d)", s.name, s.ip, r.pid)
		// Keep the join order: the first agent heads the chain, each next one joins behind.
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		_, err := r.p.WaitJoined(ctx, chains, tenant)
		cancel()
		if err != nil {
			t.Fatalf("%v\n%s", err, r.stderr.Tail(3000))
		}
	}
	stop, checked := make(chan struct{}), make(chan struct{})
	go w.checker(stop, checked)
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
			<-checked
		}
	}()

run:
	for _, a := range plan {
		select {
		case <-w.abort:
			w.logf("an invariant broke: no more faults")
			break run
		case <-time.After(time.Until(w.t0.Add(a.At))):
		}
		w.execute(a)
	}
	w.emu.ClearFaults()
	w.logf("quiet from here: no more faults; every agent must be ready within %s", set.readyLimit)
	w.waitReady()
	select {
	case <-w.abort:
	case <-time.After(time.Until(w.t0.Add(set.duration))):
	}
	close(stop)
	<-checked
	w.finalModels()
	w.finalOSS()
	w.finalTTL()
	w.stopAll()
	w.summary()
}

// execute performs one step of the plan.
func (w *world) execute(a action) {
	var s *slot
	var r *run
	w.mu.Lock()
	w.counts[a.label()]++
	if a.Agent >= 0 {
		s = w.slots[a.Agent]
		r = s.cur()
	}
	w.mu.Unlock()
	desc := a.describe(w.name)
	kind := "FAULT"
	if a.Kind.followUp() {
		kind = "     "
	}
	if r != nil && a.Kind != actRestart && a.Kind != actJoin {
		desc += fmt.Sprintf(", pid %d", r.pid)
	}
	switch a.Kind {
	case actKill:
		w.logf("%s %s", kind, desc)
		w.classifyDown(s, "killed")
		r.signal(syscall.SIGKILL, true)
		w.setState(s, stDown)
		if !r.waitExit(15 * time.Second) {
			w.fail(invAgents, "%s (pid %d) still runs 15 s after SIGKILL", s.name, r.pid)
		}
	case actStop:
		w.logf("%s %s", kind, desc)
		w.classifyDown(s, "stopped")
		r.signal(syscall.SIGSTOP, false)
		w.setState(s, stFrozen)
	case actCont:
		w.logf("%s %s", kind, desc)
		r.signal(syscall.SIGCONT, false)
		w.setState(s, stUp)
	case actRelease:
		w.logf("%s %s", kind, desc)
		w.classifyDown(s, "released")
		r.signal(syscall.SIGTERM, true)
		w.setState(s, stDown)
		if !r.waitExit(20 * time.Second) {
			w.fail(invClean, "%s (pid %d) still runs 20 s after SIGTERM", s.name, r.pid)
			r.signal(syscall.SIGKILL, true)
			r.waitExit(10 * time.Second)
		}
	case actRestart, actJoin:
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		pos, err := w.positions(ctx)
		cancel()
		nr := w.startRun(s)
		w.logf("%s %s (%s, run %d, pid %d)", kind, desc, s.ip, nr.gen, nr.pid)
		w.classifyStart(s, nr, pos, err)
	case actRedis:
		w.logf("%s %s", kind, desc)
		w.mu.Lock()
		w.redisDown = true
		w.oss.redisDown(w.since())
		w.mu.Unlock()
		w.redis.Kill()
	case actRedisUp:
		w.logf("%s %s", kind, desc)
		w.redis.Restart()
		w.mu.Lock()
		w.redisDown = false
		w.oss.redisUp(w.since())
		w.mu.Unlock()
		w.logf("      redis-server answers again (empty)")
	case actOSSClear:
		w.emu.ClearFaults()
	case actOSS:
		w.logf("%s %s", kind, desc)
		w.emu.InjectFault(a.Fault)
		w.mu.Lock()
		w.injected[a.Fault.Kind.String()] += a.Fault.Count
		w.mu.Unlock()
	}
}

func (w *world) setState(s *slot, st slotState) {
	w.mu.Lock()
	defer w.mu.Unlock()
	s.state = st
	if st == stUp {
		s.liveSince = time.Now()
	}
}

// waitReady waits until every agent's last run is ready, within the settings' limit.
func (w *world) waitReady() {
	deadline := time.After(w.set.readyLimit)
	for _, s := range w.slots {
		w.mu.Lock()
		r := s.cur()
		w.mu.Unlock()
		if r == nil {
			w.mu.Lock()
			if !w.aborted {
				w.failLocked(invAgents, "%s never started", s.name)
			}
			w.mu.Unlock()
			return
		}
		select {
		case <-r.ready:
			continue
		case <-w.abort:
			return
		case <-r.p.Exited():
			w.fail(invAgents, "%s (run %d) exited before it was ready", s.name, r.gen)
			return
		case <-deadline:
		}
		var late []string
		w.mu.Lock()
		defer w.mu.Unlock()
		for _, o := range w.slots {
			or := o.cur()
			if or == nil || or.isReady() {
				continue
			}
			or.mu.Lock()
			late = append(late, fmt.Sprintf("%s at %s from %q", o.name, mibs(or.done), or.from))
			or.mu.Unlock()
		}
		w.failLocked(invAgents, "not every agent ready %s after the last fault: %s", w.set.readyLimit, strings.Join(late, "; "))
		return
	}
	w.logf("every agent is ready")
}

// summary prints what the soak did and found.
func (w *world) summary() {
	w.mu.Lock()
	defer w.mu.Unlock()
	t, set := w.t, w.set
	st := w.emu.Stats()
	var lines []string
	add := func(format string, args ...any) { lines = append(lines, fmt.Sprintf(format, args...)) }
	add("==== chaos summary: seed %d (replay: CHAOS_SEED=%d CHAOS_S=%d CHAOS_N=%d make chaos)", set.seed, set.seed, int(set.duration.Seconds()), set.agents)
	add("duration %.1f s (faults until +%s, then %s quiet), %d agents, model %s in %d files, OSS %s/s, object-store profile",
		w.since().Seconds(), set.duration-set.quiet, set.quiet, set.agents, mibs(w.size), len(w.files), mibs(set.egress))
	var faults, follows []string
	nFaults := 0
	for _, k := range sortedKeys(w.counts) {
		if k == "oss-clear" {
			continue
		}
		if slices.Contains([]string{"restart", "cont", "redis-up"}, k) {
			follows = append(follows, fmt.Sprintf("%s %d", k, w.counts[k]))
			continue
		}
		faults = append(faults, fmt.Sprintf("%s %d", k, w.counts[k]))
		nFaults += w.counts[k]
	}
	add("faults injected: %d: %s (follow-ups: %s)", nFaults, strings.Join(faults, ", "), strings.Join(follows, ", "))
	var codes []string
	for _, k := range sortedKeys(st.ErrorsByCode) {
		codes = append(codes, fmt.Sprintf("%s %d", k, st.ErrorsByCode[k]))
	}
	var injected []string
	for _, k := range sortedKeys(w.injected) {
		injected = append(injected, fmt.Sprintf("%s ×%d", k, w.injected[k]))
	}
	if len(codes) == 0 {
		codes = []string{"none"}
	}
	add("OSS faults: %s injected (each dropped after %s); %d request(s) met one (error answers: %s); a 503 or a reset sends no body byte: 0 B to subtract",
		strings.Join(injected, ", "), ossFaultLife, st.FaultsHit, strings.Join(codes, ", "))
	add("%-8s %4s %9s %8s  %-24s %-24s %s", "agent", "runs", "ready at", "took", "last run: OSS / peers", "all runs: OSS / peers", "OSS reads, take-overs, re-links, step-backs")
	for _, s := range w.slots {
		var allOSS, allPeers int64
		var heads, takeovers, relinks, steps int
		for _, r := range s.runs {
			r.mu.Lock()
			allOSS += r.fromOSS
			allPeers += r.fromPeers
			for _, m := range r.marks {
				switch m.what {
				case logOSSHead, logFallback:
					heads++
				case logTakeover:
					takeovers++
				case logRelink:
					relinks++
				case logStepBack:
					steps++
				}
			}
			r.mu.Unlock()
		}
		readyAt, took, last := "-", "-", "-"
		if r := s.cur(); r != nil {
			r.mu.Lock()
			if e := r.readyEv; e != nil {
				readyAt = fmt.Sprintf("+%.1fs", r.readyAt.Seconds())
				took = fmt.Sprintf("%.1fs", e.Seconds)
				last = mibs(e.FromOSS) + " / " + mibs(e.FromPeers)
			}
			r.mu.Unlock()
		}
		add("%-8s %4d %9s %8s  %-24s %-24s %d, %d, %d, %d", s.name, len(s.runs), readyAt, took, last,
			mibs(allOSS)+" / "+mibs(allPeers), heads, takeovers, relinks, steps)
	}
	served := max(w.acct.maxServed, st.BytesServed)
	bound := w.oss.bound(w.size, w.inFlight())
	verdict := "within"
	if served > bound {
		verdict = "OVER"
	}
	add("OSS served %s = %.2f models; bound %d runs read OSS × %s + %d readers ended mid-download × %s in flight = %s (%.2f models): %s the bound",
		mibs(served), float64(served)/float64(w.size), len(w.oss.models), mibs(w.size), len(w.oss.inflight), mibs(w.inFlight()),
		mibs(bound), float64(bound)/float64(w.size), verdict)
	n, loose := w.oss.eventBound(w.size, w.inFlight())
	var kinds []string
	for _, k := range sortedKeys(w.oss.events) {
		kinds = append(kinds, fmt.Sprintf("%s %d", k, w.oss.events[k]))
	}
	add("  events that may cost a model: %d (%s); the spec's bound (1 + %d) × model + %d × in flight = %s (%.2f models)",
		n, strings.Join(kinds, ", "), n, n, mibs(loose), float64(loose)/float64(w.size))
	for _, c := range w.oss.models {
		add("    +%5.1fs model:     %s", c.at.Seconds(), c.what)
	}
	for _, c := range w.oss.inflight {
		add("    +%5.1fs in flight: %s", c.at.Seconds(), c.what)
	}
	add("invariants:")
	for i, inv := range w.inv {
		res := "ok"
		if len(inv.fails) > 0 {
			res = fmt.Sprintf("FAILED (%d)", len(inv.fails))
		}
		add("  %d %-82s %s (%d checks)", i, invNames[i], res, inv.checks)
		for _, f := range inv.fails {
			add("      %s", f)
		}
		for _, n := range inv.notes {
			add("      note: %s", n)
		}
	}
	t.Log("\n" + strings.Join(lines, "\n"))
}

type quietRedis struct{}

func (quietRedis) Printf(context.Context, string, ...any) {}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
