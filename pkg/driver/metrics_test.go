package driver_test

import (
	"context"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"

	"github.com/modelcast/modelcast/internal/version"
	"github.com/modelcast/modelcast/pkg/driver"
	"github.com/modelcast/modelcast/test/freeport"
	"github.com/modelcast/modelcast/test/ossemu"
	"github.com/modelcast/modelcast/test/promtest"
)

// TestMetricsAndHealth scrapes the plugin's HTTP endpoint over a real staging: bytes by
// source, the cache's gauges, the staging histogram, CSI call latencies and codes, an OSS
// error injected mid-download; health and readiness; and no secret anywhere in the metrics.
func TestMetricsAndHealth(t *testing.T) {
	srv := emu(t)
	files := genModel(t, srv, "qwen/", 8<<20)
	var size int64
	for _, f := range files {
		size += int64(len(f))
	}
	addr := "127.0.0.1:" + strconv.Itoa(freeport.Must(t))
	p := startPlugin(t, inProcess{srv}, "", withOptions(func(o *driver.Options) { o.HTTPEndpoint = addr }))
	base := "http://" + addr
	waitHTTP(t, base+"/readyz", http.StatusOK)
	if code, body := get(t, base+"/healthz"); code != http.StatusOK || body != "ok\n" {
		t.Errorf("/healthz: %d %q", code, body)
	}

	before := scrape(t, base)
	if v := before.Get("modelcast_received_bytes_total", "source", "oss"); v != 0 || !before.Has("modelcast_received_bytes_total", "source", "oss") {
		t.Errorf("before any staging: received from OSS %v (present %v), want a 0 sample", v, before.Has("modelcast_received_bytes_total", "source", "oss"))
	}

	srv.InjectFault(ossemu.Fault{Op: ossemu.OpGet, Kind: ossemu.FaultStatus, Status: 503, Count: 1})
	tg := target(t, "pod-a")
	if _, err := p.node.NodePublishVolume(t.Context(), publishReq("oss://models/qwen/", tg)); err != nil {
		t.Fatal(err)
	}
	// A bad request, for a code other than OK.
	if _, err := p.node.NodePublishVolume(t.Context(), publishReq("s3://models/qwen/", target(t, "pod-b"))); err == nil {
		t.Fatal("an s3:// path was published")
	}
	s := scrape(t, base)
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"modelcast_received_bytes_total", []string{"source", "oss"}, float64(size)},
		{"modelcast_received_bytes_total", []string{"source", "peer"}, 0},
		{"modelcast_cache_models", nil, 1},
		{"modelcast_cache_models_referenced", nil, 1},
		{"modelcast_cache_stagings", nil, 0},
		{"modelcast_cache_references", nil, 1},
		{"modelcast_cache_bytes", []string{"state", "ready"}, float64(size)},
		{"modelcast_staging_duration_seconds_count", []string{"result", "ok"}, 1},
		{"modelcast_csi_operation_duration_seconds_count", []string{"method", "NodePublishVolume", "code", "OK"}, 1},
		{"modelcast_csi_operation_duration_seconds_count", []string{"method", "NodePublishVolume", "code", "InvalidArgument"}, 1},
		{"modelcast_oss_request_errors_total", []string{"op", "get", "code", "ServiceUnavailable"}, 1},
		{"modelcast_chain_events_total", []string{"event", "join"}, 0},
		{"modelcast_chain_events_total", []string{"event", "stepback"}, 0},
		{"modelcast_broadcast_coordination", []string{"state", "off"}, 1},
		{"modelcast_build_info", []string{"version", version.Get()}, 1},
	} {
		if got := s.Get(c.name, c.labels...); got != c.want || !s.Has(c.name, c.labels...) {
			t.Errorf("%s%v = %v (present %v), want %v", c.name, c.labels, got, s.Has(c.name, c.labels...), c.want)
		}
	}
	if fs := s.Get("modelcast_cache_filesystem_size_bytes"); fs != 2<<30 {
		t.Errorf("cache file system size %v, want the configured 2 GiB", fs)
	}

	if _, err := p.node.NodeUnpublishVolume(t.Context(), &csi.NodeUnpublishVolumeRequest{VolumeId: "vol-1", TargetPath: tg}); err != nil {
		t.Fatal(err)
	}
	s = scrape(t, base)
	if s.Get("modelcast_cache_releases_total") != 1 || s.Get("modelcast_cache_references") != 0 || s.Get("modelcast_cache_models_referenced") != 0 {
		t.Errorf("after unpublish: releases %v, references %v, referenced models %v", s.Get("modelcast_cache_releases_total"),
			s.Get("modelcast_cache_references"), s.Get("modelcast_cache_models_referenced"))
	}
	for _, secret := range []string{sk, ak} {
		if strings.Contains(s.Text, secret) {
			t.Errorf("the metrics reveal a credential")
		}
	}

	// The cache's tmpfs gone: not ready (still live: the socket answers).
	if err := unix.Unmount(p.cacheRoot, unix.MNT_DETACH); err != nil {
		t.Fatal(err)
	}
	if code, body := get(t, base+"/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "cache") {
		t.Errorf("/readyz without the cache tmpfs: %d %q", code, body)
	}
	if code, _ := get(t, base+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz without the cache tmpfs: %d", code)
	}
	p.stop()
	if _, err := http.Get(base + "/healthz"); err == nil {
		t.Errorf("the HTTP endpoint outlived the plugin")
	}
}

func scrape(t *testing.T, base string) *promtest.Samples {
	t.Helper()
	s, err := promtest.Scrape(t.Context(), base+"/metrics")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

// waitHTTP waits for url to answer code.
func waitHTTP(t *testing.T, url string, code int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		res, err := http.Get(url)
		if err == nil {
			res.Body.Close()
			if res.StatusCode == code {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not answer %d (last: %v)", url, code, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
