package chain

import (
	"bytes"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestFrames(t *testing.T) {
	in := []frame{
		{kind: frameChunk, index: 7, offset: 123, size: 1<<20 - 123, crc: 0xdeadbeefcafef00d},
		{kind: frameEnd, index: 9},
	}
	var buf bytes.Buffer
	for _, f := range in {
		buf.Write(f.encode(nil))
	}
	hdr := make([]byte, frameHeaderSize)
	for _, want := range in {
		got, err := readFrame(&buf, hdr)
		if err != nil || got != want {
			t.Errorf("frame %+v, %v; want %+v", got, err, want)
		}
	}
	bad := in[0].encode(nil)
	bad[2] = 'X'
	if _, err := readFrame(bytes.NewReader(bad), hdr); err == nil {
		t.Errorf("a frame with a bad magic was read")
	}
	if _, err := readFrame(bytes.NewReader(bad[:10]), hdr); err == nil {
		t.Errorf("a short frame was read")
	}
}

func TestStreamRequests(t *testing.T) {
	for _, tc := range []struct {
		path        string
		tenant, key string
		ok          bool
	}{
		{"/v1/team/models/abc/stream", "team", "abc", true},
		{"/v1/team/models//stream", "", "", false},
		{"/v1/-bad/models/abc/stream", "", "", false},
		{"/v1/team/model/abc/stream", "", "", false},
		{"/v2/team/models/abc/stream", "", "", false},
		{"/v1/team/models/abc/stream/x", "", "", false},
	} {
		tenant, key, ok := parseStreamPath(tc.path)
		if ok != tc.ok || tenant != tc.tenant || key != tc.key {
			t.Errorf("%s: %q %q %v", tc.path, tenant, key, ok)
		}
	}
	// Without a valid path or token nothing is served; /healthz answers.
	n := &Node{cfg: Config{CorruptChunk: -1}, reg: registry{models: map[string]*local{}}}
	s := &server{node: n, tokens: map[string]string{"team": "secret"}, refreshed: map[string]time.Time{}}
	for _, tc := range []struct {
		method, path, auth string
		code               int
	}{
		{"GET", "/healthz", "", 200},
		{"GET", "/v1/team/models/abc/stream?chunk=0&offset=0", "", 401},
		{"GET", "/v1/team/models/abc/stream?chunk=0&offset=0", "Bearer secret", 404},
		{"POST", "/v1/team/models/abc/stream", "Bearer secret", 404},
		{"GET", "/other", "Bearer secret", 404},
	} {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(tc.method, tc.path, nil)
		if tc.auth != "" {
			req.Header.Set("Authorization", tc.auth)
		}
		s.ServeHTTP(rec, req)
		if rec.Code != tc.code {
			t.Errorf("%s %s (%q): %d, want %d", tc.method, tc.path, tc.auth, rec.Code, tc.code)
		}
		if tc.code == 401 && strings.TrimSpace(rec.Body.String()) != "unauthorized" {
			t.Errorf("401 body %q", rec.Body.String())
		}
	}
}
