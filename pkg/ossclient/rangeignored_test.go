package ossclient_test

import (
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/modelcast/modelcast/pkg/ossclient"
	"github.com/modelcast/modelcast/test/ossemu"
)

// TestDownloadRangeIgnored: a server that answers a ranged GET with 200 and the whole object
// (a proxy that drops Range) is reported as such, once, without retries; not as a model that
// changed in OSS.
func TestDownloadRangeIgnored(t *testing.T) {
	srv := newEmu(t)
	model(t, srv, 1, 4<<20)
	c := newClient(t, srv)
	m, err := c.Manifest(t.Context(), mustURI(t, "oss://models/m/"))
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	failures := map[string]int{}
	c = newClient(t, srv, func(cfg *ossclient.Config) {
		cfg.OnRequestError = func(op, code string) { mu.Lock(); failures[op+" "+code]++; mu.Unlock() }
	})
	srv.ResetStats()
	srv.InjectFault(ossemu.Fault{Op: ossemu.OpGet, Key: "m/model-00001-of-00001.safetensors", Kind: ossemu.FaultIgnoreRange, Count: -1})
	err = c.Download(t.Context(), m, t.TempDir(), ossclient.DownloadOptions{Concurrency: 1, PartSize: 1 << 20})
	if !errors.Is(err, ossclient.ErrRangeIgnored) || errors.Is(err, ossclient.ErrChanged) {
		t.Fatalf("Download = %v, want ErrRangeIgnored (and not ErrChanged)", err)
	}
	want := "get oss://models/m/model-00001-of-00001.safetensors: the server ignored the Range header: asked for bytes 0-1048575 of 4194304, got HTTP 200 with 4194304 bytes instead of 206 Partial Content"
	if !strings.HasPrefix(err.Error(), want) {
		t.Errorf("message %q\nwant it to start with %q", err, want)
	}
	if n := srv.Stats().FaultsHit; n != 1 {
		t.Errorf("the model's GET was sent %d times, want once: retrying does not make a server honour Range", n)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(failures) != 1 || failures["get RangeIgnored"] != 1 {
		t.Errorf("failed requests reported: %v, want 1 × get RangeIgnored", failures)
	}
}
