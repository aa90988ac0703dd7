package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"k8s.io/klog/v2"

	"github.com/modelcast/modelcast/internal/crc64ecma"
	"github.com/modelcast/modelcast/pkg/config"
	"github.com/modelcast/modelcast/pkg/driver"
	"github.com/modelcast/modelcast/pkg/metrics"
	"github.com/modelcast/modelcast/pkg/ossclient"
)

const agentUsage = `usage: csi-plugin agent [flags] oss://bucket/prefix/

Runs this node's model code without CSI: the tmpfs cache, the broadcast chain and its data
plane. It stages the model (from OSS or peers, as the chain decides), prints one JSON line per
event on stdout (start, progress, ready or error), and then keeps serving the model to peers
until SIGTERM/SIGINT, when it leaves the chain (stop). Its last line, however it ends, is exit:
why it stopped (reason signal, done or error) and what it was doing (phase); a signal is a clean
stop (exit status 0). The demo and the benchmarks run one agent per node. Credentials and
endpoint as for fetch (OSS_* variables).

flags:
`

// agentEvent is one line of the agent's output.
type agentEvent struct {
	Event     string  `json:"event"`
	Node      string  `json:"node"`
	Model     string  `json:"model,omitempty"`
	Done      int64   `json:"done,omitempty"`
	Total     int64   `json:"total,omitempty"`
	From      string  `json:"from,omitempty"`
	Rate      float64 `json:"rate,omitempty"` // bytes per second since the last line
	Seconds   float64 `json:"seconds,omitempty"`
	FromOSS   int64   `json:"fromOSS"`
	FromPeers int64   `json:"fromPeers"`
	Served    int64   `json:"served"`
	Verified  bool    `json:"verified,omitempty"` // every file re-read and its CRC-64 matched the manifest
	Dir       string  `json:"dir,omitempty"`
	Addr      string  `json:"addr,omitempty"` // the peer data plane's address
	HTTP      string  `json:"http,omitempty"` // where /metrics, /healthz and /readyz answer
	Error     string  `json:"error,omitempty"`
	// CPU is the agent's own CPU time so far, user + system of every thread, in core-seconds
	// (getrusage RUSAGE_SELF): benchmarks take what relaying costs from it.
	CPU float64 `json:"cpu"`
	// VerifyCPU, in the ready line with --verify, is the CPU time of the verify pass alone
	// (the thread that re-read every file: getrusage RUSAGE_THREAD after minus before), so
	// benchmarks can leave the check out of what a node spends on the model.
	VerifyCPU float64 `json:"verifyCPU,omitempty"`
	// Reason, Signal and Phase are the exit line's (event "exit", always the last line): why
	// the agent stopped ("signal", with Signal "terminated" or "interrupt"; "done", ready with
	// --exit; "error", with Error) and what it was doing then ("starting", "staging",
	// "verifying", "ready", "serving"). Its fromOSS and fromPeers are the bytes received by
	// then.
	Reason string `json:"reason,omitempty"`
	Signal string `json:"signal,omitempty"`
	Phase  string `json:"phase,omitempty"`
}

