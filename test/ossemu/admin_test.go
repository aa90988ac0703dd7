package ossemu

import (
	"bytes"
	"encoding/json"
	"net/http"
	"testing"
	"time"
)

func TestAdmin(t *testing.T) {
	srv := Start(t, Options{Admin: true})
	srv.PutObject("bkt", "k", []byte("data"))
	admin := func(method, path, body string) (int, []byte) {
		t.Helper()
		resp, b, err := rawRequest(t, srv, method, path, nil, bytes.NewReader([]byte(body)))
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		return resp.StatusCode, b
	}
	get := func() int {
		resp, _, err := rawRequest(t, srv, http.MethodGet, "/bkt/k", nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode
	}

	if code, b := admin(http.MethodPost, "/-/faults", `{"op":"get","key":"k","kind":"status","status":503,"count":2}`); code != http.StatusNoContent {
		t.Fatalf("inject: %d %s", code, b)
	}
	if code, b := admin(http.MethodPost, "/-/faults", `{"op":"head","kind":"slow-first-byte","delay":"10ms"}`); code != http.StatusNoContent {
		t.Fatalf("inject: %d %s", code, b)
	}
	if a, b, c := get(), get(), get(); a != 503 || b != 503 || c != 200 {
		t.Errorf("GETs = %d %d %d, want 503 503 200", a, b, c)
	}
	code, body := admin(http.MethodGet, "/-/stats", "")
	var st Stats
	if err := json.Unmarshal(body, &st); err != nil || code != http.StatusOK {
		t.Fatalf("stats: %d %s %v", code, body, err)
	}
	if st.Requests[OpGet] != 3 || st.FaultsHit != 2 || st.ErrorsByCode["ServiceUnavailable"] != 2 || st.BytesByKey["bkt/k"] != 4 || st.BytesServed != 4 {
		t.Errorf("stats = %+v", st)
	}

	if code, _ := admin(http.MethodDelete, "/-/faults", ""); code != http.StatusNoContent {
		t.Errorf("clear faults: %d", code)
	}
	if code, _ := admin(http.MethodPost, "/-/reset-stats", ""); code != http.StatusNoContent {
		t.Errorf("reset: %d", code)
	}
	if st := srv.Stats(); st.BytesServed != 0 || len(st.Requests) != 0 {
		t.Errorf("stats after reset = %+v", st)
	}
	if code, _ := admin(http.MethodPost, "/-/egress?bps=8Mbit", ""); code != http.StatusNoContent {
		t.Errorf("egress: %d", code)
	}
	if lim := srv.limiter.Limit(); lim != 1e6 {
		t.Errorf("egress limit = %v, want 1e6 bytes/s", lim)
	}
	if code, _ := admin(http.MethodPost, "/-/egress?bps=0", ""); code != http.StatusNoContent || srv.limiter.Limit() < 1e18 {
		t.Errorf("egress unlimited: %d, %v", code, srv.limiter.Limit())
	}
	for _, tc := range []struct{ method, path, body string }{
		{http.MethodPost, "/-/egress?bps=fast", ""},
		{http.MethodPost, "/-/faults", `{"kind":"explode"}`},
		{http.MethodPost, "/-/faults", `{"kind":"status","delay":"soon"}`},
		{http.MethodPost, "/-/faults", `{"kind":"status","unknown":1}`},
	} {
		if code, _ := admin(tc.method, tc.path, tc.body); code != http.StatusBadRequest {
			t.Errorf("%s %s %s: %d, want 400", tc.method, tc.path, tc.body, code)
		}
	}
	if code, _ := admin(http.MethodGet, "/-/nothing", ""); code != http.StatusNotFound {
		t.Errorf("unknown endpoint: %d", code)
	}
	if st := srv.Stats(); len(st.Requests) != 0 {
		t.Errorf("admin requests were counted: %v", st.Requests)
	}

	// Without Options.Admin, /-/ is an ordinary (missing) bucket.
	plain := Start(t, Options{})
	resp, body, err := rawRequest(t, plain, http.MethodGet, "/-/stats", nil, nil)
	if err != nil || resp.StatusCode != http.StatusNotFound || !bytes.Contains(body, []byte("NoSuchBucket")) {
		t.Errorf("/-/stats without Admin: %v %s %v", resp, body, err)
	}
}

func TestFaultJSONDelay(t *testing.T) {
	for _, tc := range []struct {
		body string
		want time.Duration
	}{
		{`{"kind":"slow-first-byte","delay":"1.5s"}`, 1500 * time.Millisecond},
		{`{"kind":"slow-first-byte","delay":2000000}`, 2 * time.Millisecond},
		{`{"kind":"slow-first-byte"}`, 0},
	} {
		req, _ := http.NewRequest(http.MethodPost, "/-/faults", bytes.NewReader([]byte(tc.body)))
		f, err := decodeFault(req)
		if err != nil || f.Delay != tc.want || f.Kind != FaultSlowFirstByte {
			t.Errorf("%s: %+v, %v", tc.body, f, err)
		}
	}
	b, err := json.Marshal(Fault{Kind: FaultCorrupt, After: 3})
	if err != nil || string(b) != `{"kind":"corrupt","after":3}` {
		t.Errorf("marshal = %s, %v", b, err)
	}
}
