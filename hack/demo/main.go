// Command demo is make demo's second part: model broadcasting on this machine. It serves a
// generated model from the OSS emulator (limited to --rate, as OSS egress would be), starts
// --nodes node agents (bin/csi-plugin agent: the node's real cache, chain and data plane) on
// 127.0.0.10, .11, …, shows a live line per node, and ends with a summary. Redis is the
// embedded bin/redisd (miniredis) unless --redis names a real one.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/sys/unix"

	"github.com/modelcast/modelcast/internal/units"
	"github.com/modelcast/modelcast/pkg/agent"
	"github.com/modelcast/modelcast/pkg/config"
	"github.com/modelcast/modelcast/pkg/coord"
	"github.com/modelcast/modelcast/test/agenttest"
	"github.com/modelcast/modelcast/test/freeport"
	"github.com/modelcast/modelcast/test/ossemu"
)

// The emulator's region and the credentials it takes (hack/demo.sh's), the agents' tenant.
const (
	region          = "cn-demo"
	accessKeyID     = "LTAIdemo0000modelcast"
	accessKeySecret = "demo-secret-not-for-production"
	tenant          = "demo"
	// stopTimeout bounds an agent's exit after SIGTERM (then it is killed).
	stopTimeout = 30 * time.Second
)

// node is one node agent.
type node struct {
	*agenttest.Proc
	log string // its stderr
}

// state is the node's last line, and its ready or error line once it has one (an exit
// without either is an error).
func (nd *node) state() (last agent.Event, done *agent.Event) {
	last, _ = nd.Latest(nil)
	if e, ok := nd.Latest(func(e agent.Event) bool { return e.Event == agent.EventReady || e.Event == agent.EventError }); ok {
		return last, &e
	}
	select {
	case <-nd.Exited():
		msg := "the agent exited; see " + nd.log
		if last.Event == agent.EventExit && last.Error != "" {
			msg = last.Error + " (see " + nd.log + ")"
		}
		return last, &agent.Event{Event: agent.EventError, Error: msg}
	default:
		return last, nil
	}
}

func main() {
	nodes := flag.Int("nodes", 4, "node agents")
	size := flag.String("size", "1GiB", "model size")
	rate := flag.String("rate", "250MB", "OSS egress limit per second (0: none)")
	redisAddr := flag.String("redis", os.Getenv("DEMO_REDIS"), "a Redis to use (host:port); default: the embedded bin/redisd")
	bin := flag.String("bin", "bin", "where csi-plugin and redisd are")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *nodes, *size, *rate, *redisAddr, *bin); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, n int, sizeFlag, rateFlag, redisAddr, bin string) error {
	size, err := ossemu.ParseSize(sizeFlag)
	if err != nil {
		return err
	}
	rate, err := ossemu.ParseRate(rateFlag)
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "modelcast-broadcast-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)

	// OSS: the emulator, in this process, with the model.
	emu := ossemu.New(ossemu.Options{Region: region, Credentials: []ossemu.Credential{{AccessKeyID: accessKeyID, AccessKeySecret: accessKeySecret}}})
	if _, err := emu.GenerateModel("models", "demo/Qwen-demo/", ossemu.ModelSpec{Size: size, Seed: 1}); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	go func() { _ = emu.Serve(ln) }()
	defer emu.Close()
	endpoint := "http://" + ln.Addr().String()

	// Redis: the embedded one unless told otherwise.
	if redisAddr == "" {
		stopRedis, addr, err := startRedisd(ctx, bin, work)
		if err != nil {
			return err
		}
		defer stopRedis()
		redisAddr = addr
	}
	db, err := agenttest.RedisDB(redisAddr)
	if err != nil {
		return err
	}
	rdb := redis.NewClient(&redis.Options{Addr: redisAddr})
	defer rdb.Close()
	chains := coord.NewCoordinator(rdb)
	bind, err := freeport.Get()
	if err != nil {
		return err
	}
	fmt.Printf("OSS emulator %s (egress %s/s), Redis %s, %d nodes on 127.0.0.10-%d, model oss://models/demo/Qwen-demo/ (%s)\n\n",
		endpoint, rateFlag, redisAddr, n, 9+n, units.Bytes(size))
	emu.SetEgressRate(rate)
	emu.ResetStats()

	var nodes []*node
	defer func() {
		for _, nd := range nodes {
			nd.Stop(stopTimeout)
		}
	}()
	start := time.Now()
	for i := range n {
		nd, err := startAgent(i, work, endpoint, db, bind, bin)
		if err != nil {
			return err
		}
		nodes = append(nodes, nd)
		// Pods start one after another: each node once the one before has joined the chain,
		// so join order is start order.
		jctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		_, err = nd.WaitJoined(jctx, chains, tenant)
		cancel()
		if err != nil {
			return fmt.Errorf("%w; see %s", err, nd.log)
		}
	}
	if err := watch(ctx, nodes, size, start); err != nil {
		return err
	}
	// What an operator sees while the nodes serve the model, then the totals once they stop
	// (a node serves its successors after it is ready: its served count is final only then).
	if err := showStatus(ctx, bin, redisAddr, filepath.Join(work, "status-config.json")); err != nil {
		return err
	}
	if len(nodes) > 1 {
		showMetrics(ctx, nodes[1])
	}
	for _, nd := range nodes {
		nd.Stop(stopTimeout)
	}
	summary(nodes, size, emu.Stats().BytesServed)
	return nil
}

