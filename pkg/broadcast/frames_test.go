package broadcast

import (
	"bytes"
	"encoding/binary"
	"maps"
	"net/http/httptest"
	"slices"
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
	// Without a valid path or token nothing is served; /healthz answers. The node serves a
	// model of tenant "team" (not "abc"): the right token gets 404 for another model, and a
	// tenant the node serves nothing of gets 401 whatever the token.
	n := &Broadcaster{cfg: Config{}, reg: replicas{models: map[string]*replica{"team/other": {tenant: "team", key: "other"}}}}
	s := &server{node: n, tokens: map[string]string{"team": "secret"}, refreshed: map[string]time.Time{}, refreshing: map[string]chan struct{}{}}
	for _, tc := range []struct {
		method, path, auth string
		code               int
	}{
		{"GET", "/healthz", "", 200},
		{"GET", "/v1/team/models/abc/stream?chunk=0&offset=0", "", 401},
		{"GET", "/v1/team/models/abc/stream?chunk=0&offset=0", "Bearer secret", 404},
		{"POST", "/v1/team/models/abc/stream", "Bearer secret", 404},
		{"POST", "/v1/elsewhere/models/abc/stream", "Bearer secret", 401},
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

func TestWant(t *testing.T) {
	const n = 13 // not a multiple of 8: the bitmap's last byte has spare bits
	size := func(i int) int64 {
		if i == n-1 {
			return 100
		}
		return 1000
	}
	in := want{have: make([]bool, n), offsets: map[int]int64{2: 1, 12: 99}}
	in.have[0], in.have[7], in.have[8] = true, true, true
	got, err := decodeWant(in.encode(), size, n)
	if err != nil || !slices.Equal(got.have, in.have) || !maps.Equal(got.offsets, in.offsets) {
		t.Fatalf("round trip: %+v, %v; want %+v", got, err, in)
	}
	if got, err := decodeWant(nil, size, n); err != nil || slices.Contains(got.have, true) || len(got.offsets) != 0 {
		t.Errorf("an empty body: %+v, %v; want nothing present", got, err)
	}
	rec := func(i, off uint32) []byte {
		return binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, i), off)
	}
	bitmap := []byte{0x01, 0x00}
	for name, body := range map[string][]byte{
		"a short bitmap":               {0x01},
		"a torn partial record":        append(slices.Clone(bitmap), 0, 0, 0, 2),
		"a chunk past the end":         {0x00, 0x20},
		"a partial chunk past the end": append(slices.Clone(bitmap), rec(n, 1)...),
		"a partial chunk present":      append(slices.Clone(bitmap), rec(0, 1)...),
		"a partial chunk twice":        append(append(slices.Clone(bitmap), rec(2, 1)...), rec(2, 5)...),
		"offset zero":                  append(slices.Clone(bitmap), rec(2, 0)...),
		"offset at the chunk's end":    append(slices.Clone(bitmap), rec(12, 100)...),
	} {
		if _, err := decodeWant(body, size, n); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
