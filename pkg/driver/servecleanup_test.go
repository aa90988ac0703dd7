package driver_test

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moby/sys/mountinfo"

	"github.com/modelcast/modelcast/pkg/config"
	"github.com/modelcast/modelcast/pkg/driver"
	"github.com/modelcast/modelcast/test/freeport"
	"github.com/modelcast/modelcast/test/redistest"
)

// inMountTable reports whether path is a mount point in this process's mount table.
func inMountTable(t *testing.T, path string) bool {
	t.Helper()
	m, err := mountinfo.Mounted(path)
	return err == nil && m
}

// TestRunStopsEverythingWhenServingFails: a node plugin whose CSI endpoint, HTTP endpoint or
// kubelet registration fails returns the error having stopped all it started: the peer data
// plane's listener (broadcast on, with Redis), the HTTP server, the cache (so that, no pod
// holding a model, its tmpfs is unmounted) — and it returns at all.
func TestRunStopsEverythingWhenServingFails(t *testing.T) {
	requireRoot(t)
	rds := redistest.Start(t, redistest.Options{Username: "modelcast", Password: "pw"})
	host, port, _ := net.SplitHostPort(rds.Addr())
	redisPort, _ := strconv.Atoi(port)
	srv := emu(t)
	errRegistration := errors.New("kubelet rejected the registration: test")

	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, o *driver.Options)
		want  string
	}{
		{"CSI endpoint cannot listen", func(t *testing.T, o *driver.Options) {
			file := filepath.Join(t.TempDir(), "not-a-directory")
			if err := os.WriteFile(file, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			o.Endpoint = "unix://" + filepath.Join(file, "csi.sock")
		}, "not a directory"},
		{"HTTP endpoint taken", func(t *testing.T, o *driver.Options) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = ln.Close() })
			o.HTTPEndpoint = ln.Addr().String()
		}, "metrics and health: listen"},
		{"registration fails while HTTP serves", func(t *testing.T, o *driver.Options) {
			o.HTTPEndpoint = net.JoinHostPort("127.0.0.1", strconv.Itoa(freeport.Must(t)))
			o.WhileServing = func(context.Context) error { return errRegistration }
		}, errRegistration.Error()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			t.Cleanup(func() { unmountAll(t, dir) })
			cfg := config.Default()
			cfg.Cache.Root = filepath.Join(dir, "cache")
			cfg.Cache.TmpfsSize = "64m"
			cfg.BindPort = freeport.Must(t)
			cfg.Broadcast.EnableBroadcast = true
			cfg.Broadcast.DB.Host, cfg.Broadcast.DB.Port = host, redisPort
			cfg.Broadcast.DB.Username, cfg.Broadcast.DB.Password = "modelcast", "pw"
			env := map[string]string{"OSS_ENDPOINT": srv.Endpoint(), "OSS_REGION": region}
			sock := filepath.Join(dir, "csi.sock")
			o := driver.Options{
				Mode: driver.ModeNode, Endpoint: "unix://" + sock, NodeID: "node-1", NodeIP: "127.0.0.41", Config: cfg,
				Getenv: func(k string) string { return env[k] },
			}
			tc.setup(t, &o)

			ran := make(chan error, 1)
			go func() { ran <- driver.Run(t.Context(), o) }()
			timeout := time.NewTimer(30 * time.Second)
			defer timeout.Stop()
			var err error
			select {
			case err = <-ran:
			case <-timeout.C:
				t.Fatal("Run did not return after a listener failed")
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Run = %v; want an error saying %q", err, tc.want)
			}
			peer := net.JoinHostPort(o.NodeIP, strconv.Itoa(cfg.BindPort))
			if ln, err := net.Listen("tcp", peer); err != nil {
				t.Errorf("the peer data plane's listener outlived Run: %v", err)
			} else {
				_ = ln.Close()
			}
			if inMountTable(t, cfg.Cache.Root) {
				t.Errorf("the cache tmpfs is still mounted: the cache was not closed, so the idle tmpfs could not be unmounted")
			}
			if tc.name == "registration fails while HTTP serves" {
				if ln, err := net.Listen("tcp", o.HTTPEndpoint); err != nil {
					t.Errorf("the HTTP server outlived Run: %v", err)
				} else {
					_ = ln.Close()
				}
				if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("the CSI socket outlived Run: %v", err)
				}
			}
		})
	}
}
