package chaintest

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/moby/sys/mountinfo"
	"github.com/redis/go-redis/v9"

	"github.com/modelcast/modelcast/pkg/agent"
	"github.com/modelcast/modelcast/pkg/broadcast"
	"github.com/modelcast/modelcast/pkg/config"
	"github.com/modelcast/modelcast/pkg/coord"
	"github.com/modelcast/modelcast/test/agenttest"
	"github.com/modelcast/modelcast/test/redistest"
)

const mib = 1 << 20

func noHook() agentOpt { return agentOpt{corrupt: -1} }

// startChain starts n agents one after another, each once the one before it has its place in
// the chain (or is ready), so join order is start order.
func (w *world) startChain(n int, opts func(i int) agentOpt) []*node {
	var as []*node
	for i := range n {
		o := noHook()
		if opts != nil {
			o = opts(i)
		}
		as = append(as, w.start(i, o))
		as[i].waitFor(w.t, "a place in the chain", 30*time.Second, func(e agent.Event) bool {
			return strings.Contains(e.From, "(position ") || e.Event == "ready"
		})
	}
	return as
}

func TestFourNodesOneOSSStream(t *testing.T) {
	w := newWorld(t, 32*mib, redistest.Options{})
	w.emu.SetEgressRate(32 * mib) // a second of OSS: the chain streams while the head downloads
	w.emu.ResetStats()
	as := w.startChain(4, nil)
	var fromOSS int64
	for _, a := range as {
		e := a.ready(t)
		w.checkModel(t, a.Name, e)
		if e.FromOSS+e.FromPeers != w.size {
			t.Errorf("%s received %d from OSS and %d from peers, want the model's %d once", a.Name, e.FromOSS, e.FromPeers, w.size)
		}
		fromOSS += e.FromOSS
		t.Logf("%s ready in %.2f s: %d bytes from OSS, %d from peers, served %d", a.Name, e.Seconds, e.FromOSS, e.FromPeers, e.Served)
	}
	served := w.emu.Stats().BytesServed
	t.Logf("OSS served %d bytes for a %d-byte model (%.3fx)", served, w.size, float64(served)/float64(w.size))
	if served != w.size || fromOSS != w.size {
		t.Errorf("OSS served %d bytes (%d received from OSS) for a %d-byte model: want exactly one copy", served, fromOSS, w.size)
	}
	// Each node's metrics tell the same story: the head read OSS, every other node its
	// predecessor, and each node but the tail served the model once.
	size := float64(w.size)
	for i, a := range as {
		s := a.metrics(t)
		wantOSS, wantPeer, wantServed := 0.0, size, size
		if i == 0 {
			wantOSS, wantPeer = size, 0
		}
		if i == len(as)-1 {
			wantServed = 0
		}
		for _, c := range []struct {
			name   string
			labels []string
			want   float64
		}{
			{"modelcast_received_bytes_total", []string{"source", "oss"}, wantOSS},
			{"modelcast_received_bytes_total", []string{"source", "peer"}, wantPeer},
			{"modelcast_served_bytes_total", nil, wantServed},
			{"modelcast_chain_events_total", []string{"event", "join"}, 1},
			{"modelcast_chain_events_total", []string{"event", "relink"}, 0},
			{"modelcast_staging_duration_seconds_count", []string{"result", "ok"}, 1},
			{"modelcast_cache_models", nil, 1},
		} {
			if got := s.Get(c.name, c.labels...); got != c.want {
				t.Errorf("%s: %s%v = %v, want %v", a.Name, c.name, c.labels, got, c.want)
			}
		}
	}
}

// TestKillMiddleNode: a middle node is SIGKILLed at about half the model; its successor
// re-links to the node before it and resumes at its own offset. The others complete, no byte
// a survivor had is fetched again, and OSS still serves one copy.
func TestKillMiddleNode(t *testing.T) {
	w := newWorld(t, 32*mib, redistest.Options{})
	w.emu.SetEgressRate(8 * mib) // four seconds: time to kill at 50 %
	w.emu.ResetStats()
	as := w.startChain(4, nil)
	victim := as[1]
	victim.waitFor(t, "half the model", time.Minute, func(e agent.Event) bool { return e.Event == "progress" && e.Done >= w.size/2 })
	victim.Kill()
	for _, a := range []*node{as[0], as[2], as[3]} {
		e := a.ready(t)
		w.checkModel(t, a.Name, e)
		if e.FromOSS+e.FromPeers != w.size {
			t.Errorf("%s received %d bytes in all (%d from OSS), want %d: bytes were fetched again", a.Name, e.FromOSS+e.FromPeers, e.FromOSS, w.size)
		}
		t.Logf("%s ready in %.2f s: %d from OSS, %d from peers", a.Name, e.Seconds, e.FromOSS, e.FromPeers)
	}
	if served := w.emu.Stats().BytesServed; served != w.size {
		t.Errorf("OSS served %d bytes for a %d-byte model, want one copy", served, w.size)
	}
	if n := as[2].metrics(t).Get("modelcast_chain_events_total", "event", "relink"); n < 1 {
		t.Errorf("node-2 counted %v re-links after its predecessor died, want at least 1", n)
	}
}

