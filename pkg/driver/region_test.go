package driver_test

import (
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/modelcast/modelcast/pkg/driver"
)

// TestEndpointWithoutRegion: a volume with an endpoint but no region uses the node's region
// (OSS_REGION), as the README says of every attribute; only with no region anywhere is it
// refused, saying both ways to give one.
func TestEndpointWithoutRegion(t *testing.T) {
	srv := emu(t)
	files := genModel(t, srv, "qwen/", 1<<20)

	t.Run("the node's region", func(t *testing.T) {
		p := startPlugin(t, inProcess{srv}, "") // OSS_REGION=cn-test
		tg := target(t, "pod-a")
		req := publishReq("oss://models/qwen/", tg)
		req.VolumeContext["endpoint"] = srv.Endpoint() // http://127.0.0.1:port names no region
		if _, err := p.node.NodePublishVolume(t.Context(), req); err != nil {
			t.Fatalf("publish with endpoint and no region on a node with OSS_REGION: %v", err)
		}
		checkMounted(t, tg, files)
	})
	t.Run("no region anywhere", func(t *testing.T) {
		p := startPlugin(t, inProcess{srv}, "", withOptions(func(o *driver.Options) {
			env := map[string]string{"OSS_ENDPOINT": srv.Endpoint()} // no OSS_REGION
			o.Getenv = func(k string) string { return env[k] }
		}))
		req := publishReq("oss://models/qwen/", target(t, "pod-a"))
		req.VolumeContext["endpoint"] = srv.Endpoint()
		code, msg := publishErr(t, p, req)
		want := "invalid OSS configuration: endpoint " + srv.Endpoint() + " does not name a region, which V4 signing needs: " +
			"set the volume attribute region (e.g. region: cn-beijing), or OSS_REGION in the node plugin's environment (the chart's oss.region) as every volume's default"
		if code != codes.InvalidArgument || msg != want {
			t.Errorf("publish: %v %q\nwant InvalidArgument %q", code, msg, want)
		}
		// With the attribute, the same node publishes it.
		tg := target(t, "pod-b")
		req = publishReq("oss://models/qwen/", tg)
		req.VolumeContext["endpoint"], req.VolumeContext["region"] = srv.Endpoint(), region
		if _, err := p.node.NodePublishVolume(t.Context(), req); err != nil {
			t.Fatalf("publish with endpoint and region: %v", err)
		}
		checkMounted(t, tg, files)
		if strings.Contains(msg, sk) {
			t.Errorf("message reveals the secret")
		}
	})
}
