package ossemu

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aliyun/alibabacloud-oss-go-sdk-v2/oss"
)

// timedGet reads a whole object with the SDK, checks its length and
// returns how long it took.
func timedGet(t *testing.T, c *oss.Client, bucket, key string, size int) time.Duration {
	t.Helper()
	start := time.Now()
	b, _ := getBytes(t, c, bucket, key)
	d := time.Since(start)
	if len(b) != size {
		t.Errorf("GET %s/%s: %d bytes, want %d", bucket, key, len(b), size)
	}
	return d
}

func TestFirstByteLatency(t *testing.T) {
	const latency = 100 * time.Millisecond
	srv := Start(t, Options{FirstByteLatency: latency})
	srv.PutObject("bkt", "k", []byte("data"))
	c := newClient(srv)
	for _, tc := range []struct {
		name string
		call func() error
	}{
		{"HEAD", func() error {
			_, err := c.HeadObject(ctxT(t), &oss.HeadObjectRequest{Bucket: oss.Ptr("bkt"), Key: oss.Ptr("k")})
			return err
		}},
		{"GET", func() error {
			res, err := c.GetObject(ctxT(t), &oss.GetObjectRequest{Bucket: oss.Ptr("bkt"), Key: oss.Ptr("k")})
			if err == nil {
				res.Body.Close()
			}
			return err
		}},
		{"LIST", func() error {
			_, err := c.ListObjectsV2(ctxT(t), &oss.ListObjectsV2Request{Bucket: oss.Ptr("bkt")})
			return err
		}},
		{"PUT", func() error {
			_, err := c.PutObject(ctxT(t), &oss.PutObjectRequest{Bucket: oss.Ptr("bkt"), Key: oss.Ptr("new"), Body: strings.NewReader("x")})
			return err
		}},
		{"HEAD of a missing key", func() error {
			_, err := c.HeadObject(ctxT(t), &oss.HeadObjectRequest{Bucket: oss.Ptr("bkt"), Key: oss.Ptr("missing")})
			if serviceError(t, err).StatusCode != http.StatusNotFound {
				return err
			}
			return nil
		}},
	} {
		start := time.Now()
		if err := tc.call(); err != nil {
			t.Errorf("%s: %v", tc.name, err)
		}
		if d := time.Since(start); d < latency {
			t.Errorf("%s answered after %v, want at least %v", tc.name, d, latency)
		}
	}

	// Requests wait in parallel: n of them take about one latency, far
	// from the n latencies of waits taken one after the other.
	const n = 32
	srv.ResetStats()
	c = newClient(srv)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range n {
		wg.Go(func() {
			t0 := time.Now()
			if i%2 == 0 {
				getBytes(t, c, "bkt", "k")
			} else if _, err := c.HeadObject(ctxT(t), &oss.HeadObjectRequest{Bucket: oss.Ptr("bkt"), Key: oss.Ptr("k")}); err != nil {
				t.Error(err)
			}
			if d := time.Since(t0); d < latency {
				t.Errorf("request %d answered after %v, want at least %v", i, d, latency)
			}
		})
	}
	wg.Wait()
	if d, serial := time.Since(start), n*latency; d >= serial/2 {
		t.Errorf("%d concurrent requests took %v; waiting one after the other takes %v", n, d, serial)
	}
	if st := srv.Stats(); st.Requests[OpGet] != n/2 || st.Requests[OpHead] != n/2 {
		t.Errorf("stats = %+v", st)
	}
}

