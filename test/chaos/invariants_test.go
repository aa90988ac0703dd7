//go:build linux

package chaos

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

// Invariants, numbered as the soak's specification numbers them; 0 is the agents' own health.
const (
	invAgents = iota // agents exit only when the soak ends them, report no error, all get ready
	invVerified
	invStall
	invOSS
	invTTL
	invClean
)

var invNames = [...]string{
	invAgents:   "agents exit only when told, report no error, all ready by the deadline",
	invVerified: "ready ⇒ verified: true; final files equal the source",
	invStall:    "no live staging agent without progress > stall limit while a live node has more",
	invOSS:      "OSS bytes served ≤ bound from injected events",
	invTTL:      "every Redis key has a TTL (the tenant token included)",
	invClean:    "clean stop: no agent process, no mount, no chain member, TTLs on what is left",
}

// invariant is one checked property: how often it was checked and what broke it.
type invariant struct {
	checks int
	fails  []string
	notes  []string
}

// accounting is the checks' bookkeeping (the OSS bound's is ossAcct, in oss_test.go).
type accounting struct {
	stalled    map[*run]bool
	noTTLSince map[string]time.Time
	ttlFailed  map[string]bool
	reported   map[*run]bool // unexpected exits and errors already reported
	maxServed  int64
	overSince  time.Time
}

func (r *run) isReady() bool {
	select {
	case <-r.ready:
		return true
	default:
		return false
	}
}

// fail records a broken invariant. The first failure prints every agent's last stderr and
// stops the faults.
func (w *world) failLocked(inv int, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	w.inv[inv].fails = append(w.inv[inv].fails, fmt.Sprintf("+%.1fs %s", w.since().Seconds(), msg))
	w.logf("INVARIANT %d BROKEN (%s): %s", inv, invNames[inv], msg)
	w.t.Errorf("invariant %d (%s): %s", inv, invNames[inv], msg)
	if !w.aborted {
		w.aborted = true
		close(w.abort)
		w.dumpLocked()
	}
}

func (w *world) fail(inv int, format string, args ...any) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.failLocked(inv, format, args...)
}

