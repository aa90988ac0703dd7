package ossclient

import (
	"net/http"
	"strings"

	"github.com/aliyun/alibabacloud-oss-go-sdk-v2/oss"
	"github.com/aliyun/alibabacloud-oss-go-sdk-v2/oss/credentials"
	"github.com/aliyun/alibabacloud-oss-go-sdk-v2/oss/transport"
)

// MaxConcurrency caps the parallel requests of one Download and the connections kept per host.
// The seed's default (prefetch.vcpus 16 × prefetch.workers 16 = 256) fits under it; larger
// products add goroutines and buffers without adding bandwidth.
const MaxConcurrency = 512

// Client reads models from one OSS endpoint with one set of credentials.
// It is safe for concurrent use.
type Client struct {
	sdk *oss.Client
	cfg Config // normalized
}

// New returns a client for cfg. It validates cfg but does not contact OSS.
func New(cfg Config) (*Client, error) {
	cfg, err := cfg.normalized()
	if err != nil {
		return nil, err
	}
	httpClient := transport.NewHttpClient(&transport.Config{
		ConnectTimeout:   &cfg.ConnectTimeout,
		ReadWriteTimeout: &cfg.ReadTimeout,
	}, func(t *http.Transport) {
		// The SDK keeps 10 idle connections per host and allows 100: a download with hundreds of
		// parallel ranges would reconnect for most parts, or queue.
		t.MaxConnsPerHost = MaxConcurrency
		t.MaxIdleConnsPerHost = MaxConcurrency
		t.MaxIdleConns = 0
		// Model bytes must arrive exactly as stored: their CRC-64 is of the stored bytes.
		t.DisableCompression = true
		t.ResponseHeaderTimeout = cfg.ReadTimeout
		if strings.HasPrefix(cfg.Endpoint, "http://") {
			// Large body reads wait for their bytes (lowat.go). net/http reads everything else
			// through a buffer of ReadBufferSize bytes (4 KiB when 0).
			t.DialContext = dialMarked(cfg.ConnectTimeout, transport.DefaultKeepAliveTimeout, cfg.ReadTimeout, max(t.ReadBufferSize, 4<<10))
		}
	})
	sdkCfg := oss.LoadDefaultConfig().
		WithEndpoint(cfg.Endpoint).
		WithRegion(cfg.Region).
		WithHttpClient(httpClient).
		WithUsePathStyle(cfg.UsePathStyle).
		WithRetryMaxAttempts(5)
	sdkCfg.SignatureVersion = oss.Ptr(oss.SignatureVersionV4)
	if cfg.SignatureVersion == SignV1 {
		sdkCfg.SignatureVersion = oss.Ptr(oss.SignatureVersionV1)
	}
	if cfg.Credentials.Anonymous() {
		sdkCfg.CredentialsProvider = credentials.NewAnonymousCredentialsProvider()
	} else {
		c := cfg.Credentials
		sdkCfg.CredentialsProvider = credentials.NewStaticCredentialsProvider(c.AccessKeyID, c.AccessKeySecret, c.SecurityToken)
	}
	return &Client{sdk: oss.NewClient(sdkCfg), cfg: cfg}, nil
}

// Endpoint is the normalized endpoint URL (with scheme).
func (c *Client) Endpoint() string { return c.cfg.Endpoint }

// Region is the configured or derived region.
func (c *Client) Region() string { return c.cfg.Region }

// SDK exposes the underlying SDK client, for callers that need an operation this package does
// not wrap (benchmarks comparing against the SDK's own downloader, for instance).
func (c *Client) SDK() *oss.Client { return c.sdk }
