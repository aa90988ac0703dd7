//go:build linux

package chaos

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/modelcast/modelcast/pkg/ossclient"
)

// The OSS bound (invariant 3). A run (one agent process) never fetches a byte it already has,
// so it reads at most one model from OSS; what a run killed mid-download had in flight is lost
// on top. Broadcasting means one run reads OSS; every other run that does must be allowed to
// by something the soak injected:
//
//   - the first head (one of the agents started first);
//   - a head death: the node that led the chain (no settled node before it: live for
//     settleTime and serving the model) went down while a staging depended on it; the live
//     node after it (and any stopped node between) may take over from OSS;
//   - a start as head: a node restarted from scratch with no settled node before the position
//     it kept after a SIGKILL (or, at the tail, none at all) is the head;
//   - a Redis outage: a node started, or turning to OSS, while Redis was down or until its
//     chain was rebuilt (rebuildTime after it answered again), or a node that fell back to OSS
//     because it could not reach Redis (its log says so).
//
// The bound is one model per run seen reading OSS plus the parts in flight (concurrency × part
// size) per OSS reader killed or released mid-download; it is never more than the spec's
// (1 + cost events) × model + in-flight parts, printed beside it. A run that reads OSS with no
// such reason breaks the invariant too, even within the bound.

// window is a Redis outage on the soak's clock: from the kill until the nodes have had time to
// rebuild the chain after the restart; to < 0 while Redis is still down.
type window struct{ from, to time.Duration }

// runAcct is what the OSS bound knows of one run.
type runAcct struct {
	why      []string      // what allows it to read OSS
	reading  bool          // seen reading OSS
	ossAt    time.Duration // since when
	seen     time.Time
	charged  bool
	reported bool
}

// charge is one term of the bound.
type charge struct {
	at   time.Duration
	what string
}

// ossAcct is the OSS bound's bookkeeping, guarded by world.mu.
type ossAcct struct {
	runs        map[*run]*runAcct
	windows     []window
	models      []charge       // runs that read OSS: a model each
	inflight    []charge       // OSS readers ended mid-download: their parts in flight each
	events      map[string]int // injected events that may cost a model, by kind
	initialFree bool           // no run has been the first head yet
}

func (o *ossAcct) run(r *run) *runAcct {
	ra := o.runs[r]
	if ra == nil {
		ra = &runAcct{}
		o.runs[r] = ra
	}
	return ra
}

// bound is the most OSS may have served: a model per run that read it, and the parts in flight
// per OSS reader ended mid-download.
func (o *ossAcct) bound(size, inflight int64) int64 {
	return size*int64(len(o.models)) + inflight*int64(len(o.inflight))
}

// eventBound is the spec's looser bound: (1 + cost events) × model + their parts in flight.
func (o *ossAcct) eventBound(size, inflight int64) (int, int64) {
	n := 0
	for _, v := range o.events {
		n += v
	}
	return n, size*int64(1+n) + inflight*int64(n)
}

func (o *ossAcct) inOutage(t time.Duration) bool {
	for _, w := range o.windows {
		if t >= w.from && (w.to < 0 || t <= w.to) {
			return true
		}
	}
	return false
}

func (o *ossAcct) redisDown(at time.Duration) { o.windows = append(o.windows, window{at, -1}) }

func (o *ossAcct) redisUp(at time.Duration) {
	if n := len(o.windows); n > 0 && o.windows[n-1].to < 0 {
		o.windows[n-1].to = at + rebuildTime
	}
}

// inFlight is what a head holds in flight: its parallel ranged GETs of a part each.
func (w *world) inFlight() int64 { return int64(w.set.headConc) * ossclient.DefaultPartSize }

// liveLocked: the slot's process runs and is not stopped.
func (w *world) liveLocked(s *slot) bool {
	r := s.cur()
	return s.state == stUp && r != nil && !r.hasExited()
}

