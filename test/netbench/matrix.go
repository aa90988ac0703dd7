package netbench

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"image/color"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/modelcast/modelcast/test/ossemu"
)

// part is a family of scenarios on one topology.
type part struct {
	name      string
	model     string
	size      int64
	link, oss string // tc rates
	linkBits  float64
	hosts     int
	slow      int    // more hosts, on links at slowRate
	slowRate  string // a quarter of link
	scenarios []Scenario
}

// Options of RunMatrix.
type Options struct {
	Out   string // directory for broadcast.md, head.md and the plots
	Quick bool   // a short matrix (N 1, 2, 4; 256 MiB)
	// Only runs these families and no others (all when empty): head (the single-node head
	// against a direct fetch), chain, direct, late, fail, slow (the main part's kinds), scale
	// (the 32-host part); "kind:N" selects one N of a kind, such as chain:8.
	Only    []string
	Size    int64  // the main part's and the head benchmark's model size; 0: 1 GiB (quick: 256 MiB)
	Command string // what ran it, for the reports
	Log     func(format string, args ...any)
}

// Families Options.Only knows, and the kinds they select.
var families = map[string]string{"chain": Chain, "direct": Direct, "late": Late, "fail": Fail, "slow": SlowHost}

// CheckOnly reports a family Options.Only does not know.
func CheckOnly(only []string) error {
	for _, o := range only {
		name, n, hasN := strings.Cut(o, ":")
		if _, ok := families[name]; !ok && name != "head" && name != "scale" {
			return fmt.Errorf("unknown family %q (want head, chain, direct, late, fail, slow or scale, optionally kind:N)", o)
		}
		if hasN {
			if v, err := strconv.Atoi(n); err != nil || v < 1 {
				return fmt.Errorf("%q: N must be a positive number", o)
			}
		}
	}
	return nil
}

// selected says whether o.Only selects a run: family "head" or "scale" (kind and n unused), or
// family "main" and the scenario kind with n.
func (o Options) selected(family string, kind string, n int) bool {
	if len(o.Only) == 0 {
		return true
	}
	for _, x := range o.Only {
		name, num, hasN := strings.Cut(x, ":")
		if (family == "scale" || family == "head") && name == family {
			return true
		}
		if k, ok := families[name]; ok && k == kind && family == "main" && (!hasN || num == strconv.Itoa(n)) {
			return true
		}
	}
	return false
}

func (o Options) mainSize() int64 {
	switch {
	case o.Size > 0:
		return o.Size
	case o.Quick:
		return 256 << 20
	}
	return 1 << 30
}

func matrix(o Options) []part {
	a := part{name: "main", model: "gib/", size: o.mainSize(), link: "1gbit", oss: "1gbit", linkBits: 1e9, hosts: 8, slow: 1, slowRate: "250mbit"}
	b := part{name: "scale", model: "scale/", size: 256 << 20, link: "400mbit", oss: "400mbit", linkBits: 400e6, hosts: 32}
	ns := []int{1, 2, 4, 8}
	if o.Quick {
		a.hosts = 4
		ns = []int{1, 2, 4}
	}
	nmax := ns[len(ns)-1]
	for _, n := range ns {
		a.scenarios = append(a.scenarios, Scenario{Kind: Chain, N: n})
	}
	for _, n := range ns {
		a.scenarios = append(a.scenarios, Scenario{Kind: Direct, N: n})
	}
	for _, n := range ns[1:] {
		a.scenarios = append(a.scenarios, Scenario{Kind: Late, N: n})
	}
	for _, n := range ns {
		if n >= 3 {
			a.scenarios = append(a.scenarios, Scenario{Kind: Fail, N: n})
		}
	}
	// Right after the plain chain of the same N, on the same topology: their ratio is a figure.
	a.scenarios = append(a.scenarios, Scenario{Kind: SlowHost, N: nmax})
	a.scenarios = slices.DeleteFunc(a.scenarios, func(s Scenario) bool { return !o.selected("main", s.Kind, s.N) })
	if !slices.ContainsFunc(a.scenarios, func(s Scenario) bool { return s.Kind == SlowHost }) {
		a.slow = 0
	}
	var parts []part
	if len(a.scenarios) > 0 {
		parts = append(parts, a)
	}
	if !o.Quick && o.selected("scale", "", 0) {
		b.scenarios = []Scenario{{Kind: Chain, N: 1}, {Kind: Chain, N: 32}, {Kind: Direct, N: 32}}
		parts = append(parts, b)
	}
	for i := range parts {
		for j := range parts[i].scenarios {
			s := &parts[i].scenarios[j]
			s.Model, s.Size, s.Link = parts[i].model, parts[i].size, parts[i].link
		}
	}
	return parts
}

