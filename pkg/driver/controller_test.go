package driver_test

import (
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/modelcast/modelcast/pkg/driver"
)

func createReq(name string, params map[string]string, required int64) *csi.CreateVolumeRequest {
	return &csi.CreateVolumeRequest{
		Name:               name,
		VolumeCapabilities: []*csi.VolumeCapability{readOnlyCap()},
		CapacityRange:      &csi.CapacityRange{RequiredBytes: required},
		Parameters:         params,
		Secrets:            testSecrets,
	}
}

func TestCreateVolume(t *testing.T) {
	srv := emu(t)
	files := genModel(t, srv, "qwen/", 3<<20)
	var size int64
	for _, b := range files {
		size += int64(len(b))
	}
	p := startPlugin(t, inProcess{srv}, "")
	params := map[string]string{"ossPath": "oss://models/qwen", "region": region, "tenant": "team-a"}

	res, err := p.controller.CreateVolume(t.Context(), createReq("pvc-1", params, 1))
	if err != nil {
		t.Fatal(err)
	}
	v := res.GetVolume()
	if !strings.HasPrefix(v.GetVolumeId(), "modelcast-") || v.GetCapacityBytes() != size {
		t.Errorf("volume %+v: want a modelcast- ID and the model's size %d", v, size)
	}
	wantCtx := map[string]string{"ossPath": "oss://models/qwen/", "region": region, "tenant": "team-a"}
	if len(v.GetVolumeContext()) != len(wantCtx) {
		t.Errorf("volume context %v, want %v", v.GetVolumeContext(), wantCtx)
	}
	for k, want := range wantCtx {
		if v.GetVolumeContext()[k] != want {
			t.Errorf("volume context %s = %q, want %q", k, v.GetVolumeContext()[k], want)
		}
	}
	// Same name and request: same volume. Same name, other request: AlreadyExists.
	again, err := p.controller.CreateVolume(t.Context(), createReq("pvc-1", params, 1))
	if err != nil || again.GetVolume().GetVolumeId() != v.GetVolumeId() {
		t.Errorf("repeat: %v, %v", again, err)
	}
	if _, err := p.controller.CreateVolume(t.Context(), createReq("pvc-1", params, 2)); status.Code(err) != codes.AlreadyExists {
		t.Errorf("same name, other capacity: %v, want AlreadyExists", err)
	}
	// A claim asking for more than the model still binds: capacity is never below the request.
	big, err := p.controller.CreateVolume(t.Context(), createReq("pvc-2", params, 10<<30))
	if err != nil || big.GetVolume().GetCapacityBytes() != 10<<30 {
		t.Errorf("large request: %v, %v", big, err)
	}
	// Without credentials that can list, the size is unknown (0), not an error.
	anon := createReq("pvc-3", params, 1)
	anon.Secrets = nil
	unknown, err := p.controller.CreateVolume(t.Context(), anon)
	if err != nil || unknown.GetVolume().GetCapacityBytes() != 0 {
		t.Errorf("without credentials: %v, %v, want capacity 0", unknown, err)
	}
	// The node publishes what the controller created.
	tg := target(t, "pod-a")
	req := publishReq("", tg)
	req.VolumeId, req.VolumeContext = v.GetVolumeId(), v.GetVolumeContext()
	if _, err := p.node.NodePublishVolume(t.Context(), req); err != nil {
		t.Fatalf("publish the created volume: %v", err)
	}
	checkMounted(t, tg, files)
	if _, err := p.controller.DeleteVolume(t.Context(), &csi.DeleteVolumeRequest{VolumeId: v.GetVolumeId()}); err != nil {
		t.Fatal(err)
	}
	if srv.Stats().Requests["put"] != 0 {
		t.Errorf("the controller wrote to OSS")
	}
}

