package coord

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/modelcast/modelcast/test/redistest"
)

func newCoord(t *testing.T) (*Coordinator, *redis.Client) {
	t.Helper()
	srv := redistest.Start(t, redistest.Options{})
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	return NewCoordinator(rdb), rdb
}

func TestKeysShareHashTags(t *testing.T) {
	tag := func(k string) string { return k[strings.Index(k, "{") : strings.Index(k, "}")+1] }
	model := []string{chainKey("t1", "k"), seqKey("t1", "k"), progressKey("t1", "k"), sumsKey("t1", "k")}
	for _, k := range model {
		if tag(k) != "{t1/k}" || !strings.HasPrefix(k, "modelcast:") {
			t.Errorf("model key %q: hash tag %q, want {t1/k}", k, tag(k))
		}
	}
	if tag(tokenKey("t1")) != tag(nodeKey("t1", "n")) || tag(tokenKey("t1")) == tag(tokenKey("t2")) {
		t.Errorf("tenant keys do not share one tag per tenant")
	}
	for _, bad := range []string{"", "-x", "a/b", "a}b", strings.Repeat("x", 64), "a b"} {
		if ValidTenant(bad) == nil {
			t.Errorf("tenant %q accepted", bad)
		}
	}
}

func TestCoordinator(t *testing.T) {
	c, rdb := newCoord(t)
	ctx := t.Context()

	tok, err := c.Token(ctx, "t1")
	if err != nil || len(tok) != 64 {
		t.Fatalf("token %q, %v", tok, err)
	}
	if again, _ := c.Token(ctx, "t1"); again != tok {
		t.Errorf("the tenant token changed: %q then %q", tok, again)
	}
	if other, _ := c.Token(ctx, "t2"); other == tok {
		t.Errorf("two tenants share a token")
	}

	// Positions: in join order, stable for a node that renews its place (the heartbeat joins
	// again with the position it has).
	info := ModelInfo{URI: "oss://models/qwen/", Size: 99, Files: 3}
	for i, n := range []string{"a", "b", "c"} {
		pos, err := c.Join(ctx, "t1", "model", n, info, NodeProgress{Bytes: int64(i)}, 0)
		if err != nil || pos != i+1 {
			t.Fatalf("join %s: position %d, %v; want %d", n, pos, err, i+1)
		}
	}
	if pos, _ := c.Join(ctx, "t1", "model", "b", info, NodeProgress{Bytes: 7, From: "peer a"}, 2); pos != 2 {
		t.Errorf("re-join of b: position %d, want 2", pos)
	}
	for _, n := range []string{"a", "c"} {
		if err := c.Register(ctx, "t1", n, n+":19898", time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	ms, err := c.Members(ctx, "t1", "model")
	if err != nil || len(ms) != 3 {
		t.Fatalf("members %+v, %v", ms, err)
	}
	if ms[0].Node != "a" || !ms[0].Alive() || ms[1].Node != "b" || ms[1].Alive() || ms[1].Progress.Bytes != 7 || ms[1].Progress.From != "peer a" || ms[2].Addr != "c:19898" {
		t.Errorf("members %+v", ms)
	}
	if err := c.SetProgress(ctx, "t1", "model", "c", NodeProgress{Bytes: 99, Complete: true, From: "OSS", Rate: 5e8}); err != nil {
		t.Fatal(err)
	}
	if err := c.Leave(ctx, "t1", "model", "b"); err != nil {
		t.Fatal(err)
	}
	ms, _ = c.Members(ctx, "t1", "model")
	if len(ms) != 2 || ms[1].Node != "c" || !ms[1].Progress.Complete || ms[1].Progress.Bytes != 99 || ms[1].Progress.Rate != 5e8 {
		t.Errorf("after leave: %+v", ms)
	}
	if pos, _ := c.Join(ctx, "t1", "model", "d", info, NodeProgress{}, 0); pos != 4 {
		t.Errorf("a later joiner got position %d, want 4 (the tail)", pos)
	}
	// Keys expire unless renewed.
	if ttl := rdb.PTTL(ctx, chainKey("t1", "model")).Val(); ttl <= 0 || ttl > time.Hour {
		t.Errorf("chain TTL %v", ttl)
	}
	if err := c.Deregister(ctx, "t1", "a"); err != nil {
		t.Fatal(err)
	}
	if ms, _ = c.Members(ctx, "t1", "model"); ms[0].Alive() {
		t.Errorf("a deregistered node is alive")
	}

	// Chunk sums: sparse writes, absent as 0.
	if err := c.PublishSums(ctx, "t1", "model", 2, []uint64{0xaa, 0xbb}); err != nil {
		t.Fatal(err)
	}
	if err := c.PublishSums(ctx, "t1", "model", 6, []uint64{0xee}); err != nil {
		t.Fatal(err)
	}
	sums, err := c.Sums(ctx, "t1", "model", 0, 8)
	if err != nil {
		t.Fatal(err)
	}
	want := []uint64{0, 0, 0xaa, 0xbb, 0, 0, 0xee, 0}
	for i := range want {
		if sums[i] != want[i] {
			t.Errorf("sums %x, want %x", sums, want)
			break
		}
	}

	// Manifest: the first publisher wins; replace overwrites.
	got, err := c.PublishManifest(ctx, "t1", "path", []byte("first"), time.Minute, false)
	if err != nil || string(got) != "first" {
		t.Fatalf("%q, %v", got, err)
	}
	if got, _ := c.PublishManifest(ctx, "t1", "path", []byte("second"), time.Minute, false); string(got) != "first" {
		t.Errorf("a second publisher won: %q", got)
	}
	if got, _ := c.PublishManifest(ctx, "t1", "path", []byte("newer"), time.Minute, true); string(got) != "newer" {
		t.Errorf("replace: %q", got)
	}
	if m, _ := c.Manifest(ctx, "t1", "path"); string(m) != "newer" {
		t.Errorf("manifest %q", m)
	}
	if m, err := c.Manifest(ctx, "t1", "absent"); m != nil || err != nil {
		t.Errorf("absent manifest: %q, %v", m, err)
	}
	for _, n := range []string{"a", "b", "c", "d"} {
		if err := c.Leave(ctx, "t1", "model", n); err != nil {
			t.Fatal(err)
		}
	}
	if ms, _ := c.Members(ctx, "t1", "model"); len(ms) != 0 {
		t.Errorf("after every node left: %+v", ms)
	}
}

func TestRedisClientErrorsNameTheAddressNotThePassword(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{Username: "modelcast", Password: "right-password"})
	for _, tc := range []struct {
		rc RedisConfig
		ok bool
	}{
		{RedisConfig{Addr: srv.Addr(), Username: "modelcast", Password: "right-password"}, true},
		{RedisConfig{URL: "redis://modelcast:right-password@" + srv.Addr() + "/0"}, true},
		{RedisConfig{Addr: srv.Addr(), Username: "modelcast", Password: "wrong-password"}, false},
		{RedisConfig{URL: "redis://modelcast:wrong-password@" + srv.Addr() + "/0"}, false},
	} {
		c, err := NewRedisClient(tc.rc)
		if err != nil {
			t.Fatal(err)
		}
		err = Ping(context.Background(), c)
		_ = c.Close()
		if tc.ok != (err == nil) {
			t.Errorf("%+v: ping %v", tc.rc.Username, err)
			continue
		}
		if err != nil {
			msg := err.Error()
			if !strings.Contains(msg, srv.Addr()) || !strings.Contains(msg, `"modelcast"`) || strings.Contains(msg, "wrong-password") {
				t.Errorf("error %q: want the address and user, never the password", msg)
			}
		}
	}
	if _, err := NewRedisClient(RedisConfig{}); err == nil {
		t.Errorf("no address accepted")
	}
	if _, err := NewRedisClient(RedisConfig{URL: "http://u:secret-in-url@x"}); err == nil || strings.Contains(err.Error(), "secret-in-url") {
		t.Errorf("bad URL: %v", err)
	}
}

func TestRedisTLS(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{TLS: true, Username: "app", Password: "pw"})
	c, err := NewRedisClient(RedisConfig{Addr: srv.Addr(), Username: "app", Password: "pw", TLS: true, CACert: srv.CACertPEM()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := Ping(context.Background(), c); err != nil {
		t.Fatalf("TLS ping: %v", err)
	}
	u, err := NewRedisClient(RedisConfig{URL: "rediss://app:pw@" + srv.Addr(), CACert: srv.CACertPEM()})
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	if err := Ping(context.Background(), u); err != nil {
		t.Fatalf("rediss:// ping: %v", err)
	}
}

// TestChainOrderSurvivesRedisLoss: after Redis lost every key, nodes that rejoin at the
// positions they had keep the chain's order whatever order they come back in; a newcomer goes
// after all of them; a node moved to the tail goes after everyone.
func TestChainOrderSurvivesRedisLoss(t *testing.T) {
	c, rdb := newCoord(t)
	ctx := t.Context()
	info := ModelInfo{URI: "oss://b/m/"}
	join := func(node string, prefer int) int {
		t.Helper()
		pos, err := c.Join(ctx, "t1", "model", node, info, NodeProgress{}, prefer)
		if err != nil {
			t.Fatal(err)
		}
		return pos
	}
	for i, n := range []string{"a", "b", "c"} {
		if pos := join(n, 0); pos != i+1 {
			t.Fatalf("%s joined at %d, want %d", n, pos, i+1)
		}
	}
	if err := rdb.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	// They come back in heartbeat order, not chain order; a newcomer arrives in between.
	if pos := join("c", 3); pos != 3 {
		t.Errorf("c rejoined at %d, want its 3", pos)
	}
	if pos := join("d", 0); pos != 4 {
		t.Errorf("the newcomer joined at %d, want 4: after every node present", pos)
	}
	if pos := join("a", 1); pos != 1 {
		t.Errorf("a rejoined at %d, want its 1", pos)
	}
	if pos := join("b", 2); pos != 2 {
		t.Errorf("b rejoined at %d, want its 2", pos)
	}
	if pos := join("b", 9); pos != 2 {
		t.Errorf("b, present, moved to %d: a node keeps its position", pos)
	}
	if pos := join("e", 0); pos != 5 {
		t.Errorf("a second newcomer joined at %d, want 5", pos)
	}
	if pos := join("c", 0); pos != 6 {
		t.Errorf("a fresh staging of c (its process restarted) joined at %d, want 6: the end, not its old 3", pos)
	}
	if pos, err := c.MoveToTail(ctx, "t1", "model", "b"); err != nil || pos != 7 {
		t.Errorf("b moved to the tail at %d (%v), want 7", pos, err)
	}
	ms, err := c.Members(ctx, "t1", "model")
	if err != nil {
		t.Fatal(err)
	}
	var order []string
	for _, m := range ms {
		order = append(order, m.Node)
	}
	if got := strings.Join(order, ","); got != "a,d,e,c,b" {
		t.Errorf("chain order %s, want a,d,e,c,b", got)
	}
}
