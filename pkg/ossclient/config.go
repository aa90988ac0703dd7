package ossclient

import (
	"fmt"
	"math/rand/v2"
	"net/url"
	"strings"
	"time"
)

// Environment variables of OSS Connector, honoured by EnvConfig.
const (
	EnvEndpoint        = "OSS_ENDPOINT"
	EnvRegion          = "OSS_REGION"
	EnvAccessKeyID     = "OSS_ACCESS_KEY_ID"
	EnvAccessKeySecret = "OSS_ACCESS_KEY_SECRET"
	EnvSessionToken    = "OSS_SESSION_TOKEN"
)

// Signing versions.
const (
	SignV4 = "v4" // the default
	SignV1 = "v1"
)

// Config says how to reach OSS. The zero value of every optional field means its default.
type Config struct {
	// Endpoint, e.g. "oss-cn-beijing-internal.aliyuncs.com" or "http://10.0.0.5:9000".
	// Without a scheme, https is used. Empty: derived from Region (public endpoint).
	Endpoint string
	// Region, e.g. "cn-beijing". Empty: derived from an *.aliyuncs.com endpoint.
	// V4 signing needs it.
	Region string
	// UsePathStyle addresses buckets as endpoint/bucket/key instead of bucket.endpoint/key.
	// IP endpoints always use path style.
	UsePathStyle bool
	// SignatureVersion is SignV4 (default) or SignV1.
	SignatureVersion string
	// Credentials; empty means anonymous access (public-read buckets).
	Credentials Credentials
	// ConnectTimeout bounds a TCP (and TLS) connect; default 5s.
	ConnectTimeout time.Duration
	// ReadTimeout is the longest a connection may stay silent before the request is abandoned
	// and retried; default 30s.
	ReadTimeout time.Duration
	// Retry bounds the retries of one ranged GET.
	Retry RetryPolicy
	// Limits bound one model: its objects, its bytes and the pages of its listing.
	Limits Limits
	// OnRequestError, if set, is told of every failed request as this package sees it (each
	// ranged GET attempt; a list or HEAD after the SDK's own retries) with the error's code
	// (ErrorCode). Requests abandoned because their context ended are not failures.
	OnRequestError func(op, code string)
}

// Limits bound what one model may be, so that a path that is not a model's directory (a
// mistyped prefix, or oss://bucket/ for the whole bucket) or a listing that never ends is
// refused with ErrTooLarge, naming the bound, instead of listed, HEADed and staged without
// end. The node plugin sets them from its config's model.maxObjects and model.maxSizeGB,
// the keys the errors name.
type Limits struct {
	// MaxObjects is the most objects one model may have; default DefaultMaxObjects. It also
	// bounds the listing's pages (MaxListPages).
	MaxObjects int
	// MaxBytes is the most bytes one model may have; default DefaultMaxBytes.
	MaxBytes int64
}

// Default Limits: far above any model (models have at most a few thousand files, and 4 TB is
// more RAM than nearly any node has for its tmpfs cache), far below a data lake.
const (
	DefaultMaxObjects       = 100_000
	DefaultMaxBytes   int64 = 4000e9
)

// listPageKeys is the keys asked for per listing page (OSS's most).
const listPageKeys = 1000

// MaxListPages is how many pages a model's listing may take: twice what MaxObjects objects
// fill, plus one (room for "directory" placeholder keys and short pages). A listing that goes
// on past it (a server that keeps answering IsTruncated) fails with ErrTooLarge.
func (l Limits) MaxListPages() int {
	return 2*((l.MaxObjects+listPageKeys-1)/listPageKeys) + 1
}

// RetryPolicy: a part is retried after transient failures (5xx, throttling, timeouts, resets,
// short bodies), resuming at its first missing byte, with exponential backoff and jitter.
type RetryPolicy struct {
	// MaxFailures is how many attempts in a row may fail without receiving a byte before the
	// download gives up; default 8.
	MaxFailures int
	// BaseDelay is the wait before the first retry, doubled at each further failure; default 100ms.
	BaseDelay time.Duration
	// MaxDelay caps the wait; default 5s.
	MaxDelay time.Duration
}

