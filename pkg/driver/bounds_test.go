package driver_test

import (
	"fmt"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/modelcast/modelcast/pkg/driver"
	"github.com/modelcast/modelcast/test/ossemu"
)

// withModelBounds sets the node config's model.maxObjects and model.maxSizeGB.
func withModelBounds(objects int, sizeGB float64) pluginOpt {
	return func(o *driver.Options) { o.Config.Model.MaxObjects, o.Config.Model.MaxSizeGB = objects, sizeGB }
}

// TestModelBounds: a model past model.maxObjects or model.maxSizeGB — typically a whole bucket,
// oss://bucket/ — is refused by NodePublishVolume and CreateVolume with FailedPrecondition
// naming the bound, its value and its key, before a single HEAD and with nothing mounted; the
// whole bucket within the bounds is a model like any other.
func TestModelBounds(t *testing.T) {
	srv := emu(t)
	files := genModel(t, srv, "qwen/", 1<<20) // 1.05 MB
	srv.PutObject("models", "datasets/part-0.parquet", []byte("rows"))
	p := startPlugin(t, inProcess{srv}, "", withModelBounds(len(files), 0))
	small := startPlugin(t, inProcess{srv}, "", withModelBounds(0, 0.001)) // 1 MB

	for _, tc := range []struct {
		name string
		p    *plugin
		path string
		hint []string
	}{
		{"the whole bucket past model.maxObjects", p, "oss://models/", []string{
			fmt.Sprintf("model exceeds a configured bound: more than %d objects under the prefix (the bound is model.maxObjects = %[1]d in the node's config)", len(files)),
			"oss://models/ is the whole bucket"}},
		{"a model past model.maxSizeGB", small, "oss://models/qwen/", []string{
			"more than 1.0 MB under the prefix (the bound is model.maxSizeGB = 0.001 in the node's config)",
			"if oss://models/qwen/ is one model's directory, raise the bound"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv.ResetStats()
			req := publishReq(tc.path, target(t, "pod"))
			_, err := tc.p.node.NodePublishVolume(t.Context(), req)
			if status.Code(err) != codes.FailedPrecondition {
				t.Fatalf("NodePublishVolume(%s) = %v, want FailedPrecondition", tc.path, err)
			}
			for _, h := range tc.hint {
				if msg := status.Convert(err).Message(); !strings.Contains(msg, h) {
					t.Errorf("message %q lacks %q", msg, h)
				}
			}
			if mounted, _ := isMountPoint(req.TargetPath); mounted {
				t.Error("a refused publish left a mount at the target")
			}
			_, err = tc.p.controller.CreateVolume(t.Context(), createReq("pvc-bounds", map[string]string{"ossPath": tc.path}, 1))
			if status.Code(err) != codes.FailedPrecondition || !strings.Contains(status.Convert(err).Message(), tc.hint[0]) {
				t.Errorf("CreateVolume(%s) = %v, want FailedPrecondition saying %q", tc.path, err, tc.hint[0])
			}
			if st := srv.Stats(); st.Requests[ossemu.OpHead] != 0 || st.Requests[ossemu.OpGet] != 0 {
				t.Errorf("requests %v: a model past the bounds is refused while listing", st.Requests)
			}
		})
	}

	// Within the bounds, a model publishes; so does a whole bucket that is a model.
	req := publishReq("oss://models/qwen/", target(t, "pod"))
	if _, err := p.node.NodePublishVolume(t.Context(), req); err != nil {
		t.Fatalf("NodePublishVolume of a model within the bounds: %v", err)
	}
	checkMounted(t, req.TargetPath, files)
	srv.DeleteObject("models", "datasets/part-0.parquet")
	req = publishReq("oss://models/", target(t, "bucket-pod"))
	if _, err := p.node.NodePublishVolume(t.Context(), req); err != nil {
		t.Fatalf("NodePublishVolume of a whole bucket within the bounds: %v", err)
	}
	bucket := map[string][]byte{}
	for rel, b := range files {
		bucket["qwen/"+rel] = b
	}
	checkMounted(t, req.TargetPath, bucket)
}