// TestKillTail: the tail is SIGKILLed at about half the model. Nobody follows it, so the others
// complete undisturbed and OSS serves one copy. The node then restarts under the same name and
// address (its cache gone, as after a pod's restart on a new tmpfs) while its dead entry may
// still be in the chain: it rejoins and gets the whole model from its peers, with no byte from
// OSS.
func TestKillTail(t *testing.T) {
	w := newWorld(t, 32*mib, redistest.Options{})
	w.emu.SetEgressRate(8 * mib)
	w.emu.ResetStats()
	as := w.startChain(4, nil)
	victim := as[3]
	victim.waitFor(t, "half the model", time.Minute, func(e agent.Event) bool { return e.Event == "progress" && e.Done >= w.size/2 })
	victim.Kill()
	for _, a := range as[:3] {
		e := a.ready(t)
		w.checkModel(t, a.Name, e)
		if e.FromOSS+e.FromPeers != w.size {
			t.Errorf("%s received %d bytes in all (%d from OSS), want %d: bytes were fetched again", a.Name, e.FromOSS+e.FromPeers, e.FromOSS, w.size)
		}
	}
	if served := w.emu.Stats().BytesServed; served != w.size {
		t.Errorf("OSS served %d bytes for a %d-byte model with its tail killed, want one copy", served, w.size)
	}

	w.emu.ResetStats()
	restarted := w.start(3, noHook())
	e := restarted.ready(t)
	w.checkModel(t, restarted.Name, e)
	t.Logf("the restarted tail was ready in %.2f s from its start: %s", e.Seconds, e.From)
	if e.FromOSS != 0 || e.FromPeers != w.size {
		t.Errorf("the restarted tail received %d bytes from OSS and %d from peers, want all %d from peers", e.FromOSS, e.FromPeers, w.size)
	}
	if served := w.emu.Stats().BytesServed; served != 0 {
		t.Errorf("OSS served %d bytes to the restarted tail, want none: its peers have the model", served)
	}
}

// TestKillHead: the head is SIGKILLed at about half the model; the next node becomes the head
// and fetches from OSS only the chunks it lacks. The head forwarded every chunk as soon as it
// was verified, so what OSS serves again is what the dead head had not finished: at most a
// chunk per part in flight and what its sockets held, plus the verified chunks its successor
// had not taken yet (none to speak of here: OSS is far slower than loopback).
func TestKillHead(t *testing.T) {
	w := newWorld(t, 32*mib, redistest.Options{})
	w.emu.SetEgressRate(8 * mib)
	w.emu.ResetStats()
	as := w.startChain(3, nil)
	as[0].waitFor(t, "half the model", time.Minute, func(e agent.Event) bool { return e.Event == "progress" && e.Done >= w.size/2 })
	as[0].Kill()
	for _, a := range as[1:] {
		e := a.ready(t)
		w.checkModel(t, a.Name, e)
		if e.FromOSS+e.FromPeers != w.size {
			t.Errorf("%s received %d bytes in all, want %d", a.Name, e.FromOSS+e.FromPeers, w.size)
		}
		t.Logf("%s ready in %.2f s: %d from OSS, %d from peers", a.Name, e.Seconds, e.FromOSS, e.FromPeers)
	}
	chunk := broadcast.DefaultChunkSize
	bound := w.size + int64(w.headCon)*2*chunk + 4*mib
	served := w.emu.Stats().BytesServed
	t.Logf("OSS served %d bytes for a %d-byte model (%.3fx; bound %d)", served, w.size, float64(served)/float64(w.size), bound)
	if served > bound {
		t.Errorf("OSS served %d bytes, more than the model plus what the dead head had in flight (%d)", served, bound)
	}
	if n := as[1].metrics(t).Get("modelcast_chain_events_total", "event", "takeover"); n != 1 {
		t.Errorf("node-1 counted %v takeovers after the head died, want 1", n)
	}
}

