package main

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

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
		{"bad path", []string{"fetch", "oss://Models/qwen/", t.TempDir()}, `bucket name "Models"`},
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

// fetchEnv is an emulator with a generated model and the environment for a fetch from it.
func fetchEnv(t *testing.T, size int64) (*ossemu.Server, []string) {
	t.Helper()
	srv := ossemu.Start(t, ossemu.Options{
		Region:      "cn-test",
		Credentials: []ossemu.Credential{{AccessKeyID: "LTAI5tFetchTestKey", AccessKeySecret: "fetch-secret"}},
	})
	if _, err := srv.GenerateModel("models", "qwen/", ossemu.ModelSpec{Size: size, Seed: 3, Shards: 2, Dir: t.TempDir()}); err != nil {
		t.Fatal(err)
	}
	return srv, append(os.Environ(), "OSS_ACCESS_KEY_ID=LTAI5tFetchTestKey", "OSS_ACCESS_KEY_SECRET=fetch-secret",
		"OSS_ENDPOINT="+srv.Endpoint(), "OSS_REGION=cn-test")
}

// startFetch runs csi-plugin fetch and sends its stderr lines to the channel returned.
func startFetch(t *testing.T, bin string, env []string, args ...string) (*exec.Cmd, <-chan string) {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"fetch"}, args...)...)
	cmd.Env = env
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 1024)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return cmd, lines
}

// waitLine reads lines until one contains want, with a deadline; it returns what it read.
func waitLine(t *testing.T, lines <-chan string, want string) string {
	t.Helper()
	var seen []string
	timeout := time.After(60 * time.Second)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("the command ended without saying %q:\n%s", want, strings.Join(seen, "\n"))
			}
			seen = append(seen, l)
			if strings.Contains(l, want) {
				return strings.Join(seen, "\n")
			}
		case <-timeout:
			t.Fatalf("no line saying %q in 60 s:\n%s", want, strings.Join(seen, "\n"))
		}
	}
}

// drain reads the remaining lines until the command closes its stderr.
func drain(lines <-chan string) string {
	var rest []string
	for l := range lines {
		rest = append(rest, l)
	}
	return strings.Join(rest, "\n")
}

func checkEmpty(t *testing.T, dir string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if len(names) > 0 {
		t.Errorf("a failed fetch left %v in %s", names, dir)
	}
}

// TestFetchFailureLeavesNothing: a fetch that fails (an integrity failure, a refusal mid-way,
// a full disk, SIGTERM) leaves DIR empty: no complete-looking file with wrong bytes.
func TestFetchFailureLeavesNothing(t *testing.T) {
	bin := buildPlugin(t)
	for _, tc := range []struct {
		name  string
		fault *ossemu.Fault
		setup func(t *testing.T, dir string)
		term  bool
		want  string
	}{
		{name: "corrupt body", fault: &ossemu.Fault{Op: ossemu.OpGet, Kind: ossemu.FaultCorrupt, Count: -1}, want: "integrity check failed"},
		{name: "refused mid-way", fault: &ossemu.Fault{Op: ossemu.OpGet, Key: "qwen/model-00002-of-00002.safetensors", Kind: ossemu.FaultStatus, Status: 403, Count: -1}, want: "access denied"},
		{name: "no space", setup: func(t *testing.T, dir string) {
			if os.Geteuid() != 0 {
				t.Skip("needs root to mount a small tmpfs")
			}
			if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=8m"); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
		}, want: "no space left on device"},
		{name: "SIGTERM", term: true, want: "terminated"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, env := fetchEnv(t, 24<<20)
			dir := t.TempDir()
			if tc.setup != nil {
				tc.setup(t, dir)
			}
			if tc.fault != nil {
				srv.InjectFault(*tc.fault)
			}
			if tc.term {
				srv.SetEgressRate(1 << 20) // 24 s for the model: time to stop it mid-way
			}
			cmd, lines := startFetch(t, bin, env, "-vcpus", "2", "-workers", "2", "oss://models/qwen/", dir)
			if tc.term {
				waitUntil(t, "bytes flowing", func() bool { return srv.Stats().BytesServed > 0 })
				if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
					t.Fatal(err)
				}
			}
			out := drain(lines)
			if err := cmd.Wait(); err == nil {
				t.Fatalf("fetch succeeded, want a failure:\n%s", out)
			}
			if !strings.Contains(out, tc.want) {
				t.Errorf("stderr lacks %q:\n%s", tc.want, out)
			}
			checkEmpty(t, dir)
		})
	}
}

// TestFetchSaysWhatItWaitsFor: against an endpoint that accepts the LIST and never answers,
// fetch says at default verbosity what it is waiting for, instead of printing nothing.
func TestFetchSaysWhatItWaitsFor(t *testing.T) {
	bin := buildPlugin(t)
	srv, env := fetchEnv(t, 1<<20)
	srv.InjectFault(ossemu.Fault{Op: ossemu.OpList, Kind: ossemu.FaultHang, Count: -1})
	dir := t.TempDir()
	cmd, lines := startFetch(t, bin, env, "oss://models/qwen/", dir)
	waitLine(t, lines, "still listing oss://models/qwen/ at "+srv.Endpoint())
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	drain(lines)
	_ = cmd.Wait()
	checkEmpty(t, dir)
}

// waitUntil waits for cond with a deadline.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
