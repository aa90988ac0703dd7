package chaintest

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/modelcast/modelcast/pkg/chain"
	"github.com/modelcast/modelcast/test/redistest"
)

const mib = 1 << 20

func noHook() agentOpt { return agentOpt{corrupt: -1} }

// startChain starts n agents a little apart, as pods do, so join order is start order.
func (w *world) startChain(n int, opts func(i int) agentOpt) []*agent {
	var as []*agent
	for i := range n {
		o := noHook()
		if opts != nil {
			o = opts(i)
		}
		as = append(as, w.start(i, o))
		as[i].waitFor(w.t, "start", 30*time.Second, func(e event) bool { return e.Event == "start" })
		time.Sleep(100 * time.Millisecond) // keep the join order: node-0 first
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
		w.checkModel(t, a.name, e)
		if e.FromOSS+e.FromPeers != w.size {
			t.Errorf("%s received %d from OSS and %d from peers, want the model's %d once", a.name, e.FromOSS, e.FromPeers, w.size)
		}
		fromOSS += e.FromOSS
		t.Logf("%s ready in %.2f s: %d bytes from OSS, %d from peers, served %d", a.name, e.Seconds, e.FromOSS, e.FromPeers, e.Served)
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
				t.Errorf("%s: %s%v = %v, want %v", a.name, c.name, c.labels, got, c.want)
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
	victim.waitFor(t, "half the model", time.Minute, func(e event) bool { return e.Event == "progress" && e.Done >= w.size/2 })
	victim.kill()
	for _, a := range []*agent{as[0], as[2], as[3]} {
		e := a.ready(t)
		w.checkModel(t, a.name, e)
		if e.FromOSS+e.FromPeers != w.size {
			t.Errorf("%s received %d bytes in all (%d from OSS), want %d: bytes were fetched again", a.name, e.FromOSS+e.FromPeers, e.FromOSS, w.size)
		}
		t.Logf("%s ready in %.2f s: %d from OSS, %d from peers", a.name, e.Seconds, e.FromOSS, e.FromPeers)
	}
	if served := w.emu.Stats().BytesServed; served != w.size {
		t.Errorf("OSS served %d bytes for a %d-byte model, want one copy", served, w.size)
	}
	if n := as[2].metrics(t).Get("modelcast_chain_events_total", "event", "relink"); n < 1 {
		t.Errorf("node-2 counted %v re-links after its predecessor died, want at least 1", n)
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
	as[0].waitFor(t, "half the model", time.Minute, func(e event) bool { return e.Event == "progress" && e.Done >= w.size/2 })
	as[0].kill()
	for _, a := range as[1:] {
		e := a.ready(t)
		w.checkModel(t, a.name, e)
		if e.FromOSS+e.FromPeers != w.size {
			t.Errorf("%s received %d bytes in all, want %d", a.name, e.FromOSS+e.FromPeers, w.size)
		}
		t.Logf("%s ready in %.2f s: %d from OSS, %d from peers", a.name, e.Seconds, e.FromOSS, e.FromPeers)
	}
	chunk := chain.DefaultChunkSize
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
		w.checkModel(t, a.name, a.ready(t))
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
	addr := a.waitFor(t, "start", time.Second, func(e event) bool { return e.Event == "start" }).Addr
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
	if code, _ := get("/v1/other-team/models/"+key+"/stream?chunk=0&offset=0", tokB); code != 404 {
		t.Errorf("tenant B asking for tenant A's model: HTTP %d, want 404", code)
	}
	if code, n := get(stream, "Bearer "+token); code != 200 || int64(n) < w.size {
		t.Errorf("with the right token: HTTP %d, %d bytes", code, n)
	}
	s := a.metrics(t)
	if got := s.Get("modelcast_peer_auth_failures_total"); got != 4 {
		t.Errorf("%v refusals counted, want the 4 requests without the tenant's token", got)
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
func TestRedisDownBeforeJoin(t *testing.T) {
	w := newWorld(t, 8*mib, redistest.Options{})
	w.redis.Stop()
	w.emu.ResetStats()
	as := w.startChain(3, nil)
	for _, a := range as {
		e := a.ready(t)
		w.checkModel(t, a.name, e)
		if e.FromOSS != w.size {
			t.Errorf("%s: %d bytes from OSS, want all %d (no coordination)", a.name, e.FromOSS, w.size)
		}
	}
	if served := w.emu.Stats().BytesServed; served != 3*w.size {
		t.Errorf("OSS served %d bytes, want three copies", served)
	}
}

// TestRedisRestartMidTransfer: Redis restarts (losing everything) while the chain streams; no
// staging fails.
func TestRedisRestartMidTransfer(t *testing.T) {
	w := newWorld(t, 24*mib, redistest.Options{})
	w.emu.SetEgressRate(8 * mib)
	as := w.startChain(3, nil)
	as[2].waitFor(t, "a quarter of the model", time.Minute, func(e event) bool { return e.Event == "progress" && e.Done >= w.size/4 })
	w.redis.Restart()
	for _, a := range as {
		w.checkModel(t, a.name, a.ready(t))
	}
	// A node joining after the restart finds the chain again (the heartbeats rebuilt it).
	late := w.start(3, noHook())
	e := late.ready(t)
	w.checkModel(t, late.name, e)
	if e.FromPeers != w.size {
		t.Errorf("the late joiner got %d bytes from peers and %d from OSS, want all from a complete peer", e.FromPeers, e.FromOSS)
	}
}

// TestRedisACL: nodes authenticate with an ACL user; a node with a wrong password says which
// Redis refused it (not the password) and still stages, from OSS.
func TestRedisACL(t *testing.T) {
	w := newWorld(t, 8*mib, redistest.Options{Username: "modelcast", Password: "acl-password"})
	as := w.startChain(2, nil)
	for _, a := range as {
		w.checkModel(t, a.name, a.ready(t))
	}
	bad := w.start(2, agentOpt{corrupt: -1, dbPass: "not-the-password"})
	e := bad.ready(t)
	w.checkModel(t, bad.name, e)
	log := bad.stderr.String()
	if !strings.Contains(log, w.redis.Addr()) || !strings.Contains(log, "WRONGPASS") || strings.Contains(log, "not-the-password") {
		t.Errorf("the node's log should name the Redis address and the refusal, never the password:\n%s", tail(log, 2000))
	}
	if e.FromOSS != w.size {
		t.Errorf("the refused node got %d bytes from OSS, want all %d", e.FromOSS, w.size)
	}
}
