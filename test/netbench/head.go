package netbench

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/modelcast/modelcast/test/agenttest"
	"github.com/modelcast/modelcast/test/freeport"
	"github.com/modelcast/modelcast/test/ossemu"
)

// Modes of a single-node run.
const (
	HeadMode   = "head"   // broadcast on, a fresh tenant: the chain's head, alone in it
	DirectMode = "direct" // broadcast off: a direct fetch
)

// HeadConfig shapes RunHead.
type HeadConfig struct {
	Size    int64  // the generated model's size
	Rounds  int    // 0: 3
	Profile string // the emulator's --profile; "" is ossemu.ObjectStoreProfile
	// RelayRuns is how many three-node chains measure a middle node on loopback (0: 4; -1:
	// none). The lowest counts: this VM's noise (memory its host took back) only ever adds.
	RelayRuns int
	Log       func(format string, args ...any)
}

// HeadRun is one agent's run.
type HeadRun struct {
	Mode     string
	Round    int
	Stage    time.Duration // from its start line to the model staged (ready line's seconds)
	Wall     time.Duration // from the process's start to its ready line: with its start-up and --verify re-read
	OSSBytes int64         // the emulator's egress during the run
	Received int64         // what the agent staged, from OSS and peers
	Verified bool
	From     string
}

// GBps is the model's size over the stage time, in GB/s.
func (r HeadRun) GBps(size int64) float64 { return float64(size) / r.Stage.Seconds() / 1e9 }

// HeadRound is the better of each mode's two back-to-back runs.
type HeadRound struct {
	Head, Direct HeadRun
}

// Ratio is head ÷ direct, in GB/s.
func (r HeadRound) Ratio() float64 { return r.Direct.Stage.Seconds() / r.Head.Stage.Seconds() }

// HeadResult is what RunHead measured.
type HeadResult struct {
	Size    int64
	Profile string
	Rounds  []HeadRound
	Runs    []HeadRun // every run, in order
	Took    time.Duration
	// Relays are the middle nodes of three-node chains on loopback (no namespaces, no
	// shaping): what relaying costs without a simulated link's network stack.
	Relays []*Relay
	// Bare are the bare hops run after each relay (BareHop): the same bytes through one
	// receive and one send with nothing of modelcast in the way, the relay's baseline.
	Bare []*BareHop
}

// BarePerGB is the lowest bare-hop figure, as RelayPerGB is the lowest relay's.
func (r *HeadResult) BarePerGB() float64 { return lowestPerGB(r.Bare) }

// lowestPerGB is the lowest of the runs' figures (0 for none): this VM's noise only ever adds.
func lowestPerGB[T interface{ PerGB() float64 }](runs []T) float64 {
	best := 0.0
	for _, x := range runs {
		if v := x.PerGB(); best == 0 || v < best {
			best = v
		}
	}
	return best
}

// RelayPerGB is the lowest middle-node figure of the loopback relay runs (this VM's noise
// only ever adds).
func (r *HeadResult) RelayPerGB() float64 { return lowestPerGB(r.Relays) }

// HeadGBps and DirectGBps are the medians over rounds; Ratio the median of the rounds' ratios.
func (r *HeadResult) HeadGBps() float64 {
	return medianOf(r.Rounds, func(h HeadRound) float64 { return h.Head.GBps(r.Size) })
}

func (r *HeadResult) DirectGBps() float64 {
	return medianOf(r.Rounds, func(h HeadRound) float64 { return h.Direct.GBps(r.Size) })
}

func (r *HeadResult) Ratio() float64 { return medianOf(r.Rounds, HeadRound.Ratio) }

