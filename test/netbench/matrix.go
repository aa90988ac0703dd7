package netbench

import (
	"bytes"
	"context"
	"fmt"
	"image/color"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

// part is a family of scenarios on one topology.
type part struct {
	name      string
	model     string
	size      int64
	link, oss string // tc rates
	linkBits  float64
	hosts     int
	scenarios []Scenario
}

func matrix(quick bool) []part {
	a := part{name: "main", model: "gib/", size: 1 << 30, link: "1gbit", oss: "1gbit", linkBits: 1e9, hosts: 8}
	b := part{name: "scale", model: "scale/", size: 256 << 20, link: "400mbit", oss: "400mbit", linkBits: 400e6, hosts: 32}
	if quick {
		a = part{name: "main", model: "gib/", size: 256 << 20, link: "1gbit", oss: "1gbit", linkBits: 1e9, hosts: 4}
	}
	ns := []int{1, 2, 4, 8}
	if quick {
		ns = []int{1, 2, 4}
	}
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
	parts := []part{a}
	if !quick {
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

// RunMatrix runs every scenario and writes broadcast.md and the plots into out.
func RunMatrix(ctx context.Context, out string, quick bool, log func(string, ...any)) error {
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	start := time.Now()
	var results [][]*Result
	for _, p := range matrix(quick) {
		log("part %s: %d hosts, %s links, OSS %s, model %d MiB", p.name, p.hosts, p.link, p.oss, p.size>>20)
		env, err := NewEnv(ctx, EnvConfig{Prefix: "mcb", Hosts: p.hosts, LinkRate: p.link, OSSRate: p.oss,
			Models: map[string]int64{p.model: p.size}, Log: log})
		if err != nil {
			return err
		}
		var rs []*Result
		for i, s := range p.scenarios {
			log("%s, N=%d", s.Kind, s.N)
			r, err := env.Run(ctx, s, i)
			if err != nil {
				env.Close()
				return fmt.Errorf("%s N=%d: %w", s.Kind, s.N, err)
			}
			log("  ready %.2f / %.2f / %.2f s, OSS %.3fx, peers %.2f GB, %.2f core-s per GB forwarded",
				r.Min().Seconds(), r.Median().Seconds(), r.Max().Seconds(), r.OSSRatio(), float64(r.PeerBytes)/1e9, r.CPUPerGB())
			rs = append(rs, r)
		}
		env.Close()
		results = append(results, rs)
	}
	return report(out, matrix(quick), results, time.Since(start), quick)
}

func find(rs []*Result, kind string, n int) *Result {
	for _, r := range rs {
		if r.Kind == kind && r.N == n {
			return r
		}
	}
	return nil
}

func report(out string, parts []part, results [][]*Result, took time.Duration, quick bool) error {
	var b bytes.Buffer
	cpu := cpuModel()
	cmd := "make bench"
	if quick {
		cmd = "go run ./test/netbench/cmd/netbench --quick"
	}
	fmt.Fprintf(&b, "## Broadcast: time to a ready model on N nodes\n\n")
	fmt.Fprintf(&b, "Written by `%s` (test/netbench) on %s in %s: %d vCPU (%s), Linux %s.\n\n", cmd, time.Now().UTC().Format("2006-01-02"), took.Round(time.Second), runtime.NumCPU(), cpu, kernel())
	fmt.Fprintf(&b, "Every host is a network namespace with a veth pair to one bridge; each host's link is shaped with `tc tbf` in both directions, and the OSS emulator has a namespace of its own with its egress shaped too. Redis is a real `redis-server` on the bridge. Each host runs one node agent (`csi-plugin agent`: the node plugin's cache on a tmpfs of its own, its chain part and data plane), which re-reads every file and checks its CRC-64 against OSS's before it reports ready. The whole machine has %d vCPUs for all of them.\n\n", runtime.NumCPU())
	fmt.Fprintf(&b, "Ready time is from a node's start to its model being staged and verified; nodes of a run start together (late joiners: the second half once the first half is ready, timed from their own start). OSS ÷ S is the emulator's egress over the model's size; agent CPU is user + system time of all agents over the bytes they forwarded to peers.\n\n")
	for i, p := range parts {
		rs := results[i]
		bound := float64(p.size) * 8 / p.linkBits
		fmt.Fprintf(&b, "### %d MiB model, %s links, OSS egress %s\n\nThe physical bound S ÷ B (model size over link rate) is %.2f s.\n\n", p.size>>20, p.link, p.oss, bound)
		fmt.Fprintf(&b, "| scenario | N | ready min / median / max (s) | OSS ÷ S | peer bytes (GB) | agent CPU (core-s per GB forwarded) |\n|---|---|---|---|---|---|\n")
		for _, r := range rs {
			perGB := "—"
			if r.Forwarded > 0 {
				perGB = fmt.Sprintf("%.2f", r.CPUPerGB())
			}
			extra := ""
			if r.Killed != "" {
				extra = " (killed " + r.Killed + ")"
			}
			fmt.Fprintf(&b, "| %s%s | %d | %.2f / %.2f / %.2f | %.3f | %.2f | %s |\n", r.Kind, extra, r.N,
				r.Min().Seconds(), r.Median().Seconds(), r.Max().Seconds(), r.OSSRatio(), float64(r.PeerBytes)/1e9, perGB)
		}
		b.WriteString("\n")
	}
	b.WriteString(targets(parts, results))
	if err := plots(out, parts[0], results[0]); err != nil {
		return err
	}
	b.WriteString("\n![ready time against N](bench/broadcast-ready.png)\n\n![OSS egress against N](bench/broadcast-oss.png)\n")
	return os.WriteFile(filepath.Join(out, "broadcast.md"), b.Bytes(), 0o644)
}

func targets(parts []part, results [][]*Result) string {
	var b strings.Builder
	b.WriteString("### Targets\n\nRatios are of runs in the same `make bench`.\n\n| target | measured | |\n|---|---|---|\n")
	row := func(name string, measured string, ok bool) {
		mark := "met"
		if !ok {
			mark = "**missed**"
		}
		fmt.Fprintf(&b, "| %s | %s | %s |\n", name, measured, mark)
	}
	main := results[0]
	t1, t8 := find(main, Chain, 1), find(main, Chain, 8)
	if t1 != nil && t8 != nil {
		v := t8.Max().Seconds() / t1.Max().Seconds()
		row("chain T(8) ÷ T(1) ≤ 1.10 (slowest node)", fmt.Sprintf("%.2f (%.2f s / %.2f s)", v, t8.Max().Seconds(), t1.Max().Seconds()), v <= 1.10)
	}
	if len(results) > 1 {
		s1, s32 := find(results[1], Chain, 1), find(results[1], Chain, 32)
		if s1 != nil && s32 != nil {
			v := s32.Max().Seconds() / s1.Max().Seconds()
			row("chain T(32) ÷ T(1) ≤ 1.20 (scale run, slowest node)", fmt.Sprintf("%.2f (%.2f s / %.2f s)", v, s32.Max().Seconds(), s1.Max().Seconds()), v <= 1.20)
		}
	}
	worst, worstFail := 0.0, 0.0
	for _, rs := range results {
		for _, r := range rs {
			switch r.Kind {
			case Chain, Late:
				worst = max(worst, r.OSSRatio())
			case Fail:
				worstFail = max(worstFail, r.OSSRatio())
			}
		}
	}
	row("OSS ÷ S = 1.00 for every chain run", fmt.Sprintf("at most %.3f", worst), worst <= 1.0005)
	chunk := 1.0 / float64(parts[0].size>>20) // one 1 MiB chunk, in models
	row("failure runs: OSS ÷ S ≤ 1.00 + one chunk per takeover (a middle node: no takeover)", fmt.Sprintf("at most %.3f", worstFail), worstFail <= 1+chunk+0.0005)
	if d8, c8 := find(main, Direct, 8), find(main, Chain, 8); d8 != nil && c8 != nil {
		v := d8.Max().Seconds() / c8.Max().Seconds()
		row("chain vs direct at N = 8: ≥ 6 × faster (slowest node)", fmt.Sprintf("%.1f × (%.2f s against %.2f s)", v, c8.Max().Seconds(), d8.Max().Seconds()), v >= 6)
	}
	if t1 != nil {
		bound := float64(parts[0].size) * 8 / parts[0].linkBits
		v := t1.Max().Seconds()/bound - 1
		row("T(1) within 10 % of S ÷ B", fmt.Sprintf("%+.1f %% (%.2f s against %.2f s)", v*100, t1.Max().Seconds(), bound), v <= 0.10)
	}
	worstCPU := 0.0
	for _, rs := range results {
		for _, r := range rs {
			if r.Kind == Chain && r.N > 1 {
				worstCPU = max(worstCPU, r.CPUPerGB())
			}
		}
	}
	row("relay CPU ≤ 0.5 core-s per GB forwarded", fmt.Sprintf("at most %.2f core-s per GB (all agent CPU: receiving, verifying, writing and sending)", worstCPU), worstCPU <= 0.5)
	b.WriteString("\n")
	return b.String()
}

func plots(out string, p part, rs []*Result) error {
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
	title := fmt.Sprintf("%d MiB model, %s links, OSS %s", p.size>>20, p.link, p.oss)
	if err := Plot(filepath.Join(out, "broadcast-ready.png"), "Time to a ready model: "+title, "nodes (N)", "seconds", ticks, []Series{direct, chain, bound}); err != nil {
		return err
	}
	return Plot(filepath.Join(out, "broadcast-oss.png"), "OSS egress / model size: "+title, "nodes (N)", "OSS bytes / S", ticks, []Series{ossDirect, ossChain})
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
