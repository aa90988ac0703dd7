// Package agenttest runs `csi-plugin agent` processes for the test harnesses, the demo and
// the benchmarks (test/chaintest, test/chaos, test/netbench, hack/demo): it writes an agent's
// configuration from pkg/config's Config, starts the process, reads its lines into
// agent.Event, and waits on them, on its /metrics (test/promtest) and on its place in a
// model's chain as Redis holds it (pkg/coord). What only one harness needs stays in it: Spec
// takes a command to run the agent through (ip netns exec), where its log goes, and a hook
// that sees every line as it arrives.
//
// Nothing here takes a *testing.T: errors are returned, for tests to fail with and for the
// demo and the benchmarks to report.
package agenttest

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"github.com/modelcast/modelcast/pkg/agent"
	"github.com/modelcast/modelcast/test/promtest"
)

// Unparsable is the kind of a line that is not an agent.Event (its text in Error): an agent
// prints nothing else on stdout, so waiting fails on one.
const Unparsable = "unparsable"

// Spec says how to run one agent.
type Spec struct {
	Bin string // csi-plugin
	// Wrap runs Bin through another command: {"ip", "netns", "exec", ns}.
	Wrap   []string
	Config string // --config (WriteConfig)
	NodeID string // --node-id
	NodeIP string // --node-ip
	// Flags go after the ones above: --verify, --interval 100ms, --http-endpoint ip:0, -v 2, …
	Flags []string
	Model string // oss://bucket/prefix/, the last argument
	// Env is added to this process's environment (OSSEnv).
	Env []string
	// Stderr receives the agent's log (klog); nil discards it. A file can be closed once
	// Start returns: the agent has its own descriptor.
	Stderr io.Writer
	// OnEvent, when set, sees every line in order as it is read, before any waiter does.
	OnEvent func(agent.Event)
}

// Args are the agent's arguments (after the program name): agent, the flags, the model.
func (s Spec) Args() []string {
	args := []string{"agent"}
	for _, f := range [][2]string{{"--config", s.Config}, {"--node-id", s.NodeID}, {"--node-ip", s.NodeIP}} {
		if f[1] != "" {
			args = append(args, f[0], f[1])
		}
	}
	args = append(args, s.Flags...)
	return append(args, s.Model)
}

// Proc is a running agent and the lines it has printed.
type Proc struct {
	Name string // its node ID
	Cmd  *exec.Cmd

	model string // Spec.Model

	mu     sync.Mutex
	events []agent.Event
	change chan struct{} // closed and replaced on every line, and once it has exited
	ended  bool          // every line is read and the process reaped
	err    error         // Wait's, once ended
	exited chan struct{}
}

// Start starts the agent s describes. Its children die with this process (on Linux).
func Start(s Spec) (*Proc, error) {
	argv := append([]string{s.Bin}, s.Args()...)
	if len(s.Wrap) > 0 {
		argv = append(append([]string(nil), s.Wrap...), argv...)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), s.Env...)
	cmd.Stderr = s.Stderr
	cmd.SysProcAttr = procAttr()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start agent %s: %w", s.NodeID, err)
	}
	p := &Proc{Name: s.NodeID, Cmd: cmd, model: s.Model, change: make(chan struct{}), exited: make(chan struct{})}
	go p.read(stdout, s.OnEvent)
	return p, nil
}

// read follows the agent's stdout until it closes, then reaps the process (StdoutPipe's
// order).
func (p *Proc) read(r io.Reader, onEvent func(agent.Event)) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var e agent.Event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			e = agent.Event{Event: Unparsable, Node: p.Name, Error: sc.Text()}
		}
		if onEvent != nil {
			onEvent(e)
		}
		p.mu.Lock()
		p.events = append(p.events, e)
		p.notifyLocked()
		p.mu.Unlock()
	}
	_, _ = io.Copy(io.Discard, r) // a line too long for the scanner: never block the agent
	err := p.Cmd.Wait()
	p.mu.Lock()
	p.ended, p.err = true, err
	p.notifyLocked()
	p.mu.Unlock()
	close(p.exited)
}

func (p *Proc) notifyLocked() {
	close(p.change)
	p.change = make(chan struct{})
}

// Events returns the lines read so far.
func (p *Proc) Events() []agent.Event {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]agent.Event(nil), p.events...)
}