func TestCreateVolumeRejects(t *testing.T) {
	srv := emu(t)
	genModel(t, srv, "qwen/", 1<<20)
	p := startPlugin(t, inProcess{srv}, "")
	ok := map[string]string{"ossPath": "oss://models/qwen/"}
	writer := readOnlyCap()
	writer.AccessMode.Mode = csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER
	for _, tc := range []struct {
		name   string
		mutate func(*csi.CreateVolumeRequest)
		code   codes.Code
		hint   string
	}{
		{"no name", func(r *csi.CreateVolumeRequest) { r.Name = "" }, codes.InvalidArgument, "name is required"},
		{"no capabilities", func(r *csi.CreateVolumeRequest) { r.VolumeCapabilities = nil }, codes.InvalidArgument, "capabilities are required"},
		{"writer", func(r *csi.CreateVolumeRequest) { r.VolumeCapabilities = []*csi.VolumeCapability{writer} }, codes.InvalidArgument, "ReadOnlyMany"},
		{"no ossPath", func(r *csi.CreateVolumeRequest) { r.Parameters = map[string]string{"region": region} }, codes.InvalidArgument, "ossPath is required"},
		{"unknown parameter", func(r *csi.CreateVolumeRequest) { r.Parameters["modelPath"] = "x" }, codes.InvalidArgument, "modelPath"},
		{"missing model", func(r *csi.CreateVolumeRequest) { r.Parameters["ossPath"] = "oss://models/absent/" }, codes.NotFound, "not found"},
		{"below the model", func(r *csi.CreateVolumeRequest) { r.CapacityRange.LimitBytes = 1000 }, codes.OutOfRange, "more than the requested limit"},
		{"from a snapshot", func(r *csi.CreateVolumeRequest) {
			r.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: "s"}}}
		}, codes.InvalidArgument, "snapshots"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			params := map[string]string{}
			for k, v := range ok {
				params[k] = v
			}
			req := createReq("pvc-"+tc.name, params, 1)
			tc.mutate(req)
			_, err := p.controller.CreateVolume(t.Context(), req)
			if status.Code(err) != tc.code || !strings.Contains(status.Convert(err).Message(), tc.hint) {
				t.Errorf("%v, want %v saying %q", err, tc.code, tc.hint)
			}
		})
	}
}

func TestValidateVolumeCapabilities(t *testing.T) {
	srv := emu(t)
	p := startPlugin(t, inProcess{srv}, "")
	id := "modelcast-0123456789abcdef0123456789abcdef"
	res, err := p.controller.ValidateVolumeCapabilities(t.Context(), &csi.ValidateVolumeCapabilitiesRequest{VolumeId: id, VolumeCapabilities: []*csi.VolumeCapability{readOnlyCap()}})
	if err != nil || res.GetConfirmed() == nil {
		t.Errorf("read-only: %v, %v", res, err)
	}
	writer := readOnlyCap()
	writer.AccessMode.Mode = csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER
	res, err = p.controller.ValidateVolumeCapabilities(t.Context(), &csi.ValidateVolumeCapabilitiesRequest{VolumeId: id, VolumeCapabilities: []*csi.VolumeCapability{writer}})
	if err != nil || res.GetConfirmed() != nil || !strings.Contains(res.GetMessage(), "read-only") {
		t.Errorf("writer: %v, %v", res, err)
	}
	if _, err := p.controller.ValidateVolumeCapabilities(t.Context(), &csi.ValidateVolumeCapabilitiesRequest{VolumeId: "someone-else", VolumeCapabilities: []*csi.VolumeCapability{readOnlyCap()}}); status.Code(err) != codes.NotFound {
		t.Errorf("foreign ID: %v, want NotFound", err)
	}
	info, err := p.identity.GetPluginInfo(t.Context(), &csi.GetPluginInfoRequest{})
	if err != nil || info.GetName() != driver.DefaultDriverName || info.GetVendorVersion() == "" {
		t.Errorf("plugin info %v, %v", info, err)
	}
}
