package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/modelcast/modelcast/pkg/agent"
)

// agentProc is a running `csi-plugin agent` and its JSON lines.
type agentProc struct {
	cmd     *exec.Cmd
	lines   chan agent.Event // every line, in order; closed when stdout ends
	exited  chan struct{}
	waitErr error // set before exited closes
	logPath string
}

// startAgent runs csi-plugin agent with args; the test's end kills it if it still runs.
func startAgent(t *testing.T, bin string, env []string, logPath string, args ...string) *agentProc {
	t.Helper()
	a := &agentProc{cmd: exec.Command(bin, append([]string{"agent"}, args...)...), lines: make(chan agent.Event, 4096), exited: make(chan struct{}), logPath: logPath}
	a.cmd.Env = env
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close() // the child has its own descriptor
	a.cmd.Stderr = logFile
	stdout, err := a.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// The reader ends when the agent's stdout closes; Wait follows it (StdoutPipe's rule).
	go func() {
		defer close(a.exited)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var e agent.Event
			if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
				e = agent.Event{Event: "unparsable", Error: sc.Text()}
			}
			a.lines <- e
		}
		close(a.lines)
		a.waitErr = a.cmd.Wait()
	}()
	t.Cleanup(func() {
		_ = a.cmd.Process.Kill() // no-op once it exited
		<-a.exited
	})
	return a
}

func (a *agentProc) stderr() string { b, _ := os.ReadFile(a.logPath); return string(b) }

// waitFor reads lines until one satisfies ok, and returns it.
func (a *agentProc) waitFor(t *testing.T, what string, timeout time.Duration, ok func(agent.Event) bool) agent.Event {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		select {
		case e, open := <-a.lines:
			if !open {
				t.Fatalf("the agent ended before %s\n%s", what, a.stderr())
			}
			if e.Event == "error" || e.Event == "unparsable" {
				t.Fatalf("the agent printed %+v before %s\n%s", e, what, a.stderr())
			}
			if ok(e) {
				return e
			}
		case <-deadline.C:
			t.Fatalf("no %s within %v\n%s", what, timeout, a.stderr())
		}
	}
}

// finish reads the remaining lines until the agent exits, and returns them with its exit error.
func (a *agentProc) finish(t *testing.T, timeout time.Duration) ([]agent.Event, error) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	var rest []agent.Event
	for {
		select {
		case e, open := <-a.lines:
			if !open {
				<-a.exited
				return rest, a.waitErr
			}
			rest = append(rest, e)
		case <-deadline.C:
			t.Fatalf("the agent did not exit within %v; lines so far %+v\n%s", timeout, rest, a.stderr())
		}
	}
}

// agentConfig writes a configuration for an agent: its cache on a tmpfs of its own at
// dir/cache, the peer data plane on a free port.
func agentConfig(t *testing.T, dir string) (path, cacheRoot string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	_ = ln.Close()
	cacheRoot = filepath.Join(dir, "cache")
	path = filepath.Join(dir, "config.json")
	cfg := `{"bindPort": ` + strconv.Itoa(port) + `, "expireTimeSec": 600, "prefetch": {"vcpus": 2, "workers": 4},
		"cache": {"root": "` + cacheRoot + `", "tmpfs": true, "tmpfsSize": "256m", "memoryReserveGB": 0.1}}`
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	// Whatever the agents leave mounted goes before the directory does.
	t.Cleanup(func() { _ = unix.Unmount(cacheRoot, unix.MNT_DETACH) })
	return path, cacheRoot
}

// mounted reports whether path is a mount point of this process's mount table.
func mounted(t *testing.T, path string) bool {
	t.Helper()
	m, err := mountinfo.Mounted(path)
	return err == nil && m
}

// TestAgentVerifiesModelRecoveredFromDisk: an agent that crashed leaves its model in the cache
// tmpfs; the next agent recovers it (no byte from OSS), and --verify checks it against the
// manifest kept beside it, where it used to fail with "no manifest recorded".
func TestAgentVerifiesModelRecoveredFromDisk(t *testing.T) {
	bin := buildPlugin(t)
	srv, env := fetchEnv(t, 24<<20)
	dir := t.TempDir()
	cfg, cacheRoot := agentConfig(t, dir)
	args := []string{"--config", cfg, "--node-id", "node-1", "--node-ip", "127.0.0.1"}

	first := startAgent(t, bin, env, filepath.Join(dir, "first.log"), append(args, "oss://models/qwen/")...)
	first.waitFor(t, "ready", time.Minute, func(e agent.Event) bool { return e.Event == "ready" })
	if err := first.cmd.Process.Signal(syscall.SIGKILL); err != nil { // a crash: no clean-up
		t.Fatal(err)
	}
	_, _ = first.finish(t, 30*time.Second)
	if !mounted(t, cacheRoot) {
		t.Fatal("the killed agent's cache tmpfs is gone: nothing to recover")
	}

	srv.ResetStats()
	second := startAgent(t, bin, env, filepath.Join(dir, "second.log"), append(args, "--verify", "--exit", "oss://models/qwen/")...)
	ready := second.waitFor(t, "ready", time.Minute, func(e agent.Event) bool { return e.Event == "ready" })
	if !ready.Verified {
		t.Errorf("ready line %+v: want verified", ready)
	}
	rest, err := second.finish(t, 30*time.Second)
	if err != nil {
		t.Errorf("the second agent: %v\n%s", err, second.stderr())
	}
	if len(rest) != 1 || rest[0].Event != "exit" || rest[0].Reason != agent.ExitDone {
		t.Errorf("lines after ready: %+v; want one exit line with reason done", rest)
	}
	if served := srv.Stats().BytesServed; served != 0 {
		t.Errorf("OSS served %d bytes to the second agent: the model was not recovered from the cache", served)
	}
	if mounted(t, cacheRoot) {
		t.Error("the second agent left its idle cache tmpfs mounted")
	}
}

