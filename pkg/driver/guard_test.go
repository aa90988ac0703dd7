package driver_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/modelcast/modelcast/pkg/driver"
	"github.com/modelcast/modelcast/test/ossemu"
)

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

// TestSharedListingOutlivesFirstCaller: two pods wait for the same listing; the first one's
// deadline passes while OSS is slow to answer. It gets Unavailable saying the listing goes on;
// the other still gets its model, from that one listing.
func TestSharedListingOutlivesFirstCaller(t *testing.T) {
	srv := emu(t)
	files := genModel(t, srv, "qwen/", 4<<20)
	p := startPlugin(t, inProcess{srv}, "", withOptions(func(o *driver.Options) { o.PublishMargin = 200 * time.Millisecond }))
	srv.ResetStats()
	srv.InjectFault(ossemu.Fault{Op: ossemu.OpList, Kind: ossemu.FaultSlowFirstByte, Delay: 3 * time.Second})

	first := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		_, err := p.node.NodePublishVolume(ctx, publishReq("oss://models/qwen/", target(t, "pod-a")))
		first <- err
	}()
	waitUntil(t, "the first publish's LIST held by OSS", func() bool { return srv.Stats().FaultsHit == 1 })
	tb := target(t, "pod-b")
	second := make(chan error, 1)
	go func() {
		_, err := p.node.NodePublishVolume(t.Context(), publishReq("oss://models/qwen/", tb))
		second <- err
	}()

	err := <-first
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("first publish past its deadline: %v, want Unavailable", err)
	}
	if msg := status.Convert(err).Message(); !strings.Contains(msg, "still listing oss://models/qwen/") {
		t.Errorf("message %q does not say the listing goes on", msg)
	}
	if err := <-second; err != nil {
		t.Fatalf("second publish, waiting on the same listing: %v", err)
	}
	checkMounted(t, tb, files)
	if n := srv.Stats().Requests[ossemu.OpList]; n != 1 {
		t.Errorf("%d LIST requests, want 1 (the second publish joins the first one's listing)", n)
	}
}

// TestPublishAgainstStalledOSS: OSS accepts the LIST (or the HEADs) and never answers. The
// publish answers Unavailable, saying what it waits for, shortly before the caller's deadline
// or after the publish wait, not when the caller's own deadline hits.
func TestPublishAgainstStalledOSS(t *testing.T) {
	for _, op := range []ossemu.Op{ossemu.OpList, ossemu.OpHead} {
		t.Run(string(op), func(t *testing.T) {
			srv := emu(t)
			genModel(t, srv, "qwen/", 1<<20)
			p := startPlugin(t, inProcess{srv}, "", withOptions(func(o *driver.Options) {
				o.PublishMargin = 300 * time.Millisecond
				o.PublishWait = 1500 * time.Millisecond
			}))
			srv.InjectFault(ossemu.Fault{Op: op, Kind: ossemu.FaultHang, Count: -1})

			// Under a deadline: the answer comes before it.
			ctx, cancel := context.WithTimeout(t.Context(), 1200*time.Millisecond)
			defer cancel()
			_, err := p.node.NodePublishVolume(ctx, publishReq("oss://models/qwen/", target(t, "pod-a")))
			checkStillListing(t, err)

			// Without a deadline: the publish wait bounds it.
			_, err = p.node.NodePublishVolume(t.Context(), publishReq("oss://models/qwen/", target(t, "pod-b")))
			checkStillListing(t, err)
		})
	}
}

func checkStillListing(t *testing.T, err error) {
	t.Helper()
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("publish against a stalled OSS: %v, want Unavailable", err)
	}
	if msg := status.Convert(err).Message(); !strings.Contains(msg, "still listing oss://models/qwen/") || strings.Contains(msg, "%") {
		t.Errorf("message %q does not say what the publish waits for", msg)
	}
}

// TestPublishOccupiedTarget: a target holding a model answers OK only for the same volume and
// model; another model or volume ID is AlreadyExists, and the model mounted stays.
func TestPublishOccupiedTarget(t *testing.T) {
	srv := emu(t)
	files := genModel(t, srv, "qwen/", 1<<20)
	src := t.TempDir()
	if _, err := srv.GenerateModel("models", "llama/", ossemu.ModelSpec{Size: 1 << 20, Seed: 5, Dir: src}); err != nil {
		t.Fatal(err)
	}
	p := startPlugin(t, inProcess{srv}, "")
	tg := target(t, "pod-a")
	if _, err := p.node.NodePublishVolume(t.Context(), publishReq("oss://models/qwen/", tg)); err != nil {
		t.Fatal(err)
	}
	otherModel := publishReq("oss://models/llama/", tg)
	otherVolume := publishReq("oss://models/qwen/", tg)
	otherVolume.VolumeId = "vol-2"
	for name, req := range map[string]*csi.NodePublishVolumeRequest{"another model": otherModel, "another volume": otherVolume} {
		_, err := p.node.NodePublishVolume(t.Context(), req)
		if status.Code(err) != codes.AlreadyExists {
			t.Errorf("%s on an occupied target: %v, want AlreadyExists", name, err)
		}
	}
	if _, err := p.node.NodePublishVolume(t.Context(), publishReq("oss://models/qwen/", tg)); err != nil {
		t.Errorf("the same volume again: %v, want OK", err)
	}
	checkMounted(t, tg, files)
}