// delay is the wait before retry number attempt (1-based), with jitter (half to all of the
// exponential value) so hundreds of workers hit by one outage do not retry in step.
func (r RetryPolicy) delay(attempt int) time.Duration {
	d := min(r.BaseDelay<<min(attempt-1, 20), r.MaxDelay)
	return d/2 + rand.N(d/2+1)
}

// Credentials authenticate requests. An access key pair with an optional STS token, or nothing
// (anonymous). Its String, GoString and MarshalLog never reveal the secret or the token.
type Credentials struct {
	AccessKeyID     string
	AccessKeySecret string
	SecurityToken   string
}

// Anonymous reports whether no key is set.
func (c Credentials) Anonymous() bool { return c.AccessKeyID == "" && c.AccessKeySecret == "" }

// String describes the credentials without their secrets.
func (c Credentials) String() string {
	if c.Anonymous() {
		return "anonymous"
	}
	s := "access key " + maskID(c.AccessKeyID)
	if c.SecurityToken != "" {
		s += " with STS token"
	}
	return s
}

// GoString keeps %#v from printing the secret.
func (c Credentials) GoString() string { return "ossclient.Credentials{" + c.String() + "}" }

// MarshalLog keeps structured loggers (klog, logr) from printing the secret.
func (c Credentials) MarshalLog() any { return c.String() }

func maskID(id string) string {
	if len(id) < 12 {
		return "****"
	}
	return id[:4] + "…" + id[len(id)-4:]
}

func (c Credentials) validate() error {
	switch {
	case c.Anonymous() && c.SecurityToken != "":
		return fmt.Errorf("%w: an STS security token is set without an access key pair", ErrInvalidConfig)
	case c.Anonymous():
		return nil
	case c.AccessKeyID == "":
		return fmt.Errorf("%w: access key secret is set but the access key ID is empty", ErrInvalidConfig)
	case c.AccessKeySecret == "":
		return fmt.Errorf("%w: access key ID %s is set but the access key secret is empty", ErrInvalidConfig, maskID(c.AccessKeyID))
	}
	return nil
}

// EnvConfig reads the OSS_* variables of OSS Connector through getenv (os.Getenv in production).
func EnvConfig(getenv func(string) string) Config {
	return Config{
		Endpoint: strings.TrimSpace(getenv(EnvEndpoint)),
		Region:   strings.TrimSpace(getenv(EnvRegion)),
		Credentials: Credentials{
			AccessKeyID:     strings.TrimSpace(getenv(EnvAccessKeyID)),
			AccessKeySecret: strings.TrimSpace(getenv(EnvAccessKeySecret)),
			SecurityToken:   strings.TrimSpace(getenv(EnvSessionToken)),
		},
	}
}

// String describes the configuration for logs, without secrets.
func (c Config) String() string {
	return fmt.Sprintf("endpoint=%s region=%s sign=%s credentials=%s", c.Endpoint, c.Region, c.SignatureVersion, c.Credentials)
}

// normalized validates c and fills in defaults: scheme, region, signing version, timeouts.
func (c Config) normalized() (Config, error) {
	if c.SignatureVersion == "" {
		c.SignatureVersion = SignV4
	}
	if c.SignatureVersion != SignV4 && c.SignatureVersion != SignV1 {
		return c, fmt.Errorf("%w: signature version %q, want %q or %q", ErrInvalidConfig, c.SignatureVersion, SignV4, SignV1)
	}
	if err := c.Credentials.validate(); err != nil {
		return c, err
	}
	ep, err := c.endpointURL()
	if err != nil {
		return c, err
	}
	c.Endpoint = ep.String()
	if c.Region == "" {
		c.Region = regionOf(ep.Hostname())
	}
	if c.Region == "" && c.SignatureVersion == SignV4 && !c.Credentials.Anonymous() {
		return c, fmt.Errorf("%w: region is required for V4 signing and cannot be derived from endpoint %q (set %s)", ErrInvalidConfig, c.Endpoint, EnvRegion)
	}
	if c.ConnectTimeout <= 0 {
		c.ConnectTimeout = 5 * time.Second
	}
	if c.ReadTimeout <= 0 {
		c.ReadTimeout = 30 * time.Second
	}
	if c.Retry.MaxFailures <= 0 {
		c.Retry.MaxFailures = 8
	}
	if c.Retry.BaseDelay <= 0 {
		c.Retry.BaseDelay = 100 * time.Millisecond
	}
	if c.Retry.MaxDelay <= 0 {
		c.Retry.MaxDelay = 5 * time.Second
	}
	if c.Limits.MaxObjects <= 0 {
		c.Limits.MaxObjects = DefaultMaxObjects
	}
	if c.Limits.MaxBytes <= 0 {
		c.Limits.MaxBytes = DefaultMaxBytes
	}
	return c, nil
}

