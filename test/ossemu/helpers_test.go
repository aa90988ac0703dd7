package ossemu

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/aliyun/alibabacloud-oss-go-sdk-v2/oss"
	"github.com/aliyun/alibabacloud-oss-go-sdk-v2/oss/credentials"
	"github.com/aliyun/alibabacloud-oss-go-sdk-v2/oss/retry"
)

const (
	testAK     = "LTAItestaccesskey"
	testSK     = "test-access-key-secret"
	testRegion = "cn-hangzhou"
)

var testCred = Credential{AccessKeyID: testAK, AccessKeySecret: testSK}

// newClient returns a real SDK client for srv: anonymous, region
// testRegion, V4, 3 attempts with short back-off, unless options say
// otherwise.
func newClient(srv *Server, opts ...func(*oss.Config)) *oss.Client {
	cfg := oss.LoadDefaultConfig().
		WithRegion(testRegion).
		WithEndpoint(srv.Endpoint()).
		WithCredentialsProvider(credentials.NewAnonymousCredentialsProvider()).
		WithRetryer(retry.NewStandard(func(o *retry.RetryOptions) {
			o.BaseDelay, o.MaxBackoff = 5*time.Millisecond, 20*time.Millisecond
		}))
	for _, o := range opts {
		o(cfg)
	}
	return oss.NewClient(cfg)
}

func withKeys(ak, sk string, token ...string) func(*oss.Config) {
	return func(c *oss.Config) {
		c.WithCredentialsProvider(credentials.NewStaticCredentialsProvider(ak, sk, token...))
	}
}

func withV1() func(*oss.Config) {
	return func(c *oss.Config) { c.WithSignatureVersion(oss.SignatureVersionV1) }
}

func withRegion(region string) func(*oss.Config) {
	return func(c *oss.Config) { c.WithRegion(region) }
}

func withRetries(n int) func(*oss.Config) {
	return func(c *oss.Config) { c.WithRetryMaxAttempts(n) }
}

// serviceError extracts the SDK's service error, failing the test if err
// is not one.
func serviceError(t *testing.T, err error) *oss.ServiceError {
	t.Helper()
	var se *oss.ServiceError
	if !errors.As(err, &se) {
		t.Fatalf("error = %v, want an *oss.ServiceError", err)
	}
	return se
}

// wantServiceError checks an SDK error's status and code.
func wantServiceError(t *testing.T, err error, status int, code string) {
	t.Helper()
	se := serviceError(t, err)
	if se.StatusCode != status || se.Code != code {
		t.Fatalf("service error = %d %s (%s), want %d %s", se.StatusCode, se.Code, se.Message, status, code)
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// getBytes reads a whole object with the SDK.
func getBytes(t *testing.T, c *oss.Client, bucket, key string) ([]byte, *oss.GetObjectResult) {
	t.Helper()
	res, err := c.GetObject(ctxT(t), &oss.GetObjectRequest{Bucket: oss.Ptr(bucket), Key: oss.Ptr(key)})
	if err != nil {
		t.Fatalf("GetObject %s/%s: %v", bucket, key, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("read %s/%s: %v", bucket, key, err)
	}
	return b, res
}

// rawRequest sends a plain HTTP request to srv on a fresh connection.
func rawRequest(t *testing.T, srv *Server, method, path string, header http.Header, body io.Reader) (*http.Response, []byte, error) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctxT(t), method, srv.Endpoint()+path, body)
	if err != nil {
		t.Fatal(err)
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true, DisableCompression: true}}
	resp, err := client.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp, b, err
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

// dialer sends every connection to srv, whatever the host name, so that
// virtual-hosted names need no DNS.
func dialer(srv *Server) *http.Client {
	addr := srv.Endpoint()[len("http://"):]
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
	}}
}

// pseudoRandom returns n deterministic bytes.
func pseudoRandom(n int, seed int64) []byte {
	b := make([]byte, n)
	fillRandom(streamKey(seed, 0), 0, b)
	return b
}
