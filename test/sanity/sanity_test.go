// Package sanity runs the kubernetes-csi sanity suite (csi-test v5) against modelcast's node
// and controller services, in process, with real tmpfs and bind mounts (root) and volumes whose
// parameters point at a model in the OSS emulator.
package sanity

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/modelcast/modelcast/pkg/config"
	"github.com/modelcast/modelcast/pkg/driver"
	"github.com/modelcast/modelcast/test/ossemu"
)

const (
	region = "cn-test"
	ak     = "LTAI5tSanityTestKey"
	sk     = "sanity-secret"
)

func TestSanity(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: real tmpfs and bind mounts")
	}
	srv := ossemu.Start(t, ossemu.Options{Region: region, Credentials: []ossemu.Credential{{AccessKeyID: ak, AccessKeySecret: sk}}})
	if _, err := srv.GenerateModel("models", "sanity/qwen/", ossemu.ModelSpec{Size: 4 << 20, Seed: 5}); err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	t.Cleanup(func() { _ = unix.Unmount(filepath.Join(dir, "cache"), unix.MNT_DETACH) })
	cfg := config.Default()
	cfg.Cache.Root = filepath.Join(dir, "cache")
	cfg.Cache.TmpfsSize = "256m"
	env := map[string]string{"OSS_ENDPOINT": srv.Endpoint(), "OSS_REGION": region}
	sock := filepath.Join(dir, "csi.sock")
	d, err := driver.New(driver.Options{
		Mode: driver.ModeAll, Endpoint: "unix://" + sock, NodeID: "sanity-node", Config: cfg,
		Getenv: func(k string) string { return env[k] },
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- d.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for _, err := os.Stat(sock); err != nil; _, err = os.Stat(sock) {
		if time.Now().After(deadline) {
			t.Fatal("the driver did not create its socket")
		}
		time.Sleep(10 * time.Millisecond)
	}

	secrets := filepath.Join(dir, "secrets.yaml")
	creds := fmt.Sprintf("{akId: %s, akSecret: %s}", ak, sk)
	if err := os.WriteFile(secrets, []byte(fmt.Sprintf("CreateVolumeSecret: %s\nNodePublishVolumeSecret: %s\nControllerValidateVolumeCapabilitiesSecret: %s\n", creds, creds, creds)), 0o600); err != nil {
		t.Fatal(err)
	}
	sc := sanity.NewTestConfig()
	sc.Address = "unix://" + sock
	sc.TargetPath = filepath.Join(dir, "target")
	sc.StagingPath = filepath.Join(dir, "staging")
	sc.SecretsFile = secrets
	sc.TestVolumeParameters = map[string]string{driver.AttrOSSPath: "oss://models/sanity/qwen/"}
	sc.IdempotentCount = 2
	// csi-sanity asks for SINGLE_NODE_WRITER everywhere. modelcast volumes are read-only by
	// design (a writer mode is InvalidArgument, which pkg/driver's tests check), so the suite's
	// requests go out with the reader mode instead; everything else in each spec is unchanged.
	sc.DialOptions = append(sc.DialOptions, grpc.WithUnaryInterceptor(readerMode))
	sanity.Test(t, sc)
}

// readerMode rewrites SINGLE_NODE_WRITER to MULTI_NODE_READER_ONLY in outgoing requests.
func readerMode(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	var caps []*csi.VolumeCapability
	switch r := req.(type) {
	case *csi.CreateVolumeRequest:
		r = proto.Clone(r).(*csi.CreateVolumeRequest)
		caps, req = r.GetVolumeCapabilities(), r
	case *csi.ValidateVolumeCapabilitiesRequest:
		r = proto.Clone(r).(*csi.ValidateVolumeCapabilitiesRequest)
		caps, req = r.GetVolumeCapabilities(), r
	case *csi.NodePublishVolumeRequest:
		r = proto.Clone(r).(*csi.NodePublishVolumeRequest)
		caps, req = []*csi.VolumeCapability{r.GetVolumeCapability()}, r
	}
	for _, c := range caps {
		if c.GetAccessMode().GetMode() == csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER {
			c.AccessMode.Mode = csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY
		}
	}
	return invoker(ctx, method, req, reply, cc, opts...)
}