// TestFirstByteLatencyClientGone holds a GET with an hour of latency, checks
// that admin requests are not delayed, and that the wait ends with the
// client.
func TestFirstByteLatencyClientGone(t *testing.T) {
	srv := Start(t, Options{FirstByteLatency: time.Hour, Admin: true})
	srv.PutObject("bkt", "k", []byte("data"))
	c := newClient(srv, withRetries(1))
	ctx, cancel := context.WithCancel(ctxT(t))
	defer cancel()
	done := make(chan error, 1)
	go func() {
		res, err := c.GetObject(ctx, &oss.GetObjectRequest{Bucket: oss.Ptr("bkt"), Key: oss.Ptr("k")})
		if err == nil {
			res.Body.Close()
		}
		done <- err
	}()
	waitFor(t, "the GET in flight", func() bool { return srv.Stats().InFlightGets == 1 })
	resp, body, err := rawRequest(t, srv, http.MethodGet, "/-/stats", nil, nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("admin request during the latency: %v %s %v", resp, body, err)
	}
	cancel()
	if err := <-done; err == nil {
		t.Error("GET held by an hour of latency succeeded")
	}
	waitFor(t, "the server to end the GET", func() bool { return srv.Stats().InFlightGets == 0 })
	if st := srv.Stats(); st.BytesServed != 0 {
		t.Errorf("BytesServed = %d, want 0", st.BytesServed)
	}
}

