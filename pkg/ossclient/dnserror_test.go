package ossclient

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"testing"

	"github.com/aliyun/alibabacloud-oss-go-sdk-v2/oss"
)

// TestHostNotFoundIsAConfigurationError: a host name that does not exist is a configuration
// error, not retried; a DNS server failing or timing out is a transient failure, retried.
func TestHostNotFoundIsAConfigurationError(t *testing.T) {
	const name = "models.oss-cn-nowhere.invalid"
	// As the SDK returns them: the DNSError inside the dial's OpError inside the url.Error.
	wrap := func(dns *net.DNSError) error {
		return fmt.Errorf("operation error ListObjectsV2: %w", &url.Error{Op: "Get", URL: "https://" + name + "/",
			Err: &net.OpError{Op: "dial", Net: "tcp", Err: dns}})
	}
	for _, tc := range []struct {
		name      string
		dns       *net.DNSError
		kind      error
		retryable bool
		code      string
	}{
		{"no such host", &net.DNSError{Err: "no such host", Name: name, Server: "10.0.0.10:53", IsNotFound: true}, ErrInvalidConfig, false, "NoSuchHost"},
		{"server failure", &net.DNSError{Err: "server misbehaving", Name: name, Server: "10.0.0.10:53", IsTemporary: true}, ErrUnavailable, true, "Network"},
		{"timeout", &net.DNSError{Err: "i/o timeout", Name: name, Server: "10.0.0.10:53", IsTimeout: true}, ErrUnavailable, true, "Timeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := opError(t.Context(), "list", "oss://models/m/", wrap(tc.dns))
			if !errors.Is(err, tc.kind) {
				t.Errorf("opError = %v, want %v", err, tc.kind)
			}
			var dns *net.DNSError
			if !errors.As(err, &dns) {
				t.Errorf("the *net.DNSError is not reachable from %v", err)
			}
			if got := retryable(context.Background(), wrap(tc.dns)); got != tc.retryable {
				t.Errorf("retryable = %v, want %v", got, tc.retryable)
			}
			if got := ErrorCode(wrap(tc.dns)); got != tc.code {
				t.Errorf("ErrorCode = %q, want %q", got, tc.code)
			}
		})
	}
	err := opError(t.Context(), "list", "oss://models/m/", wrap(&net.DNSError{Err: "no such host", Name: name, Server: "10.0.0.10:53", IsNotFound: true}))
	if want := "list oss://models/m/: invalid OSS configuration: the endpoint's host name does not resolve: lookup " + name + " on 10.0.0.10:53: no such host"; err.Error() != want {
		t.Errorf("message %q, want %q", err, want)
	}
}

// TestCheckRange: a 206 whose Content-Range is not the range asked for, of an object of the
// manifest's size, is a server ignoring Range; one with another total size is a change.
func TestCheckRange(t *testing.T) {
	o := &Object{Key: "k", Size: 1000, ETag: `"E"`}
	res := func(status int, cr string, n int64) *oss.GetObjectResult {
		r := &oss.GetObjectResult{ETag: oss.Ptr(`"E"`), ContentLength: n}
		r.StatusCode = status
		if cr != "" {
			r.ContentRange = oss.Ptr(cr)
		}
		return r
	}
	for _, tc := range []struct {
		name     string
		res      *oss.GetObjectResult
		off, end int64
		kind     error
		says     string
	}{
		{"the range asked for", res(206, "bytes 100-199/1000", 100), 100, 199, nil, ""},
		{"the whole object, asked whole", res(200, "", 1000), 0, 999, nil, ""},
		{"200 to a range", res(200, "", 1000), 100, 199, ErrRangeIgnored, "asked for bytes 100-199 of 1000, got HTTP 200 with 1000 bytes instead of 206 Partial Content"},
		{"206 without Content-Range", res(206, "", 100), 100, 199, ErrRangeIgnored, "got HTTP 206 without a Content-Range"},
		{"another range", res(206, "bytes 0-99/1000", 100), 100, 199, ErrRangeIgnored, `asked for "bytes 100-199/1000", got Content-Range "bytes 0-99/1000"`},
		{"another size", res(206, "bytes 100-199/2000", 100), 100, 199, ErrChanged, "no longer 1000 bytes"},
		{"another ETag", &oss.GetObjectResult{ETag: oss.Ptr(`"F"`)}, 100, 199, ErrChanged, "ETag"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkRange(tc.res, o, tc.off, tc.end)
			if tc.kind == nil {
				if err != nil {
					t.Errorf("checkRange = %v, want nil", err)
				}
				return
			}
			if !errors.Is(err, tc.kind) || !strings.Contains(fmt.Sprint(err), tc.says) {
				t.Errorf("checkRange = %v, want %v saying %q", err, tc.kind, tc.says)
			}
		})
	}
}

func TestEndpointRegion(t *testing.T) {
	for ep, want := range map[string]string{
		"oss-cn-beijing-internal.aliyuncs.com": "cn-beijing",
		"https://cn-hangzhou.oss.aliyuncs.com": "cn-hangzhou",
		"http://10.0.0.5:9000":                 "",
		"oss.example.com":                      "",
		"oss-accelerate.aliyuncs.com":          "",
	} {
		if got, err := EndpointRegion(ep); got != want || err != nil {
			t.Errorf("EndpointRegion(%q) = %q, %v, want %q", ep, got, err, want)
		}
	}
	for _, ep := range []string{"", "ftp://oss-cn-beijing.aliyuncs.com", "oss-cn-beijing.aliyuncs.com/path"} {
		if _, err := EndpointRegion(ep); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("EndpointRegion(%q): %v, want ErrInvalidConfig", ep, err)
		}
	}
}