// showMetrics prints a few of a node's Prometheus series, as a scrape of its --http-endpoint
// returns them.
func showMetrics(ctx context.Context, nd *node) {
	start, ok := nd.Latest(func(e agent.Event) bool { return e.Event == agent.EventStart })
	if !ok || start.HTTP == "" {
		return
	}
	fmt.Printf("\n==> curl http://%s/metrics  (%s; excerpt)\n", start.HTTP, nd.Name)
	s, err := nd.Metrics(ctx)
	if err != nil {
		fmt.Printf("  %v\n", err)
		return
	}
	for line := range strings.Lines(s.Text) {
		line = strings.TrimSuffix(line, "\n")
		for _, name := range []string{"modelcast_received_bytes_total", "modelcast_served_bytes_total", "modelcast_chain_events_total", "modelcast_cache_bytes", "modelcast_staging_duration_seconds_count"} {
			if strings.HasPrefix(line, name+"{") || strings.HasPrefix(line, name+" ") {
				fmt.Println("  " + line)
			}
		}
	}
}

// showStatus prints what an operator sees: csi-plugin status against the demo's Redis.
// The configuration file need not exist: --redis says where Redis is.
func showStatus(ctx context.Context, bin, redisAddr, config string) error {
	args := []string{"status", "--config", config, "--redis", redisAddr}
	fmt.Printf("\n==> csi-plugin %s\n", strings.Join(args, " "))
	cmd := exec.CommandContext(ctx, filepath.Join(bin, "csi-plugin"), args...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("csi-plugin status: %w", err)
	}
	return nil
}

