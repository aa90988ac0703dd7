package ossemu

import (
	"bytes"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/aliyun/alibabacloud-oss-go-sdk-v2/oss"
)

// exercise runs list (with a continuation token), head, meta, get and put,
// with keys that stress canonicalisation, and returns the first error.
func exercise(t *testing.T, c *oss.Client) error {
	t.Helper()
	ctx := ctxT(t)
	bucket := oss.Ptr("bkt")
	for _, key := range []string{"plain", "dir/with space+plus%25/模型 ü~.bin"} {
		if _, err := c.PutObject(ctx, &oss.PutObjectRequest{Bucket: bucket, Key: oss.Ptr(key), Body: bytes.NewReader([]byte(key))}); err != nil {
			return err
		}
		if _, err := c.HeadObject(ctx, &oss.HeadObjectRequest{Bucket: bucket, Key: oss.Ptr(key)}); err != nil {
			return err
		}
		if _, err := c.GetObjectMeta(ctx, &oss.GetObjectMetaRequest{Bucket: bucket, Key: oss.Ptr(key)}); err != nil {
			return err
		}
		res, err := c.GetObject(ctx, &oss.GetObjectRequest{Bucket: bucket, Key: oss.Ptr(key), Range: oss.Ptr("bytes=0-3"),
			ResponseContentDisposition: oss.Ptr("attachment; filename=\"x y.bin\"")})
		if err != nil {
			return err
		}
		body, err := io.ReadAll(res.Body)
		res.Body.Close()
		if err != nil || string(body) != key[:4] {
			t.Fatalf("GetObject %q = %q, %v", key, body, err)
		}
	}
	p := c.NewListObjectsV2Paginator(&oss.ListObjectsV2Request{Bucket: bucket, MaxKeys: 1, Prefix: oss.Ptr(""), Delimiter: oss.Ptr("/")})
	for p.HasNext() {
		if _, err := p.NextPage(ctx); err != nil {
			return err
		}
	}
	return nil
}

func TestSignatures(t *testing.T) {
	srv := Start(t, Options{Region: testRegion, Credentials: []Credential{testCred, {AccessKeyID: "other", AccessKeySecret: "s2"}}})
	srv.CreateBucket("bkt", BucketOptions{})
	for _, sig := range []struct {
		name string
		opt  func(*oss.Config)
	}{
		{"v4", withRegion(testRegion)},
		{"v1", withV1()},
		{"v4-additional-headers", func(c *oss.Config) {
			c.WithAdditionalHeaders([]string{"X-Custom", "User-Agent"}).WithDefaultRequestHeaders(map[string]string{"X-Custom": " spaced value "})
		}},
	} {
		t.Run(sig.name, func(t *testing.T) {
			if err := exercise(t, newClient(srv, withKeys(testAK, testSK), sig.opt)); err != nil {
				t.Errorf("right secret: %v", err)
			}
			if err := exercise(t, newClient(srv, withKeys("other", "s2"), sig.opt)); err != nil {
				t.Errorf("second key: %v", err)
			}
			err := exercise(t, newClient(srv, withKeys(testAK, "wrong"), sig.opt))
			wantServiceError(t, err, http.StatusForbidden, "SignatureDoesNotMatch")
			err = exercise(t, newClient(srv, withKeys("unknown", testSK), sig.opt))
			wantServiceError(t, err, http.StatusForbidden, "InvalidAccessKeyId")
		})
	}
	// V4 scoped to another region.
	err := exercise(t, newClient(srv, withKeys(testAK, testSK), withRegion("cn-beijing")))
	se := serviceError(t, err)
	if se.StatusCode != http.StatusForbidden || se.Code != "SignatureDoesNotMatch" || !bytes.Contains([]byte(se.Message), []byte("cn-hangzhou")) {
		t.Errorf("wrong region: %d %s %q", se.StatusCode, se.Code, se.Message)
	}
}

func TestSecurityToken(t *testing.T) {
	srv := Start(t, Options{Credentials: []Credential{{AccessKeyID: testAK, AccessKeySecret: testSK, SecurityToken: "sts-token"}}})
	srv.CreateBucket("bkt", BucketOptions{})
	for _, sig := range []func(*oss.Config){withRegion(testRegion), withV1()} {
		if err := exercise(t, newClient(srv, withKeys(testAK, testSK, "sts-token"), sig)); err != nil {
			t.Errorf("with the token: %v", err)
		}
		err := exercise(t, newClient(srv, withKeys(testAK, testSK), sig))
		wantServiceError(t, err, http.StatusForbidden, "InvalidSecurityToken")
		err = exercise(t, newClient(srv, withKeys(testAK, testSK, "other-token"), sig))
		wantServiceError(t, err, http.StatusForbidden, "InvalidSecurityToken")
	}
}