// TestCorruptedRelay: the middle node sends one chunk with a flipped byte; the next hop
// detects it, fetches it again, and every model ends correct.
func TestCorruptedRelay(t *testing.T) {
	w := newWorld(t, 16*mib, redistest.Options{})
	w.emu.SetEgressRate(16 * mib)
	w.emu.ResetStats()
	as := w.startChain(3, func(i int) agentOpt {
		if i == 1 {
			return agentOpt{corrupt: 5}
		}
		return noHook()
	})
	for _, a := range as {
		w.checkModel(t, a.Name, a.ready(t))
	}
	if !strings.Contains(as[1].stderr.String(), "Test hook: sending a corrupted chunk") {
		t.Fatalf("the corruption hook never fired")
	}
	if !strings.Contains(as[2].stderr.String(), "failed its checksum") {
		t.Errorf("node-2 did not report the corrupted chunk")
	}
	if s := as[2].metrics(t); s.Get("modelcast_peer_corrupt_chunks_total") != 1 || s.Get("modelcast_chain_events_total", "event", "relink") < 1 {
		t.Errorf("node-2 counted %v corrupt chunks and %v re-links, want 1 and at least 1",
			s.Get("modelcast_peer_corrupt_chunks_total"), s.Get("modelcast_chain_events_total", "event", "relink"))
	}
	if served := w.emu.Stats().BytesServed; served != w.size {
		t.Errorf("OSS served %d bytes, want one copy (%d): the bad chunk came again from the peer", served, w.size)
	}
}

// TestPeerAuthentication: the data plane answers only with the tenant's token, and a tenant
// never reaches another tenant's model.
func TestPeerAuthentication(t *testing.T) {
	w := newWorld(t, 4*mib, redistest.Options{})
	a := w.startChain(1, nil)[0]
	ready := a.ready(t)
	addr := a.waitFor(t, "start", time.Second, func(e agent.Event) bool { return e.Event == "start" }).Addr
	rdb := redis.NewClient(&redis.Options{Addr: w.redis.Addr()})
	defer rdb.Close()
	token, err := rdb.Get(t.Context(), "modelcast:{"+tenant+"}:token").Result()
	if err != nil {
		t.Fatal(err)
	}
	key := strings.TrimSuffix(ready.Dir[strings.LastIndex(ready.Dir, "/")+1:], "/")
	get := func(path, auth string) (int, int) {
		req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, "http://"+addr+path, nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		n, _ := io.Copy(io.Discard, res.Body)
		return res.StatusCode, int(n)
	}
	stream := "/v1/" + tenant + "/models/" + key + "/stream?chunk=0&offset=0"
	for _, tc := range []struct {
		name, path, auth string
		code             int
	}{
		{"no token", stream, "", 401},
		{"wrong token", stream, "Bearer " + strings.Repeat("0", 64), 401},
		{"not a bearer", stream, token, 401},
		{"another tenant's path", "/v1/other-team/models/" + key + "/stream?chunk=0&offset=0", "Bearer " + token, 401},
	} {
		code, n := get(tc.path, tc.auth)
		if code != tc.code || (code == 401 && n > len("unauthorized\n")) {
			t.Errorf("%s: HTTP %d with %d bytes, want %d and no model byte", tc.name, code, n, tc.code)
		}
	}
	// Tenant B's own token does not open tenant A's model: B has no such model.
	tokB := "Bearer " + tokenFor(t, rdb, "other-team")
	if code, n := get("/v1/other-team/models/"+key+"/stream?chunk=0&offset=0", tokB); code != 401 || n > len("unauthorized\n") {
		t.Errorf("tenant B asking for tenant A's model: HTTP %d with %d bytes, want 401 and no model byte", code, n)
	}
	if code, n := get(stream, "Bearer "+token); code != 200 || int64(n) < w.size {
		t.Errorf("with the right token: HTTP %d, %d bytes", code, n)
	}
	// Requests for tenants the node serves nothing of are refused without a look at Redis:
	// anyone who reaches the port cannot make keys there.
	for i := range 50 {
		if code, _ := get(fmt.Sprintf("/v1/junk-%d/models/%s/stream", i, key), "Bearer "+strings.Repeat("f", 64)); code != 401 {
			t.Fatalf("a request for an unknown tenant: HTTP %d, want 401", code)
		}
	}
	if keys, err := rdb.Keys(t.Context(), "modelcast:{junk-*").Result(); err != nil || len(keys) != 0 {
		t.Errorf("requests for unknown tenants made Redis keys %v (%v)", keys, err)
	}
	s := a.metrics(t)
	if got := s.Get("modelcast_peer_auth_failures_total"); got != 55 {
		t.Errorf("%v refusals counted, want the 55 requests without the tenant's token", got)
	}
	if got := s.Get("modelcast_served_bytes_total"); got != float64(w.size) {
		t.Errorf("%v bytes served counted, want the one authorized stream's %d", got, w.size)
	}
	if strings.Contains(s.Text, token) {
		t.Errorf("the metrics reveal the tenant token")
	}
}

