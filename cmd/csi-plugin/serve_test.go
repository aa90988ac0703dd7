package main

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// TestNodeRegistration runs `csi-plugin node` with kubelet registration on, without root (no
// tmpfs), and talks to its registration socket as kubelet does.
func TestNodeRegistration(t *testing.T) {
	bin := buildPlugin(t)
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "KUBERNETES_SERVICE_HOST=") { // no in-cluster client
			env = append(env, kv)
		}
	}

	for _, tc := range []struct {
		name string
		flag string // --kubelet-csi-endpoint; "": the path of --endpoint
	}{
		{"default endpoint", ""},
		{"host endpoint", "/var/lib/kubelet/plugins/oss.csi.modelcast.io/csi.sock"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			csiSock := filepath.Join(dir, "csi", "csi.sock")
			regDir := filepath.Join(dir, "plugins_registry")
			regSock := filepath.Join(regDir, "oss.csi.modelcast.io-reg.sock")
			args := []string{"node", "--config", nodeConfig(t, dir), "--endpoint", "unix://" + csiSock,
				"--node-id", "node-1", "--node-ip", "127.0.0.1", "--http-endpoint", "", "--kubelet-registration-dir", regDir}
			want := csiSock
			if tc.flag != "" {
				args, want = append(args, "--kubelet-csi-endpoint", tc.flag), tc.flag
			}
			cmd := exec.Command(bin, args...)
			cmd.Env = env
			// A file, not a buffer: no copying goroutine, readable while the plugin runs.
			logPath := filepath.Join(dir, "stderr")
			logFile, err := os.Create(logPath)
			if err != nil {
				t.Fatal(err)
			}
			defer logFile.Close()
			cmd.Stderr = logFile
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			var waitErr error
			exited := make(chan struct{})
			go func() { waitErr = cmd.Wait(); close(exited) }()
			t.Cleanup(func() {
				_ = cmd.Process.Kill() // no-op once it exited
				<-exited
			})
			stderr := func() string { b, _ := os.ReadFile(logPath); return string(b) }

			waitSocket(t, regSock, exited, stderr)
			// Kubelet dials the CSI endpoint right after GetInfo: it must be up already.
			if fi, err := os.Lstat(csiSock); err != nil || fi.Mode()&os.ModeSocket == 0 {
				t.Fatalf("the registration socket is up before the CSI socket: %v", err)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			reg := registerapi.NewRegistrationClient(dialUnix(t, regSock))
			info, err := reg.GetInfo(ctx, &registerapi.InfoRequest{})
			if err != nil {
				t.Fatal(err)
			}
			if info.GetType() != registerapi.CSIPlugin || info.GetName() != "oss.csi.modelcast.io" || info.GetEndpoint() != want {
				t.Errorf("GetInfo = %v; want a CSIPlugin oss.csi.modelcast.io at %s", info, want)
			}
			if _, err := csi.NewIdentityClient(dialUnix(t, csiSock)).Probe(ctx, &csi.ProbeRequest{}); err != nil {
				t.Errorf("the CSI endpoint does not answer: %v", err)
			}
			if _, err := reg.NotifyRegistrationStatus(ctx, &registerapi.RegistrationStatus{PluginRegistered: true}); err != nil {
				t.Fatal(err)
			}

			if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			select {
			case <-exited:
				if waitErr != nil {
					t.Fatalf("csi-plugin node: %v\n%s", waitErr, stderr())
				}
			case <-time.After(30 * time.Second):
				t.Fatalf("csi-plugin node did not stop on SIGTERM\n%s", stderr())
			}
			if _, err := os.Lstat(regSock); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("the registration socket outlived the plugin: %v", err)
			}
			if !strings.Contains(stderr(), "Registered with kubelet") {
				t.Errorf("kubelet's acceptance is not logged:\n%s", stderr())
			}
		})
	}

	t.Run("tcp endpoint without a host path", func(t *testing.T) {
		dir := t.TempDir()
		cmd := exec.Command(bin, "node", "--config", nodeConfig(t, dir), "--endpoint", "tcp://127.0.0.1:0",
			"--node-id", "node-1", "--http-endpoint", "", "--kubelet-registration-dir", filepath.Join(dir, "reg"))
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "--kubelet-csi-endpoint") {
			t.Errorf("csi-plugin node = %v, want an error asking for --kubelet-csi-endpoint:\n%s", err, out)
		}
	})
}

// nodeConfig writes a node configuration for an unprivileged plugin: the cache on dir without
// a tmpfs, the peer data plane on a free port.
func nodeConfig(t *testing.T, dir string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	_ = ln.Close()
	path := filepath.Join(dir, "config.json")
	cfg := `{"bindPort": ` + strconv.Itoa(port) + `, "cache": {"root": "` + filepath.Join(dir, "cache") + `", "tmpfs": false}}`
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// waitSocket waits, with a deadline, for a socket file to appear while the process runs.
func waitSocket(t *testing.T, path string, exited <-chan struct{}, stderr func() string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no socket at %s\n%s", path, stderr())
		}
		select {
		case <-exited:
			t.Fatalf("csi-plugin exited before serving\n%s", stderr())
		case <-tick.C:
		}
	}
}

func dialUnix(t *testing.T, path string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}
