package registration_test

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"

	"github.com/modelcast/modelcast/pkg/registration"
)

const (
	driverName = "oss.csi.modelcast.io"
	endpoint   = "/var/lib/kubelet/plugins/oss.csi.modelcast.io/csi.sock"
)

// dial connects to the registration socket as kubelet does.
func dial(t *testing.T, path string) registerapi.RegistrationClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return registerapi.NewRegistrationClient(conn)
}

// stop cancels the registrar's context and waits, with a deadline, for it to finish.
func stop(t *testing.T, r *registration.Registrar, cancel context.CancelFunc) {
	t.Helper()
	cancel()
	select {
	case <-r.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the registrar did not stop")
	}
}

func TestServe(t *testing.T) {
	// kubelet's directory does not exist yet: Serve creates it.
	dir := filepath.Join(t.TempDir(), "plugins_registry")
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	r, err := registration.Serve(ctx, registration.Config{Dir: dir, DriverName: driverName, Endpoint: endpoint})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, driverName+"-reg.sock")
	if r.SocketPath() != sock {
		t.Errorf("socket %s, want %s", r.SocketPath(), sock)
	}
	if ok, err := r.Registered(); ok || err != nil {
		t.Errorf("before kubelet's answer: Registered() = %v, %v; want false, nil", ok, err)
	}

	client := dial(t, sock)
	rctx, rcancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer rcancel()
	info, err := client.GetInfo(rctx, &registerapi.InfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if info.GetType() != registerapi.CSIPlugin || info.GetName() != driverName || info.GetEndpoint() != endpoint ||
		len(info.GetSupportedVersions()) != 1 || info.GetSupportedVersions()[0] != "1.0.0" {
		t.Errorf("GetInfo = %v; want type %s, name %s, endpoint %s, versions [1.0.0]", info, registerapi.CSIPlugin, driverName, endpoint)
	}

	if _, err := client.NotifyRegistrationStatus(rctx, &registerapi.RegistrationStatus{PluginRegistered: false, Error: "boom"}); err != nil {
		t.Fatal(err)
	}
	ok, err := r.Registered()
	if ok || !errors.Is(err, registration.ErrRejected) || !strings.Contains(err.Error(), "boom") {
		t.Errorf("after a rejection: Registered() = %v, %v; want false and ErrRejected with kubelet's message", ok, err)
	}
	if _, err := client.NotifyRegistrationStatus(rctx, &registerapi.RegistrationStatus{PluginRegistered: true}); err != nil {
		t.Fatal(err)
	}
	if ok, err := r.Registered(); !ok || err != nil {
		t.Errorf("after acceptance: Registered() = %v, %v; want true, nil", ok, err)
	}

	stop(t, r, cancel)
	if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the socket outlived the registrar: %v", err)
	}
}

func TestServeReplacesStaleSocket(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, driverName+"-reg.sock")
	// A socket left behind by a plugin that died: the file exists, nobody listens.
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	_ = ln.Close()
	if _, err := os.Lstat(sock); err != nil {
		t.Fatalf("no stale socket to replace: %v", err)
	}

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	r, err := registration.Serve(ctx, registration.Config{Dir: dir, DriverName: driverName, Endpoint: endpoint})
	if err != nil {
		t.Fatal(err)
	}
	rctx, rcancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer rcancel()
	if info, err := dial(t, sock).GetInfo(rctx, &registerapi.InfoRequest{}); err != nil || info.GetName() != driverName {
		t.Errorf("GetInfo on the replaced socket: %v, %v", info, err)
	}
	stop(t, r, cancel)
	if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the socket outlived the registrar: %v", err)
	}
}

func TestConfigErrors(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name  string
		cfg   registration.Config
		field string
	}{
		{"no dir", registration.Config{DriverName: driverName, Endpoint: endpoint}, "Dir"},
		{"no driver name", registration.Config{Dir: dir, Endpoint: endpoint}, "DriverName"},
		{"driver name with a slash", registration.Config{Dir: dir, DriverName: "a/b", Endpoint: endpoint}, "DriverName"},
		{"no endpoint", registration.Config{Dir: dir, DriverName: driverName}, "Endpoint"},
		{"relative endpoint", registration.Config{Dir: dir, DriverName: driverName, Endpoint: "csi.sock"}, "Endpoint"},
		{"endpoint as a URL", registration.Config{Dir: dir, DriverName: driverName, Endpoint: "unix://" + endpoint}, "Endpoint"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := registration.Serve(t.Context(), tc.cfg)
			var fe *registration.FieldError
			if !errors.As(err, &fe) || fe.Field != tc.field {
				t.Fatalf("Serve(%+v) = %v, %v; want a FieldError on %s", tc.cfg, r, err, tc.field)
			}
		})
	}
	if entries, err := os.ReadDir(dir); err != nil || len(entries) != 0 {
		t.Errorf("a bad config left files behind: %v, %v", entries, err)
	}
}

// TestRejected: kubelet's first rejection closes Rejected and stays in Rejection (a later
// acceptance does not erase it); kubelet gets its answer even when the owner stops the
// registrar as soon as the rejection arrives.
func TestRejected(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	r, err := registration.Serve(ctx, registration.Config{Dir: dir, DriverName: driverName, Endpoint: endpoint})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-r.Rejected():
		t.Fatal("Rejected is closed before kubelet said anything")
	default:
	}
	if err := r.Rejection(); err != nil {
		t.Errorf("Rejection before kubelet said anything: %v", err)
	}
	// The owner stops the registrar the moment kubelet rejects it.
	go func() {
		select {
		case <-r.Rejected():
			cancel()
		case <-ctx.Done(): // the test ended without a rejection
		}
	}()
	client := dial(t, r.SocketPath())
	rctx, rcancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer rcancel()
	if _, err := client.NotifyRegistrationStatus(rctx, &registerapi.RegistrationStatus{PluginRegistered: false, Error: "version 9.9 is not supported"}); err != nil {
		t.Errorf("kubelet's rejection was not answered: %v", err)
	}
	select {
	case <-r.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the registrar did not stop")
	}
	err = r.Rejection()
	if !errors.Is(err, registration.ErrRejected) || !strings.Contains(err.Error(), "version 9.9 is not supported") {
		t.Errorf("Rejection = %v; want ErrRejected with kubelet's message", err)
	}
}
