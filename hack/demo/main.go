// Command demo is make demo's second part: model broadcasting on this machine. It serves a
// generated model from the OSS emulator (limited to --rate, as OSS egress would be), starts
// --nodes node agents (bin/csi-plugin agent: the node's real cache, chain and data plane) on
// 127.0.0.10, .11, …, shows a live line per node, and ends with a summary. Redis is the
// embedded bin/redisd (miniredis) unless --redis names a real one.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/modelcast/modelcast/internal/units"
	"github.com/modelcast/modelcast/test/ossemu"
)

type event struct {
	Event     string  `json:"event"`
	Node      string  `json:"node"`
	Done      int64   `json:"done"`
	Total     int64   `json:"total"`
	From      string  `json:"from"`
	Rate      float64 `json:"rate"`
	Seconds   float64 `json:"seconds"`
	FromOSS   int64   `json:"fromOSS"`
	FromPeers int64   `json:"fromPeers"`
	Served    int64   `json:"served"`
	Verified  bool    `json:"verified"`
	Error     string  `json:"error"`
	HTTP      string  `json:"http"`
}

type node struct {
	name string
	cmd  *exec.Cmd
	mu   sync.Mutex
	last event
	done *event
	http string // where its /metrics is
	// closed: its output has been read to the end.
	closed chan struct{}
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
	emu := ossemu.New(ossemu.Options{Region: "cn-demo", Credentials: []ossemu.Credential{{AccessKeyID: "LTAIdemo0000modelcast", AccessKeySecret: "demo-secret-not-for-production"}}})
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
	host, port, err := net.SplitHostPort(redisAddr)
	if err != nil {
		return fmt.Errorf("redis address %q: %w", redisAddr, err)
	}
	rport, _ := strconv.Atoi(port)
	bind, err := freePort()
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
			_ = nd.cmd.Process.Signal(syscall.SIGTERM)
			_ = nd.cmd.Wait()
		}
	}()
	start := time.Now()
	for i := range n {
		nd, err := startAgent(i, work, endpoint, host, rport, bind, bin)
		if err != nil {
			return err
		}
		nodes = append(nodes, nd)
		time.Sleep(150 * time.Millisecond) // pods start one after another: join order is start order
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
		_ = nd.cmd.Process.Signal(syscall.SIGTERM)
		_ = nd.cmd.Wait()
		<-nd.closed
	}
	summary(nodes, size, emu.Stats().BytesServed)
	return nil
}

// showMetrics prints a few of a node's Prometheus series, as a scrape of its --http-endpoint
// returns them.
func showMetrics(ctx context.Context, nd *node) {
	nd.mu.Lock()
	addr := nd.http
	nd.mu.Unlock()
	if addr == "" {
		return
	}
	url := "http://" + addr + "/metrics"
	fmt.Printf("\n==> curl %s  (%s; excerpt)\n", url, nd.name)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Printf("  %v\n", err)
		return
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
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

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func startAgent(i int, work, endpoint, redisHost string, redisPort, bind int, bin string) (*node, error) {
	name := fmt.Sprintf("node-%d", i)
	dir := filepath.Join(work, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	cfg := map[string]any{
		"expireTimeSec": 600,
		"broadcast":     map[string]any{"enableBroadcast": true, "tenant": "demo", "db": map[string]any{"host": redisHost, "port": redisPort}},
		"bindPort":      bind,
		"cache":         map[string]any{"root": filepath.Join(dir, "cache"), "tmpfs": false},
	}
	b, _ := json.Marshal(cfg)
	if err := os.WriteFile(filepath.Join(dir, "config.json"), b, 0o600); err != nil {
		return nil, err
	}
	logf, err := os.Create(filepath.Join(dir, "agent.log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(filepath.Join(bin, "csi-plugin"), "agent", "--config", filepath.Join(dir, "config.json"),
		"--node-id", name, "--node-ip", fmt.Sprintf("127.0.0.%d", 10+i), "--verify", "--interval", "200ms",
		"--http-endpoint", fmt.Sprintf("127.0.0.%d:0", 10+i),
		"oss://models/demo/Qwen-demo/")
	cmd.Env = append(os.Environ(), "OSS_ENDPOINT="+endpoint, "OSS_REGION=cn-demo",
		"OSS_ACCESS_KEY_ID=LTAIdemo0000modelcast", "OSS_ACCESS_KEY_SECRET=demo-secret-not-for-production")
	cmd.Stderr = logf
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	nd := &node{name: name, cmd: cmd, closed: make(chan struct{})}
	go func() {
		defer close(nd.closed)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var e event
			if json.Unmarshal(sc.Bytes(), &e) != nil {
				continue
			}
			nd.mu.Lock()
			nd.last = e
			if e.Event == "start" {
				nd.http = e.HTTP
			}
			if e.Event == "stop" && nd.done != nil {
				nd.done.Served = e.Served // the final count: it served its successors after it was ready
			}
			if e.Event == "ready" || e.Event == "error" {
				e := e
				nd.done = &e
			}
			nd.mu.Unlock()
		}
		nd.mu.Lock()
		if nd.done == nil {
			nd.done = &event{Event: "error", Error: "the agent exited; see " + logf.Name()}
		}
		nd.mu.Unlock()
	}()
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
			nd.mu.Lock()
			e, done := nd.last, nd.done
			nd.mu.Unlock()
			if done == nil {
				all = false
			}
			lines = append(lines, line(nd.name, e, done, size, start))
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

func line(name string, e event, done *event, size int64, start time.Time) string {
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
		nd.mu.Lock()
		d := nd.done
		nd.mu.Unlock()
		if d == nil || d.Event != "ready" {
			ok = false
			fmt.Printf("%-8s %10s\n", nd.name, "failed")
			continue
		}
		check := "CRC-64 OK (every file re-read)"
		if !d.Verified {
			check, ok = "not verified", false
		}
		fmt.Printf("%-8s %10.2f %11s %11s %11s  %s\n", nd.name, d.Seconds, units.Bytes(d.FromOSS), units.Bytes(d.FromPeers), units.Bytes(d.Served), check)
	}
	fmt.Printf("\nOSS served %s for %d nodes: %.2f × the model.\n", units.Bytes(ossServed), len(nodes), float64(ossServed)/float64(size))
	if !ok {
		fmt.Println("Some node did not finish: see its agent.log.")
	}
}