func runAgent(ctx context.Context, args []string) (err error) {
	fs := newFlagSet("agent")
	opts := driver.Options{Mode: driver.ModeNode, Endpoint: driver.AgentEndpoint()}
	fs.StringVar(&opts.NodeID, "node-id", os.Getenv("NODE_NAME"), "this node's ID (default: $NODE_NAME)")
	fs.StringVar(&opts.NodeIP, "node-ip", os.Getenv("NODE_IP"), "this node's address for peers (default: $NODE_IP)")
	configPath := fs.String("config", config.DefaultPath, "configuration file")
	tenant := fs.String("tenant", "", "broadcast tenant (default: broadcast.tenant)")
	interval := fs.Duration("interval", 500*time.Millisecond, "time between progress lines")
	verify := fs.Bool("verify", false, "when ready, read every file again and check its CRC-64 against the manifest")
	exit := fs.Bool("exit", false, "exit once ready instead of serving peers until a signal")
	applyHooks := addTestHooks(fs)
	httpEndpoint := fs.String("http-endpoint", "", "where to serve /metrics, /healthz and /readyz (host:port, port 0 for any; empty: off)")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), agentUsage)
		fs.PrintDefaults()
	}
	_ = fs.Parse(args)
	if fs.NArg() != 1 {
		fs.Usage()
		os.Exit(2)
	}

	var d *driver.Driver // set once built: the lines say what it served
	out := json.NewEncoder(os.Stdout)
	var outMu sync.Mutex
	emit := func(e agentEvent) {
		e.Node = opts.NodeID
		if d != nil {
			e.Served = d.Chain().ServedBytes()
		}
		e.CPU = cpuSeconds(unix.RUSAGE_SELF)
		outMu.Lock()
		defer outMu.Unlock()
		_ = out.Encode(e)
	}
	// The exit line is the last one, whatever ends the agent, printed once everything is let
	// go (so after the stop line). A signal is a requested stop, not a failure: the agent
	// then exits 0.
	phase := phaseStarting
	var sofar agentEvent // the bytes received, as last reported
	defer func() {
		e := agentEvent{Event: "exit", Phase: phase, FromOSS: sofar.FromOSS, FromPeers: sofar.FromPeers}
		switch {
		case ctx.Err() != nil:
			e.Reason, e.Signal, err = exitSignal, signalName(context.Cause(ctx)), nil
		case err != nil:
			e.Reason, e.Error = exitError, err.Error()
		default:
			e.Reason = exitDone
		}
		emit(e)
	}()
	return func() error {
		cfg, err := config.Load(*configPath, os.Getenv)
		if err != nil {
			return err
		}
		opts.Config = cfg
		built, err := driver.New(opts)
		if err != nil {
			return err
		}
		d = built
		applyHooks(d)
		holder := "agent:" + opts.NodeID
		defer func() {
			// An agent holds its model only while it runs: on the way out it lets go, closes,
			// and unmounts the cache tmpfs it mounted, so no memory stays charged behind it.
			_ = d.Store().Release(holder)
			d.Close()
			if _, err := d.Store().UnmountIfIdle(); err != nil {
				klog.ErrorS(err, "Could not unmount the cache tmpfs")
			}
		}()

		attrs := map[string]string{driver.AttrOSSPath: fs.Arg(0)}
		if *tenant != "" {
			attrs[driver.AttrTenant] = *tenant
		}
		var httpAddr string
		if *httpEndpoint != "" {
			var done <-chan struct{}
			if httpAddr, done, err = metrics.Serve(ctx, *httpEndpoint, d.HTTPHandler()); err != nil {
				return err
			}
			defer func() { <-done }() // after ctx ends: the server stops with it
		}
		start := time.Now()
		emit(agentEvent{Event: "start", Model: fs.Arg(0), Addr: d.Chain().Addr(), HTTP: httpAddr})

		type result struct {
			dir, key string
			err      error
		}
		res := make(chan result, 1)
		phase = phaseStaging
		go func() {
			dir, k, err := d.Stage(ctx, attrs, nil, holder)
			res <- result{dir, k, err}
		}()
		var r result
		t := time.NewTicker(*interval)
		defer t.Stop()
		var lastDone int64
		lastAt := start
	wait:
		for {
			select {
			case r = <-res:
				break wait
			case <-ctx.Done():
				// Stage returns at once (the staging stops when the driver closes); it
				// must have, before the holder is let go.
				r = <-res
				return r.err
			case now := <-t.C:
				for _, m := range d.Store().StagingModels() {
					p := m.Progress
					rate := float64(p.Done-lastDone) / now.Sub(lastAt).Seconds()
					lastDone, lastAt = p.Done, now
					sofar.FromOSS, sofar.FromPeers = p.FromOSS, p.FromPeers
					emit(agentEvent{Event: "progress", Done: p.Done, Total: p.Total, From: p.From, Rate: rate, FromOSS: p.FromOSS, FromPeers: p.FromPeers})
				}
			}
		}
		if r.err != nil {
			if ctx.Err() == nil {
				emit(agentEvent{Event: "error", Error: r.err.Error()})
			}
			return r.err
		}
		secs := time.Since(start).Seconds()
		ready := agentEvent{Event: "ready", Seconds: secs, Dir: r.dir}
		if meta, ok := d.Store().Info(r.key); ok {
			ready.Total, ready.From, ready.FromOSS, ready.FromPeers = meta.Size, meta.From, meta.FromOSS, meta.FromPeers
			sofar.FromOSS, sofar.FromPeers = meta.FromOSS, meta.FromPeers
		}
		if *verify {
			phase = phaseVerifying
			cpu, err := verifyDirCPU(ctx, d, r.key, r.dir)
			if err != nil {
				if ctx.Err() == nil {
					emit(agentEvent{Event: "error", Error: err.Error()})
				}
				return err
			}
			ready.Verified, ready.VerifyCPU = true, cpu
		}
		emit(ready)
		phase = phaseReady
		if *exit {
			return nil
		}
		phase = phaseServing
		<-ctx.Done()
		emit(agentEvent{Event: "stop", FromOSS: ready.FromOSS, FromPeers: ready.FromPeers})
		return nil
	}()
}