func medianOf[T any](xs []T, f func(T) float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	v := make([]float64, len(xs))
	for i, x := range xs {
		v[i] = f(x)
	}
	slices.Sort(v)
	if len(v)%2 == 0 {
		return (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return v[len(v)/2]
}

// RunHead measures, on this machine's loopback without namespaces, a chain's head alone
// against a direct fetch: the emulator as a process (cfg.Profile) serving a generated model
// from a tmpfs, a real redis-server, and one csi-plugin agent at a time with its cache on a
// tmpfs of its own and the default prefetch concurrency. Rounds alternate which mode goes
// first; in a round each mode runs twice back to back and keeps the better run (this VM
// returns freed memory to its host, and whoever touches it first pays to fault it in again;
// HoldMemory stops that for the run, this guards against what is left of it).
// Every run must stage the whole model, verify it (--verify) and cost OSS exactly one copy.
func RunHead(ctx context.Context, cfg HeadConfig) (res *HeadResult, err error) {
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("the head benchmark needs root (tmpfs mounts)")
	}
	log := cfg.Log
	if log == nil {
		log = func(string, ...any) {}
	}
	rounds := cfg.Rounds
	if rounds <= 0 {
		rounds = 3
	}
	defer HoldMemory(log)()
	start := time.Now()
	dir, err := os.MkdirTemp("", "mch")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	models := filepath.Join(dir, "models")
	if err := os.MkdirAll(models, 0o755); err != nil {
		return nil, err
	}
	if err := unix.Mount("tmpfs", models, "tmpfs", 0, fmt.Sprintf("size=%d", cfg.Size+cfg.Size/8+64<<20)); err != nil {
		return nil, fmt.Errorf("mount the model's tmpfs: %w", err)
	}
	defer func() { _ = unix.Unmount(models, unix.MNT_DETACH) }()
	bin, err := Build(ctx, dir)
	if err != nil {
		return nil, err
	}
	redis, err := startRedis(bin.RedisServer, dir, "127.0.0.1")
	if err != nil {
		return nil, err
	}
	defer redis.Stop()
	port, err := freeport.Get()
	if err != nil {
		return nil, err
	}
	const prefix = "head/"
	oss, err := startOSS(bin.OSSEmu, Host{IP: "127.0.0.1"}, port, dir, map[string]int64{prefix: cfg.Size}, cfg.Profile)
	if err != nil {
		return nil, err
	}
	defer oss.Stop()
	res = &HeadResult{Size: cfg.Size, Profile: oss.Profile}
	log("single node, %d MiB model, emulator profile %s, loopback: %d rounds", cfg.Size>>20, oss.Profile, rounds)

	seq := 0
	one := func(mode string, round int) (HeadRun, error) {
		seq++
		run := HeadRun{Mode: mode, Round: round}
		if err := warmMemory(dir, cacheSize(cfg.Size)); err != nil {
			return run, err
		}
		if err := oss.Reset(); err != nil {
			return run, err
		}
		bindPort, err := freeport.Get()
		if err != nil {
			return run, err
		}
		spec := agentSpec{host: Host{IP: "127.0.0.1"}, name: fmt.Sprintf("%s-%d", mode, seq), plugin: bin.Plugin,
			dir: filepath.Join(dir, fmt.Sprintf("run-%02d", seq)), model: "oss://models/" + prefix, endpoint: oss.Endpoint,
			tenant: fmt.Sprintf("head-%d-%d", seq, time.Now().UnixNano()%1e6), cacheSize: cacheSize(cfg.Size), bindPort: bindPort}
		if mode == HeadMode {
			spec.redis = redis.Addr
		}
		defer os.RemoveAll(spec.dir)
		a, err := startAgent(spec)
		if err != nil {
			return run, err
		}
		defer a.stop()
		r, err := a.Ready(5 * time.Minute)
		if err != nil {
			return run, fmt.Errorf("%w; see %s", err, a.logPath)
		}
		if run.OSSBytes, err = oss.Served(); err != nil {
			return run, err
		}
		run.Wall = a.readyTime()
		run.Stage = time.Duration(r.Seconds * float64(time.Second))
		run.Received, run.Verified, run.From = r.FromOSS+r.FromPeers, r.Verified, r.From
		log("  round %d %s: %.3f GB/s (staged in %.3f s; %.3f s from its process start to ready, with the --verify re-read), from %s, OSS %d bytes",
			round, mode, run.GBps(cfg.Size), run.Stage.Seconds(), run.Wall.Seconds(), run.From, run.OSSBytes)
		switch {
		case !run.Verified:
			return run, fmt.Errorf("%s: ready without its CRC-64 check of every file", a.Name)
		case run.Received != cfg.Size || r.FromOSS != cfg.Size:
			return run, fmt.Errorf("%s: staged %d bytes (%d from OSS) of a %d-byte model", a.Name, run.Received, r.FromOSS, cfg.Size)
		case run.OSSBytes != cfg.Size:
			return run, fmt.Errorf("%s: OSS served %d bytes for a %d-byte model: want exactly one copy", a.Name, run.OSSBytes, cfg.Size)
		case run.Stage <= 0:
			return run, fmt.Errorf("%s: its ready line has no stage time", a.Name)
		}
		return run, nil
	}
	best := func(mode string, round int) (HeadRun, error) {
		var b HeadRun
		for i := range 2 {
			r, err := one(mode, round)
			if err != nil {
				return r, fmt.Errorf("round %d, %s: %w", round, mode, err)
			}
			res.Runs = append(res.Runs, r)
			if i == 0 || r.Stage < b.Stage {
				b = r
			}
		}
		return b, nil
	}
	for r := range rounds {
		modes := []string{HeadMode, DirectMode}
		if r%2 == 1 {
			slices.Reverse(modes)
		}
		var round HeadRound
		for _, m := range modes {
			b, err := best(m, r+1)
			if err != nil {
				return nil, err
			}
			if m == HeadMode {
				round.Head = b
			} else {
				round.Direct = b
			}
		}
		log("  round %d: head ÷ direct %.3f", r+1, round.Ratio())
		res.Rounds = append(res.Rounds, round)
	}
	// A middle node alone: head, middle and tail on loopback, the middle's CPU while it
	// received and forwarded the model, its --verify re-read left out; the head has the model
	// before the others start (relayAlone).
	relays := cfg.RelayRuns
	if relays == 0 {
		relays = 4
	}
	for i := range max(relays, 0) {
		rl, err := relayLoopback(ctx, bin, dir, redis.Addr, oss, prefix, cfg.Size, i)
		if err != nil {
			return nil, fmt.Errorf("loopback relay: %w", err)
		}
		log("  loopback relay %d: middle node %.3f core-s per GB forwarded (%.2f core-s, %.2f of them verifying, %.2f GB)", i+1, rl.PerGB(), rl.CPU, rl.VerifyCPU, float64(rl.Served)/1e9)
		res.Relays = append(res.Relays, rl)
		bh, err := bareHop(ctx, dir, cfg.Size, loopback, loopback)
		if err != nil {
			return nil, fmt.Errorf("bare hop: %w", err)
		}
		log("  bare hop %d: %.3f core-s per GB (%.2f core-s, %.2f GB)", i+1, bh.PerGB(), bh.CPU, float64(bh.Bytes)/1e9)
		res.Bare = append(res.Bare, bh)
	}
	res.Took = time.Since(start)
	return res, nil
}

// relayLoopback runs a chain of three agents on loopback and returns its middle node's relay.
func relayLoopback(ctx context.Context, bin Binaries, dir, redis string, oss *OSS, prefix string, size int64, seq int) (*Relay, error) {
	return relayAlone(ctx, bin, dir, redis, oss.Endpoint, prefix, size, fmt.Sprint(seq), [3]Host{loopback, loopback, loopback}, headFirst)
}

// How relayAlone starts its chain's head.
const (
	// headFirst: the head stages the whole model before the middle and the tail start, so the
	// middle node's predecessor serves it from its cache and nothing else runs on the machine
	// while the middle relays, as a node of a real chain has its machine to itself.
	headFirst = true
	// headAlongside: the three start together, and the head downloads the model from the
	// emulator while the middle relays it, the emulator, the head and their links' traffic
	// sharing the machine's vCPUs with it (its system time then holds some of their network
	// processing, which the kernel runs in whichever process it interrupts).
	headAlongside = false
)

// relayAlone runs a chain of three agents (head, middle, tail) on hosts, nothing else of the
// benchmark running, and returns its middle node's relay. With first (headFirst), the head is
// ready before the others start. Agents on loopback each get a port of their own; agents in
// namespaces use the default.
func relayAlone(ctx context.Context, bin Binaries, dir, redis, endpoint, model string, size int64, seq string, hosts [3]Host, first bool) (*Relay, error) {
	if err := warmMemory(dir, 6*cacheSize(size)); err != nil {
		return nil, err
	}
	tenant := fmt.Sprintf("relay-%s-%d", seq, time.Now().UnixNano()%1e6)
	var agents []*node
	defer func() {
		for _, a := range agents {
			a.stop()
		}
	}()
	for i, h := range hosts {
		port := 0
		if h.NS == "" {
			var err error
			if port, err = freeport.Get(); err != nil {
				return nil, err
			}
		}
		spec := agentSpec{host: h, name: fmt.Sprintf("relay-%s-%d", seq, i), plugin: bin.Plugin,
			dir: filepath.Join(dir, fmt.Sprintf("relay-%s-%d", seq, i)), model: "oss://models/" + model, endpoint: endpoint,
			redis: redis, tenant: tenant, cacheSize: cacheSize(size), bindPort: port}
		defer os.RemoveAll(spec.dir)
		a, err := startAgent(spec)
		if err != nil {
			return nil, err
		}
		agents = append(agents, a)
		// Join in order: wait until this one knows its place before starting the next.
		if err := a.waitFor(ctx, time.Now().Add(time.Minute), hasPosition); err != nil {
			return nil, err
		}
		if i == 0 && first {
			if err := a.waitFor(ctx, time.Now().Add(5*time.Minute), agenttest.IsReady); err != nil {
				return nil, err
			}
		}
	}
	for _, a := range agents {
		if err := a.waitFor(ctx, time.Now().Add(5*time.Minute), agenttest.IsReady); err != nil {
			return nil, err
		}
	}
	for _, a := range agents {
		a.stop()
	}
	rl := middle(agents, 3)
	agents = nil
	if rl == nil || rl.Position != 2 {
		return nil, fmt.Errorf("no middle node (relay %+v)", rl)
	}
	return rl, nil
}

// Markdown is the result as a section of docs/benchmarks.md; cmd is the command that ran it.
func (r *HeadResult) Markdown(cmd string) string {
	var b bytes.Buffer
	fmt.Fprintf(&b, "## Single node: a chain's head against a direct fetch\n\n")
	fmt.Fprintf(&b, "Written by `%s` (test/netbench, `RunHead`) in %s. Emulator profile: **%s** (%s), as a process over loopback, serving a generated %d MiB model from a tmpfs. ", cmd, r.Took.Round(time.Second), r.Profile, profileText(r.Profile), r.Size>>20)
	fmt.Fprintf(&b, "One `csi-plugin agent` at a time, its cache on a tmpfs of its own, the default prefetch concurrency (16 × 16 = 256 ranged GETs): **head** has broadcast on with a real `redis-server` and a fresh tenant, so it is its chain's head, alone; **direct** has broadcast off. ")
	fmt.Fprintf(&b, "Time is from the agent's start line to its model staged (the ready line's `seconds`: listing, chain join, download, commit; not the process start-up nor the `--verify` re-read, which every run also does and passes). ")
	fmt.Fprintf(&b, "Each round runs both modes (alternating which goes first), each twice back to back, and keeps the better run; the ratio is taken within each round, then the median. Every run staged the whole model from OSS, verified, and OSS served exactly one copy.\n\n")
	fmt.Fprintf(&b, "| | GB/s (median of rounds) |\n|---|---|\n| head | %.3f |\n| direct | %.3f |\n| **head ÷ direct** | **%.3f** (goal ≥ 0.9) |\n\n", r.HeadGBps(), r.DirectGBps(), r.Ratio())
	fmt.Fprintf(&b, "| round | head GB/s | direct GB/s | head ÷ direct | every run, staged in (process start to ready) |\n|---|---|---|---|---|\n")
	for i, rd := range r.Rounds {
		var runs []string
		for _, x := range r.Runs {
			if x.Round == i+1 {
				runs = append(runs, fmt.Sprintf("%s %.2f s (%.2f s)", x.Mode, x.Stage.Seconds(), x.Wall.Seconds()))
			}
		}
		fmt.Fprintf(&b, "| %d | %.3f | %.3f | %.3f | %s |\n", i+1, rd.Head.GBps(r.Size), rd.Direct.GBps(r.Size), rd.Ratio(), strings.Join(runs, ", "))
	}
	b.WriteString("\n")
	if len(r.Relays) > 0 {
		fmt.Fprintf(&b, "**A middle node alone, on loopback.** Three agents (head, middle, tail) on this machine's loopback, no namespaces and no shaping, the head ready with the model before the other two start (so nothing but the three hops runs meanwhile); the middle node's CPU (user + system) from its start line to its stop, less its `--verify` re-read, over the bytes it forwarded: **%.3f core-s per GB** (lowest of %d runs:", r.RelayPerGB(), len(r.Relays))
		for _, x := range r.Relays {
			fmt.Fprintf(&b, " %.3f", x.PerGB())
		}
		b.WriteString("). On loopback the kernel runs the receiving side's TCP processing of every byte a node sends in the sending process's system time, so the figure holds both ends of each of the middle node's links. The harness holds this VM's memory (HoldMemory: no free page reporting to the host during the run) and touches what the run will use first, so the middle node's cache pages are resident rather than faulted in from the hypervisor.")
		if len(r.Bare) > 0 {
			fmt.Fprintf(&b, " Its baseline, after each relay run: a **bare hop**, the same bytes through one receive into a memory-mapped huge-page tmpfs file and one `sendfile` from a tmpfs file over loopback in one process, in chunk-sized pieces over as many connections as a hop uses, each read woken once its piece is there as a hop's are (SO_RCVLOWAT), with no checksums, framing, HTTP or Redis: **%.3f core-s per GB** (lowest of %d:", r.BarePerGB(), len(r.Bare))
			for _, x := range r.Bare {
				fmt.Fprintf(&b, " %.3f", x.PerGB())
			}
			fmt.Fprintf(&b, "); the relay costs **%.2f ×** what this machine's kernel charges for the bytes alone.", r.RelayPerGB()/r.BarePerGB())
		}
		b.WriteString("\n\n")
	}
	return b.String()
}

// profileText says what an emulator profile does.
func profileText(name string) string {
	p, err := ossemu.ProfileByName(name)
	switch {
	case err != nil:
		return "unknown"
	case p == ossemu.Profile{}:
		return "no first-byte latency, no per-connection cap"
	}
	return fmt.Sprintf("every request waits %v for its first byte; each TCP connection is capped at %d MB/s", p.FirstByteLatency, p.ConnBytesPerSec/1e6)
}
