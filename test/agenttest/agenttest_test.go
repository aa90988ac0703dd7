package agenttest

import (
	"strings"
	"testing"
	"time"

	"github.com/modelcast/modelcast/pkg/agent"
	"github.com/modelcast/modelcast/pkg/config"
)

// TestWriteConfig: what WriteConfig writes is what the agent loads (no unknown key; zero
// fields take their defaults, a false tmpfs stays false).
func TestWriteConfig(t *testing.T) {
	db, err := RedisDB("127.0.0.1:6380")
	if err != nil {
		t.Fatal(err)
	}
	db.Username, db.Password, db.TLS = "modelcast", "pw", true
	want := config.Config{ExpireTimeSec: 600, BindPort: 19999,
		Prefetch:  config.Prefetch{VCPUs: 2, Workers: 4},
		Broadcast: config.Broadcast{EnableBroadcast: true, Tenant: "team", HeadConcurrency: 4, DB: db},
		Cache:     config.Cache{Root: "/tmp/cache", Tmpfs: Ptr(false), TmpfsSize: "256m"}}
	path, err := WriteConfig(t.TempDir(), want)
	if err != nil {
		t.Fatal(err)
	}
	got, err := config.Load(path, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	if got.Broadcast.DB != want.Broadcast.DB || got.Broadcast.Tenant != "team" || got.Broadcast.HeadConcurrency != 4 ||
		got.BindPort != 19999 || got.ExpireTimeSec != 600 || got.Prefetch.VCPUs != 2 || got.Prefetch.Workers != 4 {
		t.Errorf("loaded %+v, want what was written: %+v", got, want)
	}
	if *got.Cache.Tmpfs || got.Cache.Root != "/tmp/cache" || got.Cache.TmpfsSize != "256m" {
		t.Errorf("cache %+v, want /tmp/cache, no tmpfs, 256m", got.Cache)
	}
	if got.Broadcast.Chains != 1 || got.Cache.Huge != "within_size" || got.Model.MaxObjects != 100_000 {
		t.Errorf("zero fields did not take their defaults: %+v", got)
	}
	if _, err := RedisDB("no-port"); err == nil {
		t.Error("RedisDB accepted an address without a port")
	}
}

// fake runs a shell script in place of the agent (Wrap: sh -c script, the agent's argv after
// it as the script's arguments).
func fake(t *testing.T, script string, onEvent func(agent.Event)) *Proc {
	t.Helper()
	p, err := Start(Spec{Bin: "csi-plugin", Wrap: []string{"sh", "-c", script, "sh"}, NodeID: "node-1",
		Model: "oss://models/m/", OnEvent: onEvent})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Kill)
	return p
}

func TestWaitFor(t *testing.T) {
	var seen []string
	p := fake(t, `echo '{"event":"start","node":"node-1","http":"127.0.0.1:1"}'
echo '{"event":"progress","node":"node-1","done":5,"total":10}'
echo '{"event":"ready","node":"node-1","verified":true}'
exec sleep 60`, func(e agent.Event) { seen = append(seen, e.Event) })
	e, err := p.Ready(10 * time.Second)
	if err != nil || !e.Verified {
		t.Fatalf("Ready: %+v, %v", e, err)
	}
	// From the first line again: the start line is found after the ready one was.
	if e, err := p.WaitFor(func(e agent.Event) bool { return e.Event == agent.EventStart }, time.Second); err != nil || e.HTTP != "127.0.0.1:1" {
		t.Errorf("start: %+v, %v", e, err)
	}
	if _, err := p.WaitFor(func(e agent.Event) bool { return e.Event == agent.EventStop }, 100*time.Millisecond); err == nil || !strings.Contains(err.Error(), "nothing within") {
		t.Errorf("a line that never comes: %v, want a timeout", err)
	}
	if last, ok := p.Latest(nil); !ok || last.Event != agent.EventReady {
		t.Errorf("Latest: %+v", last)
	}
	if strings.Join(seen, " ") != "start progress ready" {
		t.Errorf("OnEvent saw %v", seen)
	}
	if !p.Stop(10 * time.Second) {
		t.Error("SIGTERM did not end the fake agent")
	}
	if p.State() == nil {
		t.Error("no process state once exited")
	}
}

func TestWaitForFailsOnErrorAndExit(t *testing.T) {
	p := fake(t, `echo '{"event":"start","node":"node-1"}'
echo '{"event":"error","node":"node-1","error":"not found"}'
echo '{"event":"exit","node":"node-1","reason":"error","phase":"staging","error":"not found"}'
exit 1`, nil)
	if _, err := p.Ready(10 * time.Second); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("Ready after an error line: %v, want the error", err)
	}
	e, err := p.WaitFor(func(e agent.Event) bool { return e.Event == agent.EventExit }, 10*time.Second)
	if err == nil {
		t.Errorf("the exit line after an error line: %+v; want the error line to fail the wait", e)
	}
	<-p.Exited()
	if p.Err() == nil {
		t.Error("exit status 1 reported as success")
	}
	q := fake(t, `echo 'not json'`, nil)
	if _, err := q.Ready(10 * time.Second); err == nil || !strings.Contains(err.Error(), Unparsable) {
		t.Errorf("Ready after a line that is no event: %v", err)
	}
	r := fake(t, `exit 0`, nil)
	if _, err := r.Ready(10 * time.Second); err == nil || !strings.Contains(err.Error(), "exited") {
		t.Errorf("Ready from an agent that exits: %v", err)
	}
}

func TestLog(t *testing.T) {
	l := &Log{Max: 4}
	for _, s := range []string{"abc", "def", "ghi"} {
		_, _ = l.Write([]byte(s))
	}
	if got := l.String(); got != "fghi" {
		t.Errorf("log %q, want the last 4 bytes once it passed 8", got)
	}
	if got := l.Tail(2); got != "hi" {
		t.Errorf("tail %q", got)
	}
}