// Latest returns the last line read so far that satisfies cond (nil: any line).
func (p *Proc) Latest(cond func(agent.Event) bool) (agent.Event, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := len(p.events) - 1; i >= 0; i-- {
		if cond == nil || cond(p.events[i]) {
			return p.events[i], true
		}
	}
	return agent.Event{}, false
}

// WaitFor returns the first line, from the agent's first, that satisfies cond, waiting at
// most timeout for it. It fails on an error line (or an unparsable one) that cond does not
// accept, when the agent exits first, and at the timeout.
func (p *Proc) WaitFor(cond func(agent.Event) bool, timeout time.Duration) (agent.Event, error) {
	ctx, cancel := context.WithTimeoutCause(context.Background(), timeout, fmt.Errorf("nothing within %v", timeout))
	defer cancel()
	return p.WaitForContext(ctx, cond)
}

// WaitForContext is WaitFor until ctx ends.
func (p *Proc) WaitForContext(ctx context.Context, cond func(agent.Event) bool) (agent.Event, error) {
	seen := 0
	for {
		p.mu.Lock()
		evs, ch, ended, werr := p.events[seen:], p.change, p.ended, p.err
		seen = len(p.events)
		p.mu.Unlock()
		for _, e := range evs {
			if cond(e) {
				return e, nil
			}
			if e.Event == agent.EventError || e.Event == Unparsable {
				return e, fmt.Errorf("%s printed %s: %s", p.Name, e.Event, e.Error)
			}
		}
		if ended {
			return agent.Event{}, fmt.Errorf("%s exited (%v)", p.Name, exitStatus(werr))
		}
		select {
		case <-ch:
		case <-ctx.Done():
			last, _ := p.Latest(nil)
			return agent.Event{}, fmt.Errorf("%s: %w (last line %+v)", p.Name, context.Cause(ctx), last)
		}
	}
}

func exitStatus(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

// IsReady is a ready line.
func IsReady(e agent.Event) bool { return e.Event == agent.EventReady }

// Ready waits at most timeout for the ready line (WaitFor).
func (p *Proc) Ready(timeout time.Duration) (agent.Event, error) { return p.WaitFor(IsReady, timeout) }

// Metrics scrapes the agent's /metrics (it needs --http-endpoint), once it has printed its
// start line, which says where that is.
func (p *Proc) Metrics(ctx context.Context) (*promtest.Samples, error) {
	start, err := p.WaitForContext(ctx, func(e agent.Event) bool { return e.Event == agent.EventStart })
	if err != nil {
		return nil, err
	}
	if start.HTTP == "" {
		return nil, fmt.Errorf("%s serves no /metrics: start it with --http-endpoint", p.Name)
	}
	s, err := promtest.Scrape(ctx, "http://"+start.HTTP+"/metrics")
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p.Name, err)
	}
	return s, nil
}

// Pid is the agent's process ID (ip's, which execs the agent, under Wrap).
func (p *Proc) Pid() int { return p.Cmd.Process.Pid }

// Signal sends sig to the agent (SIGSTOP, SIGCONT, SIGTERM, …).
func (p *Proc) Signal(sig os.Signal) error { return p.Cmd.Process.Signal(sig) }

// Exited is closed once the agent has exited, its every line read.
func (p *Proc) Exited() <-chan struct{} { return p.exited }

// Err is how the agent exited (exec.Cmd.Wait's error; nil for status 0), once Exited is
// closed.
func (p *Proc) Err() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// State is the exited agent's process state (its CPU times), nil while it runs.
func (p *Proc) State() *os.ProcessState {
	select {
	case <-p.exited:
		return p.Cmd.ProcessState
	default:
		return nil
	}
}

// Kill sends SIGKILL (a crash: no clean-up) and waits until the agent has exited.
func (p *Proc) Kill() {
	_ = p.Cmd.Process.Kill() // no-op once it exited
	<-p.exited
}

// Stop sends SIGTERM (the agent leaves its chain, lets its model go and exits) and waits at
// most timeout for it to exit; then it kills the agent. It reports whether SIGTERM sufficed.
func (p *Proc) Stop(timeout time.Duration) bool {
	if err := p.Cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		p.Kill()
		return false
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-p.exited:
		return true
	case <-t.C:
		p.Kill()
		return false
	}
}