// dumpLocked prints the last 3 KB of every agent's stderr (its current run, and earlier runs
// that ended on their own), and the model's chain.
func (w *world) dumpLocked() {
	for _, s := range w.slots {
		for _, r := range s.runs {
			r.mu.Lock()
			own := r.p.Err() != nil && !r.signaled || r.errEv != nil && !r.signaled
			r.mu.Unlock()
			if r != s.cur() && !own {
				continue
			}
			w.t.Logf("---- %s run %d (pid %d) stderr, last 3 KB:\n%s", s.name, r.gen, r.pid, r.stderr.Tail(3000))
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if w.chainKey != "" {
		zs, err := w.rdb.ZRangeWithScores(ctx, w.chainKey, 0, -1).Result()
		prog, _ := w.rdb.HGetAll(ctx, strings.Replace(w.chainKey, ":chain", ":progress", 1)).Result()
		w.t.Logf("---- chain %s: %v (%v); progress %v", w.chainKey, zs, err, prog)
	}
}

// check runs every continuous check once.
func (w *world) check(ctx context.Context) {
	served := w.emu.Stats().BytesServed // before the bound: bytes follow the events that allow them
	var ttls map[string]time.Duration
	var ttlErr error
	w.mu.Lock()
	down := w.redisDown
	w.mu.Unlock()
	if !down {
		ttls, ttlErr = w.scanTTLs(ctx)
		w.snapshotPositions(ctx)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	now := time.Now()
	// 0 and 1: the agents' own reports.
	w.inv[invAgents].checks++
	w.inv[invVerified].checks++
	for _, s := range w.slots {
		for _, r := range s.runs {
			r.mu.Lock()
			exitErr, errEv, signaled, unverified := r.p.Err(), r.errEv, r.signaled, r.unverified
			r.mu.Unlock()
			exited := r.hasExited()
			if !signaled && !w.acct.reported[r] && (exited || errEv != nil) {
				w.acct.reported[r] = true
				msg := fmt.Sprintf("%s (run %d, pid %d) ended on its own", s.name, r.gen, r.pid)
				if errEv != nil {
					msg = fmt.Sprintf("%s (run %d, pid %d) reported an error: %s", s.name, r.gen, r.pid, errEv.Error)
				}
				if exited {
					msg += fmt.Sprintf(" (exit: %v)", exitErr)
				}
				w.failLocked(invAgents, "%s", msg)
			}
			if unverified && !w.acct.reported[r] {
				w.acct.reported[r] = true
				w.failLocked(invVerified, "%s (run %d) reported ready without verified: true", s.name, r.gen)
			}
			w.observeOSSLocked(r, now)
		}
	}
	// 2: no live staging agent sits still while a live node has more.
	w.inv[invStall].checks++
	for _, s := range w.slots {
		r := s.cur()
		if !w.liveLocked(s) || r.isReady() || w.acct.stalled[r] {
			continue
		}
		r.mu.Lock()
		done, total, last, from := r.done, r.total, r.lastGrowth, r.from
		r.mu.Unlock()
		if total > 0 && done >= total {
			continue // staged; verifying
		}
		last = latest(last, s.liveSince)
		if idle := now.Sub(last); idle > w.set.stallLimit {
			for _, o := range w.slots {
				or := o.cur()
				if o == s || !w.liveLocked(o) {
					continue
				}
				or.mu.Lock()
				more := or.done
				or.mu.Unlock()
				if more > done {
					w.acct.stalled[r] = true
					w.failLocked(invStall, "%s (run %d) made no progress for %s at %s (from %q) while %s has %s",
						s.name, r.gen, idle.Round(time.Second), mibs(done), from, o.name, mibs(more))
					break
				}
			}
		}
	}
	// 3: OSS bytes within the bound; a lag of 2 s covers events seen after their first bytes.
	w.inv[invOSS].checks++
	w.acct.maxServed = max(w.acct.maxServed, served)
	if bound := w.oss.bound(w.size, w.inFlight()); served > bound {
		if w.acct.overSince.IsZero() {
			w.acct.overSince = now
		} else if now.Sub(w.acct.overSince) >= 2*time.Second && len(w.inv[invOSS].fails) == 0 {
			w.failLocked(invOSS, "OSS served %s, more than the bound %s", mibs(served), mibs(bound))
		}
	} else {
		w.acct.overSince = time.Time{}
	}
	// 4: every key with a TTL; a key is reported once it has had none for a second (a
	// pipelined write and its PEXPIRE may straddle a scan).
	if ttls != nil && ttlErr == nil {
		w.inv[invTTL].checks++
		for k := range w.acct.noTTLSince {
			if d, ok := ttls[k]; !ok || !noTTL(d) {
				delete(w.acct.noTTLSince, k)
			}
		}
		for k, d := range ttls {
			if !noTTL(d) || w.acct.ttlFailed[k] {
				continue
			}
			if first, ok := w.acct.noTTLSince[k]; !ok {
				w.acct.noTTLSince[k] = now
			} else if now.Sub(first) >= time.Second {
				w.acct.ttlFailed[k] = true
				w.failLocked(invTTL, "Redis key %s has had no TTL for %s", k, now.Sub(first).Round(100*time.Millisecond))
			}
		}
	}
}

func latest(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// checker runs check every 250 ms until stop is closed.
func (w *world) checker(stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		w.check(ctx)
		cancel()
	}
}

// finalTTL scans Redis once more: invariant 4 at the end.
func (w *world) finalTTL() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ttls, err := w.scanTTLs(ctx)
	w.mu.Lock()
	defer w.mu.Unlock()
	if err != nil {
		w.failLocked(invTTL, "cannot scan Redis at the end: %v", err)
		return
	}
	w.inv[invTTL].checks++
	for k, d := range ttls {
		if noTTL(d) && !w.acct.ttlFailed[k] {
			w.acct.ttlFailed[k] = true
			w.failLocked(invTTL, "Redis key %s has no TTL at the end", k)
		}
	}
	if _, ok := ttls[tokenKey()]; !ok {
		w.inv[invTTL].notes = append(w.inv[invTTL].notes, "the tenant token was never seen in Redis")
	}
}

// finalModels checks every agent's last run: ready, verified, and its files equal the source.
func (w *world) finalModels() {
	w.mu.Lock()
	slots := slices.Clone(w.slots)
	w.mu.Unlock()
	for _, s := range slots {
		w.mu.Lock()
		r := s.cur()
		w.mu.Unlock()
		if r == nil {
			continue // never started: the run was cut short
		}
		r.mu.Lock()
		e := r.readyEv
		r.mu.Unlock()
		if e == nil {
			continue // reported by the ready deadline
		}
		w.mu.Lock()
		w.inv[invVerified].checks++
		w.mu.Unlock()
		if !e.Verified {
			w.fail(invVerified, "%s's final run reported ready without verified: true", s.name)
		}
		for rel, want := range w.files {
			got, err := os.ReadFile(filepath.Join(e.Dir, rel))
			if err != nil || !bytes.Equal(got, want) {
				w.fail(invVerified, "%s: %s differs from the source (%v)", s.name, rel, err)
			}
		}
		if e.FromOSS+e.FromPeers != w.size {
			w.mu.Lock()
			w.inv[invVerified].notes = append(w.inv[invVerified].notes, fmt.Sprintf("%s's final run received %s (OSS %s, peers %s) for a %s model",
				s.name, mibs(e.FromOSS+e.FromPeers), mibs(e.FromOSS), mibs(e.FromPeers), mibs(w.size)))
			w.mu.Unlock()
		}
	}
}

// finalOSS checks invariant 3 strictly, after every event has been seen.
func (w *world) finalOSS() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	w.check(ctx) // the last fallbacks and marks
	cancel()
	served := w.emu.Stats().BytesServed
	w.mu.Lock()
	defer w.mu.Unlock()
	w.acct.maxServed = max(w.acct.maxServed, served)
	w.inv[invOSS].checks++
	w.settleOSSLocked()
	if bound := w.oss.bound(w.size, w.inFlight()); served > bound && len(w.inv[invOSS].fails) == 0 {
		w.failLocked(invOSS, "OSS served %s at the end, more than the bound %s", mibs(served), mibs(bound))
	}
}

// stopAll ends every agent with SIGTERM (SIGCONT first: none should be stopped) and checks
// invariant 5: each exits within 20 s, no agent process is left, no mount under the agents'
// directories, no chain lists a node, and every key left has a TTL.
func (w *world) stopAll() {
	w.mu.Lock()
	var runs []*run
	for _, s := range w.slots {
		if r := s.cur(); r != nil {
			runs = append(runs, r)
		}
		s.state = stDown
	}
	w.inv[invClean].checks++
	w.mu.Unlock()
	for _, r := range runs {
		_ = r.p.Signal(syscall.SIGCONT)
		r.signal(syscall.SIGTERM, true)
	}
	for _, r := range runs {
		if !r.waitExit(20 * time.Second) {
			w.fail(invClean, "%s (pid %d) still runs 20 s after SIGTERM", r.slot.name, r.pid)
			r.signal(syscall.SIGKILL, true)
			r.waitExit(10 * time.Second)
		}
	}
	if pids := processesOf(w.bin); len(pids) > 0 {
		w.fail(invClean, "agent processes left: %v", pids)
	}
	if ms := mountsUnder(w.root); len(ms) > 0 {
		w.fail(invClean, "mounts left under the agents' directories: %v", ms)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ttls, err := w.scanTTLs(ctx)
	if err != nil {
		w.fail(invClean, "cannot scan Redis after the agents stopped: %v", err)
		return
	}
	var left []string
	for k, d := range ttls {
		switch {
		case noTTL(d):
			w.fail(invClean, "Redis key %s is left without a TTL", k)
		case strings.HasSuffix(k, ":chain"):
			members, _ := w.rdb.ZRange(ctx, k, 0, -1).Result()
			if len(members) > 0 {
				w.fail(invClean, "chain %s still lists %v after every agent stopped", k, members)
			}
		}
		left = append(left, fmt.Sprintf("%s (TTL %s)", k, d.Round(time.Second)))
	}
	slices.Sort(left)
	w.mu.Lock()
	w.inv[invClean].notes = append(w.inv[invClean].notes, fmt.Sprintf("Redis keys left (each with a TTL): %d %v", len(left), left))
	w.mu.Unlock()
}

// processesOf lists the processes whose command line starts with bin.
func processesOf(bin string) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		if arg0, _, _ := bytes.Cut(b, []byte{0}); string(arg0) == bin {
			pids = append(pids, pid)
		}
	}
	return pids
}

// mountsUnder lists the mount points under dir (from /proc/self/mountinfo).
func mountsUnder(dir string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return []string{"cannot read /proc/self/mountinfo: " + err.Error()}
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	return out
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space, …).
func unescapeMount(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var c byte
			if _, err := fmt.Sscanf(s[i+1:i+4], "%03o", &c); err == nil {
				b.WriteByte(c)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func mibs(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/mib) }
