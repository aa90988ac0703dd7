package driver_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"k8s.io/client-go/kubernetes"

	"github.com/modelcast/modelcast/pkg/config"
	"github.com/modelcast/modelcast/pkg/driver"
	"github.com/modelcast/modelcast/test/ossemu"
)

const (
	region = "cn-test"
	ak     = "LTAI5tDriverTestKey"
	sk     = "driver-test-secret"
)

var testSecrets = map[string]string{"akId": ak, "akSecret": sk}

// emu starts an emulator requiring ak/sk, with a private bucket "models".
func emu(t *testing.T) *ossemu.Server {
	t.Helper()
	srv := ossemu.Start(t, ossemu.Options{Region: region, Credentials: []ossemu.Credential{{AccessKeyID: ak, AccessKeySecret: sk}}})
	srv.CreateBucket("models", ossemu.BucketOptions{})
	return srv
}

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: real tmpfs and bind mounts")
	}
}

// plugin is a running driver reached over its unix socket.
type plugin struct {
	t          testing.TB
	d          *driver.Driver
	node       csi.NodeClient
	controller csi.ControllerClient
	identity   csi.IdentityClient
	cacheRoot  string
	stop       func()
}

type pluginOpt func(*driver.Options)

// endpointer is an emulator in process or as a process.
type endpointer interface{ endpoint() string }

type inProcess struct{ *ossemu.Server }

func (s inProcess) endpoint() string { return s.Endpoint() }

type asProcess struct{ *ossemu.Process }

func (p asProcess) endpoint() string { return p.Endpoint }

// startPlugin runs a driver with both services, its cache on a tmpfs under dir (a fresh
// directory when dir is ""), until the test ends or stop is called.
func startPlugin(t testing.TB, srv endpointer, dir string, opts ...pluginOpt) *plugin {
	t.Helper()
	requireRoot(t)
	if dir == "" {
		dir = t.TempDir()
	}
	cfg := config.Default()
	cfg.Cache.Root = filepath.Join(dir, "cache")
	cfg.Cache.TmpfsSize = "2g"
	cfg.Prefetch.VCPUs, cfg.Prefetch.Workers = 4, 4
	env := map[string]string{"OSS_ENDPOINT": srv.endpoint(), "OSS_REGION": region}
	sock := filepath.Join(t.TempDir(), "csi.sock")
	o := driver.Options{
		Mode: driver.ModeAll, Endpoint: "unix://" + sock, NodeID: "node-1", Config: cfg,
		Getenv: func(k string) string { return env[k] },
	}
	for _, f := range opts {
		f(&o)
	}
	d, err := driver.New(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- d.Serve(ctx) }()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	p := &plugin{t: t, d: d, node: csi.NewNodeClient(conn), controller: csi.NewControllerClient(conn), identity: csi.NewIdentityClient(conn), cacheRoot: cfg.Cache.Root}
	stopped := false
	p.stop = func() {
		if stopped {
			return
		}
		stopped = true
		_ = conn.Close()
		cancel()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	}
	t.Cleanup(func() {
		p.stop()
		unmountAll(t, dir)
	})
	// Ready when it answers.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := p.identity.Probe(context.Background(), &csi.ProbeRequest{}); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("plugin did not start serving")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return p
}

func withKube(c kubernetes.Interface) pluginOpt {
	return func(o *driver.Options) { o.KubeClient = c }
}

func withOptions(f func(*driver.Options)) pluginOpt { return f }

// unmountAll lazily unmounts every mount under dir, deepest first (test cleanup).
func unmountAll(t testing.TB, dir string) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	var points []string
	for _, line := range splitLines(string(data)) {
		var f [5]string
		if n, _ := fmt.Sscan(line, &f[0], &f[1], &f[2], &f[3], &f[4]); n == 5 && (f[4] == dir || len(f[4]) > len(dir) && f[4][:len(dir)+1] == dir+"/") {
			points = append(points, f[4])
		}
	}
	for i := len(points) - 1; i >= 0; i-- {
		_ = unix.Unmount(points[i], unix.MNT_DETACH)
	}
}

func splitLines(s string) []string {
	var out []string
	for len(s) > 0 {
		i := 0
		for i < len(s) && s[i] != '\n' {
			i++
		}
		out = append(out, s[:i])
		if i < len(s) {
			i++
		}
		s = s[i:]
	}
	return out
}

func readOnlyCap() *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY},
	}
}

// publishReq is a NodePublishVolume for model path at target, with the test's secrets.
func publishReq(path, target string) *csi.NodePublishVolumeRequest {
	return &csi.NodePublishVolumeRequest{
		VolumeId:         "vol-1",
		TargetPath:       target,
		VolumeCapability: readOnlyCap(),
		Readonly:         true,
		VolumeContext:    map[string]string{driver.AttrOSSPath: path},
		Secrets:          testSecrets,
	}
}

// target returns a target path under a fresh pods directory, as kubelet lays it out (the
// parent exists, the target does not).
func target(t testing.TB, name string) string {
	root := t.TempDir()
	t.Cleanup(func() { unmountAll(t, root) }) // before the directory's removal
	dir := filepath.Join(root, "pods", name, "volumes", "kubernetes.io~csi", "model")
	if err := os.MkdirAll(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, "mount")
}

func mountTmpfs(dir string, size int64, huge string) error {
	return unix.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d,huge=%s", size, huge))
}
