package ossemu

import (
	"bytes"
	"net/http"
	"testing"
)

// TestFaultIgnoreRange: a ranged GET hit by the fault gets what a server without Range
// support sends (200, the whole object, no Content-Range); GETs without a Range, HEADs and
// unsatisfiable ranges do not consume it, and the next ranged GET is served as usual.
func TestFaultIgnoreRange(t *testing.T) {
	srv := Start(t, Options{})
	data := pseudoRandom(10000, 7)
	srv.PutObject("bkt", "k", data)
	srv.InjectFault(Fault{Op: OpGet, Key: "k", Kind: FaultIgnoreRange})

	ranged := http.Header{"Range": {"bytes=100-199"}}
	if resp, body, err := rawRequest(t, srv, http.MethodGet, "/bkt/k", nil, nil); err != nil || resp.StatusCode != http.StatusOK || !bytes.Equal(body, data) {
		t.Fatalf("GET without Range: %v, %d bytes, %v", resp, len(body), err)
	}
	if resp, _, err := rawRequest(t, srv, http.MethodHead, "/bkt/k", ranged, nil); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("HEAD: %v, %v", resp, err)
	}
	unsatisfiable := http.Header{"Range": {"bytes=20000-"}, "X-Oss-Range-Behavior": {"standard"}}
	if resp, _, err := rawRequest(t, srv, http.MethodGet, "/bkt/k", unsatisfiable, nil); err != nil || resp.StatusCode != http.StatusRequestedRangeNotSatisfiable {
		t.Fatalf("unsatisfiable range: %v, %v", resp, err)
	}
	if n := srv.Stats().FaultsHit; n != 0 {
		t.Fatalf("%d faults hit by requests without a satisfiable range", n)
	}

	resp, body, err := rawRequest(t, srv, http.MethodGet, "/bkt/k", ranged, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Range") != "" || resp.ContentLength != int64(len(data)) || !bytes.Equal(body, data) {
		t.Errorf("ranged GET under the fault: status %d, Content-Range %q, Content-Length %d, %d bytes; want 200 with the whole object and no Content-Range",
			resp.StatusCode, resp.Header.Get("Content-Range"), resp.ContentLength, len(body))
	}
	if n := srv.Stats().FaultsHit; n != 1 {
		t.Errorf("FaultsHit = %d, want 1", n)
	}

	resp, body, err = rawRequest(t, srv, http.MethodGet, "/bkt/k", ranged, nil)
	if err != nil || resp.StatusCode != http.StatusPartialContent || resp.Header.Get("Content-Range") != "bytes 100-199/10000" || !bytes.Equal(body, data[100:200]) {
		t.Errorf("ranged GET after the fault: %v, %d bytes, %v; want 206 with bytes 100-199", resp, len(body), err)
	}

	var k FaultKind
	if err := k.UnmarshalText([]byte("ignore-range")); err != nil || k != FaultIgnoreRange {
		t.Errorf("UnmarshalText(ignore-range) = %v, %v", k, err)
	}
}