func TestAnonymous(t *testing.T) {
	srv := Start(t, Options{Credentials: []Credential{testCred}})
	srv.CreateBucket("public", BucketOptions{PublicRead: true})
	srv.PutObject("public", "k", []byte("open"))
	srv.PutObject("private", "k", []byte("closed"))
	c := newClient(srv) // anonymous
	if got, _ := getBytes(t, c, "public", "k"); string(got) != "open" {
		t.Errorf("public GetObject = %q", got)
	}
	if _, err := c.HeadObject(ctxT(t), &oss.HeadObjectRequest{Bucket: oss.Ptr("public"), Key: oss.Ptr("k")}); err != nil {
		t.Errorf("public HeadObject: %v", err)
	}
	if _, err := c.ListObjectsV2(ctxT(t), &oss.ListObjectsV2Request{Bucket: oss.Ptr("public")}); err != nil {
		t.Errorf("public ListObjectsV2: %v", err)
	}
	_, err := c.PutObject(ctxT(t), &oss.PutObjectRequest{Bucket: oss.Ptr("public"), Key: oss.Ptr("k"), Body: bytes.NewReader(nil)})
	wantServiceError(t, err, http.StatusForbidden, "AccessDenied")
	_, err = c.GetObject(ctxT(t), &oss.GetObjectRequest{Bucket: oss.Ptr("private"), Key: oss.Ptr("k")})
	wantServiceError(t, err, http.StatusForbidden, "AccessDenied")
	_, err = c.HeadObject(ctxT(t), &oss.HeadObjectRequest{Bucket: oss.Ptr("private"), Key: oss.Ptr("k")})
	wantServiceError(t, err, http.StatusForbidden, "AccessDenied")
	_, err = c.ListObjectsV2(ctxT(t), &oss.ListObjectsV2Request{Bucket: oss.Ptr("private")})
	wantServiceError(t, err, http.StatusForbidden, "AccessDenied")

	// A public bucket made with PutBucket and x-oss-acl.
	admin := newClient(srv, withKeys(testAK, testSK))
	if _, err := admin.PutBucket(ctxT(t), &oss.PutBucketRequest{Bucket: oss.Ptr("made-public"), Acl: oss.BucketACLPublicRead}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ListObjectsV2(ctxT(t), &oss.ListObjectsV2Request{Bucket: oss.Ptr("made-public")}); err != nil {
		t.Errorf("ListObjectsV2 of a bucket put public-read: %v", err)
	}
}

func TestAuthRejections(t *testing.T) {
	srv := Start(t, Options{Credentials: []Credential{testCred}})
	srv.PutObject("bkt", "k", []byte("x"))

	// Presigned URLs are refused.
	c := newClient(srv, withKeys(testAK, testSK))
	pre, err := c.Presign(ctxT(t), &oss.GetObjectRequest{Bucket: oss.Ptr("bkt"), Key: oss.Ptr("k")})
	if err != nil {
		t.Fatal(err)
	}
	resp, body, err := rawRequest(t, srv, http.MethodGet, pre.URL[len(srv.Endpoint()):], nil, nil)
	if err != nil || resp.StatusCode != http.StatusForbidden || !bytes.Contains(body, []byte("<Code>AccessDenied</Code>")) {
		t.Errorf("presigned GET: %v %s %v", resp, body, err)
	}

	old := time.Now().Add(-time.Hour).UTC()
	for _, tc := range []struct {
		name   string
		header http.Header
		status int
		code   string
	}{
		{"skewed v4", http.Header{
			"Authorization": {"OSS4-HMAC-SHA256 Credential=" + testAK + "/" + old.Format("20060102") + "/" + testRegion + "/oss/aliyun_v4_request,Signature=00"},
			"X-Oss-Date":    {old.Format("20060102T150405Z")},
		}, http.StatusForbidden, "RequestTimeTooSkewed"},
		{"skewed v1", http.Header{
			"Authorization": {"OSS " + testAK + ":AAAA"},
			"Date":          {old.Format(http.TimeFormat)},
		}, http.StatusForbidden, "RequestTimeTooSkewed"},
		{"no date v4", http.Header{
			"Authorization": {"OSS4-HMAC-SHA256 Credential=" + testAK + "/20240101/" + testRegion + "/oss/aliyun_v4_request,Signature=00"},
		}, http.StatusForbidden, "AccessDenied"},
		{"malformed v4", http.Header{"Authorization": {"OSS4-HMAC-SHA256 Signature=00"}}, http.StatusBadRequest, "InvalidArgument"},
		{"unknown scheme", http.Header{"Authorization": {"Bearer x"}}, http.StatusBadRequest, "InvalidArgument"},
		{"anonymous private", nil, http.StatusForbidden, "AccessDenied"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body, err := rawRequest(t, srv, http.MethodGet, "/bkt/k", tc.header, nil)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tc.status || !bytes.Contains(body, []byte("<Code>"+tc.code+"</Code>")) {
				t.Errorf("%d %s, want %d %s", resp.StatusCode, body, tc.status, tc.code)
			}
		})
	}
}
