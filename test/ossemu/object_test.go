package ossemu

import (
	"bytes"
	"crypto/md5"
	"fmt"
	"hash/crc64"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/aliyun/alibabacloud-oss-go-sdk-v2/oss"
)

func crcOf(b []byte) string {
	return strconv.FormatUint(crc64.Update(0, crc64.MakeTable(crc64.ECMA), b), 10)
}

func TestHeadAndMeta(t *testing.T) {
	srv := Start(t, Options{})
	data := pseudoRandom(1000, 1)
	info := srv.PutObject("bkt", "dir/weights.bin", data)
	c := newClient(srv)

	head, err := c.HeadObject(ctxT(t), &oss.HeadObjectRequest{Bucket: oss.Ptr("bkt"), Key: oss.Ptr("dir/weights.bin")})
	if err != nil {
		t.Fatal(err)
	}
	if head.ContentLength != 1000 || oss.ToString(head.ETag) != info.ETag || oss.ToString(head.HashCRC64) != crcOf(data) ||
		oss.ToString(head.ObjectType) != "Normal" || oss.ToString(head.StorageClass) != "Standard" ||
		head.LastModified == nil || !head.LastModified.Equal(info.LastModified) {
		t.Errorf("HeadObject = %+v, want %+v", head, info)
	}
	if want := fmt.Sprintf(`"%X"`, md5.Sum(data)); info.ETag != want {
		t.Errorf("ETag = %s, want the MD5 %s", info.ETag, want)
	}
	for _, h := range []string{"Content-Type", "Accept-Ranges", "X-Oss-Request-Id", "Date", "Server"} {
		if head.Headers.Get(h) == "" {
			t.Errorf("HeadObject lacks %s", h)
		}
	}
	meta, err := c.GetObjectMeta(ctxT(t), &oss.GetObjectMetaRequest{Bucket: oss.Ptr("bkt"), Key: oss.Ptr("dir/weights.bin")})
	if err != nil {
		t.Fatal(err)
	}
	if meta.ContentLength != 1000 || oss.ToString(meta.ETag) != info.ETag || oss.ToString(meta.HashCRC64) != crcOf(data) {
		t.Errorf("GetObjectMeta = %+v", meta)
	}
	if st := srv.Stats(); st.Requests[OpHead] != 1 || st.Requests[OpMeta] != 1 {
		t.Errorf("requests = %v", st.Requests)
	}

	// HEAD errors come in x-oss-err, which the SDK decodes.
	_, err = c.HeadObject(ctxT(t), &oss.HeadObjectRequest{Bucket: oss.Ptr("bkt"), Key: oss.Ptr("missing")})
	wantServiceError(t, err, http.StatusNotFound, "NoSuchKey")
	_, err = c.GetObjectMeta(ctxT(t), &oss.GetObjectMetaRequest{Bucket: oss.Ptr("nope"), Key: oss.Ptr("k")})
	wantServiceError(t, err, http.StatusNotFound, "NoSuchBucket")
	_, err = c.GetObject(ctxT(t), &oss.GetObjectRequest{Bucket: oss.Ptr("bkt"), Key: oss.Ptr("missing")})
	se := serviceError(t, err)
	if se.Code != "NoSuchKey" || se.RequestID == "" || se.EC == "" || se.Headers.Get("X-Oss-Ec") == "" {
		t.Errorf("GetObject error = %+v", se)
	}
}

