package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/modelcast/modelcast/test/ossemu"
)

// buildPlugin builds this command into a temporary directory.
func buildPlugin(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "csi-plugin")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func TestFetch(t *testing.T) {
	bin := buildPlugin(t)
	srv := ossemu.Start(t, ossemu.Options{
		Region:      "cn-test",
		Credentials: []ossemu.Credential{{AccessKeyID: "LTAI5tFetchTestKey", AccessKeySecret: "fetch-secret"}},
	})
	src := t.TempDir()
	objs, err := srv.GenerateModel("models", "qwen/", ossemu.ModelSpec{Size: 24 << 20, Seed: 3, Dir: src})
	if err != nil {
		t.Fatal(err)
	}
	env := append(os.Environ(), "OSS_ACCESS_KEY_ID=LTAI5tFetchTestKey", "OSS_ACCESS_KEY_SECRET=fetch-secret",
		"OSS_ENDPOINT="+srv.Endpoint(), "OSS_REGION=cn-test")

	run := func(args ...string) (string, string, error) {
		cmd := exec.Command(bin, args...)
		cmd.Env = env
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		return stdout.String(), stderr.String(), err
	}

	dst := filepath.Join(t.TempDir(), "model")
	stdout, stderr, err := run("fetch", "oss://models/qwen/", dst)
	if err != nil {
		t.Fatalf("fetch: %v\nstdout:\n%s\nstderr:\n%s", err, stdout, stderr)
	}
	for _, want := range []string{"6 objects", "25165824 bytes", "CRC-64 of all 6 objects matched OSS", "GB/s"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("summary lacks %q:\n%s", want, stdout)
		}
	}
	if !strings.Contains(stderr, "100.0%") {
		t.Errorf("no final progress line on stderr:\n%s", stderr)
	}
	if len(objs) != 6 {
		t.Fatalf("generated %d objects, the test expects 6", len(objs))
	}
	for _, o := range objs {
		rel := strings.TrimPrefix(o.Key, "qwen/")
		want, err := os.ReadFile(filepath.Join(src, rel))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join(dst, rel))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s: downloaded file differs (%v)", rel, err)
		}
	}
	if strings.Contains(stdout+stderr, "fetch-secret") {
		t.Errorf("output reveals the secret")
	}

	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"directory not empty", []string{"fetch", "oss://models/qwen/", dst}, "is not empty"},
		{"bad path", []string{"fetch", "oss://Models/qwen/", t.TempDir()}, `bucket name \"Models\"`},
		{"missing model", []string{"fetch", "oss://models/nothing/", t.TempDir()}, "not found"},
		{"unknown command", []string{"fetchh"}, "unknown command"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, stderr, err := run(tc.args...)
			if err == nil {
				t.Fatalf("succeeded, want an error saying %q", tc.want)
			}
			if !strings.Contains(stderr, tc.want) {
				t.Errorf("stderr lacks %q:\n%s", tc.want, stderr)
			}
		})
	}
}

func TestVersion(t *testing.T) {
	out, err := exec.Command(buildPlugin(t), "--version").Output()
	if err != nil || strings.TrimSpace(string(out)) == "" {
		t.Errorf("--version: %q, %v", out, err)
	}
}