func startRedisd(ctx context.Context, bin, work string) (func(), string, error) {
	addrFile := filepath.Join(work, "redis.addr")
	cmd := exec.Command(filepath.Join(bin, "redisd"), "--addr-file", addrFile)
	cmd.Stderr = io.Discard
	if err := cmd.Start(); err != nil {
		return nil, "", fmt.Errorf("start redisd: %w", err)
	}
	stop := func() { _ = cmd.Process.Signal(syscall.SIGTERM); _ = cmd.Wait() }
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if b, err := os.ReadFile(addrFile); err == nil && len(b) > 0 {
			return stop, strings.TrimSpace(string(b)), nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	stop()
	return nil, "", fmt.Errorf("redisd did not start")
}

// startAgent starts node i's agent (address 127.0.0.<10+i>) with its directory under work.
func startAgent(i int, work, endpoint string, db config.DB, bind int, bin string) (*node, error) {
	name := fmt.Sprintf("node-%d", i)
	ip := fmt.Sprintf("127.0.0.%d", 10+i)
	dir := filepath.Join(work, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	cfgPath, err := agenttest.WriteConfig(dir, config.Config{
		ExpireTimeSec: 600,
		Broadcast:     config.Broadcast{EnableBroadcast: true, Tenant: tenant, DB: db},
		BindPort:      bind,
		Cache:         config.Cache{Root: filepath.Join(dir, "cache"), Tmpfs: agenttest.Ptr(false)},
	})
	if err != nil {
		return nil, err
	}
	nd := &node{log: filepath.Join(dir, "agent.log")}
	logf, err := os.Create(nd.log)
	if err != nil {
		return nil, err
	}
	defer logf.Close() // the agent has its own descriptor
	nd.Proc, err = agenttest.Start(agenttest.Spec{Bin: filepath.Join(bin, "csi-plugin"), Config: cfgPath, NodeID: name, NodeIP: ip,
		Flags: []string{"--verify", "--interval", "200ms", "--http-endpoint", ip + ":0"},
		Model: "oss://models/demo/Qwen-demo/", Env: agenttest.OSSEnv(endpoint, region, accessKeyID, accessKeySecret), Stderr: logf})
	if err != nil {
		return nil, err
	}
	return nd, nil
}

// watch draws a line per node until every node is ready (or failed).
func watch(ctx context.Context, nodes []*node, size int64, start time.Time) error {
	_, err := unix.IoctlGetTermios(int(os.Stdout.Fd()), unix.TCGETS)
	tty := err == nil
	every := 200 * time.Millisecond
	if !tty {
		every = 2 * time.Second
	}
	drawn := 0
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		all := true
		var lines []string
		for _, nd := range nodes {
			e, done := nd.state()
			if done == nil {
				all = false
			}
			lines = append(lines, line(nd.Name, e, done, size, start))
		}
		if tty && drawn > 0 {
			fmt.Printf("\033[%dA", drawn)
		}
		for _, l := range lines {
			if tty {
				fmt.Printf("\r\033[K%s\n", l)
			} else {
				fmt.Println(l)
			}
		}
		drawn = len(lines)
		if !tty {
			fmt.Println()
		}
		if all {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

func line(name string, e agent.Event, done *agent.Event, size int64, start time.Time) string {
	switch {
	case done != nil && done.Event == "error":
		return fmt.Sprintf("%-7s FAILED: %s", name, done.Error)
	case done != nil:
		return fmt.Sprintf("%-7s [%s] 100.0%%  %9s  ready in %.1f s  (from OSS %s, from peers %s)",
			name, bar(1), units.Bytes(size), done.Seconds, units.Bytes(done.FromOSS), units.Bytes(done.FromPeers))
	case e.Event == "progress" && e.Total > 0:
		f := float64(e.Done) / float64(e.Total)
		return fmt.Sprintf("%-7s [%s] %5.1f%%  %9s  %7s/s  from %s", name, bar(f), f*100, units.Bytes(e.Done), units.Bytes(int64(e.Rate)), e.From)
	}
	return fmt.Sprintf("%-7s [%s]  starting (%.1f s)", name, bar(0), time.Since(start).Seconds())
}

func bar(f float64) string {
	const w = 24
	n := int(f * w)
	return strings.Repeat("#", n) + strings.Repeat(".", w-n)
}

func summary(nodes []*node, size, ossServed int64) {
	fmt.Printf("\n%-8s %10s %11s %11s %11s  %s\n", "node", "ready (s)", "from OSS", "from peers", "served", "checksum")
	ok := true
	for _, nd := range nodes {
		_, d := nd.state()
		if d == nil || d.Event != agent.EventReady {
			ok = false
			fmt.Printf("%-8s %10s\n", nd.Name, "failed")
			continue
		}
		// The final count: a node serves its successors after it is ready.
		if stop, stopped := nd.Latest(func(e agent.Event) bool { return e.Event == agent.EventStop }); stopped {
			d.Served = stop.Served
		}
		check := "CRC-64 OK (every file re-read)"
		if !d.Verified {
			check, ok = "not verified", false
		}
		fmt.Printf("%-8s %10.2f %11s %11s %11s  %s\n", nd.Name, d.Seconds, units.Bytes(d.FromOSS), units.Bytes(d.FromPeers), units.Bytes(d.Served), check)
	}
	fmt.Printf("\nOSS served %s for %d nodes: %.2f × the model.\n", units.Bytes(ossServed), len(nodes), float64(ossServed)/float64(size))
	if !ok {
		fmt.Println("Some node did not finish: see its agent.log.")
	}
}
