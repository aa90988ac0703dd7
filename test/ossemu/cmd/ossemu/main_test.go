package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aliyun/alibabacloud-oss-go-sdk-v2/oss"
	"github.com/aliyun/alibabacloud-oss-go-sdk-v2/oss/credentials"

	"github.com/modelcast/modelcast/test/ossemu"
)

// TestBinary builds the command, runs it as a process, lists the model it
// generated with the SDK, and stops it with SIGTERM.
func TestBinary(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go tool to build the binary")
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	dir := t.TempDir()
	bin := filepath.Join(dir, "ossemu")
	build := exec.CommandContext(ctx, goTool, "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	addrFile := filepath.Join(dir, "addr")
	cmd := exec.CommandContext(ctx, bin,
		"--generate", "models/llama/=3MiB", "--generate-dir", filepath.Join(dir, "gen"),
		"--bucket", "empty", "--region", "cn-hangzhou", "--addr-file", addrFile, "--egress-rate", "1Gbit")
	cmd.Env = append(os.Environ(), "OSS_ACCESS_KEY_ID=ak", "OSS_ACCESS_KEY_SECRET=sk")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer // klog's output, shown on failure
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited := false
	defer func() {
		if !waited {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
		if t.Failed() {
			t.Logf("ossemu stderr:\n%s", stderr.String())
		}
	}()

	ready := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		ready <- line
	}()
	var line string
	select {
	case line = <-ready:
	case <-ctx.Done():
		t.Fatal("no ready line")
	}
	if !strings.HasPrefix(line, "ossemu: serving http://127.0.0.1:") || !strings.Contains(line, "(6 objects, 3145728 bytes)") {
		t.Fatalf("ready line = %q", line)
	}
	addr, err := os.ReadFile(addrFile)
	if err != nil {
		t.Fatal(err)
	}
	endpoint := strings.TrimSpace(string(addr))
	if !strings.Contains(line, endpoint) {
		t.Errorf("addr-file %q does not match the ready line %q", endpoint, line)
	}

	client := oss.NewClient(oss.LoadDefaultConfig().WithRegion("cn-hangzhou").WithEndpoint(endpoint).
		WithCredentialsProvider(credentials.NewStaticCredentialsProvider("ak", "sk")))
	res, err := client.ListObjectsV2(ctx, &oss.ListObjectsV2Request{Bucket: oss.Ptr("models"), Prefix: oss.Ptr("llama/")})
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	var total int64
	for _, o := range res.Contents {
		keys = append(keys, oss.ToString(o.Key))
		total += o.Size
	}
	if !slices.Contains(keys, "llama/model-00001-of-00001.safetensors") || len(keys) != 6 || total != 3<<20 {
		t.Errorf("listed %q (%d bytes)", keys, total)
	}
	if _, err := os.Stat(filepath.Join(dir, "gen", "models", "llama", "model-00001-of-00001.safetensors")); err != nil {
		t.Errorf("--generate-dir: %v", err)
	}
	if res, err := client.ListObjectsV2(ctx, &oss.ListObjectsV2Request{Bucket: oss.Ptr("empty")}); err != nil || res.KeyCount != 0 {
		t.Errorf("list the --bucket: %v", err)
	}
	anon := oss.NewClient(oss.LoadDefaultConfig().WithRegion("cn-hangzhou").WithEndpoint(endpoint).
		WithCredentialsProvider(credentials.NewAnonymousCredentialsProvider()))
	_, err = anon.ListObjectsV2(ctx, &oss.ListObjectsV2Request{Bucket: oss.Ptr("models")})
	var se *oss.ServiceError
	if !errors.As(err, &se) || se.Code != "AccessDenied" {
		t.Errorf("anonymous list: %v", err)
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waited = true
	if err := cmd.Wait(); err != nil {
		t.Errorf("exit after SIGTERM: %v", err)
	}
	if !strings.Contains(stderr.String(), `"stopping"`) {
		t.Errorf("no graceful stop logged:\n%s", stderr.String())
	}
}

func TestOptionsValidate(t *testing.T) {
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	for _, tc := range []struct {
		name    string
		opts    options
		env     map[string]string
		wantErr bool
	}{
		{name: "defaults", opts: *defaultOptions()},
		{name: "keys from env", opts: *defaultOptions(), env: map[string]string{"OSS_ACCESS_KEY_ID": "a", "OSS_ACCESS_KEY_SECRET": "b"}},
		{name: "id without secret", opts: options{accessKeyID: "a"}, wantErr: true},
		{name: "token without id", opts: options{securityToken: "t"}, wantErr: true},
		{name: "bad rate", opts: options{egressRate: "fast"}, wantErr: true},
		{name: "generate", opts: options{generate: stringList{"models/llama/=1GiB", "b=2MiB"}}},
		{name: "generate without size", opts: options{generate: stringList{"models/llama/"}}, wantErr: true},
		{name: "generate bad size", opts: options{generate: stringList{"models/=lots"}}, wantErr: true},
		{name: "generate escaping", opts: options{generate: stringList{"models/../../x/=1MiB"}}, wantErr: true},
		{name: "load", opts: options{load: stringList{"models/x/=/tmp/x"}}},
		{name: "load without bucket", opts: options{load: stringList{"=/tmp/x"}}, wantErr: true},
		{name: "profile", opts: options{profile: "object-store"}},
		{name: "profile loopback", opts: options{profile: "loopback"}},
		{name: "unknown profile", opts: options{profile: "fast"}, wantErr: true},
		{name: "latency", opts: options{firstByteLatency: "20ms"}},
		{name: "bad latency", opts: options{firstByteLatency: "20"}, wantErr: true},
		{name: "negative latency", opts: options{firstByteLatency: "-1s"}, wantErr: true},
		{name: "conn rate", opts: options{connRate: "400Mbit"}},
		{name: "bad conn rate", opts: options{connRate: "fast"}, wantErr: true},
		{name: "negative conn rate", opts: options{connRate: "-5MB"}, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := tc.opts
			if err := o.validate(env(tc.env)); (err != nil) != tc.wantErr {
				t.Errorf("validate = %v, want error %v", err, tc.wantErr)
			}
		})
	}
	o := options{generate: stringList{"models/llama/=1GiB", "b=2MiB"}, egressRate: "1Gbit"}
	if err := o.validate(env(nil)); err != nil {
		t.Fatal(err)
	}
	want := []modelFlag{{"models", "llama/", 1 << 30}, {"b", "", 2 << 20}}
	if !slices.Equal(o.models, want) || o.egressBytesPerSec != 125e6 {
		t.Errorf("parsed %+v, %d", o.models, o.egressBytesPerSec)
	}
}

func TestOptionsProfile(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts options
		want ossemu.Profile
	}{
		{"none", options{}, ossemu.Profile{}},
		{"loopback", options{profile: "loopback"}, ossemu.Profile{}},
		{"object-store", options{profile: "object-store"}, ossemu.Profile{FirstByteLatency: 20 * time.Millisecond, ConnBytesPerSec: 50e6}},
		{"flags override the profile", options{profile: "object-store", firstByteLatency: "5ms", connRate: "400Mbit"},
			ossemu.Profile{FirstByteLatency: 5 * time.Millisecond, ConnBytesPerSec: 50e6}},
		{"conn rate 0 lifts the profile's cap", options{profile: "object-store", connRate: "0"},
			ossemu.Profile{FirstByteLatency: 20 * time.Millisecond}},
		{"flags alone", options{firstByteLatency: "1.5s", connRate: "1GB"}, ossemu.Profile{FirstByteLatency: 1500 * time.Millisecond, ConnBytesPerSec: 1e9}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := tc.opts
			o.egressRate = "1Gbit"
			if err := o.validate(func(string) string { return "" }); err != nil {
				t.Fatal(err)
			}
			so := o.serverOptions()
			if got := (ossemu.Profile{FirstByteLatency: so.FirstByteLatency, ConnBytesPerSec: so.ConnBytesPerSec}); got != tc.want {
				t.Errorf("profile = %+v, want %+v", got, tc.want)
			}
			if so.EgressBytesPerSec != 125e6 {
				t.Errorf("EgressBytesPerSec = %d, want --egress-rate kept", so.EgressBytesPerSec)
			}
		})
	}
	o := options{profile: "fast", firstByteLatency: "soon", connRate: "quick"}
	err := o.validate(func(string) string { return "" })
	for _, flag := range []string{"--profile", "--first-byte-latency", "--conn-rate"} {
		if err == nil || !strings.Contains(err.Error(), flag) {
			t.Errorf("validate = %v, want an error naming %s", err, flag)
		}
	}
}