func TestConnRate(t *testing.T) {
	const (
		bps  = 4 << 20
		size = 2 << 20
		want = time.Duration(size) * time.Second / bps // 0.5 s
	)
	srv := Start(t, Options{ConnBytesPerSec: bps})
	data := pseudoRandom(size, 7)
	srv.PutObject("bkt", "k", data)
	path := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(path, data[:size/2], 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.PutFile("bkt", "file", path); err != nil {
		t.Fatal(err)
	}

	// One connection is held to the cap, whether the body comes from
	// memory or from a file (sendfile).
	start := time.Now()
	if got, _ := getBytes(t, newClient(srv), "bkt", "k"); !bytes.Equal(got, data) {
		t.Error("capped body differs")
	}
	if d := time.Since(start); d < want*8/10 {
		t.Errorf("%d bytes at %d bytes/s per connection took %v, want at least %v", size, bps, d, want*8/10)
	}
	if d := timedGet(t, newClient(srv), "bkt", "file", size/2); d < want*8/10/2 {
		t.Errorf("%d file bytes at %d bytes/s per connection took %v, want at least %v", size/2, bps, d, want*8/10/2)
	}

	// Two connections each get the whole cap: two downloads in parallel
	// take about as long as one, not twice as long. A cap shared by the
	// connections cannot let them finish in under 2 × want, whatever the
	// load; the machine's load can only slow them (a token wait woken more
	// than the 10 ms burst late loses the difference), so a slow attempt is
	// measured again, a few times at most.
	const attempts = 4
	var took []time.Duration
	for range attempts {
		srv.ResetStats()
		c := newClient(srv)
		var wg sync.WaitGroup
		start = time.Now()
		for range 2 {
			wg.Go(func() {
				if d := timedGet(t, c, "bkt", "k", size); d < want*8/10 {
					t.Errorf("parallel GET took %v, want at least %v", d, want*8/10)
				}
			})
		}
		wg.Wait()
		took = append(took, time.Since(start))
		if st := srv.Stats(); st.Connections != 2 || st.BytesServed != 2*size {
			t.Fatalf("stats = %+v, want 2 connections and %d bytes", st, 2*size)
		}
		if took[len(took)-1] < want*16/10 {
			return
		}
	}
	t.Errorf("2 × %d bytes on 2 connections at %d bytes/s each took %v, want less than %v", size, bps, took, want*16/10)
}

// TestConnRateRuntime sets a cap while a keep-alive connection is open: its
// next request is held to it.
func TestConnRateRuntime(t *testing.T) {
	const (
		bps  = 4 << 20
		size = 1 << 20
		want = time.Duration(size) * time.Second / bps // 0.25 s
	)
	srv := Start(t, Options{})
	srv.PutObject("bkt", "k", pseudoRandom(size, 8))
	c := newClient(srv)
	timedGet(t, c, "bkt", "k", size) // opens the connection, unlimited
	srv.SetProfile(Profile{ConnBytesPerSec: bps})
	if d := timedGet(t, c, "bkt", "k", size); d < want*8/10 {
		t.Errorf("%d bytes after SetProfile(%d bytes/s) took %v, want at least %v", size, bps, d, want*8/10)
	}
	if st := srv.Stats(); st.Connections != 1 || st.Requests[OpGet] != 2 {
		t.Errorf("stats = %+v, want 2 GETs on 1 connection", st)
	}
}

// TestConnRateWithEgress checks that the per-connection cap leaves the
// total egress limit in force.
func TestConnRateWithEgress(t *testing.T) {
	const (
		bps  = 4 << 20
		size = 1 << 20
		want = time.Duration(2*size) * time.Second / bps // 0.5 s for both bodies
	)
	srv := Start(t, Options{ConnBytesPerSec: bps, EgressBytesPerSec: bps})
	srv.PutObject("bkt", "k", pseudoRandom(size, 9))
	c := newClient(srv)
	var wg sync.WaitGroup
	start := time.Now()
	for range 2 {
		wg.Go(func() { timedGet(t, c, "bkt", "k", size) })
	}
	wg.Wait()
	if d := time.Since(start); d < want*8/10 {
		t.Errorf("2 × %d bytes with %d bytes/s in total took %v, want at least %v", size, bps, d, want*8/10)
	}
}

func TestAdminProfile(t *testing.T) {
	srv := Start(t, Options{Admin: true, FirstByteLatency: 5 * time.Millisecond, ConnBytesPerSec: 400e6 / 8})
	srv.PutObject("bkt", "k", []byte("data"))
	admin := func(method, path, body string) (int, []byte) {
		t.Helper()
		resp, b, err := rawRequest(t, srv, method, path, nil, strings.NewReader(body))
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		return resp.StatusCode, b
	}
	getProfile := func() map[string]string {
		t.Helper()
		code, b := admin(http.MethodGet, "/-/profile", "")
		var m map[string]string
		if err := json.Unmarshal(b, &m); err != nil || code != http.StatusOK {
			t.Fatalf("GET /-/profile: %d %s %v", code, b, err)
		}
		return m
	}
	if m := getProfile(); m["firstByteLatency"] != "5ms" || m["connRate"] != "50MB" || len(m) != 2 {
		t.Errorf("initial profile = %v", m)
	}

	if code, b := admin(http.MethodPost, "/-/profile", `{"firstByteLatency":"150ms","connRate":"400Mbit"}`); code != http.StatusNoContent {
		t.Fatalf("POST /-/profile: %d %s", code, b)
	}
	if p := srv.Profile(); p != (Profile{FirstByteLatency: 150 * time.Millisecond, ConnBytesPerSec: 50e6}) {
		t.Errorf("profile = %+v", p)
	}
	start := time.Now()
	if resp, _, err := rawRequest(t, srv, http.MethodHead, "/bkt/k", nil, nil); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("HEAD: %v %v", resp, err)
	}
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Errorf("HEAD after POST /-/profile answered after %v, want at least 150ms", d)
	}

	// A field left out keeps its value; numbers are nanoseconds and bytes/s.
	if code, b := admin(http.MethodPost, "/-/profile", `{"connRate":"1500kB/s"}`); code != http.StatusNoContent {
		t.Fatalf("POST /-/profile: %d %s", code, b)
	}
	if m := getProfile(); m["firstByteLatency"] != "150ms" || m["connRate"] != "1500kB" {
		t.Errorf("profile = %v", m)
	}
	if code, b := admin(http.MethodPost, "/-/profile", `{"firstByteLatency":0,"connRate":123}`); code != http.StatusNoContent {
		t.Fatalf("POST /-/profile: %d %s", code, b)
	}
	if m := getProfile(); m["firstByteLatency"] != "0s" || m["connRate"] != "123" {
		t.Errorf("profile = %v", m)
	}

	for _, body := range []string{
		`{"firstByteLatency":"soon"}`,
		`{"firstByteLatency":"-1s"}`,
		`{"connRate":"fast"}`,
		`{"connRate":-5}`,
		`{"latency":"20ms"}`,
		`20ms`,
	} {
		if code, _ := admin(http.MethodPost, "/-/profile", body); code != http.StatusBadRequest {
			t.Errorf("POST /-/profile %s: %d, want 400", body, code)
		}
	}
	if p := srv.Profile(); p != (Profile{ConnBytesPerSec: 123}) {
		t.Errorf("profile after bad requests = %+v", p)
	}
	if st := srv.Stats(); st.Requests[OpHead] != 1 || len(st.Requests) != 1 {
		t.Errorf("admin requests were counted: %v", st.Requests)
	}
}

