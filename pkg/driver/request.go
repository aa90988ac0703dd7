package driver

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/modelcast/modelcast/pkg/ossclient"
)

// Volume attributes: in a PV's volumeAttributes, an inline volume's volumeAttributes, or a
// StorageClass's parameters.
const (
	AttrOSSPath   = "ossPath"   // oss://bucket/prefix/ (required)
	AttrEndpoint  = "endpoint"  // OSS endpoint; default: the node's OSS_ENDPOINT
	AttrRegion    = "region"    // OSS region; default: the node's OSS_REGION or derived
	AttrTenant    = "tenant"    // broadcast tenant; default: the node's broadcast.tenant
	AttrBroadcast = "broadcast" // "true"/"false": use the chain for this volume
)

// aliases are OSS Connector's names for the same attributes.
var aliases = map[string]string{
	"OSS_PATH":        AttrOSSPath,
	"OSS_ENDPOINT":    AttrEndpoint,
	"OSS_REGION":      AttrRegion,
	"enableBroadcast": AttrBroadcast,
}

// Keys kubelet and the external-provisioner add to the volume context.
const (
	podNameKey      = "csi.storage.k8s.io/pod.name"
	podNamespaceKey = "csi.storage.k8s.io/pod.namespace"
	podUIDKey       = "csi.storage.k8s.io/pod.uid"
	ephemeralKey    = "csi.storage.k8s.io/ephemeral"
)

var reservedPrefixes = []string{"csi.storage.k8s.io/", "storage.kubernetes.io/"}

// VolumeSpec is a validated volume: which model, from where, and for which pod.
type VolumeSpec struct {
	URI       ossclient.URI
	Endpoint  string // "" means the node's default
	Region    string
	Tenant    string
	Broadcast *bool // nil means the node's default
	Ephemeral bool
	Pod       PodRef
}

// PodRef names the pod a volume is published for (with podInfoOnMount).
type PodRef struct {
	Name, Namespace, UID string
}

// Attributes renders the spec as canonical volume attributes (CreateVolume's volume context).
func (v VolumeSpec) Attributes() map[string]string {
	a := map[string]string{AttrOSSPath: v.URI.String()}
	for k, val := range map[string]string{AttrEndpoint: v.Endpoint, AttrRegion: v.Region, AttrTenant: v.Tenant} {
		if val != "" {
			a[k] = val
		}
	}
	if v.Broadcast != nil {
		a[AttrBroadcast] = strconv.FormatBool(*v.Broadcast)
	}
	return a
}

// parseVolume validates volume attributes. Unknown keys are an error naming them: a misspelt
// attribute would otherwise be silently ignored.
// ParseVolumeAttributes validates volume attributes (or StorageClass parameters) as
// NodePublishVolume and CreateVolume do.
func ParseVolumeAttributes(attrs map[string]string) (VolumeSpec, error) { return parseVolume(attrs) }

func parseVolume(attrs map[string]string) (VolumeSpec, error) {
	var v VolumeSpec
	vals := map[string]string{}
	var unknown []string
	for k, val := range attrs {
		switch {
		case k == AttrOSSPath || k == AttrEndpoint || k == AttrRegion || k == AttrTenant || k == AttrBroadcast:
		case aliases[k] != "":
			k = aliases[k]
		case k == podNameKey:
			v.Pod.Name = val
			continue
		case k == podNamespaceKey:
			v.Pod.Namespace = val
			continue
		case k == podUIDKey:
			v.Pod.UID = val
			continue
		case k == ephemeralKey:
			v.Ephemeral = val == "true"
			continue
		case hasReservedPrefix(k):
			continue
		default:
			unknown = append(unknown, k)
			continue
		}
		val = strings.TrimSpace(val)
		if prev, ok := vals[k]; ok && prev != val {
			return v, fmt.Errorf("%w: volume attribute %s is given twice (with its alias) with different values %q and %q", errInvalid, k, prev, val)
		}
		vals[k] = val
	}
	if len(unknown) > 0 {
		slices.Sort(unknown)
		return v, fmt.Errorf("%w: unknown volume attribute(s) %s; known: %s, %s, %s, %s, %s (or OSS_PATH, OSS_ENDPOINT, OSS_REGION)",
			errInvalid, strings.Join(unknown, ", "), AttrOSSPath, AttrEndpoint, AttrRegion, AttrTenant, AttrBroadcast)
	}
	path := vals[AttrOSSPath]
	if path == "" {
		return v, fmt.Errorf("%w: volume attribute %s is required, e.g. %s: oss://bucket/models/qwen/", errInvalid, AttrOSSPath, AttrOSSPath)
	}
	uri, err := ossclient.ParseURI(path)
	if err != nil {
		return v, fmt.Errorf("volume attribute %s: %w", AttrOSSPath, err)
	}
	v.URI, v.Endpoint, v.Region, v.Tenant = uri, vals[AttrEndpoint], vals[AttrRegion], vals[AttrTenant]
	if b, ok := vals[AttrBroadcast]; ok {
		on, err := strconv.ParseBool(b)
		if err != nil {
			return v, fmt.Errorf("%w: volume attribute %s must be true or false, got %q", errInvalid, AttrBroadcast, b)
		}
		v.Broadcast = &on
	}
	return v, nil
}

