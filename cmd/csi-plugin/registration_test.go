package main

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// TestNodeExitsWhenKubeletRejectsRegistration: kubelet answers the built-in registration with
// PluginRegistered false. The node plugin logs kubelet's error and exits non-zero (its HTTP
// server on too), having removed its sockets; kubelet's call is answered.
func TestNodeExitsWhenKubeletRejectsRegistration(t *testing.T) {
	bin := buildPlugin(t)
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "KUBERNETES_SERVICE_HOST=") {
			env = append(env, kv)
		}
	}
	// A short directory: a unix socket's path has at most 107 bytes, t.TempDir's are long.
	dir, err := os.MkdirTemp("", "mc-reg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	csiSock := filepath.Join(dir, "csi", "csi.sock")
	regDir := filepath.Join(dir, "plugins_registry")
	regSock := filepath.Join(regDir, "oss.csi.modelcast.io-reg.sock")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	httpAddr := ln.Addr().String()
	_ = ln.Close()
	cmd := exec.Command(bin, "node", "--config", nodeConfig(t, dir), "--endpoint", "unix://"+csiSock,
		"--node-id", "node-1", "--node-ip", "127.0.0.1", "--http-endpoint", httpAddr, "--kubelet-registration-dir", regDir)
	cmd.Env = env
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
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	reg := registerapi.NewRegistrationClient(dialUnix(t, regSock))
	if _, err := reg.GetInfo(ctx, &registerapi.InfoRequest{}); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.NotifyRegistrationStatus(ctx, &registerapi.RegistrationStatus{PluginRegistered: false, Error: "plugin version 9.9 is not supported"}); err != nil {
		t.Errorf("kubelet's rejection was not answered: %v", err)
	}

	timeout := time.NewTimer(30 * time.Second)
	defer timeout.Stop()
	select {
	case <-exited:
	case <-timeout.C:
		t.Fatalf("csi-plugin node still runs 30 s after kubelet rejected its registration\n%s", stderr())
	}
	var exit *exec.ExitError
	if !errors.As(waitErr, &exit) || exit.ExitCode() != 1 {
		t.Errorf("csi-plugin node exited with %v; want exit status 1\n%s", waitErr, stderr())
	}
	for _, want := range []string{`"Not registered with kubelet"`, `"Command failed" err="kubelet rejected the registration: plugin version 9.9 is not supported"`} {
		if !strings.Contains(stderr(), want) {
			t.Errorf("the log lacks %s:\n%s", want, stderr())
		}
	}
	for _, sock := range []string{regSock, csiSock} {
		if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s outlived the plugin: %v", sock, err)
		}
	}
}