func TestProfileByName(t *testing.T) {
	for _, tc := range []struct {
		name string
		want Profile
	}{
		{LoopbackProfile, Profile{}},
		{ObjectStoreProfile, Profile{FirstByteLatency: 20 * time.Millisecond, ConnBytesPerSec: 50e6}},
		{"Object-Store", Profile{FirstByteLatency: 20 * time.Millisecond, ConnBytesPerSec: 50e6}},
	} {
		if p, err := ProfileByName(tc.name); err != nil || p != tc.want {
			t.Errorf("ProfileByName(%q) = %+v, %v; want %+v", tc.name, p, err, tc.want)
		}
	}
	if _, err := ProfileByName("fast"); err == nil || !strings.Contains(err.Error(), ObjectStoreProfile) {
		t.Errorf("ProfileByName(fast) = %v, want an error naming the profiles", err)
	}
	var o Options
	p, _ := ProfileByName(ObjectStoreProfile)
	o.ApplyProfile(p)
	if o.FirstByteLatency != 20*time.Millisecond || o.ConnBytesPerSec != 50e6 {
		t.Errorf("ApplyProfile: %+v", o)
	}
}

func TestProfileJSON(t *testing.T) {
	for _, p := range []Profile{
		{},
		{FirstByteLatency: 20 * time.Millisecond, ConnBytesPerSec: 50e6},
		{FirstByteLatency: 1500 * time.Microsecond, ConnBytesPerSec: 1234567},
		{ConnBytesPerSec: 3e12},
	} {
		b, err := json.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		var q Profile
		if err := json.Unmarshal(b, &q); err != nil || q != p {
			t.Errorf("%+v → %s → %+v, %v", p, b, q, err)
		}
	}
	b, _ := json.Marshal(Profile{FirstByteLatency: 20 * time.Millisecond, ConnBytesPerSec: 50e6})
	if string(b) != `{"firstByteLatency":"20ms","connRate":"50MB"}` {
		t.Errorf("marshal = %s", b)
	}
	for _, tc := range []struct {
		bps  int64
		want string
	}{{0, "0"}, {1, "1"}, {1000, "1kB"}, {1 << 20, "1048576"}, {125e6, "125MB"}, {2e9, "2GB"}} {
		if got := formatRate(tc.bps); got != tc.want {
			t.Errorf("formatRate(%d) = %q, want %q", tc.bps, got, tc.want)
		}
		if back, err := ParseRate(formatRate(tc.bps)); err != nil || back != tc.bps {
			t.Errorf("ParseRate(formatRate(%d)) = %d, %v", tc.bps, back, err)
		}
	}
}

func TestConnBurst(t *testing.T) {
	for _, tc := range []struct {
		bps  int64
		want int
	}{{1, 1 << 10}, {1e6, 1e4}, {4 << 20, 41943}, {50e6, chunkSize}, {1e12, chunkSize}} {
		if got := connBurst(tc.bps); got != tc.want {
			t.Errorf("connBurst(%d) = %d, want %d", tc.bps, got, tc.want)
		}
	}
	var cl connLimiter
	if lim, _ := cl.limiter(0); lim != nil {
		t.Error("limiter for an unlimited rate")
	}
	a, burst := cl.limiter(1e6)
	if b, _ := cl.limiter(1e6); b != a || burst != 1e4 || a.Limit() != 1e6 {
		t.Errorf("limiter not kept for the same rate (burst %d, limit %v)", burst, a.Limit())
	}
	if b, _ := cl.limiter(2e6); b == a || b.Limit() != 2e6 {
		t.Error("limiter not replaced for a new rate")
	}
}