// What the agent was doing when it stopped (the exit line's phase).
const (
	phaseStarting  = "starting"  // reading its configuration, opening the cache, the chain, the HTTP server
	phaseStaging   = "staging"   // listing the model and receiving its bytes
	phaseVerifying = "verifying" // --verify: reading every file again
	phaseReady     = "ready"     // ready, exiting (--exit)
	phaseServing   = "serving"   // ready, serving peers until a signal
)

// Why the agent stopped (the exit line's reason).
const (
	exitSignal = "signal" // SIGTERM or SIGINT (signal names it): a requested stop, exit status 0
	exitDone   = "done"   // ready, with --exit
	exitError  = "error"  // error says what failed; exit status 1
)

// signalName is the signal that ended ctx, from its cause ("terminated signal received", as
// signal.NotifyContext puts it): "terminated", "interrupt".
func signalName(cause error) string {
	if cause == nil {
		return ""
	}
	return strings.TrimSuffix(cause.Error(), " signal received")
}

// verifyDirCPU is verifyDir on a thread of its own, and the CPU time that thread spent on it.
// The process goes on serving peers meanwhile: its whole rusage would count that too.
func verifyDirCPU(ctx context.Context, d *driver.Driver, key, dir string) (float64, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	before := cpuSeconds(unix.RUSAGE_THREAD)
	err := verifyDir(ctx, d, key, dir)
	return cpuSeconds(unix.RUSAGE_THREAD) - before, err
}

// cpuSeconds is user + system time of the process (unix.RUSAGE_SELF) or of the calling
// thread (unix.RUSAGE_THREAD), in seconds; 0 if getrusage fails.
func cpuSeconds(who int) float64 {
	var ru unix.Rusage
	if err := unix.Getrusage(who, &ru); err != nil {
		return 0
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

// verifyDir reads every file of the staged model again and checks its CRC-64 against the
// manifest OSS gave: an end-to-end check independent of the staging's own.
func verifyDir(ctx context.Context, d *driver.Driver, key, dir string) error {
	m, ok := d.Store().Manifest(key)
	if !ok {
		return fmt.Errorf("no manifest recorded for %s", key)
	}
	buf := make([]byte, 4<<20)
	for i, o := range m.Objects {
		if err := ctx.Err(); err != nil {
			return err
		}
		crc, n, err := fileCRC(filepath.Join(dir, filepath.FromSlash(m.Path(i))), buf)
		if err != nil {
			return err
		}
		if n != o.Size || crc != o.CRC64 {
			return fmt.Errorf("%s: %d bytes with CRC-64 %s, the manifest says %d with %d: %w", m.Path(i), n, strconv.FormatUint(crc, 10), o.Size, o.CRC64, ossclient.ErrIntegrity)
		}
	}
	return nil
}

// fileCRC reads a file through buf and returns its CRC-64/ECMA (OSS's) and size.
func fileCRC(path string, buf []byte) (crc uint64, n int64, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	n, err = io.CopyBuffer(writerFunc(func(p []byte) (int, error) { crc = crc64ecma.Update(crc, p); return len(p), nil }), f, buf)
	if err != nil {
		return 0, 0, fmt.Errorf("read %s: %w", path, err)
	}
	return crc, n, nil
}

type writerFunc func([]byte) (int, error)

func (w writerFunc) Write(p []byte) (int, error) { return w(p) }