func tokenFor(t *testing.T, rdb *redis.Client, tn string) string {
	key := "modelcast:{" + tn + "}:token"
	if err := rdb.SetNX(t.Context(), key, strings.Repeat("b", 64), 0).Err(); err != nil {
		t.Fatal(err)
	}
	v, err := rdb.Get(t.Context(), key).Result()
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestRedisDownBeforeJoin: with Redis gone, every node stages from OSS directly and succeeds.
// When Redis is back, those nodes join the model's chain by their heartbeats, and a node that
// needs the model then streams it from them: OSS serves no fourth copy.
func TestRedisDownBeforeJoin(t *testing.T) {
	w := newWorld(t, 8*mib, redistest.Options{})
	w.redis.Stop()
	w.emu.ResetStats()
	as := w.startChain(3, nil)
	for _, a := range as {
		e := a.ready(t)
		w.checkModel(t, a.Name, e)
		if e.FromOSS != w.size {
			t.Errorf("%s: %d bytes from OSS, want all %d (no coordination)", a.Name, e.FromOSS, w.size)
		}
	}
	if served := w.emu.Stats().BytesServed; served != 3*w.size {
		t.Errorf("OSS served %d bytes, want three copies", served)
	}
	w.redis.Restart()
	rdb := redis.NewClient(&redis.Options{Addr: w.redis.Addr()})
	defer rdb.Close()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if _, err := agenttest.WaitChain(ctx, coord.NewCoordinator(rdb), tenant, "oss://models/qwen/", func(ms []coord.Member) bool { return len(ms) == 3 }); err != nil {
		t.Fatalf("the three nodes never joined the model's chain: %v", err)
	}
	late := w.start(3, noHook())
	e := late.ready(t)
	w.checkModel(t, late.Name, e)
	if e.FromPeers != w.size || e.FromOSS != 0 {
		t.Errorf("the node after Redis came back got %d bytes from peers and %d from OSS, want all from peers", e.FromPeers, e.FromOSS)
	}
	if served := w.emu.Stats().BytesServed; served != 3*w.size {
		t.Errorf("OSS served %d bytes, want still three copies", served)
	}
}

// waitFor polls cond every 50 ms until it holds, or fails the test after timeout.
func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within %s", what, timeout)
		}
		time.Sleep(50 * time.Millisecond) // polling with a deadline
	}
}

// TestRedisRestartMidTransfer: Redis restarts (losing everything) while the chain streams; no
// staging fails.
func TestRedisRestartMidTransfer(t *testing.T) {
	w := newWorld(t, 24*mib, redistest.Options{})
	w.emu.SetEgressRate(8 * mib)
	w.emu.ResetStats()
	as := w.startChain(3, nil)
	as[2].waitFor(t, "a quarter of the model", time.Minute, func(e agent.Event) bool { return e.Event == "progress" && e.Done >= w.size/4 })
	w.redis.Restart()
	for _, a := range as {
		w.checkModel(t, a.Name, a.ready(t))
	}
	// The nodes rejoined at the positions they had: the chain went on as it was, and no node
	// turned to OSS.
	if served := w.emu.Stats().BytesServed; served != w.size {
		t.Errorf("OSS served %d bytes for a %d-byte model across a Redis restart, want one copy", served, w.size)
	}
	// A node joining after the restart finds the chain again (the heartbeats rebuilt it).
	late := w.start(3, noHook())
	e := late.ready(t)
	w.checkModel(t, late.Name, e)
	if e.FromPeers != w.size {
		t.Errorf("the late joiner got %d bytes from peers and %d from OSS, want all from a complete peer", e.FromPeers, e.FromOSS)
	}
}

