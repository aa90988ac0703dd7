package ossclient_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"hash/crc64"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aliyun/alibabacloud-oss-go-sdk-v2/oss"
	"golang.org/x/sys/unix"

	"github.com/modelcast/modelcast/pkg/ossclient"
	"github.com/modelcast/modelcast/test/ossemu"
)

const (
	testRegion = "cn-test"
	testAK     = "LTAI5tTestAccessKey01"
	testSecret = "test-secret-0123456789"
)

var testKeys = ossclient.Credentials{AccessKeyID: testAK, AccessKeySecret: testSecret}

// newEmu starts an emulator that requires testKeys (V4 or V1), with a private bucket "models".
func newEmu(t *testing.T) *ossemu.Server {
	t.Helper()
	srv := ossemu.Start(t, ossemu.Options{
		Region:      testRegion,
		Credentials: []ossemu.Credential{{AccessKeyID: testAK, AccessKeySecret: testSecret}},
	})
	srv.CreateBucket("models", ossemu.BucketOptions{})
	return srv
}

func newClient(t *testing.T, srv *ossemu.Server, mutate ...func(*ossclient.Config)) *ossclient.Client {
	t.Helper()
	cfg := ossclient.Config{Endpoint: srv.Endpoint(), Region: testRegion, Credentials: testKeys,
		Retry: ossclient.RetryPolicy{BaseDelay: time.Millisecond, MaxDelay: 20 * time.Millisecond}}
	for _, f := range mutate {
		f(&cfg)
	}
	c, err := ossclient.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func mustURI(t *testing.T, s string) ossclient.URI {
	t.Helper()
	u, err := ossclient.ParseURI(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func randBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// putModel stores objects (relative path → content) under bucket "models" and prefix.
func putModel(srv *ossemu.Server, prefix string, files map[string][]byte) {
	for rel, data := range files {
		srv.PutObject("models", prefix+rel, data)
	}
}

// writeModes are the two ways Download writes files: pwrite(2) on ordinary file systems and
// 4 KiB-page tmpfs, a shared memory mapping on huge-page tmpfs. Tests that write run on both.
var writeModes = []string{"pwrite", "mmap"}

// targetDir returns an empty directory where Download writes in the given mode: a temporary
// directory, or one on a tmpfs mounted with huge=within_size (root only).
func targetDir(t *testing.T, mode string) string {
	t.Helper()
	dir := t.TempDir()
	if mode == "pwrite" {
		return dir
	}
	if os.Geteuid() != 0 {
		t.Skip("mounting a huge-page tmpfs needs root")
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=2g,huge=within_size"); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}

// download takes the manifest of u and downloads it into a fresh directory.
func download(t *testing.T, c *ossclient.Client, u ossclient.URI, opts ossclient.DownloadOptions) (string, *ossclient.Manifest, error) {
	t.Helper()
	m, err := c.Manifest(t.Context(), u)
	if err != nil {
		t.Fatalf("manifest of %s: %v", u, err)
	}
	dir := t.TempDir()
	return dir, m, c.Download(t.Context(), m, dir, opts)
}

// checkFiles asserts dir holds exactly files (relative path → content).
func checkFiles(t *testing.T, dir string, files map[string][]byte) {
	t.Helper()
	found := 0
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		want, ok := files[filepath.ToSlash(rel)]
		if !ok {
			t.Errorf("unexpected file %q", rel)
			return nil
		}
		found++
		got, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s: content differs (%d bytes, want %d)", rel, len(got), len(want))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if found != len(files) {
		t.Errorf("found %d files, want %d", found, len(files))
	}
}

func TestManifestPagination(t *testing.T) {
	srv := newEmu(t)
	want := map[string]ossemu.ObjectInfo{}
	for i := range 2500 {
		key := fmt.Sprintf("big/shard-%05d.bin", i)
		want[key] = srv.PutObject("models", key, randBytes(t, 1+i%97))
	}
	srv.PutObject("models", "bigger/not-this.bin", []byte("x")) // shares the string prefix, not the directory
	srv.ResetStats()

	m, err := newClient(t, srv).Manifest(t.Context(), mustURI(t, "oss://models/big/"))
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Objects) != len(want) {
		t.Fatalf("manifest has %d objects, want %d", len(m.Objects), len(want))
	}
	var size int64
	for i, o := range m.Objects {
		w := want[o.Key]
		if o.Size != w.Size || o.ETag != w.ETag || o.CRC64 != w.CRC64 {
			t.Errorf("%s: size %d etag %s crc %d, want %d %s %d", o.Key, o.Size, o.ETag, o.CRC64, w.Size, w.ETag, w.CRC64)
		}
		if i > 0 && m.Objects[i-1].Key >= o.Key {
			t.Errorf("objects out of order at %d: %s, %s", i, m.Objects[i-1].Key, o.Key)
		}
		size += o.Size
	}
	if m.Size() != size {
		t.Errorf("Size() = %d, want %d", m.Size(), size)
	}
	st := srv.Stats()
	if st.Requests[ossemu.OpList] != 3 || st.Requests[ossemu.OpHead] != 2500 {
		t.Errorf("requests %v: want 3 list pages of ≤1000 keys and 2500 HEADs", st.Requests)
	}

	again, err := newClient(t, srv).Manifest(t.Context(), mustURI(t, "oss://models/big"))
	if err != nil {
		t.Fatal(err)
	}
	if again.Fingerprint() != m.Fingerprint() {
		t.Errorf("same objects, different fingerprint")
	}
	srv.PutObject("models", "big/shard-00007.bin", randBytes(t, 10))
	changed, err := newClient(t, srv).Manifest(t.Context(), mustURI(t, "oss://models/big/"))
	if err != nil {
		t.Fatal(err)
	}
	if changed.Fingerprint() == m.Fingerprint() {
		t.Errorf("an object changed, the fingerprint did not")
	}
}

func TestOddKeysDownload(t *testing.T) {
	srv := newEmu(t)
	files := map[string][]byte{
		"with space.bin":           randBytes(t, 1000),
		"plus+sign.bin":            randBytes(t, 1001),
		"percent%20literal.bin":    randBytes(t, 1002),
		"unicode-模型-🚀.safetensors": randBytes(t, 1003),
		"quote'and\"dq.bin":        randBytes(t, 1004),
		"hash#and?query=1&x.bin":   randBytes(t, 1005),
		"tilde~star*.bin":          randBytes(t, 1006),
		"a/b/c/deep config.json":   []byte(`{"x":1}`),
		"empty.txt":                {},
	}
	putModel(srv, "odd model/", files)
	srv.PutObject("models", "odd model/placeholder dir/", nil) // a "directory" key: skipped
	srv.PutObject("models", "odd model/", nil)

	dir, m, err := download(t, newClient(t, srv), mustURI(t, "oss://models/odd model/"), ossclient.DownloadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Objects) != len(files) {
		t.Errorf("manifest has %d objects, want %d (directory keys skipped)", len(m.Objects), len(files))
	}
	checkFiles(t, dir, files)
}

func TestManifestRejectsUnsafeKeys(t *testing.T) {
	for _, bad := range []string{
		"tr/../escape.bin",
		"tr/sub/../../escape.bin",
		"tr//etc/passwd",
		"tr/a//b",
		"tr/./dot",
		"tr/nul\x00byte",
		"tr/ctl\x01char",
		"tr/new\nline",
		"tr/c1\u0085nel",
		"tr/bidi\u202eoverride.bin",
		"tr/\ufeffbom.json",
		"tr/ends/..",
	} {
		t.Run(fmt.Sprintf("%q", bad), func(t *testing.T) {
			srv := newEmu(t)
			srv.PutObject("models", "tr/ok.bin", []byte("fine"))
			srv.PutObject("models", bad, []byte("evil"))
			_, err := newClient(t, srv).Manifest(t.Context(), mustURI(t, "oss://models/tr/"))
			if !errors.Is(err, ossclient.ErrInvalidKey) {
				t.Fatalf("Manifest = %v, want ErrInvalidKey", err)
			}
			if !strings.Contains(err.Error(), fmt.Sprintf("%q", bad)) {
				t.Errorf("error %q does not name the key %q", err, bad)
			}
		})
	}
}

func TestNotFound(t *testing.T) {
	srv := newEmu(t)
	srv.PutObject("models", "present/x.bin", []byte("x"))
	c := newClient(t, srv)
	for _, u := range []string{"oss://models/absent/", "oss://no-such-bucket/x/"} {
		_, err := c.Manifest(t.Context(), mustURI(t, u))
		if !errors.Is(err, ossclient.ErrNotFound) {
			t.Errorf("Manifest(%s) = %v, want ErrNotFound", u, err)
		} else if !strings.Contains(err.Error(), strings.TrimSuffix(u, "x/")) {
			t.Errorf("error %q does not name %s", err, u)
		}
	}
	// An object deleted between the manifest and the download.
	m, err := c.Manifest(t.Context(), mustURI(t, "oss://models/present/"))
	if err != nil {
		t.Fatal(err)
	}
	srv.DeleteObject("models", "present/x.bin")
	err = c.Download(t.Context(), m, t.TempDir(), ossclient.DownloadOptions{})
	if !errors.Is(err, ossclient.ErrNotFound) || !strings.Contains(err.Error(), "oss://models/present/x.bin") {
		t.Errorf("Download of a deleted object = %v, want ErrNotFound naming it", err)
	}
}

func TestSignatures(t *testing.T) {
	srv := newEmu(t)
	putModel(srv, "m/", map[string][]byte{"config.json": []byte("{}"), "w.bin": randBytes(t, 5000)})
	u := mustURI(t, "oss://models/m/")
	for _, tc := range []struct {
		name   string
		mutate func(*ossclient.Config)
		ok     bool
	}{
		{"v4", func(*ossclient.Config) {}, true},
		{"v1", func(c *ossclient.Config) { c.SignatureVersion = ossclient.SignV1 }, true},
		{"v4 wrong secret", func(c *ossclient.Config) { c.Credentials.AccessKeySecret = "wrong" }, false},
		{"v1 wrong secret", func(c *ossclient.Config) {
			c.SignatureVersion = ossclient.SignV1
			c.Credentials.AccessKeySecret = "wrong"
		}, false},
		{"unknown key", func(c *ossclient.Config) { c.Credentials.AccessKeyID = "LTAI5tSomebodyElse" }, false},
		{"wrong region", func(c *ossclient.Config) { c.Region = "cn-elsewhere" }, false},
		{"anonymous on a private bucket", func(c *ossclient.Config) { c.Credentials = ossclient.Credentials{} }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv.ResetStats()
			var reported []string
			c := newClient(t, srv, tc.mutate, func(c *ossclient.Config) {
				c.OnRequestError = func(op, code string) { reported = append(reported, op+" "+code) }
			})
			m, err := c.Manifest(t.Context(), u)
			if tc.ok {
				if err != nil {
					t.Fatal(err)
				}
				if err := c.Download(t.Context(), m, t.TempDir(), ossclient.DownloadOptions{}); err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, ossclient.ErrAccessDenied) {
				t.Fatalf("Manifest = %v, want ErrAccessDenied", err)
			}
			var se *oss.ServiceError
			if !errors.As(err, &se) || se.StatusCode != 403 {
				t.Errorf("the SDK's 403 is not reachable from %v", err)
			}
			if msg := err.Error(); strings.Contains(msg, "\n") || !strings.Contains(msg, "HTTP 403") || !strings.Contains(msg, "oss://models/m/") {
				t.Errorf("message %q: want one line naming the model and the HTTP status", msg)
			}
			if strings.Contains(err.Error(), testSecret) {
				t.Errorf("message reveals the secret")
			}
			// A refusal is final: no retry storm.
			if n := srv.Stats().Requests[ossemu.OpList]; n != 1 {
				t.Errorf("%d list requests for one refused manifest, want 1", n)
			}
			if len(reported) != 1 || reported[0] != "list "+se.Code || se.Code == "" {
				t.Errorf("failed requests reported: %q, want one list with OSS's code %q", reported, se.Code)
			}
		})
	}
}

func TestSecurityToken(t *testing.T) {
	srv := ossemu.Start(t, ossemu.Options{
		Region:      testRegion,
		Credentials: []ossemu.Credential{{AccessKeyID: "STS.tmpkey000001", AccessKeySecret: "tmp-secret", SecurityToken: "the-sts-token"}},
	})
	srv.PutObject("models", "m/w.bin", randBytes(t, 3000))
	u := mustURI(t, "oss://models/m/")
	creds := ossclient.Credentials{AccessKeyID: "STS.tmpkey000001", AccessKeySecret: "tmp-secret"}
	if _, err := newClient(t, srv, func(c *ossclient.Config) { c.Credentials = creds }).Manifest(t.Context(), u); !errors.Is(err, ossclient.ErrAccessDenied) {
		t.Errorf("without the STS token: %v, want ErrAccessDenied", err)
	}
	creds.SecurityToken = "the-sts-token"
	c := newClient(t, srv, func(c *ossclient.Config) { c.Credentials = creds })
	if _, _, err := download(t, c, u, ossclient.DownloadOptions{}); err != nil {
		t.Errorf("with the STS token: %v", err)
	}
}

func TestAnonymousPublicRead(t *testing.T) {
	srv := newEmu(t)
	srv.CreateBucket("public-models", ossemu.BucketOptions{PublicRead: true})
	files := map[string][]byte{"w.bin": randBytes(t, 70000), "config.json": []byte("{}")}
	for rel, data := range files {
		srv.PutObject("public-models", "m/"+rel, data)
	}
	c := newClient(t, srv, func(c *ossclient.Config) { c.Credentials = ossclient.Credentials{} })
	dir, _, err := download(t, c, mustURI(t, "oss://public-models/m/"), ossclient.DownloadOptions{PartSize: 1})
	if err != nil {
		t.Fatal(err)
	}
	checkFiles(t, dir, files)
}

// model puts a random model of n objects of size each under "m/" and returns its files.
func model(t *testing.T, srv *ossemu.Server, n, size int) map[string][]byte {
	files := map[string][]byte{}
	for i := range n {
		files[fmt.Sprintf("model-%05d-of-%05d.safetensors", i+1, n)] = randBytes(t, size)
	}
	files["config.json"] = []byte(`{"architectures":["Test"]}`)
	putModel(srv, "m/", files)
	return files
}

func TestDownloadSurvivesTransientFaults(t *testing.T) {
	for _, tc := range []struct {
		name  string
		fault ossemu.Fault
		// refetched: the fault may make bytes be served twice (never for a resumed body).
		extraRequests int64
		code          string // ossclient.ErrorCode of each failed request
	}{
		{"503", ossemu.Fault{Op: ossemu.OpGet, Kind: ossemu.FaultStatus, Status: 503, Count: 5}, 5, "ServiceUnavailable"},
		{"500", ossemu.Fault{Op: ossemu.OpGet, Kind: ossemu.FaultStatus, Status: 500, Count: 2}, 2, "InternalError"},
		{"truncated bodies", ossemu.Fault{Op: ossemu.OpGet, Kind: ossemu.FaultTruncate, After: 300 << 10, Count: 4}, 4, "ShortBody"},
		{"connection resets", ossemu.Fault{Op: ossemu.OpGet, Kind: ossemu.FaultReset, Count: 3}, 3, "ConnectionReset"},
		{"slow first byte beyond the read timeout", ossemu.Fault{Op: ossemu.OpGet, Kind: ossemu.FaultSlowFirstByte, Delay: 5 * time.Second, Count: 2}, 2, "Timeout"},
	} {
		for _, mode := range writeModes {
			t.Run(tc.name+"/"+mode, func(t *testing.T) { testTransientFault(t, mode, tc.fault, tc.extraRequests, tc.code) })
		}
	}
}

func testTransientFault(t *testing.T, mode string, fault ossemu.Fault, extraRequests int64, code string) {
	srv := newEmu(t)
	files := model(t, srv, 3, 3<<20+12345)
	var mu sync.Mutex
	failures := map[string]int64{}
	c := newClient(t, srv, func(c *ossclient.Config) {
		c.ReadTimeout = 500 * time.Millisecond
		c.OnRequestError = func(op, code string) {
			mu.Lock()
			failures[op+" "+code]++
			mu.Unlock()
		}
	})
	m, err := c.Manifest(t.Context(), mustURI(t, "oss://models/m/"))
	if err != nil {
		t.Fatal(err)
	}
	srv.ResetStats()
	srv.InjectFault(fault)
	dir := targetDir(t, mode)
	if err := c.Download(t.Context(), m, dir, ossclient.DownloadOptions{PartSize: 1 << 20, Concurrency: 4}); err != nil {
		t.Fatal(err)
	}
	checkFiles(t, dir, files)
	st := srv.Stats()
	parts := int64(0)
	for _, o := range m.Objects {
		parts += (o.Size + 1<<20 - 1) >> 20
	}
	if st.FaultsHit != extraRequests || st.Requests[ossemu.OpGet] != parts+extraRequests {
		t.Errorf("%d GETs with %d faults hit, want %d parts + %d retries", st.Requests[ossemu.OpGet], st.FaultsHit, parts, extraRequests)
	}
	// Resumed parts ask only for what they miss: OSS serves each byte once.
	if st.BytesServed != m.Size() {
		t.Errorf("served %d bytes for a %d-byte model", st.BytesServed, m.Size())
	}
	mu.Lock()
	defer mu.Unlock()
	if len(failures) != 1 || failures["get "+code] != extraRequests {
		t.Errorf("failed requests reported: %v, want %d × get %s", failures, extraRequests, code)
	}
}

func TestDownloadGivesUpOnPersistentFailure(t *testing.T) {
	srv := newEmu(t)
	model(t, srv, 1, 1<<20)
	c := newClient(t, srv)
	m, err := c.Manifest(t.Context(), mustURI(t, "oss://models/m/"))
	if err != nil {
		t.Fatal(err)
	}
	srv.InjectFault(ossemu.Fault{Op: ossemu.OpGet, Key: "m/model-00001-of-00001.safetensors", Kind: ossemu.FaultStatus, Status: 503, Count: -1})
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	err = c.Download(ctx, m, t.TempDir(), ossclient.DownloadOptions{Concurrency: 1})
	if !errors.Is(err, ossclient.ErrUnavailable) || !strings.Contains(err.Error(), "model-00001-of-00001.safetensors") {
		t.Errorf("Download = %v, want ErrUnavailable naming the object", err)
	}
}

func TestDownloadRefusalIsNotRetried(t *testing.T) {
	srv := newEmu(t)
	model(t, srv, 1, 4<<20)
	c := newClient(t, srv)
	m, err := c.Manifest(t.Context(), mustURI(t, "oss://models/m/"))
	if err != nil {
		t.Fatal(err)
	}
	srv.ResetStats()
	srv.InjectFault(ossemu.Fault{Op: ossemu.OpGet, Kind: ossemu.FaultStatus, Status: 403, Count: -1})
	err = c.Download(t.Context(), m, t.TempDir(), ossclient.DownloadOptions{Concurrency: 1, PartSize: 1 << 20})
	if !errors.Is(err, ossclient.ErrAccessDenied) {
		t.Errorf("Download = %v, want ErrAccessDenied", err)
	}
	if n := srv.Stats().Requests[ossemu.OpGet]; n != 1 {
		t.Errorf("%d GETs after a 403, want 1", n)
	}
}

func TestDownloadDetectsCorruption(t *testing.T) {
	for _, mode := range writeModes {
		t.Run(mode, func(t *testing.T) { testCorruption(t, mode) })
	}
}

func testCorruption(t *testing.T, mode string) {
	srv := newEmu(t)
	model(t, srv, 2, 2<<20)
	c := newClient(t, srv)
	m, err := c.Manifest(t.Context(), mustURI(t, "oss://models/m/"))
	if err != nil {
		t.Fatal(err)
	}
	const victim = "m/model-00002-of-00002.safetensors"
	srv.InjectFault(ossemu.Fault{Op: ossemu.OpGet, Key: victim, Kind: ossemu.FaultCorrupt, After: 777, Count: 1})
	err = c.Download(t.Context(), m, targetDir(t, mode), ossclient.DownloadOptions{PartSize: 512 << 10})
	if !errors.Is(err, ossclient.ErrIntegrity) || !strings.Contains(err.Error(), "oss://models/"+victim) {
		t.Fatalf("Download = %v, want ErrIntegrity naming %s", err, victim)
	}
	if srv.Stats().FaultsHit != 1 {
		t.Errorf("the corruption was not injected")
	}
}

func TestDownloadDetectsReplacedObject(t *testing.T) {
	srv := newEmu(t)
	files := model(t, srv, 1, 16<<20)
	c := newClient(t, srv)
	m, err := c.Manifest(t.Context(), mustURI(t, "oss://models/m/"))
	if err != nil {
		t.Fatal(err)
	}
	srv.SetEgressRate(8 << 20) // two seconds for the model: time to replace it midway
	var once sync.Once
	replaced := make(chan struct{})
	progress := func(p ossclient.Progress) {
		if p.Done > 4<<20 {
			once.Do(func() {
				for rel := range files {
					if strings.HasSuffix(rel, ".safetensors") {
						srv.PutObject("models", "m/"+rel, randBytes(t, 16<<20))
					}
				}
				close(replaced)
			})
		}
	}
	err = c.Download(t.Context(), m, t.TempDir(), ossclient.DownloadOptions{PartSize: 1 << 20, Concurrency: 2, Progress: progress})
	select {
	case <-replaced:
	default:
		t.Fatal("the object was never replaced")
	}
	if !errors.Is(err, ossclient.ErrChanged) || !strings.Contains(err.Error(), "model-00001-of-00001.safetensors") {
		t.Errorf("Download = %v, want ErrChanged naming the object", err)
	}
}

func TestDownloadConcurrencyAndConnectionReuse(t *testing.T) {
	srv := newEmu(t)
	files := model(t, srv, 4, 6<<20) // 4 × 12 parts of 512 KiB
	c := newClient(t, srv)
	m, err := c.Manifest(t.Context(), mustURI(t, "oss://models/m/"))
	if err != nil {
		t.Fatal(err)
	}
	// Hold every GET a moment so all workers are in flight at once.
	srv.InjectFault(ossemu.Fault{Op: ossemu.OpGet, Kind: ossemu.FaultSlowFirstByte, Delay: 150 * time.Millisecond, Count: -1})
	srv.ResetStats()
	dir := t.TempDir()
	const workers = 24
	if err := c.Download(t.Context(), m, dir, ossclient.DownloadOptions{Concurrency: workers, PartSize: 512 << 10}); err != nil {
		t.Fatal(err)
	}
	checkFiles(t, dir, files)
	st := srv.Stats()
	if st.MaxInFlightGets != workers {
		t.Errorf("at most %d GETs in flight, want %d", st.MaxInFlightGets, workers)
	}
	// 49 requests over 24 workers: connections are reused, not re-dialled per part.
	if st.Connections > workers {
		t.Errorf("%d connections for %d workers: connections are not reused", st.Connections, workers)
	}
}

func TestDownloadProgressAndCancel(t *testing.T) {
	srv := newEmu(t)
	model(t, srv, 3, 2<<20)
	c := newClient(t, srv)
	m, err := c.Manifest(t.Context(), mustURI(t, "oss://models/m/"))
	if err != nil {
		t.Fatal(err)
	}
	var seen []ossclient.Progress
	err = c.Download(t.Context(), m, t.TempDir(), ossclient.DownloadOptions{PartSize: 256 << 10, Concurrency: 8, Progress: func(p ossclient.Progress) { seen = append(seen, p) }})
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range seen {
		if p.Total != m.Size() || p.Verified > p.Contiguous || p.Contiguous > p.Done || p.Done > p.Total {
			t.Fatalf("inconsistent progress %+v", p)
		}
		if i > 0 && (p.Done < seen[i-1].Done || p.Contiguous < seen[i-1].Contiguous || p.Verified < seen[i-1].Verified) {
			t.Fatalf("progress went backwards: %+v then %+v", seen[i-1], p)
		}
	}
	if last := seen[len(seen)-1]; last.Done != m.Size() || last.Contiguous != m.Size() || last.Verified != m.Size() {
		t.Errorf("final progress %+v, want everything at %d", last, m.Size())
	}

	// A context ended before the download starts ends it with the context's error and its
	// cause (csi-plugin fetch says "terminated" on SIGTERM), whichever step notices first:
	// preallocation, a part waiting for its space, or a GET.
	stop := errors.New("asked to stop")
	for range 5 {
		ctx, cancel := context.WithCancelCause(t.Context())
		cancel(stop)
		err := c.Download(ctx, m, t.TempDir(), ossclient.DownloadOptions{})
		if !errors.Is(err, context.Canceled) || !errors.Is(err, stop) {
			t.Fatalf("Download with a cancelled context = %v, want context.Canceled and its cause", err)
		}
	}

	// Cancelling stops the download promptly with the context's error.
	srv.SetEgressRate(1 << 20)
	ctx, cancel := context.WithCancel(t.Context())
	started := make(chan struct{})
	var once sync.Once
	errc := make(chan error, 1)
	go func() {
		errc <- c.Download(ctx, m, t.TempDir(), ossclient.DownloadOptions{Progress: func(ossclient.Progress) { once.Do(func() { close(started) }) }})
	}()
	<-started
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("cancelled Download = %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Download did not stop after cancel")
	}
}

// TestLargeModelIdentical downloads a generated 1 GiB model (safetensors shards, config,
// tokenizer) and compares every byte with the emulator's files.
func TestLargeModelIdentical(t *testing.T) {
	size := int64(1 << 30)
	if testing.Short() {
		size = 64 << 20
	}
	srv := newEmu(t)
	src := t.TempDir()
	objs, err := srv.GenerateModel("models", "qwen/", ossemu.ModelSpec{Size: size, Seed: 42, Dir: src})
	if err != nil {
		t.Fatal(err)
	}
	c := newClient(t, srv)
	m, err := c.Manifest(t.Context(), mustURI(t, "oss://models/qwen/"))
	if err != nil {
		t.Fatal(err)
	}
	for _, mode := range writeModes {
		t.Run(mode, func(t *testing.T) {
			srv.ResetStats()
			dir := targetDir(t, mode)
			if err := c.Download(t.Context(), m, dir, ossclient.DownloadOptions{}); err != nil {
				t.Fatal(err)
			}
			checkLargeModel(t, srv, src, dir, m, objs, size)
		})
	}
}

func checkLargeModel(t *testing.T, srv *ossemu.Server, src, dir string, m *ossclient.Manifest, objs []ossemu.ObjectInfo, size int64) {
	if m.Size() != size || len(m.Objects) != len(objs) {
		t.Fatalf("manifest: %d objects, %d bytes; want %d, %d", len(m.Objects), m.Size(), len(objs), size)
	}
	for i := range m.Objects {
		equalFiles(t, filepath.Join(src, filepath.FromSlash(m.Path(i))), filepath.Join(dir, filepath.FromSlash(m.Path(i))))
	}
	if served := srv.Stats().BytesServed; served != size {
		t.Errorf("emulator served %d bytes for a %d-byte model", served, size)
	}
}

func equalFiles(t *testing.T, a, b string) {
	t.Helper()
	fa, err := os.Open(a)
	if err != nil {
		t.Fatal(err)
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		t.Fatal(err)
	}
	defer fb.Close()
	ba, bb := make([]byte, 4<<20), make([]byte, 4<<20)
	for off := int64(0); ; {
		na, ea := io.ReadFull(fa, ba)
		nb, eb := io.ReadFull(fb, bb)
		if na != nb || !bytes.Equal(ba[:na], bb[:nb]) {
			t.Fatalf("%s and %s differ near offset %d", a, b, off)
		}
		off += int64(na)
		if ea != nil || eb != nil {
			if (ea == nil) != (eb == nil) {
				t.Fatalf("%s and %s differ in length", a, b)
			}
			return
		}
	}
}

// TestDownloadChunksAndResume: every chunk's CRC is reported as it completes, and a download
// resumed at any point (chunk boundary, mid-chunk, object boundary, the end) fetches only the
// missing bytes and still checks every object.
func TestDownloadChunksAndResume(t *testing.T) {
	srv := newEmu(t)
	files := map[string][]byte{"a.bin": randBytes(t, 3<<20+100), "b.bin": randBytes(t, 5<<20), "c.json": []byte("{}")}
	putModel(srv, "m/", files)
	c := newClient(t, srv)
	m, err := c.Manifest(t.Context(), mustURI(t, "oss://models/m/"))
	if err != nil {
		t.Fatal(err)
	}
	layout := ossclient.NewLayout(m, 256<<10)
	tab := crc64.MakeTable(crc64.ECMA)
	want := make([]uint64, layout.Len())
	for i := range want {
		ch := layout.Chunk(i)
		want[i] = crc64.Checksum(files[m.Path(ch.Object)][ch.Offset:ch.Offset+ch.Size], tab)
	}

	var mu sync.Mutex
	got := make([]uint64, layout.Len())
	seen := make([]int, layout.Len())
	dir := t.TempDir()
	err = c.Download(t.Context(), m, dir, ossclient.DownloadOptions{Layout: layout, PartSize: 1 << 20, Concurrency: 4,
		Chunk: func(i int, crc uint64) { mu.Lock(); got[i] = crc; seen[i]++; mu.Unlock() }})
	if err != nil {
		t.Fatal(err)
	}
	for i := range want {
		if seen[i] != 1 || got[i] != want[i] {
			t.Fatalf("chunk %d reported %d times with CRC %x, want once with %x", i, seen[i], got[i], want[i])
		}
	}
	checkFiles(t, dir, files)

	prefix := func(n int) func(int) bool { return func(i int) bool { return i < n } }
	for _, tc := range []struct {
		name    string
		have    func(i int) bool
		partial map[int]int64 // chunk → bytes of it present
	}{
		{"from the start", prefix(0), nil},
		{"mid-chunk", prefix(5), map[int]int64{5: 1000}},
		{"at the second object", prefix(13), nil}, // a.bin is 13 chunks of 256 KiB (the last one 100 bytes)
		{"in the last chunk", prefix(layout.Len() - 1), map[int]int64{layout.Len() - 1: 1}},
		{"nothing left", prefix(layout.Len()), nil},
		// Chunks a relay received out of order: every third one, and two cut off mid-way.
		{"scattered", func(i int) bool { return i%3 == 0 }, map[int]int64{4: 7, 14: 200 << 10}},
		{"a whole object present, the others partly", func(i int) bool { return i >= 13 && i < 20 }, map[int]int64{0: 1, 20: 5}},
	} {
		for _, mode := range writeModes {
			t.Run(tc.name+"/"+mode, func(t *testing.T) {
				dir := targetDir(t, mode)
				if err := ossclient.Preallocate(m, dir); err != nil {
					t.Fatal(err)
				}
				// Copy in the bytes the resume point says are there.
				r := &ossclient.Resume{Have: make([]bool, layout.Len()), CRCs: make([]uint64, layout.Len()), Partial: map[int]ossclient.PartialChunk{}}
				var present int64
				put := func(i int, n int64) {
					ch := layout.Chunk(i)
					f, err := os.OpenFile(filepath.Join(dir, m.Path(ch.Object)), os.O_WRONLY, 0)
					if err != nil {
						t.Fatal(err)
					}
					defer f.Close()
					if _, err := f.WriteAt(files[m.Path(ch.Object)][ch.Offset:ch.Offset+n], ch.Offset); err != nil {
						t.Fatal(err)
					}
					present += n
				}
				for i := range layout.Len() {
					if tc.have(i) {
						r.Have[i], r.CRCs[i] = true, want[i]
						put(i, layout.Chunk(i).Size)
					}
				}
				for i, n := range tc.partial {
					ch := layout.Chunk(i)
					r.Partial[i] = ossclient.PartialChunk{Bytes: n, CRC: crc64.Checksum(files[m.Path(ch.Object)][ch.Offset:ch.Offset+n], tab)}
					put(i, n)
				}
				srv.ResetStats()
				var reported []int
				err := c.Download(t.Context(), m, dir, ossclient.DownloadOptions{
					Layout: layout, PartSize: 1 << 20, Concurrency: 3, Resume: r,
					Chunk: func(i int, _ uint64) { mu.Lock(); reported = append(reported, i); mu.Unlock() },
				})
				if err != nil {
					t.Fatal(err)
				}
				checkFiles(t, dir, files)
				if served := srv.Stats().BytesServed; served != m.Size()-present {
					t.Errorf("served %d bytes, want the %d missing", served, m.Size()-present)
				}
				missing := 0
				for i := range layout.Len() {
					if !tc.have(i) {
						missing++
					}
				}
				if len(reported) != missing || slices.ContainsFunc(reported, tc.have) {
					t.Errorf("chunks %v reported, want the %d missing ones", reported, missing)
				}
			})
		}
	}

	// CRCs that do not match the bytes fail the object's check.
	bad := slices.Clone(want[:5])
	bad[2] ^= 1
	five := []bool{true, true, true, true, true}
	dir = t.TempDir()
	if err := ossclient.Preallocate(m, dir); err != nil {
		t.Fatal(err)
	}
	err = c.Download(t.Context(), m, dir, ossclient.DownloadOptions{Layout: layout, Resume: &ossclient.Resume{Have: five, CRCs: bad}})
	if !errors.Is(err, ossclient.ErrIntegrity) || !strings.Contains(err.Error(), "a.bin") {
		t.Errorf("resume with a wrong CRC: %v, want ErrIntegrity on a.bin", err)
	}
	for name, r := range map[string]*ossclient.Resume{
		"more chunks than the model":     {Have: make([]bool, layout.Len()+1), CRCs: make([]uint64, layout.Len()+1)},
		"a partial chunk past the end":   {Partial: map[int]ossclient.PartialChunk{layout.Len(): {Bytes: 1}}},
		"a partial chunk that is whole":  {Partial: map[int]ossclient.PartialChunk{0: {Bytes: layout.Chunk(0).Size}}},
		"a chunk both whole and partial": {Have: five, CRCs: want[:5], Partial: map[int]ossclient.PartialChunk{1: {Bytes: 1}}},
	} {
		if err := c.Download(t.Context(), m, t.TempDir(), ossclient.DownloadOptions{Layout: layout, Resume: r}); err == nil {
			t.Errorf("%s: the resume point was accepted", name)
		}
	}
}

func TestCheck(t *testing.T) {
	srv := newEmu(t)
	putModel(srv, "m/", map[string][]byte{"a.bin": []byte("aaaa"), "b.bin": []byte("bb")})
	c := newClient(t, srv)
	m, err := c.Manifest(t.Context(), mustURI(t, "oss://models/m/"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Check(t.Context(), m); err != nil {
		t.Errorf("Check of a current manifest: %v", err)
	}
	anon := newClient(t, srv, func(c *ossclient.Config) { c.Credentials = ossclient.Credentials{} })
	if err := anon.Check(t.Context(), m); !errors.Is(err, ossclient.ErrAccessDenied) {
		t.Errorf("Check without credentials: %v, want ErrAccessDenied", err)
	}
	srv.PutObject("models", "m/a.bin", []byte("changed"))
	if err := c.Check(t.Context(), m); !errors.Is(err, ossclient.ErrChanged) {
		t.Errorf("Check after a change: %v, want ErrChanged", err)
	}
	srv.DeleteObject("models", "m/a.bin")
	if err := c.Check(t.Context(), m); !errors.Is(err, ossclient.ErrNotFound) {
		t.Errorf("Check after a delete: %v, want ErrNotFound", err)
	}
}

// withLimits sets the client's bounds on a model.
func withLimits(objects int, bytes int64) func(*ossclient.Config) {
	return func(c *ossclient.Config) { c.Limits = ossclient.Limits{MaxObjects: objects, MaxBytes: bytes} }
}

// TestManifestBounds: a model with more objects or bytes than the client's Limits is refused
// while listing, before a single HEAD, with ErrTooLarge naming the bound, its value and the
// config key; a model at the bounds is fine. An empty prefix (the whole bucket) is allowed
// within the same bounds, and refused past them saying it is the whole bucket.
func TestManifestBounds(t *testing.T) {
	srv := newEmu(t)
	putModel(srv, "m/", map[string][]byte{"a.bin": []byte("aaaa"), "b.bin": []byte("bbbb"), "c/d.bin": []byte("dddd")})
	srv.PutObject("models", "m/c/", nil) // a "directory" placeholder: not an object
	ctx := t.Context()
	for _, tc := range []struct {
		name       string
		uri        string
		objects    int
		bytes      int64
		want       []string // in the error; none: the manifest is taken
		wantObject int
	}{
		{"at the bounds", "oss://models/m/", 3, 12, nil, 3},
		{"one object too many", "oss://models/m/", 2, 12, []string{"more than 2 objects", "model.maxObjects = 2", "if oss://models/m/ is one model's directory, raise the bound"}, 0},
		{"one byte too many", "oss://models/m/", 3, 11, []string{"more than 11 B", "model.maxSizeGB = 1.1e-08"}, 0},
		{"the whole bucket within the bounds", "oss://models/", 3, 12, nil, 3},
		{"the whole bucket past them", "oss://models", 2, 1e9, []string{"more than 2 objects", "oss://models/ is the whole bucket"}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv.ResetStats()
			m, err := newClient(t, srv, withLimits(tc.objects, tc.bytes)).Manifest(ctx, mustURI(t, tc.uri))
			if tc.want == nil {
				if err != nil || len(m.Objects) != tc.wantObject {
					t.Fatalf("Manifest = %v, %v; want %d objects", m, err, tc.wantObject)
				}
				return
			}
			if !errors.Is(err, ossclient.ErrTooLarge) {
				t.Fatalf("Manifest = %v, want ErrTooLarge", err)
			}
			for _, w := range append(tc.want, "model exceeds a configured bound") {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			if heads := srv.Stats().Requests[ossemu.OpHead]; heads != 0 {
				t.Errorf("%d HEAD requests: a model past the bounds is refused while listing", heads)
			}
		})
	}

	// A manifest another node published (with other bounds) is checked against this client's.
	m, err := newClient(t, srv).Manifest(ctx, mustURI(t, "oss://models/m/"))
	if err != nil {
		t.Fatal(err)
	}
	srv.ResetStats()
	if err := newClient(t, srv, withLimits(2, 0)).Check(ctx, m); !errors.Is(err, ossclient.ErrTooLarge) || !strings.Contains(err.Error(), "model.maxObjects = 2") {
		t.Errorf("Check of a manifest past the bounds: %v, want ErrTooLarge naming model.maxObjects", err)
	}
	if err := newClient(t, srv, withLimits(0, 11)).Check(ctx, m); !errors.Is(err, ossclient.ErrTooLarge) || !strings.Contains(err.Error(), "model.maxSizeGB") {
		t.Errorf("Check of a manifest past the byte bound: %v, want ErrTooLarge naming model.maxSizeGB", err)
	}
	if heads := srv.Stats().Requests[ossemu.OpHead]; heads != 0 {
		t.Errorf("%d HEAD requests for manifests past the bounds", heads)
	}
}

// TestManifestEndlessListing: a server that keeps answering IsTruncated is not followed
// forever. Pages that repeat keys are refused at the first repeat (ErrUnavailable: the
// listing does not advance); empty pages without end at the page bound the object bound
// sets (ErrTooLarge; by default 201 pages, for 100000 objects).
func TestManifestEndlessListing(t *testing.T) {
	srv := newEmu(t)
	putModel(srv, "m/", map[string][]byte{"a.bin": []byte("a"), "b.bin": []byte("b")})
	srv.InjectFault(ossemu.Fault{Op: ossemu.OpList, Kind: ossemu.FaultEndlessList, Count: -1})
	// Without the bounds these listings never end: the deadline turns a hang into a failure.
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	c := newClient(t, srv)

	_, err := c.Manifest(ctx, mustURI(t, "oss://models/m/"))
	if !errors.Is(err, ossclient.ErrUnavailable) || !strings.Contains(err.Error(), `OSS listed "m/a.bin" after "m/b.bin" (page 2): the listing does not advance`) {
		t.Errorf("a listing repeating its page: %v, want ErrUnavailable saying it does not advance", err)
	}
	if st := srv.Stats(); st.Requests[ossemu.OpList] != 2 || st.Requests[ossemu.OpHead] != 0 {
		t.Errorf("requests %v: want 2 LIST pages and no HEAD", st.Requests)
	}

	srv.ResetStats()
	_, err = c.Manifest(ctx, mustURI(t, "oss://models/empty/"))
	want := fmt.Sprintf("the listing goes on past %d pages of up to 1000 keys", ossclient.Limits{MaxObjects: ossclient.DefaultMaxObjects}.MaxListPages())
	if !errors.Is(err, ossclient.ErrTooLarge) || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "model.maxObjects = 100000") {
		t.Errorf("an endless empty listing: %v, want ErrTooLarge saying %q and naming model.maxObjects", err, want)
	}
	if n := srv.Stats().Requests[ossemu.OpList]; n != 201 {
		t.Errorf("%d LIST pages, want the default bound of 201", n)
	}

	srv.ResetStats()
	_, err = newClient(t, srv, withLimits(1500, 0)).Manifest(ctx, mustURI(t, "oss://models/empty/"))
	if !errors.Is(err, ossclient.ErrTooLarge) || !strings.Contains(err.Error(), "past 5 pages") || srv.Stats().Requests[ossemu.OpList] != 5 {
		t.Errorf("an endless empty listing, 1500 objects at most: %v after %d pages, want ErrTooLarge after 5", err, srv.Stats().Requests[ossemu.OpList])
	}

	// The same model once the server behaves.
	srv.ClearFaults()
	if m, err := c.Manifest(ctx, mustURI(t, "oss://models/m/")); err != nil || len(m.Objects) != 2 {
		t.Errorf("Manifest without the fault = %v, %v", m, err)
	}
}