func hasReservedPrefix(k string) bool {
	for _, p := range reservedPrefixes {
		if strings.HasPrefix(k, p) {
			return true
		}
	}
	return false
}

// Secret keys: modelcast's and OSS Connector's names.
var (
	secretIDKeys     = []string{"akId", "OSS_ACCESS_KEY_ID"}
	secretSecretKeys = []string{"akSecret", "OSS_ACCESS_KEY_SECRET"}
	secretTokenKeys  = []string{"securityToken", "OSS_SESSION_TOKEN"}
)

// credentialsFrom reads OSS credentials from a CSI secrets map (nodePublishSecretRef or the
// provisioner's secret). ok is false when the map holds none. Messages never quote values.
func credentialsFrom(secrets map[string]string) (c ossclient.Credentials, ok bool, err error) {
	return credentialsIn(secrets, "the volume's secret", errInvalid)
}

// credentialsIn is credentialsFrom for secrets that whose names ("the volume's secret"); its
// errors wrap invalid.
func credentialsIn(secrets map[string]string, whose string, invalid error) (c ossclient.Credentials, ok bool, err error) {
	pick := func(keys []string) (string, string) {
		for _, k := range keys {
			if v := strings.TrimSpace(secrets[k]); v != "" {
				return k, v
			}
		}
		return "", ""
	}

	// A key of another spelling (accessKeyId, say) would be ignored and the node's own
	// credentials used instead: refuse it, as unknown volume attributes are refused.
	var unknown []string
	for k := range secrets {
		if !slices.Contains(secretIDKeys, k) && !slices.Contains(secretSecretKeys, k) && !slices.Contains(secretTokenKeys, k) {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		slices.Sort(unknown)
		return c, false, fmt.Errorf("%w: %s has unknown key(s) %s; known: %s", invalid, whose, strings.Join(unknown, ", "),
			strings.Join(slices.Concat(secretIDKeys, secretSecretKeys, secretTokenKeys), ", "))
	}
	_, id := pick(secretIDKeys)
	_, sec := pick(secretSecretKeys)
	_, tok := pick(secretTokenKeys)
	switch {
	case id == "" && sec == "" && tok == "":
		return c, false, nil
	case id == "":
		return c, false, fmt.Errorf("%w: %s has no access key ID (%s)", invalid, whose, strings.Join(secretIDKeys, " or "))
	case sec == "":
		return c, false, fmt.Errorf("%w: %s has no access key secret (%s)", invalid, whose, strings.Join(secretSecretKeys, " or "))
	}
	return ossclient.Credentials{AccessKeyID: id, AccessKeySecret: sec, SecurityToken: tok}, true, nil
}

// readOnlyModes are the access modes of a volume that is only read.
var readOnlyModes = []csi.VolumeCapability_AccessMode_Mode{
	csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY,
	csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY,
}

// singleNodeWriterModes are what kubelet asks for an inline ephemeral volume, whatever the pod
// says: it hard-codes ReadWriteOnce for them. Models are still mounted read-only.
var singleNodeWriterModes = []csi.VolumeCapability_AccessMode_Mode{
	csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER,
	csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER,
	csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER,
}

// checkCapability accepts a filesystem volume with a read-only access mode (or, for an inline
// ephemeral volume, kubelet's fixed single-node writer mode).
func checkCapability(c *csi.VolumeCapability, ephemeral bool) error {
	if c == nil {
		return fmt.Errorf("%w: volume capability is required", errInvalid)
	}
	if c.GetBlock() != nil {
		return fmt.Errorf("%w: block volumes are not supported: a model is a directory of files (use volumeMode: Filesystem)", errInvalid)
	}
	if c.GetMount() == nil {
		return fmt.Errorf("%w: volume capability has no access type; only mount is supported", errInvalid)
	}
	mode := c.GetAccessMode().GetMode()
	if slices.Contains(readOnlyModes, mode) || ephemeral && slices.Contains(singleNodeWriterModes, mode) {
		return nil
	}
	return fmt.Errorf("%w: access mode %s is not supported: modelcast volumes are read-only, use accessModes [ReadOnlyMany]", errInvalid, mode)
}