// RunMatrix runs the single-node head benchmark and every scenario, and writes head.md,
// broadcast.md and the plots into o.Out.
func RunMatrix(ctx context.Context, o Options) error {
	if err := CheckOnly(o.Only); err != nil {
		return err
	}
	if o.Log == nil {
		o.Log = func(string, ...any) {}
	}
	if o.Command == "" {
		o.Command = "make bench"
	}
	if err := os.MkdirAll(o.Out, 0o755); err != nil {
		return err
	}
	defer HoldMemory(o.Log)()
	start := time.Now()
	var head *HeadResult
	if o.selected("head", "", 0) {
		var err error
		if head, err = RunHead(ctx, HeadConfig{Size: o.mainSize(), Log: o.Log}); err != nil {
			return fmt.Errorf("head against direct: %w", err)
		}
		o.Log("head %.3f GB/s, direct %.3f GB/s, head ÷ direct %.3f", head.HeadGBps(), head.DirectGBps(), head.Ratio())
		if err := os.WriteFile(filepath.Join(o.Out, "head.md"), []byte(head.Markdown(o.Command)), 0o644); err != nil {
			return err
		}
	}
	parts := matrix(o)
	var results [][]*Result
	var lk linkFigures
	for _, p := range parts {
		o.Log("part %s: %d hosts (%d more at %s), %s links, OSS %s, model %d MiB", p.name, p.hosts, p.slow, p.slowRate, p.link, p.oss, p.size>>20)
		env, err := NewEnv(ctx, EnvConfig{Prefix: "mcb", Hosts: p.hosts, LinkRate: p.link, Slow: p.slow, SlowRate: p.slowRate,
			OSSRate: p.oss, Profile: ossemu.ObjectStoreProfile, Models: map[string]int64{p.model: p.size}, Log: o.Log})
		if err != nil {
			return err
		}
		var rs []*Result
		for i, s := range p.scenarios {
			o.Log("%s, N=%d", s.Kind, s.N)
			r, err := env.Run(ctx, s, i)
			if err != nil {
				env.Close()
				return fmt.Errorf("%s N=%d: %w", s.Kind, s.N, err)
			}
			o.Log("  ready %.2f / %.2f / %.2f s, OSS %.3fx, peers %.2f GB, %.2f core-s per GB forwarded",
				r.Min().Seconds(), r.Median().Seconds(), r.Max().Seconds(), r.OSSRatio(), float64(r.PeerBytes)/1e9, r.CPUPerGB())
			if r.Slow != nil {
				o.Log("  slow host %s (%s, position %d): ready %.2f s", r.Slow.Name, r.Slow.Rate, r.Slow.Position, r.Slow.Ready.Seconds())
			}
			if r.Relay != nil {
				o.Log("  middle node %s (position %d of %d): %.2f core-s, %.2f of them verifying, %.2f GB forwarded: %.3f core-s per GB",
					r.Relay.Node, r.Relay.Position, r.Relay.Of, r.Relay.CPU, r.Relay.VerifyCPU, float64(r.Relay.Served)/1e9, r.Relay.PerGB())
			}
			rs = append(rs, r)
		}
		if p.name == "main" && slices.ContainsFunc(rs, func(r *Result) bool { return r.Kind == Chain && r.Relay != nil }) && len(env.Regular) >= 2 {
			// The shaped relay figure's baseline: bare hops between two of these hosts.
			for i := range 2 {
				bh, err := bareHop(ctx, env.Dir, p.size, env.Regular[1], env.Regular[0])
				if err != nil {
					env.Close()
					return fmt.Errorf("bare hop over %s links: %w", p.link, err)
				}
				o.Log("bare hop %d over %s links (%s to %s): %.3f core-s per GB", i+1, p.link, env.Regular[1].NS, env.Regular[0].NS, bh.PerGB())
				lk.bare = append(lk.bare, bh)
			}
			// A middle node alone over these links: head, middle and tail on three of the
			// hosts, nothing else running, as a node of a real chain has its machine to itself
			// (the head has the model first); and, alternating with it, the same with the head
			// downloading meanwhile on the same vCPUs.
			if len(env.Regular) >= 3 {
				for i := range 4 {
					first := headFirst
					if i%2 == 1 {
						first = headAlongside
					}
					rl, err := relayAlone(ctx, env.Bin, env.Dir, env.Redis.Addr, env.OSS.Endpoint, p.model, p.size, fmt.Sprintf("link-%d", i),
						[3]Host{env.Regular[0], env.Regular[1], env.Regular[2]}, first)
					if err != nil {
						env.Close()
						return fmt.Errorf("relay alone over %s links: %w", p.link, err)
					}
					kind := "alone"
					if !first {
						kind = "beside its head's download"
					}
					o.Log("relay %d over %s links, %s: middle node %.3f core-s per GB forwarded (%.2f core-s, %.2f of them verifying, %.2f GB)",
						i+1, p.link, kind, rl.PerGB(), rl.CPU, rl.VerifyCPU, float64(rl.Served)/1e9)
					if first {
						lk.relays = append(lk.relays, rl)
					} else {
						lk.alongside = append(lk.alongside, rl)
					}
				}
			}
		}
		env.Close()
		results = append(results, rs)
	}
	return report(o, parts, results, head, lk, time.Since(start))
}

