package ossemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Process is an emulator running as a process of its own (cmd/ossemu), as OSS is remote: it
// shares neither scheduler nor garbage collector with what it serves. Benchmarks and
// multi-process tests use it; its admin endpoints give the counters and take faults.
type Process struct {
	Endpoint string
	cmd      *exec.Cmd
	dir      string
	done     chan error
	stop     sync.Once
}

// StartProcess builds cmd/ossemu (into a temporary directory) and runs it with args (its
// flags; --listen and --addr-file are added), waiting until it serves.
func StartProcess(ctx context.Context, args ...string) (*Process, error) {
	dir, err := os.MkdirTemp("", "ossemu-")
	if err != nil {
		return nil, err
	}
	bin := filepath.Join(dir, "ossemu")
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/modelcast/modelcast/test/ossemu/cmd/ossemu").CombinedOutput(); err != nil {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("build ossemu: %w: %s", err, out)
	}
	addr := filepath.Join(dir, "addr")
	cmd := exec.Command(bin, append([]string{"--listen", "127.0.0.1:0", "--addr-file", addr}, args...)...)
	logf, err := os.Create(filepath.Join(dir, "log"))
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	p := &Process{cmd: cmd, dir: dir, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait(); logf.Close() }()
	for {
		if b, err := os.ReadFile(addr); err == nil && len(b) > 0 {
			p.Endpoint = strings.TrimSpace(string(b))
			return p, nil
		}
		select {
		case err := <-p.done:
			log, _ := os.ReadFile(filepath.Join(dir, "log"))
			_ = os.RemoveAll(dir)
			return nil, fmt.Errorf("ossemu exited (%v): %s", err, log)
		case <-ctx.Done():
			_ = p.Stop()
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Stop ends the process (SIGTERM, then SIGKILL after 10 s) and removes its files. Idempotent.
func (p *Process) Stop() error {
	p.stop.Do(func() {
		defer os.RemoveAll(p.dir)
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
	return nil
}

// Stats reads the process's counters.
func (p *Process) Stats() (Stats, error) {
	var st Stats
	res, err := http.Get(p.Endpoint + "/-/stats")
	if err != nil {
		return st, err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return st, fmt.Errorf("stats: HTTP %d", res.StatusCode)
	}
	return st, json.NewDecoder(res.Body).Decode(&st)
}

// ResetStats zeroes the process's counters.
func (p *Process) ResetStats() error { return p.post("/-/reset-stats", "") }

// SetEgressRate limits the process's egress (0: unlimited).
func (p *Process) SetEgressRate(bytesPerSec int64) error {
	return p.post("/-/egress?bps="+url.QueryEscape(strconv.FormatInt(bytesPerSec, 10)), "")
}

// SetProfile sets the process's first-byte latency and per-connection cap.
func (p *Process) SetProfile(pr Profile) error {
	b, err := json.Marshal(pr)
	if err != nil {
		return err
	}
	return p.post("/-/profile", string(b))
}

// InjectFault adds a fault to the process.
func (p *Process) InjectFault(f Fault) error {
	b, err := json.Marshal(f)
	if err != nil {
		return err
	}
	return p.post("/-/faults", string(b))
}

func (p *Process) post(path, body string) error {
	res, err := http.Post(p.Endpoint+path, "application/json", strings.NewReader(body))
	if err != nil {
		return err
	}
	defer res.Body.Close()
	if res.StatusCode/100 != 2 {
		return errors.New("ossemu admin " + path + ": " + res.Status)
	}
	return nil
}