// TestPublishRefusesSymlinkedTarget: a target that is a symbolic link, or under one, is
// refused; nothing is mounted at the link's destination.
func TestPublishRefusesSymlinkedTarget(t *testing.T) {
	srv := emu(t)
	genModel(t, srv, "qwen/", 1<<20)
	p := startPlugin(t, inProcess{srv}, "")
	elsewhere := t.TempDir()
	t.Cleanup(func() { unmountAll(t, elsewhere) })

	linkTarget := target(t, "pod-a")
	if err := os.Symlink(elsewhere, linkTarget); err != nil {
		t.Fatal(err)
	}
	dest := filepath.Join(elsewhere, "dest")
	if err := os.Mkdir(dest, 0o750); err != nil {
		t.Fatal(err)
	}
	linkedParent := target(t, "pod-b")
	if err := os.Symlink(dest, filepath.Dir(linkedParent)+"/linked"); err != nil {
		t.Fatal(err)
	}
	underLink := filepath.Join(filepath.Dir(linkedParent), "linked", "mount")

	for name, tc := range map[string]struct{ target, dest string }{
		"target is a link":     {linkTarget, elsewhere},
		"parent is a link":     {underLink, filepath.Join(dest, "mount")},
		"parent is a link (2)": {filepath.Join(filepath.Dir(linkedParent), "linked", "x", "mount"), filepath.Join(dest, "x", "mount")},
	} {
		_, err := p.node.NodePublishVolume(t.Context(), publishReq("oss://models/qwen/", tc.target))
		if c := status.Code(err); c != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		} else if msg := status.Convert(err).Message(); !strings.Contains(msg, "symbolic link") {
			t.Errorf("%s: message %q does not say why", name, msg)
		}
		if mounted, _ := isMountPoint(tc.dest); mounted {
			t.Errorf("%s: the model was mounted at the link's destination %s", name, tc.dest)
		}
		if _, err := p.node.NodeUnpublishVolume(t.Context(), &csi.NodeUnpublishVolumeRequest{VolumeId: "vol-1", TargetPath: tc.target}); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: unpublish %v, want InvalidArgument", name, err)
		}
	}
}

// TestPublishRefusesTargetInCache: a target inside the cache root (or the root itself) is
// refused, by publish and unpublish alike, and the cache stays whole.
func TestPublishRefusesTargetInCache(t *testing.T) {
	srv := emu(t)
	genModel(t, srv, "qwen/", 1<<20)
	p := startPlugin(t, inProcess{srv}, "")
	ok := target(t, "pod-a")
	if _, err := p.node.NodePublishVolume(t.Context(), publishReq("oss://models/qwen/", ok)); err != nil {
		t.Fatal(err)
	}
	models := filepath.Join(p.cacheRoot, "models")
	entries, err := os.ReadDir(models)
	if err != nil || len(entries) != 1 {
		t.Fatalf("cache models: %v, %v", entries, err)
	}
	for _, tg := range []string{
		filepath.Join(p.cacheRoot, "pods", "mount"),
		filepath.Join(models, entries[0].Name()),
		filepath.Join(models, "new"),
		p.cacheRoot,
	} {
		_, err := p.node.NodePublishVolume(t.Context(), publishReq("oss://models/qwen/", tg))
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("publish at %s: %v, want InvalidArgument", tg, err)
		}
		_, err = p.node.NodeUnpublishVolume(t.Context(), &csi.NodeUnpublishVolumeRequest{VolumeId: "vol-1", TargetPath: tg})
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("unpublish at %s: %v, want InvalidArgument", tg, err)
		}
	}
	if err := p.d.Store().Check(); err != nil {
		t.Errorf("cache after the refusals: %v", err)
	}
	if _, err := os.Stat(filepath.Join(models, entries[0].Name())); err != nil {
		t.Errorf("the cached model: %v", err)
	}
	if mounted, _ := isMountPoint(ok); !mounted {
		t.Errorf("the pod's mount is gone")
	}
}