// linkFigures are the relay's figures over the main part's shaped links.
type linkFigures struct {
	bare      []*BareHop // bare hops between two of its hosts
	relays    []*Relay   // middle nodes of chains of three, alone (the head had the model first)
	alongside []*Relay   // the same, the head downloading the model meanwhile
}

func find(rs []*Result, kind string, n int) *Result {
	for _, r := range rs {
		if r.Kind == kind && r.N == n {
			return r
		}
	}
	return nil
}

func report(o Options, parts []part, results [][]*Result, head *HeadResult, lk linkFigures, took time.Duration) error {
	var b bytes.Buffer
	fmt.Fprintf(&b, "## Broadcast: time to a ready model on N nodes\n\n")
	fmt.Fprintf(&b, "Written by `%s` (test/netbench) on %s in %s: %d vCPU (%s), Linux %s.\n\n", o.Command, time.Now().UTC().Format("2006-01-02"), took.Round(time.Second), runtime.NumCPU(), cpuModel(), kernel())
	fmt.Fprintf(&b, "Emulator profile: **%s** (%s) for every figure of this section; the loopback figures above (single-node download) are the emulator at loopback speed.\n\n", ossemu.ObjectStoreProfile, profileText(ossemu.ObjectStoreProfile))
	fmt.Fprintf(&b, "Every host is a network namespace with a veth pair to one bridge; each host's link is shaped with `tc tbf` in both directions (a 256 KB bucket, a queue of up to 50 ms at the rate), and the OSS emulator has a namespace of its own with its egress shaped too. Redis is a real `redis-server` on the bridge. Each host runs one node agent (`csi-plugin agent`: the node plugin's cache on a tmpfs of its own, its chain part and data plane, the default prefetch concurrency), which re-reads every file and checks its CRC-64 against OSS's before it reports ready. The whole machine has %d vCPUs for all of them.\n\n", runtime.NumCPU())
	fmt.Fprintf(&b, "Ready time is from a node's start to its model being staged and verified; nodes of a run start together (late joiners: the second half once the first half is ready, timed from their own start; one slow host: the head starts first, the slow host once the head has joined the chain, the others once the slow host has joined, so it is second in the chain, each timed from its own start, the slow host left out of the ready columns). OSS ÷ S is the emulator's egress over the model's size; agent CPU is user + system time of all agents over the bytes they forwarded to peers; the middle node's is its own CPU from its start line to when it stopped serving, less its `--verify` re-read (the `cpu` and `verifyCPU` of its lines), over the bytes it forwarded.\n\n")
	for i, p := range parts {
		rs := results[i]
		bound := float64(p.size) * 8 / p.linkBits
		fmt.Fprintf(&b, "### %d MiB model, %s links, OSS egress %s\n\nThe physical bound S ÷ B (model size over link rate) is %.2f s.\n\n", p.size>>20, p.link, p.oss, bound)
		fmt.Fprintf(&b, "| scenario | N | ready min / median / max (s) | staged, median (s) | OSS ÷ S | peer bytes (GB) | agent CPU (core-s per GB forwarded) | middle node CPU, no verify (core-s per GB forwarded) |\n|---|---|---|---|---|---|---|---|\n")
		for _, r := range rs {
			perGB, relay := "—", "—"
			if r.Forwarded > 0 {
				perGB = fmt.Sprintf("%.2f", r.CPUPerGB())
			}
			if r.Relay != nil {
				relay = fmt.Sprintf("%.2f (%s, position %d)", r.Relay.PerGB(), r.Relay.Node, r.Relay.Position)
			}
			extra := ""
			if r.Killed != "" {
				extra = " (killed " + r.Killed + ")"
			}
			if r.Slow != nil {
				extra = fmt.Sprintf(" (%s at %s, position %d, ready in %.2f s)", r.Slow.Name, r.Slow.Rate, r.Slow.Position, r.Slow.Ready.Seconds())
			}
			fmt.Fprintf(&b, "| %s%s | %d | %.2f / %.2f / %.2f | %.2f | %.3f | %.2f | %s | %s |\n", r.Kind, extra, r.N,
				r.Min().Seconds(), r.Median().Seconds(), r.Max().Seconds(), r.MedianStaged().Seconds(), r.OSSRatio(), float64(r.PeerBytes)/1e9, perGB, relay)
		}
		b.WriteString("\n")
	}
	b.WriteString(targets(o.Command, parts, results, head, lk))
	if len(parts) > 0 && parts[0].name == "main" {
		ok, err := plots(o.Out, parts[0], results[0])
		if err != nil {
			return err
		}
		if ok {
			b.WriteString("\n![ready time against N](bench/broadcast-ready.png)\n\n![OSS egress against N](bench/broadcast-oss.png)\n")
		}
	}
	return os.WriteFile(filepath.Join(o.Out, "broadcast.md"), b.Bytes(), 0o644)
}

