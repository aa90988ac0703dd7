package ossclient

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"k8s.io/klog/v2"
)

func TestEnvConfig(t *testing.T) {
	env := map[string]string{
		"OSS_ENDPOINT":          " http://oss-cn-beijing-internal.aliyuncs.com ",
		"OSS_REGION":            "cn-beijing",
		"OSS_ACCESS_KEY_ID":     "LTAI5tExampleKeyID",
		"OSS_ACCESS_KEY_SECRET": "s3cr3t-value",
		"OSS_SESSION_TOKEN":     "sts-token-value",
	}
	c := EnvConfig(func(k string) string { return env[k] })
	want := Config{
		Endpoint: "http://oss-cn-beijing-internal.aliyuncs.com",
		Region:   "cn-beijing",
		Credentials: Credentials{
			AccessKeyID:     "LTAI5tExampleKeyID",
			AccessKeySecret: "s3cr3t-value",
			SecurityToken:   "sts-token-value",
		},
	}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("EnvConfig = %#v, want %#v", c, want)
	}
	if empty := EnvConfig(func(string) string { return "" }); !empty.Credentials.Anonymous() {
		t.Errorf("no variables set: credentials %v, want anonymous", empty.Credentials)
	}
}

func TestConfigNormalized(t *testing.T) {
	keys := Credentials{AccessKeyID: "LTAI5tExampleKeyID", AccessKeySecret: "secret"}
	for _, tc := range []struct {
		name       string
		in         Config
		wantEP     string
		wantRegion string
	}{
		{"https by default", Config{Endpoint: "oss-cn-hangzhou.aliyuncs.com"}, "https://oss-cn-hangzhou.aliyuncs.com", "cn-hangzhou"},
		{"internal endpoint over http", Config{Endpoint: "http://oss-cn-beijing-internal.aliyuncs.com", Credentials: keys}, "http://oss-cn-beijing-internal.aliyuncs.com", "cn-beijing"},
		{"region-first endpoint", Config{Endpoint: "cn-shanghai.oss.aliyuncs.com", Credentials: keys}, "https://cn-shanghai.oss.aliyuncs.com", "cn-shanghai"},
		{"region-first internal", Config{Endpoint: "cn-shanghai.oss-internal.aliyuncs.com", Credentials: keys}, "https://cn-shanghai.oss-internal.aliyuncs.com", "cn-shanghai"},
		{"endpoint from region", Config{Region: "ap-southeast-1", Credentials: keys}, "https://oss-ap-southeast-1.aliyuncs.com", "ap-southeast-1"},
		{"explicit region wins", Config{Endpoint: "oss-cn-hangzhou.aliyuncs.com", Region: "cn-hangzhou-x"}, "https://oss-cn-hangzhou.aliyuncs.com", "cn-hangzhou-x"},
		{"IP endpoint with region", Config{Endpoint: "http://10.0.0.5:9000", Region: "cn-test", Credentials: keys}, "http://10.0.0.5:9000", "cn-test"},
		{"acceleration has no region", Config{Endpoint: "oss-accelerate.aliyuncs.com"}, "https://oss-accelerate.aliyuncs.com", ""},
		{"trailing slash", Config{Endpoint: "http://127.0.0.1:9000/"}, "http://127.0.0.1:9000", ""},
		{"V1 needs no region", Config{Endpoint: "http://127.0.0.1:9000", SignatureVersion: SignV1, Credentials: keys}, "http://127.0.0.1:9000", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.in.normalized()
			if err != nil {
				t.Fatal(err)
			}
			if got.Endpoint != tc.wantEP || got.Region != tc.wantRegion {
				t.Errorf("endpoint %q region %q, want %q %q", got.Endpoint, got.Region, tc.wantEP, tc.wantRegion)
			}
			if got.ConnectTimeout <= 0 || got.ReadTimeout <= 0 || got.SignatureVersion == "" {
				t.Errorf("defaults not filled: %+v", got)
			}
			// EndpointURL says which endpoint a configuration reads without building a client.
			if ep, err := tc.in.EndpointURL(); ep != tc.wantEP || err != nil {
				t.Errorf("EndpointURL() = %q, %v, want %q", ep, err, tc.wantEP)
			}
		})
	}
}

func TestConfigRejects(t *testing.T) {
	keys := Credentials{AccessKeyID: "LTAI5tExampleKeyID", AccessKeySecret: "the-secret"}
	for _, tc := range []struct {
		name string
		in   Config
		hint string
	}{
		{"nothing", Config{}, "neither endpoint nor region"},
		{"ftp", Config{Endpoint: "ftp://oss.example.com"}, "scheme must be http or https"},
		{"path", Config{Endpoint: "http://oss.example.com/bucket"}, "scheme and host only"},
		{"query", Config{Endpoint: "http://oss.example.com?x=1"}, "scheme and host only"},
		{"no host", Config{Endpoint: "http://"}, "has no host"},
		{"V4 without region", Config{Endpoint: "http://127.0.0.1:9000", Credentials: keys}, "region is required for V4"},
		{"signature version", Config{Endpoint: "http://127.0.0.1:9000", SignatureVersion: "v2"}, `signature version "v2"`},
		{"secret without id", Config{Region: "cn-x", Credentials: Credentials{AccessKeySecret: "the-secret"}}, "access key ID is empty"},
		{"id without secret", Config{Region: "cn-x", Credentials: Credentials{AccessKeyID: "LTAI5tExampleKeyID"}}, "access key secret is empty"},
		{"token alone", Config{Region: "cn-x", Credentials: Credentials{SecurityToken: "tok"}}, "STS security token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.in)
			if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tc.hint) {
				t.Fatalf("New = %v, want ErrInvalidConfig saying %q", err, tc.hint)
			}
			if strings.Contains(err.Error(), "the-secret") {
				t.Errorf("error reveals the secret: %v", err)
			}
		})
	}
}

// TestSecretsNeverPrinted formats credentials and configs every way a log line might.
func TestSecretsNeverPrinted(t *testing.T) {
	const secret, token = "very-secret-value", "sts-token-value"
	c := Config{
		Endpoint: "http://127.0.0.1:1", Region: "cn-x",
		Credentials:    Credentials{AccessKeyID: "LTAI5tExampleKeyID", AccessKeySecret: secret, SecurityToken: token},
		ConnectTimeout: time.Second,
	}
	var out []string
	for _, v := range []any{c, &c, c.Credentials, &c.Credentials} {
		for _, verb := range []string{"%v", "%+v", "%#v", "%s"} {
			out = append(out, fmt.Sprintf(verb, v))
		}
	}
	var buf bytes.Buffer
	klog.SetOutput(&buf)
	klog.LogToStderr(false)
	defer klog.LogToStderr(true)
	klog.InfoS("config", "config", c, "credentials", c.Credentials)
	klog.Flush()
	out = append(out, buf.String())
	for _, s := range out {
		if strings.Contains(s, secret) || strings.Contains(s, token) || strings.Contains(s, "LTAI5tExampleKeyID") {
			t.Errorf("secret printed: %s", s)
		}
	}
	if !strings.Contains(buf.String(), "LTAI…eyID") {
		t.Errorf("log line does not identify the key at all: %s", buf.String())
	}
}
