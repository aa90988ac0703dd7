package driver

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/modelcast/modelcast/pkg/ossclient"
)

// volumeIDPrefix marks the IDs CreateVolume makes: the prefix and 32 hex digits of a hash of
// the volume's name, so a retried CreateVolume returns the same ID.
const volumeIDPrefix = "modelcast-"

type controllerServer struct {
	csi.UnimplementedControllerServer
	res *resolver

	// requests remembers what each name was created with (in memory, bounded), so a name
	// reused with other parameters or capacity is refused as the CSI spec asks. Not kept
	// across restarts: a stateless controller cannot know more.
	mu       sync.Mutex
	requests map[string]string
}

const maxRemembered = 10000

func volumeID(name string) string {
	sum := sha256.Sum256([]byte(name))
	return volumeIDPrefix + hex.EncodeToString(sum[:16])
}

func isVolumeID(id string) bool {
	hexPart, ok := strings.CutPrefix(id, volumeIDPrefix)
	if !ok || len(hexPart) != 32 {
		return false
	}
	_, err := hex.DecodeString(hexPart)
	return err == nil
}

func (c *controllerServer) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: []*csi.ControllerServiceCapability{{
		Type: &csi.ControllerServiceCapability_Rpc{Rpc: &csi.ControllerServiceCapability_RPC{Type: csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME}},
	}}}, nil
}

// CreateVolume turns StorageClass parameters into a volume whose context carries the model's
// attributes. Nothing is created in OSS. The capacity is the model's size when the
// controller's credentials can list it (never less than requested, or the claim could not
// bind), else 0 (unknown); credentials of the provisioner secret that OSS refuses fail it.
func (c *controllerServer) CreateVolume(ctx context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	v, err := c.create(ctx, req)
	return v, toStatus(err)
}

func (c *controllerServer) create(ctx context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	name := req.GetName()
	if name == "" {
		return nil, fmt.Errorf("%w: volume name is required", errInvalid)
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, fmt.Errorf("%w: volume capabilities are required", errInvalid)
	}
	for _, vc := range req.GetVolumeCapabilities() {
		if err := checkCapability(vc, false); err != nil {
			return nil, err
		}
	}
	if req.GetVolumeContentSource() != nil {
		return nil, fmt.Errorf("%w: volumes cannot be created from snapshots or other volumes: a model volume is its OSS path", errInvalid)
	}
	spec, err := parseVolume(req.GetParameters())
	if err != nil {
		return nil, err
	}
	required, limit := req.GetCapacityRange().GetRequiredBytes(), req.GetCapacityRange().GetLimitBytes()
	size, err := c.modelSize(ctx, spec, req.GetSecrets())
	if err != nil {
		return nil, err
	}
	if limit > 0 && size > limit {
		return nil, status.Errorf(codes.OutOfRange, "model %s is %d bytes, more than the requested limit of %d", spec.URI, size, limit)
	}
	capacity := size
	if size > 0 && required > size {
		capacity = required
	}

	fp := requestFingerprint(req)
	c.mu.Lock()
	prev, seen := c.requests[name]
	if !seen {
		if len(c.requests) >= maxRemembered {
			clear(c.requests)
		}
		c.requests[name] = fp
	}
	c.mu.Unlock()
	if seen && prev != fp {
		return nil, status.Errorf(codes.AlreadyExists, "volume %q exists with other parameters or capacity", name)
	}
	klog.FromContext(ctx).V(2).Info("Created volume", "name", name, "volumeID", volumeID(name), "model", spec.URI.String(), "capacity", capacity)
	return &csi.CreateVolumeResponse{Volume: &csi.Volume{
		VolumeId:      volumeID(name),
		CapacityBytes: capacity,
		VolumeContext: spec.Attributes(),
	}}, nil
}

// modelSize lists the model with the request's (or the controller's) credentials. A model that
// is not there, whose keys cannot become files, or that is past the bounds of model.* in the
// config (ErrTooLarge: no node would stage it), fails the request, and so do credentials of
// the request's secret that OSS refuses (PermissionDenied: that secret is there to list the
// model); the controller's own credentials (or none) not being allowed to list (the nodes may
// hold other credentials) or OSS being unreachable leaves it unknown (0).
func (c *controllerServer) modelSize(ctx context.Context, spec VolumeSpec, secrets map[string]string) (int64, error) {
	m, _, err := c.res.model(ctx, spec, secrets)
	switch {
	case err == nil:
		return m.Manifest.Size(), nil
	case refusedSecret(secrets, err) != nil:
		return 0, refusedSecret(secrets, err)
	case errors.Is(err, ossclient.ErrNotFound), errors.Is(err, ossclient.ErrInvalidKey), errors.Is(err, ossclient.ErrTooLarge),
		errors.Is(err, errInvalid), errors.Is(err, ossclient.ErrInvalidConfig), errors.Is(err, ossclient.ErrInvalidURI):
		return 0, err
	}
	klog.FromContext(ctx).Info("Cannot list the model; its size stays unknown", "model", spec.URI.String(), "err", err)
	return 0, nil
}

func requestFingerprint(req *csi.CreateVolumeRequest) string {
	h := sha256.New()
	for _, k := range slices.Sorted(maps.Keys(req.GetParameters())) {
		fmt.Fprintf(h, "%d:%s%d:%s", len(k), k, len(req.GetParameters()[k]), req.GetParameters()[k])
	}
	fmt.Fprintf(h, "|%d|%d", req.GetCapacityRange().GetRequiredBytes(), req.GetCapacityRange().GetLimitBytes())
	return hex.EncodeToString(h.Sum(nil))
}

// DeleteVolume never touches OSS: the model belongs to its owner, not to the volume.
func (c *controllerServer) DeleteVolume(ctx context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, toStatus(fmt.Errorf("%w: volume ID is required", errInvalid))
	}
	klog.FromContext(ctx).V(2).Info("Deleted volume", "volumeID", req.GetVolumeId())
	return &csi.DeleteVolumeResponse{}, nil
}

func (c *controllerServer) ValidateVolumeCapabilities(ctx context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	switch {
	case req.GetVolumeId() == "":
		return nil, toStatus(fmt.Errorf("%w: volume ID is required", errInvalid))
	case len(req.GetVolumeCapabilities()) == 0:
		return nil, toStatus(fmt.Errorf("%w: volume capabilities are required", errInvalid))
	case !isVolumeID(req.GetVolumeId()):
		return nil, status.Errorf(codes.NotFound, "volume %q was not created by this driver", req.GetVolumeId())
	}
	for _, vc := range req.GetVolumeCapabilities() {
		if err := checkCapability(vc, false); err != nil {
			return &csi.ValidateVolumeCapabilitiesResponse{Message: err.Error()}, nil
		}
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext:      req.GetVolumeContext(),
		VolumeCapabilities: req.GetVolumeCapabilities(),
		Parameters:         req.GetParameters(),
	}}, nil
}
