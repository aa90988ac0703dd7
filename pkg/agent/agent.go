package agent

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

// Options are what `csi-plugin agent` is told (its flags).
type Options struct {
	NodeID string // this node's ID
	NodeIP string // this node's address for peers
	// ConfigPath is the configuration file (config.Load: missing means the defaults).
	ConfigPath string
	// Model is the oss://bucket/prefix/ to stage.
	Model string
	// Tenant is the broadcast tenant; "": the configuration's broadcast.tenant.
	Tenant string
	// Interval is the time between progress lines (0: 500 ms).
	Interval time.Duration
	// Verify: when ready, read every file again and check its CRC-64 against the manifest.
	Verify bool
	// Exit: exit once ready instead of serving peers until ctx ends.
	Exit bool
	// HTTPEndpoint is where to serve /metrics, /healthz and /readyz (host:port, port 0 for
	// any); "": none.
	HTTPEndpoint string
	// Hooks, when set, is applied to the driver as soon as it is built (the test hooks of a
	// modelcast_testhooks build).
	Hooks func(*driver.Driver)
	// Getenv reads the environment (OSS_*, the config's overrides); nil: os.Getenv.
	Getenv func(string) string
}

// Run stages opts.Model through this node's cache and broadcast chain, printing one Event a
// line on out (start, progress, ready or error), then serves the model to peers until ctx
// ends (stop), unless opts.Exit. Its last line, however it ends, is the exit line. A ctx that
// ends (the agent's signal; its cause, as signal.NotifyContext gives it, names the signal) is
// a requested stop: Run then returns nil.
func Run(ctx context.Context, opts Options, out io.Writer) (err error) {
	getenv := opts.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}
	interval := opts.Interval
	if interval <= 0 {
		interval = 500 * time.Millisecond
	}

	var d *driver.Driver // set once built: the lines say what it served
	enc := json.NewEncoder(out)
	var outMu sync.Mutex
	emit := func(e Event) {
		e.Node = opts.NodeID
		if d != nil {
			e.Served = d.Chain().ServedBytes()
		}
		e.CPU = cpuSeconds(unix.RUSAGE_SELF)
		outMu.Lock()
		defer outMu.Unlock()
		_ = enc.Encode(e)
	}
	// The exit line is the last one, whatever ends the agent, printed once everything is let
	// go (so after the stop line). A signal is a requested stop, not a failure: the agent
	// then exits 0.
	phase := PhaseStarting
	var sofar Event // the bytes received, as last reported
	defer func() {
		e := Event{Event: EventExit, Phase: phase, FromOSS: sofar.FromOSS, FromPeers: sofar.FromPeers}
		switch {
		case ctx.Err() != nil:
			e.Reason, e.Signal, err = ExitSignal, signalName(context.Cause(ctx)), nil
		case err != nil:
			e.Reason, e.Error = ExitError, err.Error()
		default:
			e.Reason = ExitDone
		}
		emit(e)
	}()
	return func() error {
		cfg, err := config.Load(opts.ConfigPath, getenv)
		if err != nil {
			return err
		}
		built, err := driver.New(driver.Options{Mode: driver.ModeAgent,
			NodeID: opts.NodeID, NodeIP: opts.NodeIP, Config: cfg, Getenv: opts.Getenv})
		if err != nil {
			return err
		}
		d = built
		if opts.Hooks != nil {
			opts.Hooks(d)
		}
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

		attrs := map[string]string{driver.AttrOSSPath: opts.Model}
		if opts.Tenant != "" {
			attrs[driver.AttrTenant] = opts.Tenant
		}
		var httpAddr string
		if opts.HTTPEndpoint != "" {
			var done <-chan struct{}
			if httpAddr, done, err = metrics.Serve(ctx, opts.HTTPEndpoint, d.HTTPHandler()); err != nil {
				return err
			}
			defer func() { <-done }() // after ctx ends: the server stops with it
		}
		start := time.Now()
		emit(Event{Event: EventStart, Model: opts.Model, Addr: d.Chain().Addr(), HTTP: httpAddr})

		type result struct {
			dir, key string
			err      error
		}
		res := make(chan result, 1)
		phase = PhaseStaging
		go func() {
			dir, k, err := d.Stage(ctx, attrs, nil, holder)
			res <- result{dir, k, err}
		}()
		var r result
		t := time.NewTicker(interval)
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
					emit(Event{Event: EventProgress, Done: p.Done, Total: p.Total, From: p.From, Rate: rate, FromOSS: p.FromOSS, FromPeers: p.FromPeers})
				}
			}
		}
		if r.err != nil {
			if ctx.Err() == nil {
				emit(Event{Event: EventError, Error: r.err.Error()})
			}
			return r.err
		}
		secs := time.Since(start).Seconds()
		ready := Event{Event: EventReady, Seconds: secs, Dir: r.dir}
		if meta, ok := d.Store().Info(r.key); ok {
			ready.Total, ready.From, ready.FromOSS, ready.FromPeers = meta.Size, meta.From, meta.FromOSS, meta.FromPeers
			sofar.FromOSS, sofar.FromPeers = meta.FromOSS, meta.FromPeers
		}
		if opts.Verify {
			phase = PhaseVerifying
			began := time.Now()
			cpu, err := verifyDirCPU(ctx, d, r.key, r.dir)
			if err != nil {
				if ctx.Err() == nil {
					emit(Event{Event: EventError, Error: err.Error()})
				}
				return err
			}
			ready.Verified, ready.VerifyCPU, ready.VerifySeconds = true, cpu, time.Since(began).Seconds()
		}
		emit(ready)
		phase = PhaseReady
		if opts.Exit {
			return nil
		}
		phase = PhaseServing
		<-ctx.Done()
		emit(Event{Event: EventStop, FromOSS: ready.FromOSS, FromPeers: ready.FromPeers})
		return nil
	}()
}

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
		crc, n, err := FileCRC(filepath.Join(dir, filepath.FromSlash(m.Path(i))), buf)
		if err != nil {
			return err
		}
		if n != o.Size || crc != o.CRC64 {
			return fmt.Errorf("%s: %d bytes with CRC-64 %s, the manifest says %d with %d: %w", m.Path(i), n, strconv.FormatUint(crc, 10), o.Size, o.CRC64, ossclient.ErrIntegrity)
		}
	}
	return nil
}

// FileCRC reads a file through buf and returns its CRC-64/ECMA (OSS's) and size.
func FileCRC(path string, buf []byte) (crc uint64, n int64, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	// A loop of its own rather than io.CopyBuffer, which would go through *os.File's WriteTo
	// and read 32 KiB at a time whatever buf's size (verifyDir's is 4 MiB).
	for {
		k, err := f.Read(buf)
		crc = crc64ecma.Update(crc, buf[:k])
		n += int64(k)
		if err == io.EOF {
			return crc, n, nil
		}
		if err != nil {
			return 0, 0, fmt.Errorf("read %s: %w", path, err)
		}
	}
}