// settleTime is how long a node must have run (since its start or SIGCONT) before the soak
// counts on it as a predecessor: its heartbeat must be in Redis again.
const settleTime = 2 * time.Second

// settledLocked: the slot is live, has been for settleTime, and serves the model (it reported
// progress, so it joined the model's chain, or is ready): a node can count on it.
func (w *world) settledLocked(s *slot) bool {
	if !w.liveLocked(s) || time.Since(s.liveSince) < settleTime {
		return false
	}
	r := s.cur()
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.staging || r.readyEv != nil
}

// snapshotPositions keeps the chain's last known order, for decisions made while Redis is down.
func (w *world) snapshotPositions(ctx context.Context) {
	pos, err := w.positions(ctx)
	if err != nil || pos == nil {
		return
	}
	w.mu.Lock()
	w.lastPos = pos
	w.mu.Unlock()
}

func (w *world) justifyLocked(r *run, why string) {
	ra := w.oss.run(r)
	ra.why = append(ra.why, why)
}

// classifyDown accounts for slot s going down (how: killed, stopped or released). An OSS reader
// killed or released mid-download loses its parts in flight. When s led the chain (no live node
// before it), the live node after it that lacks the model (and any stopped node between, which
// will find no live node before it either) may take over from OSS.
func (w *world) classifyDown(s *slot, how string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	pos, err := w.positions(ctx)
	cancel()
	w.mu.Lock()
	defer w.mu.Unlock()
	if err != nil || pos == nil {
		pos = w.lastPos
	}
	d := s.cur()
	if ra := w.oss.run(d); ra.reading && !d.isReady() && how != "stopped" {
		// A stopped reader keeps its sockets: it takes their bytes when it resumes.
		w.oss.inflight = append(w.oss.inflight, charge{w.since(), fmt.Sprintf("%s %s (run %d) while it read OSS", how, s.name, d.gen)})
		w.logf("    OSS bound += %s in flight: %s %s mid-download", mibs(w.inFlight()), how, s.name)
	}
	p, ok := pos[s.name]
	if !ok {
		return // not in the chain: nobody streams from it
	}
	type member struct {
		s *slot
		p int
	}
	var after []member
	for _, o := range w.slots {
		q, in := pos[o.name]
		if o == s || !in {
			continue
		}
		if q < p && w.settledLocked(o) {
			return // a live node before it: it was no head
		}
		if q > p {
			after = append(after, member{o, q})
		}
	}
	slices.SortFunc(after, func(a, b member) int { return a.p - b.p })
	var heirs []string
	for _, m := range after {
		r := m.s.cur()
		if r == nil || r.hasExited() || m.s.state == stDown || m.s.state == stIdle {
			continue
		}
		if m.s.state == stFrozen {
			if !r.isReady() {
				w.justifyLocked(r, fmt.Sprintf("head death: %s %s at position %d, and it was stopped after it", how, s.name, p))
				heirs = append(heirs, m.s.name)
			}
			continue
		}
		if !r.isReady() {
			w.justifyLocked(r, fmt.Sprintf("head death: %s %s at position %d, its successor", how, s.name, p))
			heirs = append(heirs, m.s.name)
		}
		break
	}
	if len(heirs) > 0 {
		w.oss.events["head death"]++
		w.logf("    head death: %s led the chain (position %d); may take over from OSS: %s", s.name, p, strings.Join(heirs, ", "))
	}
}