// TestAgentExitLine: whatever ends an agent, its last line is an exit line saying why and
// what it was doing; a signal is a clean stop (exit status 0), an error is not.
func TestAgentExitLine(t *testing.T) {
	bin := buildPlugin(t)
	srv, env := fetchEnv(t, 24<<20)
	const size = 24 << 20

	start := func(t *testing.T, extra ...string) (*agentProc, string) {
		dir := t.TempDir()
		cfg, cacheRoot := agentConfig(t, dir)
		args := append([]string{"--config", cfg, "--node-id", "node-1", "--node-ip", "127.0.0.1", "--interval", "50ms"}, extra...)
		return startAgent(t, bin, env, filepath.Join(dir, "agent.log"), args...), cacheRoot
	}
	checkExit := func(t *testing.T, a *agentProc, lines []agent.Event, err error, want agent.Event) {
		t.Helper()
		if len(lines) == 0 {
			t.Fatalf("no line after the signal\n%s", a.stderr())
		}
		last := lines[len(lines)-1]
		if last.Event != "exit" || last.Reason != want.Reason || last.Signal != want.Signal || last.Phase != want.Phase || last.Node != "node-1" {
			t.Errorf("last line %+v; want an exit line with reason %q, signal %q, phase %q", last, want.Reason, want.Signal, want.Phase)
		}
		if want.Error != "" && !strings.Contains(last.Error, want.Error) {
			t.Errorf("exit line's error %q; want it to say %q", last.Error, want.Error)
		}
		if last.FromOSS != want.FromOSS && want.FromOSS >= 0 {
			t.Errorf("exit line's fromOSS %d; want %d", last.FromOSS, want.FromOSS)
		}
		var exit *exec.ExitError
		switch {
		case want.Reason == agent.ExitError && (!errors.As(err, &exit) || exit.ExitCode() != 1):
			t.Errorf("exit status: %v; want 1", err)
		case want.Reason != agent.ExitError && err != nil:
			t.Errorf("exit status: %v; want 0\n%s", err, a.stderr())
		}
	}

	t.Run("SIGTERM while staging", func(t *testing.T) {
		srv.SetEgressRate(2 << 20) // twelve seconds for the model
		defer srv.SetEgressRate(0)
		a, cacheRoot := start(t, "oss://models/qwen/")
		p := a.waitFor(t, "progress", time.Minute, func(e agent.Event) bool { return e.Event == "progress" && e.Done > 0 })
		if err := a.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		lines, err := a.finish(t, 30*time.Second)
		checkExit(t, a, lines, err, agent.Event{Reason: agent.ExitSignal, Signal: "terminated", Phase: agent.PhaseStaging, FromOSS: -1})
		if last := lines[len(lines)-1]; last.FromOSS < p.FromOSS || last.FromOSS >= size {
			t.Errorf("exit line's fromOSS %d; want what it had received (at least %d, less than the model)", last.FromOSS, p.FromOSS)
		}
		for _, e := range lines {
			if e.Event == "error" || e.Event == "ready" {
				t.Errorf("a signal while staging printed %+v", e)
			}
		}
		if mounted(t, cacheRoot) {
			t.Error("the agent left its cache tmpfs mounted")
		}
	})

	t.Run("SIGINT while serving", func(t *testing.T) {
		a, _ := start(t, "oss://models/qwen/")
		a.waitFor(t, "ready", time.Minute, func(e agent.Event) bool { return e.Event == "ready" })
		if err := a.cmd.Process.Signal(syscall.SIGINT); err != nil {
			t.Fatal(err)
		}
		lines, err := a.finish(t, 30*time.Second)
		checkExit(t, a, lines, err, agent.Event{Reason: agent.ExitSignal, Signal: "interrupt", Phase: agent.PhaseServing, FromOSS: size})
		if len(lines) != 2 || lines[0].Event != "stop" {
			t.Errorf("lines after the signal: %+v; want stop, then exit", lines)
		}
	})

	t.Run("error", func(t *testing.T) {
		a, _ := start(t, "oss://models/nothing/")
		lines, err := a.finish(t, time.Minute)
		checkExit(t, a, lines, err, agent.Event{Reason: agent.ExitError, Phase: agent.PhaseStaging, Error: "not found"})
		if len(lines) < 3 || lines[len(lines)-2].Event != "error" {
			t.Errorf("lines: %+v; want start, error, exit", lines)
		}
	})

	t.Run("--exit", func(t *testing.T) {
		a, _ := start(t, "--exit", "oss://models/qwen/")
		lines, err := a.finish(t, time.Minute)
		checkExit(t, a, lines, err, agent.Event{Reason: agent.ExitDone, Phase: agent.PhaseReady, FromOSS: size})
		if len(lines) < 3 || lines[len(lines)-2].Event != "ready" {
			t.Errorf("lines: %+v; want start, progress…, ready, exit", lines)
		}
	})
}