func targets(command string, parts []part, results [][]*Result, head *HeadResult, lk linkFigures) string {
	var b strings.Builder
	fmt.Fprintf(&b, "### Targets\n\nEvery ratio is of runs in the same `%s`; \"not run\" when it left their scenarios out. The single-node figure comes from the section \"Single node: a chain's head against a direct fetch\" (loopback, no namespaces); the others from the shaped hosts of this section.\n\n", command)
	b.WriteString("| figure | emulator profile | goal | measured | |\n|---|---|---|---|---|\n")
	row := func(name, goal, measured string, ok bool) {
		mark := "met"
		if !ok {
			mark = "**missed**"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", name, ossemu.ObjectStoreProfile, goal, measured, mark)
	}
	missing := func(name, goal string) {
		fmt.Fprintf(&b, "| %s | %s | %s | not run | |\n", name, ossemu.ObjectStoreProfile, goal)
	}
	if head != nil {
		v := head.Ratio()
		row(fmt.Sprintf("Head ÷ direct fetch, single node (loopback, %d MiB)", head.Size>>20), "≥ 0.9",
			fmt.Sprintf("%.3f (head %.3f GB/s, direct %.3f GB/s; median of %d rounds)", v, head.HeadGBps(), head.DirectGBps(), len(head.Rounds)), v >= 0.9)
	} else {
		missing("Head ÷ direct fetch, single node", "≥ 0.9")
	}
	var main []*Result
	var p part
	if len(parts) > 0 && parts[0].name == "main" {
		main, p = results[0], parts[0]
	}
	n := 0 // the largest chain of the main part: 8 (quick: 4)
	for _, r := range main {
		if r.Kind == Chain {
			n = max(n, r.N)
		}
	}
	cn, d1 := find(main, Chain, n), find(main, Direct, 1)
	label := n // in the figures' names
	if label < 2 {
		label = 8
	}
	name := fmt.Sprintf("N = %d, shaped links (%s): median ready time ÷ one direct fetch (direct N = 1, same run, same topology)", label, cmp.Or(p.link, "1gbit"))
	if cn != nil && d1 != nil && n > 1 {
		v := cn.Median().Seconds() / d1.Median().Seconds()
		row(name, "≤ 1.15", fmt.Sprintf("%.3f (%.2f s against %.2f s)%s", v, cn.Median().Seconds(), d1.Median().Seconds(), cpuBound(cn)), v <= 1.15)
		// Every agent re-reads its model (--verify) before its ready line, and at N = 8 the
		// nodes do so together on the machine's two vCPUs; a node plugin serves a pod once the
		// in-line checks passed, without that pass.
		v = cn.MedianStaged().Seconds() / d1.MedianStaged().Seconds()
		row(fmt.Sprintf("N = %d, the same runs: median staged time (what a pod waits for: without the agents' `--verify` re-read) ÷ one direct fetch's", label), "≤ 1.15",
			fmt.Sprintf("%.3f (%.2f s against %.2f s)", v, cn.MedianStaged().Seconds(), d1.MedianStaged().Seconds()), v <= 1.15)
	} else {
		missing(name, "≤ 1.15")
	}
	name = "OSS bytes, same runs"
	if cn != nil && d1 != nil && n > 1 {
		ok := math.Abs(cn.OSSRatio()-1) <= 0.0005 && math.Abs(d1.OSSRatio()-1) <= 0.0005
		row(name, "1.00 × model", fmt.Sprintf("chain N = %d: %.3f ×, direct N = 1: %.3f ×", n, cn.OSSRatio(), d1.OSSRatio()), ok)
	} else {
		missing(name, "1.00 × model")
	}
	sl := find(main, SlowHost, n)
	name = fmt.Sprintf("N = %d with one host at ¼ of the others' link rate (%s), second in the chain: median ready time of the other %d ÷ the same run's chain N = %d", label, cmp.Or(p.slowRate, "250mbit"), label-1, label)
	if sl != nil && cn != nil {
		v := sl.Median().Seconds() / cn.Median().Seconds()
		bound := float64(p.size) * 8 / (p.linkBits / 4)
		row(name, "≤ 1.2", fmt.Sprintf("%.3f (%.2f s against %.2f s); the slow host itself (%s, position %d): %.2f s, its S ÷ B %.2f s",
			v, sl.Median().Seconds(), cn.Median().Seconds(), sl.Slow.Name, sl.Slow.Position, sl.Slow.Ready.Seconds(), bound), v <= 1.2)
	} else {
		missing(name, "≤ 1.2")
	}
	name = fmt.Sprintf("Relay CPU, a middle node of chain N = %d: core-s per GB forwarded, without its start-up and its `--verify` re-read", label)
	if cn != nil && cn.Relay != nil {
		r := cn.Relay
		v := r.PerGB()
		got := fmt.Sprintf("%.3f (%s, position %d of %d: %.2f core-s, less %.2f of start-up and %.2f verifying, for %.2f GB forwarded); all agents, all their CPU: %.2f",
			v, r.Node, r.Position, r.Of, r.CPU, r.StartCPU, r.VerifyCPU, float64(r.Served)/1e9, cn.CPUPerGB())
		if bare := lowestPerGB(lk.bare); bare > 0 {
			got += fmt.Sprintf("; a bare hop between two of these hosts, alone (one receive and one sendfile over the same shaped veth links, nothing else): %.3f (lowest of %d), the relay %.2f × it", bare, len(lk.bare), v/bare)
		}
		row(name, "≤ 0.5", got, v <= 0.5)
	} else {
		missing(name, "≤ 0.5")
	}
	if len(lk.relays) > 0 {
		v := lowestPerGB(lk.relays)
		got := fmt.Sprintf("%.3f (lowest of %d runs)", v, len(lk.relays))
		if bare := lowestPerGB(lk.bare); bare > 0 {
			got += fmt.Sprintf("; the bare hop over the same links %.3f: the relay is %.2f × it", bare, v/bare)
		}
		if len(lk.alongside) > 0 {
			got += fmt.Sprintf("; with the head downloading the model from the emulator meanwhile, on the same vCPUs: %.3f (lowest of %d runs, alternating with these)", lowestPerGB(lk.alongside), len(lk.alongside))
		}
		row(fmt.Sprintf("Relay CPU, the middle node of a chain of three over %s links, alone (its predecessor, the head, has the model before it starts; nothing else running): core-s per GB forwarded, without its start-up and its `--verify` re-read", p.link), "≤ 0.5",
			got, v <= 0.5)
	}
	if head != nil && len(head.Relays) > 0 {
		v := head.RelayPerGB()
		got := fmt.Sprintf("%.3f (lowest of %d runs)", v, len(head.Relays))
		if bare := head.BarePerGB(); bare > 0 {
			got += fmt.Sprintf("; a bare hop (one receive and one sendfile, nothing else) %.3f in the same run: the relay is %.2f × its kernel's cost", bare, v/bare)
		}
		row("Relay CPU, the middle node of a chain of three on loopback (no simulated link): core-s per GB forwarded, without the `--verify` re-read", "≤ 0.5",
			got, v <= 0.5)
	}
	if dn := find(main, Direct, n); dn != nil && cn != nil {
		v := dn.Max().Seconds() / cn.Max().Seconds()
		row(fmt.Sprintf("chain vs direct at N = %d (slowest node)", n), "≥ 6 × faster", fmt.Sprintf("%.1f × (%.2f s against %.2f s)", v, cn.Max().Seconds(), dn.Max().Seconds()), v >= 6)
	}
	if t1 := find(main, Chain, 1); t1 != nil {
		bound := float64(p.size) * 8 / p.linkBits
		v := t1.Max().Seconds()/bound - 1
		row("chain T(1) against S ÷ B", "within 10 %", fmt.Sprintf("%+.1f %% (%.2f s against %.2f s)", v*100, t1.Max().Seconds(), bound), v <= 0.10)
	}
	if len(results) > 1 {
		s1, s32 := find(results[1], Chain, 1), find(results[1], Chain, 32)
		if s1 != nil && s32 != nil {
			v := s32.Max().Seconds() / s1.Max().Seconds()
			row("scale run: chain T(32) ÷ T(1) (slowest node)", "≤ 1.20", fmt.Sprintf("%.2f (%.2f s / %.2f s)%s", v, s32.Max().Seconds(), s1.Max().Seconds(), cpuBound(s32)), v <= 1.20)
		}
	}
	worst, worstFail, chains, fails := 0.0, 0.0, 0, 0
	for _, rs := range results {
		for _, r := range rs {
			switch r.Kind {
			case Chain, Late, SlowHost:
				worst, chains = max(worst, r.OSSRatio()), chains+1
			case Fail:
				worstFail, fails = max(worstFail, r.OSSRatio()), fails+1
			}
		}
	}
	if chains > 0 {
		row("OSS ÷ S for every chain run", "1.00", fmt.Sprintf("at most %.3f", worst), worst <= 1.0005)
	}
	if fails > 0 && len(parts) > 0 {
		chunk := 1.0 / float64(parts[0].size>>20) // one 1 MiB chunk, in models
		row("failure runs: OSS ÷ S (a middle node: no takeover)", "≤ 1.00 + one chunk per takeover", fmt.Sprintf("at most %.3f", worstFail), worstFail <= 1+chunk+0.0005)
	}
	b.WriteString("\n")
	b.WriteString(boundsText)
	return b.String()
}

// boundsText says what bounds the broadcast figures on this machine, from profiles taken in
// the session that built them (perf record -a -g during chain N = 8; see docs/design.md).
const boundsText = `**What bounds these figures.** Every simulated host's network stack runs on the same two
vCPUs. During chain N = 8 the machine is 75–80 % busy (perf record -a), the agents' user time is
a small share (CRC-64 about 1 %), and the rest is the kernel: the receive copy (` + "`_copy_to_iter`" + `,
about 7 %), zeroing new tmpfs pages (` + "`clear_page_erms`" + `, about 4 %), and the veth, bridge, tc tbf and TCP
processing of every byte. A veth (and loopback) delivers a packet in the sending process's
context, so each node also pays, in its own system time, for its successor's receive processing:
a middle node's figure holds both ends of two links. This VM also hands freed memory back to its
host (free page reporting) and faults it in again on first touch, up to 2 s of system time per
GiB against 0.05 s for resident memory; the harness turns the reporting off for its run
(` + "`HoldMemory`" + `) and touches the memory a run will use first, so the figures measure modelcast
rather than the hypervisor (before that, a relay's figure varied 4 × from run to run). What is
left of a middle node's CPU on loopback (0.57 core-s per GB), from ` + "`perf record -g`" + ` of four relays (before the receivers' low-water mark, which moved it by 3 %):
its receiving goroutines 62 % (the copy into the cache, ` + "`_copy_to_iter`" + `, 12 %; TCP receive
processing 30 %; zeroing the cache's new huge pages 7 %; the CRC-64 6 %, which runs at 28 GB/s
against 70 GB/s on cached data: the received bytes are in memory, not cache), its
` + "`sendfile`" + ` to the successor 29 %, and the Go scheduler and ` + "`sysmon`" + ` 9 %. Under that load the head itself reads OSS more slowly than a
direct fetch alone does, and the chain's ready time grows with it.

`

// plots draws the main part's chain and direct runs; false when it has no chain runs.
func plots(out string, p part, rs []*Result) (bool, error) {
	blue, red, grey := color.RGBA{30, 90, 200, 255}, color.RGBA{210, 60, 40, 255}, color.RGBA{120, 120, 120, 255}
	var chain, direct, bound Series
	chain = Series{Name: "chain (median)", Color: blue}
	direct = Series{Name: "direct (median)", Color: red}
	bound = Series{Name: "S / B", Color: grey, Dashed: true}
	var ossChain, ossDirect Series
	ossChain = Series{Name: "chain", Color: blue}
	ossDirect = Series{Name: "direct", Color: red}
	var ticks []float64
	for _, r := range rs {
		n := float64(r.N)
		switch r.Kind {
		case Chain:
			chain.X, chain.Y = append(chain.X, n), append(chain.Y, r.Median().Seconds())
			ossChain.X, ossChain.Y = append(ossChain.X, n), append(ossChain.Y, r.OSSRatio())
			bound.X, bound.Y = append(bound.X, n), append(bound.Y, float64(p.size)*8/p.linkBits)
			ticks = append(ticks, n)
		case Direct:
			direct.X, direct.Y = append(direct.X, n), append(direct.Y, r.Median().Seconds())
			ossDirect.X, ossDirect.Y = append(ossDirect.X, n), append(ossDirect.Y, r.OSSRatio())
		}
	}
	if len(chain.X) == 0 {
		return false, nil
	}
	title := fmt.Sprintf("%d MiB model, %s links, OSS %s", p.size>>20, p.link, p.oss)
	if err := Plot(filepath.Join(out, "broadcast-ready.png"), "Time to a ready model: "+title, "nodes (N)", "seconds", ticks, []Series{direct, chain, bound}); err != nil {
		return false, err
	}
	return true, Plot(filepath.Join(out, "broadcast-oss.png"), "OSS egress / model size: "+title, "nodes (N)", "OSS bytes / S", ticks, []Series{ossDirect, ossChain})
}

func cpuModel() string {
	data, err := os.ReadFile("/proc/cpuinfo")
	if err == nil {
		for _, l := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(l, "model name"); ok {
				return strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
			}
		}
	}
	return "unknown CPU"
}

func kernel() string {
	out, err := exec.Command("uname", "-r").Output()
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(out))
}

// cpuBound says how much of a run's slowest ready time the machine's processors alone needed
// for its agents' work (Result.CPUFloor): what bounds a figure when all hosts share them.
func cpuBound(r *Result) string {
	cpus := runtime.NumCPU()
	floor, slowest := r.CPUFloor(cpus), r.Max()
	return fmt.Sprintf("; its %d agents used %.1f core-s, which %d vCPUs need %.2f s for, %.0f %% of its slowest node's %.2f s",
		r.N, r.CPU, cpus, floor.Seconds(), 100*floor.Seconds()/slowest.Seconds(), slowest.Seconds())
}