// TestRedisRestartThenHeadDies: Redis restarts mid-transfer (nodes rejoin in heartbeat order),
// then the head dies. The survivors must not link into a cycle: one takes over from OSS and
// both finish, OSS serving the model once plus what the head had in flight.
func TestRedisRestartThenHeadDies(t *testing.T) {
	w := newWorld(t, 32*mib, redistest.Options{})
	w.emu.SetEgressRate(8 * mib)
	w.emu.ResetStats()
	as := w.startChain(3, nil)
	as[2].waitFor(t, "a quarter of the model", time.Minute, func(e agent.Event) bool { return e.Event == "progress" && e.Done >= w.size/4 })
	w.redis.Restart()
	as[2].waitFor(t, "a third of the model", time.Minute, func(e agent.Event) bool { return e.Event == "progress" && e.Done >= w.size/3 })
	as[0].Kill()
	for _, a := range as[1:] {
		e := a.ready(t)
		w.checkModel(t, a.Name, e)
		if e.FromOSS+e.FromPeers != w.size {
			t.Errorf("%s received %d bytes in all, want %d", a.Name, e.FromOSS+e.FromPeers, w.size)
		}
	}
	bound := w.size + int64(w.headCon)*2*broadcast.DefaultChunkSize + 4*mib
	if served := w.emu.Stats().BytesServed; served > bound {
		t.Errorf("OSS served %d bytes, more than the model plus what the dead head had in flight (%d)", served, bound)
	}
}

// TestFrozenPredecessorReplaced: the middle node is stopped (SIGSTOP) mid-transfer. Its
// heartbeat expires and its successor re-links to the head within the node TTL (6 s) and a
// little, long before the node thaws; OSS still serves one copy.
func TestFrozenPredecessorReplaced(t *testing.T) {
	w := newWorld(t, 32*mib, redistest.Options{})
	w.emu.SetEgressRate(2 * mib) // 16 s of OSS: the freeze is well inside it
	w.emu.ResetStats()
	as := w.startChain(3, nil)
	at := as[2].waitFor(t, "an eighth of the model", time.Minute, func(e agent.Event) bool { return e.Event == "progress" && e.Done >= w.size/8 })
	if err := as[1].Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	frozen := time.Now()
	thaw := sync.OnceFunc(func() { _ = as[1].Signal(syscall.SIGCONT) })
	defer thaw()
	// node-2 had at most what node-1 had; once re-linked to node-0 it gets more.
	as[2].waitFor(t, "progress past the frozen node", 30*time.Second, func(e agent.Event) bool {
		return e.Event == "progress" && e.Done > at.Done+4*mib && strings.Contains(e.From, "node-0")
	})
	if d := time.Since(frozen); d > 15*time.Second {
		t.Errorf("node-2 went on from node-0 %v after its predecessor froze, want within the node TTL and a little", d)
	}
	thaw()
	for _, a := range as {
		w.checkModel(t, a.Name, a.ready(t))
	}
	if served := w.emu.Stats().BytesServed; served != w.size {
		t.Errorf("OSS served %d bytes, want one copy (%d)", served, w.size)
	}
}

// TestRedisACL: nodes authenticate with an ACL user; a node with a wrong password says which
// Redis refused it (not the password) and still stages, from OSS.
func TestRedisACL(t *testing.T) {
	w := newWorld(t, 8*mib, redistest.Options{Username: "modelcast", Password: "acl-password"})
	as := w.startChain(2, nil)
	for _, a := range as {
		w.checkModel(t, a.Name, a.ready(t))
	}
	bad := w.start(2, agentOpt{corrupt: -1, dbPass: "not-the-password"})
	e := bad.ready(t)
	w.checkModel(t, bad.Name, e)
	log := bad.stderr.String()
	if !strings.Contains(log, w.redis.Addr()) || !strings.Contains(log, "WRONGPASS") || strings.Contains(log, "not-the-password") {
		t.Errorf("the node's log should name the Redis address and the refusal, never the password:\n%s", tail(log, 2000))
	}
	if e.FromOSS != w.size {
		t.Errorf("the refused node got %d bytes from OSS, want all %d", e.FromOSS, w.size)
	}
	// A refusal is a configuration to fix, said as one: an error at level 0, the metric, and
	// the staging's source (which the pod's Events show).
	if !strings.Contains(log, "Redis refuses this node") {
		t.Errorf("the refused node did not say Redis refuses it:\n%s", tail(log, 2000))
	}
	if !strings.Contains(e.From, "broadcast off") || !strings.Contains(e.From, "WRONGPASS") {
		t.Errorf("the refused node's staging says it came from %q, want OSS with broadcast off and why", e.From)
	}
	s := bad.metrics(t)
	if s.Get("modelcast_broadcast_coordination", "state", "refused") != 1 || s.Get("modelcast_broadcast_coordination", "state", "ok") != 0 {
		t.Errorf("the refused node's coordination metric: refused %v, ok %v; want 1 and 0",
			s.Get("modelcast_broadcast_coordination", "state", "refused"), s.Get("modelcast_broadcast_coordination", "state", "ok"))
	}
	if s := as[0].metrics(t); s.Get("modelcast_broadcast_coordination", "state", "ok") != 1 {
		t.Errorf("a node with the right password: coordination ok = %v, want 1", s.Get("modelcast_broadcast_coordination", "state", "ok"))
	}
}