// classifyStart accounts for run r of slot s starting: in a Redis outage it may fall back to
// OSS; with no live node before its place in the chain (the one it kept after a SIGKILL, or
// the tail) it is the head and reads the whole model. pos and err: the chain before it started.
func (w *world) classifyStart(s *slot, r *run, pos map[string]int, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case w.oss.inOutage(w.since()):
		w.justifyLocked(r, "started during a Redis outage or rebuild")
		w.oss.events["start in a Redis outage"]++
		w.logf("    %s starts during a Redis outage or rebuild: it may read OSS", s.name)
		return
	case err != nil:
		w.justifyLocked(r, fmt.Sprintf("started while the chain could not be read (%v)", err))
		w.oss.events["start, chain unknown"]++
		return
	}
	p, kept := pos[s.name]
	for _, o := range w.slots {
		if o == s || !w.settledLocked(o) {
			continue
		}
		if q, in := pos[o.name]; in && (!kept || q < p) {
			return // it has a live predecessor
		}
	}
	where := "at the tail of a chain with no live member"
	if kept {
		where = fmt.Sprintf("at the position it kept (%d), no live node before it", p)
	}
	w.justifyLocked(r, "restarted from scratch "+where)
	w.oss.events["start as head"]++
	w.logf("    %s restarts from scratch %s: it is the head and may read the whole model from OSS", s.name, where)
}

// observeOSSLocked notices run r reading OSS and charges it a model, for the first reason that
// allows it; a run reading OSS for no reason breaks invariant 3 once it has had 2 s to show one.
func (w *world) observeOSSLocked(r *run, now time.Time) {
	ra := w.oss.run(r)
	if ra.charged {
		return
	}
	r.mu.Lock()
	fromOSS := r.fromOSS
	at := time.Duration(-1)
	fallback := ""
	if r.fallback {
		fallback = "its staging says: broadcast off"
	}
	for _, m := range r.marks {
		switch m.what {
		case logFallback, logNoChain:
			if fallback == "" {
				fallback = m.what
			}
			fallthrough
		case logOSSHead:
			if at < 0 {
				at = m.at
			}
		}
	}
	r.mu.Unlock()
	if !ra.reading {
		if at < 0 && fromOSS > 0 {
			at = w.since()
		}
		if at < 0 {
			return
		}
		ra.reading, ra.ossAt, ra.seen = true, at, now
	}
	name := fmt.Sprintf("%s run %d", r.slot.name, r.gen)
	if fallback != "" {
		where := "outside any Redis outage the soak made"
		if w.oss.inOutage(ra.ossAt) {
			where = "during a Redis outage"
		}
		w.oss.events["fallback"]++
		ra.why = append(ra.why, fmt.Sprintf("fell back to OSS, Redis out of reach (%s; %q)", where, fallback))
	}
	if w.oss.inOutage(ra.ossAt) {
		ra.why = append(ra.why, "turned to OSS during a Redis outage or rebuild")
	}
	if len(ra.why) == 0 && w.oss.initialFree && r.gen == 0 && r.slot.i < w.set.agents-w.set.late {
		w.oss.initialFree = false
		ra.why = append(ra.why, "the first head")
	}
	if len(ra.why) > 0 {
		ra.charged = true
		w.oss.models = append(w.oss.models, charge{ra.ossAt, name + ": " + ra.why[0]})
		w.logf("    OSS bound += a model: %s reads OSS since +%.1fs (%s); bound now %s", name, ra.ossAt.Seconds(), ra.why[0],
			mibs(w.oss.bound(w.size, w.inFlight())))
		return
	}
	if now.Sub(ra.seen) >= 2*time.Second && !ra.reported {
		ra.reported, ra.charged = true, true
		w.oss.models = append(w.oss.models, charge{ra.ossAt, name + ": UNJUSTIFIED"})
		r.mu.Lock()
		marks := slices.Clone(r.marks)
		r.mu.Unlock()
		w.failLocked(invOSS, "%s read OSS from +%.1fs though a live node before it had bytes and Redis was up: no head death, restart as head or Redis outage allows it (chain as last read: %v; its log: %v)",
			name, ra.ossAt.Seconds(), w.lastPos, marks)
	}
}

// settleOSSLocked gives every run its verdict at the end (no grace left).
func (w *world) settleOSSLocked() {
	for _, s := range w.slots {
		for _, r := range s.runs {
			w.observeOSSLocked(r, time.Now().Add(time.Hour))
		}
	}
}