// EndpointURL is the endpoint a client of c sends its requests to, as New normalizes it
// (scheme and host, https unless a scheme is given; without an endpoint, the region's public
// one), without checking the rest of c. Two configurations read the same OSS exactly when
// their EndpointURLs are equal.
func (c Config) EndpointURL() (string, error) {
	u, err := c.endpointURL()
	if err != nil {
		return "", err
	}
	return u.String(), nil
}

func (c Config) endpointURL() (*url.URL, error) {
	endpoint := c.Endpoint
	if endpoint == "" && c.Region == "" {
		return nil, fmt.Errorf("%w: neither endpoint nor region is set (set %s or %s)", ErrInvalidConfig, EnvEndpoint, EnvRegion)
	}
	if endpoint == "" {
		endpoint = "oss-" + c.Region + ".aliyuncs.com"
	}
	return normalizeEndpoint(endpoint)
}

func normalizeEndpoint(s string) (*url.URL, error) {
	raw := s
	if !strings.Contains(s, "://") {
		s = "https://" + s
	}
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("%w: endpoint %q: %w", ErrInvalidConfig, raw, err)
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Errorf("%w: endpoint %q: scheme must be http or https", ErrInvalidConfig, raw)
	case u.Host == "" || u.Hostname() == "":
		return nil, fmt.Errorf("%w: endpoint %q has no host", ErrInvalidConfig, raw)
	case u.User != nil || u.RawQuery != "" || u.Fragment != "" || (u.Path != "" && u.Path != "/"):
		return nil, fmt.Errorf("%w: endpoint %q must be a scheme and host only (no path, query or user)", ErrInvalidConfig, raw)
	}
	return &url.URL{Scheme: u.Scheme, Host: u.Host}, nil
}

// regionOf derives the region from OSS's endpoint names: oss-<region>[-internal].aliyuncs.com
// and <region>.oss[-internal].aliyuncs.com. Anything else (IPs, custom domains, the global
// acceleration endpoints) yields "".
func regionOf(host string) string {
	name, ok := strings.CutSuffix(host, ".aliyuncs.com")
	if !ok {
		return ""
	}
	labels := strings.Split(name, ".")
	last := labels[len(labels)-1]
	if last == "oss" || last == "oss-internal" {
		if len(labels) >= 2 {
			return labels[len(labels)-2]
		}
		return ""
	}
	if r, ok := strings.CutPrefix(last, "oss-"); ok {
		r = strings.TrimSuffix(r, "-internal")
		if strings.HasPrefix(r, "accelerate") {
			return ""
		}
		return r
	}
	return ""
}

// EndpointRegion is the region an OSS endpoint names ("oss-cn-beijing-internal.aliyuncs.com"
// and "https://cn-beijing.oss.aliyuncs.com" name "cn-beijing"), or "" for any other endpoint
// (an IP address, a custom domain, a global acceleration endpoint). An endpoint New would
// refuse is ErrInvalidConfig.
func EndpointRegion(endpoint string) (string, error) {
	u, err := normalizeEndpoint(endpoint)
	if err != nil {
		return "", err
	}
	return regionOf(u.Hostname()), nil
}
