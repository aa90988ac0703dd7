package chaintest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/modelcast/modelcast/pkg/config"
	"github.com/modelcast/modelcast/test/agenttest"
	"github.com/modelcast/modelcast/test/redistest"
)

// statusDoc is csi-plugin status -o json.
type statusDoc struct {
	Chains []struct {
		Tenant string `json:"tenant"`
		Key    string `json:"key"`
		URI    string `json:"uri"`
		Size   int64  `json:"size"`
		Files  int    `json:"files"`
		Nodes  []struct {
			Node     string  `json:"node"`
			Position int     `json:"position"`
			Alive    bool    `json:"alive"`
			Source   string  `json:"source"`
			Bytes    int64   `json:"bytes"`
			Progress float64 `json:"progress"`
			State    string  `json:"state"`
		} `json:"nodes"`
	} `json:"chains"`
}

// TestStatus: csi-plugin status — a process of its own, reading a node's configuration with the
// Redis password in the environment — shows a running three-node chain: positions, sources,
// progress and states, as JSON and as a table, and --watch refreshes. No secret (OSS key,
// Redis password, tenant token) appears in its output, in the agents' logs at -v 6, or in their
// metrics.
func TestStatus(t *testing.T) {
	const dbPass = "status-test-redis-pass"
	w := newWorld(t, 24*mib, redistest.Options{Username: "modelcast", Password: dbPass})
	w.emu.SetEgressRate(4 * mib) // six seconds: status sees the chain mid-transfer
	as := w.startChain(3, func(int) agentOpt { return agentOpt{corrupt: -1, verbosity: 6} })
	var outputs []string

	// Mid-transfer: every node placed, its source known.
	var doc statusDoc
	deadline := time.Now().Add(30 * time.Second)
	for {
		out := w.status(t, "-o", "json")
		outputs = append(outputs, out)
		doc = statusDoc{}
		if err := json.Unmarshal([]byte(out), &doc); err != nil {
			t.Fatalf("status -o json: %v\n%s", err, out)
		}
		if len(doc.Chains) == 1 && len(doc.Chains[0].Nodes) == 3 && doc.Chains[0].Nodes[2].Source == "node-1" && doc.Chains[0].Nodes[2].Bytes > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status never showed the three-node chain:\n%s", out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	c := doc.Chains[0]
	if c.Tenant != tenant || c.URI != "oss://models/qwen/" || c.Size != w.size || c.Files != len(w.files) {
		t.Errorf("chain %s %s of %d bytes, %d files; want %s oss://models/qwen/ of %d, %d", c.Tenant, c.URI, c.Size, c.Files, tenant, w.size, len(w.files))
	}
	staging := 0
	for i, n := range c.Nodes {
		wantSource := "OSS"
		if i > 0 {
			wantSource = "node-" + strconv.Itoa(i-1)
		}
		if n.Node != "node-"+strconv.Itoa(i) || n.Position != i+1 || !n.Alive || n.Source != wantSource {
			t.Errorf("node %d: %+v, want node-%d at position %d, alive, from %s", i, n, i, i+1, wantSource)
		}
		if n.State == "staging" && n.Progress < 1 {
			staging++
		}
	}
	if staging == 0 {
		t.Errorf("mid-transfer, no node is staging: %+v", c.Nodes)
	}

	// Watch: several frames, until interrupted.
	frames := w.watchStatus(t, 3)
	outputs = append(outputs, frames)

	for _, a := range as {
		w.checkModel(t, a.Name, a.ready(t))
	}
	// Ready: each node's completion is published when it commits.
	table := w.status(t)
	outputs = append(outputs, table)
	for i := range 3 {
		source := "OSS"
		if i > 0 {
			source = "node-" + strconv.Itoa(i-1)
		}
		row := regexp.MustCompile(`(?m)^  ` + strconv.Itoa(i+1) + ` +node-` + strconv.Itoa(i) + ` +` + source + ` +100\.0% +- +- +ready$`)
		if !row.MatchString(table) {
			t.Errorf("status table has no ready row for node-%d from %s:\n%s", i, source, table)
		}
	}
	if !strings.Contains(table, "oss://models/qwen/  tenant team  25.2 MB, ") || !strings.Contains(table, "3 of 3 nodes ready") {
		t.Errorf("status table header:\n%s", table)
	}

	// A node gone (SIGKILL, no goodbye) shows as gone once its heartbeat expires.
	as[2].Kill()
	deadline = time.Now().Add(30 * time.Second)
	for !regexp.MustCompile(`(?m)^  3 +node-2 .* gone$`).MatchString(table) {
		if time.Now().After(deadline) {
			t.Fatalf("node-2 never showed as gone:\n%s", table)
		}
		time.Sleep(200 * time.Millisecond)
		table = w.status(t)
	}

	// A wrong password: a clear error naming Redis and the user, never the password.
	_, errOut, err := w.runStatus(t, map[string]string{"MODELCAST_REDIS_PASSWORD": "wrong-redis-pass"})
	if err == nil || !strings.Contains(errOut, w.redis.Addr()) || !strings.Contains(errOut, `user \"modelcast\"`) || strings.Contains(errOut, "wrong-redis-pass") {
		t.Errorf("status with a wrong password: %v\n%s", err, errOut)
	}

	// No secret anywhere.
	rdb := redis.NewClient(&redis.Options{Addr: w.redis.Addr(), Username: "modelcast", Password: dbPass})
	defer rdb.Close()
	token, err := rdb.Get(t.Context(), "modelcast:{"+tenant+"}:token").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range as[:2] {
		outputs = append(outputs, a.metrics(t).Text)
	}
	for _, a := range as {
		outputs = append(outputs, a.stderr.String())
	}
	for _, out := range outputs {
		for name, secret := range map[string]string{"OSS secret": sk, "Redis password": dbPass, "tenant token": token} {
			if strings.Contains(out, secret) {
				t.Errorf("the %s appears in:\n%s", name, tail(out, 2000))
			}
		}
	}
}

// statusConfig writes a node configuration for status: Redis's address and user, no password
// (it comes from the environment).
func (w *world) statusConfig(t *testing.T) string {
	t.Helper()
	db, err := agenttest.RedisDB(w.redis.Addr())
	if err != nil {
		t.Fatal(err)
	}
	db.Username = w.dbUser
	path, err := agenttest.WriteConfig(t.TempDir(), config.Config{Broadcast: config.Broadcast{EnableBroadcast: true, Tenant: tenant, DB: db}})
	if err != nil {
		t.Fatal(err)
	}
	return path
}

func (w *world) runStatus(t *testing.T, env map[string]string, args ...string) (string, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, pluginBinary(t), append([]string{"status", "--config", w.statusConfig(t)}, args...)...)
	cmd.Env = os.Environ()
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	return out.String(), errOut.String(), err
}

// status runs csi-plugin status with the right password and returns what it printed.
func (w *world) status(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, err := w.runStatus(t, map[string]string{"MODELCAST_REDIS_PASSWORD": w.dbPass}, args...)
	if err != nil {
		t.Fatalf("status %v: %v\n%s", args, err, errOut)
	}
	return out
}

// watchStatus runs status --watch at 200 ms until it has drawn frames frames, then interrupts
// it; it must exit cleanly.
func (w *world) watchStatus(t *testing.T, frames int) string {
	t.Helper()
	cmd := exec.Command(pluginBinary(t), "status", "--config", w.statusConfig(t), "--watch", "--interval", "200ms")
	cmd.Env = append(os.Environ(), "MODELCAST_REDIS_PASSWORD="+w.dbPass)
	var out, errOut agenttest.Log
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() }) // if the wait below fails the test
	waitFor(t, fmt.Sprintf("%d frames of status --watch", frames), 30*time.Second, func() bool {
		return strings.Count(out.String(), "every 200ms") >= frames
	})
	_ = cmd.Process.Signal(syscall.SIGINT)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("status --watch after SIGINT: %v\n%s", err, errOut.String())
		}
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatalf("status --watch did not stop on SIGINT")
	}
	return out.String()
}