// TestRedisTLSClientCertificate: a server that requires client certificates accepts a node
// given one (broadcast.db.certFile, keyFile) and refuses one without, which says so.
func TestRedisTLSClientCertificate(t *testing.T) {
	w := newWorld(t, 4*mib, redistest.Options{TLS: true, ClientCerts: true})
	ca := w.redis.CACertFile()
	cert, key := w.redis.ClientCertFiles()
	w.dbTLS = config.DB{CAFile: ca, CertFile: cert, KeyFile: key}
	as := w.startChain(2, nil)
	for _, a := range as {
		w.checkModel(t, a.Name, a.ready(t))
	}
	if e := as[1].ready(t); e.FromPeers != w.size {
		t.Errorf("the second node got %d bytes from peers, want the model", e.FromPeers)
	}
	w.dbTLS = config.DB{CAFile: ca}
	anonymous := w.start(2, noHook())
	e := anonymous.ready(t)
	if s := anonymous.metrics(t); s.Get("modelcast_broadcast_coordination", "state", "refused") != 1 {
		t.Errorf("a node without a client certificate: refused = %v, want 1\n%s", s.Get("modelcast_broadcast_coordination", "state", "refused"), tail(anonymous.stderr.String(), 2000))
	}
	if e.FromOSS != w.size {
		t.Errorf("the node without a certificate got %d bytes from OSS, want all", e.FromOSS)
	}
}

// TestRedisTLSPrivateCA: Redis over TLS with a private CA. A node given the CA file
// (broadcast.db.caFile) broadcasts; a node without it is refused, says so, and reads OSS.
func TestRedisTLSPrivateCA(t *testing.T) {
	w := newWorld(t, 8*mib, redistest.Options{TLS: true})
	ca := w.redis.CACertFile()
	w.dbTLS = config.DB{TLS: true, CAFile: ca}
	as := w.startChain(2, nil)
	for _, a := range as {
		w.checkModel(t, a.Name, a.ready(t))
	}
	if e := as[1].ready(t); e.FromPeers != w.size {
		t.Errorf("the second node got %d bytes from peers, want the model: broadcasting over TLS", e.FromPeers)
	}
	w.dbTLS = config.DB{TLS: true}
	untrusting := w.start(2, noHook())
	e := untrusting.ready(t)
	w.checkModel(t, untrusting.Name, e)
	if log := untrusting.stderr.String(); !strings.Contains(log, "Redis refuses this node") || !strings.Contains(log, "certificate") {
		t.Errorf("a node that does not trust the server's certificate should say so:\n%s", tail(log, 2000))
	}
	if e.FromOSS != w.size || !strings.Contains(e.From, "broadcast off") {
		t.Errorf("the node without the CA got %d bytes from OSS (from %q), want all, broadcast off", e.FromOSS, e.From)
	}
}

// TestAgentLeavesNoMount: an agent whose cache is a tmpfs of its own unmounts it when it stops
// (SIGTERM), so no memory stays charged behind it.
func TestAgentLeavesNoMount(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the agent mounts a tmpfs")
	}
	w := newWorld(t, 4*mib, redistest.Options{})
	a := w.start(0, agentOpt{corrupt: -1, tmpfs: true})
	w.checkModel(t, a.Name, a.ready(t))
	if !mounted(t, a.cacheRoot) {
		t.Fatalf("the agent's cache %s is not a mount: nothing to test", a.cacheRoot)
	}
	if err := a.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	<-a.Exited()
	if mounted(t, a.cacheRoot) {
		_ = syscall.Unmount(a.cacheRoot, syscall.MNT_DETACH)
		t.Errorf("the agent left its cache tmpfs mounted at %s", a.cacheRoot)
	}
}

func mounted(t *testing.T, dir string) bool {
	t.Helper()
	m, err := mountinfo.Mounted(dir)
	return err == nil && m
}