func TestGetRanges(t *testing.T) {
	srv := Start(t, Options{})
	data := pseudoRandom(1000, 2)
	srv.PutObject("bkt", "mem", data)
	path := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.PutFile("bkt", "file", path); err != nil {
		t.Fatal(err)
	}
	c := newClient(srv)
	for _, tc := range []struct {
		rng          string
		standard     bool
		status       int
		wantErr      string
		start, end   int // body is data[start:end]
		contentRange string
	}{
		{rng: "", status: 200, end: 1000},
		{rng: "bytes=0-99", status: 206, end: 100, contentRange: "bytes 0-99/1000"},
		{rng: "bytes=10-10", status: 206, start: 10, end: 11, contentRange: "bytes 10-10/1000"},
		{rng: "bytes=990-2000", status: 206, start: 990, end: 1000, contentRange: "bytes 990-999/1000"},
		{rng: "bytes=990-2000", standard: true, status: 206, start: 990, end: 1000, contentRange: "bytes 990-999/1000"},
		{rng: "bytes=500-", status: 206, start: 500, end: 1000, contentRange: "bytes 500-999/1000"},
		{rng: "bytes=-100", status: 206, start: 900, end: 1000, contentRange: "bytes 900-999/1000"},
		{rng: "bytes=-5000", status: 206, end: 1000, contentRange: "bytes 0-999/1000"},
		{rng: "bytes=1000-2000", status: 200, end: 1000},
		{rng: "bytes=1000-", standard: true, wantErr: "InvalidRange", status: 416},
		{rng: "bytes=5000-6000", standard: true, wantErr: "InvalidRange", status: 416},
		{rng: "bytes=0-1,5-9", status: 200, end: 1000},
		{rng: "bytes=abc", status: 200, end: 1000},
		{rng: "bytes=9-1", status: 200, end: 1000},
		{rng: "items=0-1", status: 200, end: 1000},
	} {
		for _, key := range []string{"mem", "file"} {
			t.Run(fmt.Sprintf("%s/%s/standard=%v", key, tc.rng, tc.standard), func(t *testing.T) {
				req := &oss.GetObjectRequest{Bucket: oss.Ptr("bkt"), Key: oss.Ptr(key)}
				if tc.rng != "" {
					req.Range = oss.Ptr(tc.rng)
				}
				if tc.standard {
					req.RangeBehavior = oss.Ptr("standard")
				}
				res, err := c.GetObject(ctxT(t), req)
				if tc.wantErr != "" {
					wantServiceError(t, err, tc.status, tc.wantErr)
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				defer res.Body.Close()
				body, err := io.ReadAll(res.Body)
				if err != nil {
					t.Fatal(err)
				}
				if res.StatusCode != tc.status || oss.ToString(res.ContentRange) != tc.contentRange {
					t.Errorf("status %d, Content-Range %q; want %d %q", res.StatusCode, oss.ToString(res.ContentRange), tc.status, tc.contentRange)
				}
				if !bytes.Equal(body, data[tc.start:tc.end]) || res.ContentLength != int64(tc.end-tc.start) {
					t.Errorf("body is %d bytes (Content-Length %d), want data[%d:%d]", len(body), res.ContentLength, tc.start, tc.end)
				}
				if oss.ToString(res.HashCRC64) != crcOf(data) {
					t.Errorf("x-oss-hash-crc64ecma = %s, want the whole object's %s", oss.ToString(res.HashCRC64), crcOf(data))
				}
			})
		}
	}
}

func TestConditionalGet(t *testing.T) {
	srv := Start(t, Options{})
	info := srv.PutObject("bkt", "k", []byte("hello"))
	c := newClient(srv)
	get := func(req *oss.GetObjectRequest) error {
		req.Bucket, req.Key = oss.Ptr("bkt"), oss.Ptr("k")
		res, err := c.GetObject(ctxT(t), req)
		if err == nil {
			res.Body.Close()
		}
		return err
	}
	wantServiceError(t, get(&oss.GetObjectRequest{IfMatch: oss.Ptr(`"0123456789ABCDEF0123456789ABCDEF"`)}), http.StatusPreconditionFailed, "PreconditionFailed")
	if err := get(&oss.GetObjectRequest{IfMatch: oss.Ptr(info.ETag)}); err != nil {
		t.Errorf("If-Match with the ETag: %v", err)
	}
	if err := get(&oss.GetObjectRequest{IfNoneMatch: oss.Ptr(`"other"`)}); err != nil {
		t.Errorf("If-None-Match with another ETag: %v", err)
	}
	err := get(&oss.GetObjectRequest{IfNoneMatch: oss.Ptr(info.ETag)})
	if se := serviceError(t, err); se.StatusCode != http.StatusNotModified {
		t.Errorf("If-None-Match with the ETag: status %d, want 304", se.StatusCode)
	}
	_, err = c.HeadObject(ctxT(t), &oss.HeadObjectRequest{Bucket: oss.Ptr("bkt"), Key: oss.Ptr("k"), IfMatch: oss.Ptr(`"nope"`)})
	wantServiceError(t, err, http.StatusPreconditionFailed, "PreconditionFailed")
}

func TestPutObject(t *testing.T) {
	srv := Start(t, Options{Credentials: []Credential{testCred}})
	c := newClient(srv, withKeys(testAK, testSK))
	_, err := c.PutObject(ctxT(t), &oss.PutObjectRequest{Bucket: oss.Ptr("bkt"), Key: oss.Ptr("k"), Body: bytes.NewReader([]byte("v1"))})
	wantServiceError(t, err, http.StatusNotFound, "NoSuchBucket")
	if _, err := c.PutBucket(ctxT(t), &oss.PutBucketRequest{Bucket: oss.Ptr("bkt")}); err != nil {
		t.Fatalf("PutBucket: %v", err)
	}
	if _, err := c.PutBucket(ctxT(t), &oss.PutBucketRequest{Bucket: oss.Ptr("bkt")}); err != nil {
		t.Fatalf("PutBucket again: %v", err)
	}

	put := func(data string) *oss.PutObjectResult {
		t.Helper()
		res, err := c.PutObject(ctxT(t), &oss.PutObjectRequest{Bucket: oss.Ptr("bkt"), Key: oss.Ptr("dir/k.json"), Body: bytes.NewReader([]byte(data))})
		if err != nil { // the SDK also checks x-oss-hash-crc64ecma against what it sent
			t.Fatalf("PutObject: %v", err)
		}
		if want := fmt.Sprintf(`"%X"`, md5.Sum([]byte(data))); oss.ToString(res.ETag) != want {
			t.Errorf("ETag = %s, want %s", oss.ToString(res.ETag), want)
		}
		return res
	}
	first := put("version one")
	second := put("version two")
	if oss.ToString(first.ETag) == oss.ToString(second.ETag) {
		t.Error("replacing an object kept its ETag")
	}
	got, res := getBytes(t, c, "bkt", "dir/k.json")
	if string(got) != "version two" || oss.ToString(res.ETag) != oss.ToString(second.ETag) || oss.ToString(res.ContentType) != "application/json" {
		t.Errorf("GetObject = %q, ETag %s, Content-Type %s", got, oss.ToString(res.ETag), oss.ToString(res.ContentType))
	}

	_, err = c.PutObject(ctxT(t), &oss.PutObjectRequest{Bucket: oss.Ptr("bkt"), Key: oss.Ptr("k"),
		ContentMD5: oss.Ptr("1B2M2Y8AsgTpgAmY7PhCfg=="), Body: bytes.NewReader([]byte("not empty"))})
	wantServiceError(t, err, http.StatusBadRequest, "InvalidDigest")

	if _, err := c.DeleteObject(ctxT(t), &oss.DeleteObjectRequest{Bucket: oss.Ptr("bkt"), Key: oss.Ptr("dir/k.json")}); err != nil {
		t.Fatalf("DeleteObject: %v", err)
	}
	_, err = c.HeadObject(ctxT(t), &oss.HeadObjectRequest{Bucket: oss.Ptr("bkt"), Key: oss.Ptr("dir/k.json")})
	wantServiceError(t, err, http.StatusNotFound, "NoSuchKey")
	if _, err := c.DeleteObject(ctxT(t), &oss.DeleteObjectRequest{Bucket: oss.Ptr("bkt"), Key: oss.Ptr("dir/k.json")}); err != nil {
		t.Errorf("DeleteObject of a missing key: %v", err)
	}
}

// TestReplaceWhileStreaming checks that a GET keeps streaming the version
// it started with.
func TestReplaceWhileStreaming(t *testing.T) {
	srv := Start(t, Options{EgressBytesPerSec: 32 << 20})
	old := pseudoRandom(4<<20, 3)
	path := filepath.Join(t.TempDir(), "old")
	if err := os.WriteFile(path, old, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, fileBacked := range []bool{false, true} {
		t.Run(fmt.Sprintf("file=%v", fileBacked), func(t *testing.T) {
			if fileBacked {
				if _, err := srv.PutFile("bkt", "k", path); err != nil {
					t.Fatal(err)
				}
			} else {
				srv.PutObject("bkt", "k", old)
			}
			c := newClient(srv)
			res, err := c.GetObject(ctxT(t), &oss.GetObjectRequest{Bucket: oss.Ptr("bkt"), Key: oss.Ptr("k")})
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			head := make([]byte, 1000)
			if _, err := io.ReadFull(res.Body, head); err != nil {
				t.Fatal(err)
			}
			info := srv.PutObject("bkt", "k", []byte("new"))
			rest, err := io.ReadAll(res.Body)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(append(head, rest...), old) {
				t.Error("the GET in flight did not serve the old bytes")
			}
			if got, res := getBytes(t, c, "bkt", "k"); string(got) != "new" || oss.ToString(res.ETag) != info.ETag {
				t.Errorf("later GET = %q %s", got, oss.ToString(res.ETag))
			}
		})
	}
}

func TestVirtualHostedStyle(t *testing.T) {
	srv := Start(t, Options{Credentials: []Credential{testCred}})
	srv.PutObject("my-bucket", "dir/a b+c.txt", []byte("hello"))
	port := srv.Endpoint()[len("http://127.0.0.1:"):]
	for _, sig := range []func(*oss.Config){withRegion(testRegion), withV1()} {
		c := newClient(srv, withKeys(testAK, testSK), sig, func(cfg *oss.Config) {
			cfg.WithEndpoint("http://oss-" + testRegion + ".emulator.test:" + port).WithHttpClient(dialer(srv))
		})
		if got, _ := getBytes(t, c, "my-bucket", "dir/a b+c.txt"); string(got) != "hello" {
			t.Errorf("GetObject = %q", got)
		}
		keys, _, _ := listAll(t, c, &oss.ListObjectsV2Request{Bucket: oss.Ptr("my-bucket"), Prefix: oss.Ptr("dir/")})
		if len(keys) != 1 || keys[0] != "dir/a b+c.txt" {
			t.Errorf("list = %q", keys)
		}
		if _, err := c.PutObject(ctxT(t), &oss.PutObjectRequest{Bucket: oss.Ptr("my-bucket"), Key: oss.Ptr("new"), Body: bytes.NewReader(nil)}); err != nil {
			t.Errorf("PutObject: %v", err)
		}
	}
}

func TestUnsupportedOperations(t *testing.T) {
	srv := Start(t, Options{})
	srv.PutObject("bkt", "k", []byte("x"))
	for _, tc := range []struct{ method, path string }{
		{http.MethodGet, "/bkt/?acl"},
		{http.MethodGet, "/bkt/"},
		{http.MethodGet, "/"},
		{http.MethodGet, "/bkt/k?tagging"},
		{http.MethodPost, "/bkt/k?uploads"},
		{http.MethodPost, "/bkt/k"},
	} {
		resp, body, err := rawRequest(t, srv, tc.method, tc.path, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusMethodNotAllowed || !bytes.Contains(body, []byte("<Code>MethodNotAllowed</Code>")) ||
			resp.Header.Get("Content-Type") != "application/xml" {
			t.Errorf("%s %s: %d %s", tc.method, tc.path, resp.StatusCode, body)
		}
	}
	if st := srv.Stats(); st.Requests[OpOther] != 6 || st.ErrorsByCode["MethodNotAllowed"] != 6 {
		t.Errorf("stats = %+v", st)
	}
}

func TestLoadDir(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{"config.json": "{}", "sub/dir/w.bin": "weights", "sub/x y": "spaced"}
	for name, content := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(filepath.Join(dir, "config.json"), filepath.Join(dir, "link.json")); err != nil {
		t.Fatal(err)
	}
	files["link.json"] = "{}"
	srv := Start(t, Options{})
	infos, err := srv.LoadDir("bkt", "models/m/", dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(infos) != len(files) {
		t.Fatalf("loaded %d objects, want %d: %+v", len(infos), len(files), infos)
	}
	c := newClient(srv)
	for _, info := range infos {
		name := info.Key[len("models/m/"):]
		got, res := getBytes(t, c, "bkt", info.Key)
		if string(got) != files[name] || oss.ToString(res.ETag) != info.ETag || oss.ToString(res.HashCRC64) != crcOf(got) ||
			info.ETag != crcETag(info.CRC64, info.Size) {
			t.Errorf("%s: %q, ETag %s, CRC %s; info %+v", info.Key, got, oss.ToString(res.ETag), oss.ToString(res.HashCRC64), info)
		}
	}
	if _, err := srv.LoadDir("bkt", "", filepath.Join(dir, "missing")); err == nil {
		t.Error("LoadDir of a missing directory succeeded")
	}
}
