package main

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/modelcast/modelcast/pkg/config"
	"github.com/modelcast/modelcast/pkg/driver"
	"github.com/modelcast/modelcast/pkg/leader"
	"github.com/modelcast/modelcast/pkg/registration"
)

// DefaultHTTPPort serves metrics and health, beside the peer data plane's bindPort (19898).
const DefaultHTTPPort = 19899

// Options are the command line of the CSI servers, `csi-plugin node` and `controller` (as the
// AWS EBS CSI driver's): AddFlags registers the mode's flags, Validate checks them before
// anything starts, and every error names its flag.
type Options struct {
	// Mode is driver.ModeNode or driver.ModeController: which flags AddFlags registers and
	// what Validate requires.
	Mode string

	// Every server.
	Endpoint     string // --endpoint: the CSI socket
	DriverName   string // --driver-name
	HTTPEndpoint string // --http-endpoint: /metrics, /healthz, /readyz; "": off
	ConfigPath   string // --config
	Kubeconfig   string // --kubeconfig: for pod Events and ModelCaches; "": in-cluster when in a pod

	// The controller only.
	// LeaderElectionNamespace is where the Lease that elects the totals' writer is
	// (--leader-election-namespace, default $POD_NAMESPACE; "": the pod's own namespace when
	// in-cluster, else no election).
	LeaderElectionNamespace string

	// Node holds the flags the node shares with the agent (the node's model code without CSI).
	Node NodeOptions

	// The node service only.
	PublishWait   time.Duration // --publish-wait
	ProgressEvery time.Duration // --progress-every
	// AuthorizeMounts: a pod mounts only a model a ModelCache of its namespace declares. Not
	// in NodeOptions: the agent publishes nothing.
	AuthorizeMounts bool // --authorize-mounts
	// RegistrationDir and KubeletCSIEndpoint register the plugin with kubelet itself.
	RegistrationDir    string // --kubelet-registration-dir
	KubeletCSIEndpoint string // --kubelet-csi-endpoint
}

// AddFlags registers the mode's flags on fs.
func (o *Options) AddFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.Endpoint, "endpoint", "unix:///csi/csi.sock", "CSI endpoint: unix:///path/csi.sock or tcp://host:port")
	fs.StringVar(&o.DriverName, "driver-name", driver.DefaultDriverName, "CSI driver name (the CSIDriver object's)")
	fs.StringVar(&o.HTTPEndpoint, "http-endpoint", ":"+strconv.Itoa(DefaultHTTPPort), "where to serve /metrics, /healthz and /readyz (host:port; empty: off)")
	fs.StringVar(&o.ConfigPath, "config", config.DefaultPath, "configuration file (OSS Connector's keys; see README)")
	fs.StringVar(&o.Kubeconfig, "kubeconfig", "", "kubeconfig for pod Events and ModelCaches (default: in-cluster, when running in a pod)")
	if o.Mode == driver.ModeController {
		fs.StringVar(&o.LeaderElectionNamespace, "leader-election-namespace", os.Getenv("POD_NAMESPACE"), "namespace of the Lease "+
			"<driver-name>-totals, which elects the one replica that writes ModelCaches' totals (default: $POD_NAMESPACE, "+
			"else the pod's own namespace when in-cluster; neither: no election, every controller writes them)")
	}
	if o.Mode != driver.ModeNode {
		return
	}
	o.Node.AddFlags(fs)
	fs.DurationVar(&o.PublishWait, "publish-wait", 0, "the longest one NodePublishVolume waits for the listing and the staging before it answers Unavailable "+
		"with the progress (kubelet retries and the staging goes on); 0: until shortly before kubelet's deadline (2 minutes), "+
		"which starts the pod as soon as the staging ends; never past that deadline")
	fs.DurationVar(&o.ProgressEvery, "progress-every", 30*time.Second, "how often a staging posts a StagingProgress Event on its pods")
	fs.BoolVar(&o.AuthorizeMounts, "authorize-mounts", false, "mount authorization: a pod mounts only a model that a ModelCache of its own namespace declares "+
		"(its ossPath and endpoint); anything else is refused with PermissionDenied and a MountNotAuthorized Event. Needs the Kubernetes API "+
		"(--kubeconfig, or in-cluster) and the CSIDriver's podInfoOnMount")
	fs.StringVar(&o.RegistrationDir, "kubelet-registration-dir", "", "register with kubelet through this directory, kubelet's plugins_registry "+
		"(e.g. /registration, the host's /var/lib/kubelet/plugins_registry mounted there), instead of node-driver-registrar; empty: off")
	fs.StringVar(&o.KubeletCSIEndpoint, "kubelet-csi-endpoint", "", "the CSI socket's path as kubelet on the host sees it, "+
		"e.g. /var/lib/kubelet/plugins/<driver-name>/csi.sock (default: the path of --endpoint)")
}

// Validate checks the options as set; every error names its flag (several are joined).
func (o *Options) Validate() error {
	var errs []error
	switch o.Mode {
	case driver.ModeNode, driver.ModeController:
	default:
		return fmt.Errorf("mode %q: want %s or %s", o.Mode, driver.ModeNode, driver.ModeController)
	}
	network, socket, epErr := parseEndpoint(o.Endpoint)
	if epErr != nil {
		errs = append(errs, epErr)
	}
	if err := validDriverName(o.DriverName); err != nil {
		errs = append(errs, err)
	}
	if err := validHostPort("--http-endpoint", o.HTTPEndpoint); err != nil {
		errs = append(errs, err)
	}
	if o.Mode == driver.ModeController && o.LeaderElectionNamespace != "" {
		if msgs := validation.IsDNS1123Label(o.LeaderElectionNamespace); len(msgs) > 0 {
			errs = append(errs, fmt.Errorf("--leader-election-namespace %q: not a namespace's name: %s", o.LeaderElectionNamespace, strings.Join(msgs, "; ")))
		}
	}
	if o.Mode != driver.ModeNode {
		return errors.Join(errs...)
	}
	if err := o.Node.Validate(); err != nil {
		errs = append(errs, err)
	}
	if o.PublishWait < 0 {
		errs = append(errs, fmt.Errorf("--publish-wait %s: must not be negative (0: until shortly before kubelet's deadline)", o.PublishWait))
	}
	if o.ProgressEvery <= 0 {
		errs = append(errs, fmt.Errorf("--progress-every %s: must be positive", o.ProgressEvery))
	}
	if o.AuthorizeMounts && o.Kubeconfig == "" && !inCluster() {
		errs = append(errs, errors.New("--authorize-mounts needs the Kubernetes API to read the ModelCaches: set --kubeconfig, or run the plugin in a pod (in-cluster)"))
	}
	switch {
	case o.RegistrationDir == "" && o.KubeletCSIEndpoint != "":
		errs = append(errs, errors.New("--kubelet-csi-endpoint needs --kubelet-registration-dir"))
	case o.KubeletCSIEndpoint != "" && !filepath.IsAbs(o.KubeletCSIEndpoint):
		errs = append(errs, fmt.Errorf("--kubelet-csi-endpoint %q: want the CSI socket's absolute path on the host", o.KubeletCSIEndpoint))
	case o.RegistrationDir != "" && o.KubeletCSIEndpoint == "" && epErr == nil && network != "unix":
		errs = append(errs, fmt.Errorf("--kubelet-registration-dir: --endpoint %q is not a unix socket: set --kubelet-csi-endpoint", o.Endpoint))
	case o.RegistrationDir != "" && o.KubeletCSIEndpoint == "" && epErr == nil && !filepath.IsAbs(socket):
		errs = append(errs, fmt.Errorf("--kubelet-registration-dir: the socket of --endpoint %q is not an absolute path: set --kubelet-csi-endpoint", o.Endpoint))
	}
	return errors.Join(errs...)
}

// driverOptions are the driver's options for these flags (the configuration, the Kubernetes
// client and the registration hook are the caller's).
func (o *Options) driverOptions() driver.Options {
	opts := driver.Options{
		Mode: o.Mode, Endpoint: o.Endpoint, DriverName: o.DriverName, HTTPEndpoint: o.HTTPEndpoint,
	}
	if o.Mode == driver.ModeNode {
		opts.NodeID, opts.NodeIP = o.Node.NodeID, o.Node.NodeIP
		opts.PublishWait, opts.ProgressEvery = o.PublishWait, o.ProgressEvery
		opts.AuthorizeMounts = o.AuthorizeMounts
	}
	return opts
}

// inClusterNamespaceFile holds the namespace of the pod, beside its service account's token.
const inClusterNamespaceFile = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

// leaderElection is the controller's lease for the ModelCaches' totals: in
// --leader-election-namespace ($POD_NAMESPACE), else in namespaceFile's namespace (the pod's
// own, when the client is in-cluster; "": none), else none, and then there is no election.
// The identity is the pod's name ($POD_NAME), else the host's, and a random suffix, as
// controller-runtime's: two processes never share one, even on one host.
func (o *Options) leaderElection(namespaceFile string) (leader.Config, error) {
	var cfg leader.Config
	cfg.Namespace = o.LeaderElectionNamespace
	if cfg.Namespace == "" && namespaceFile != "" {
		b, err := os.ReadFile(namespaceFile)
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			return cfg, fmt.Errorf("the pod's namespace for the totals' lease (or set --leader-election-namespace): %w", err)
		default:
			cfg.Namespace = strings.TrimSpace(string(b))
		}
	}
	name := os.Getenv("POD_NAME")
	if name == "" {
		var err error
		if name, err = os.Hostname(); err != nil {
			return cfg, fmt.Errorf("an identity for the totals' lease: no $POD_NAME and %w", err)
		}
	}
	suffix := make([]byte, 4)
	_, _ = rand.Read(suffix) // never fails (crypto/rand)
	cfg.Identity = name + "_" + hex.EncodeToString(suffix)
	return cfg, nil
}

// registration is the kubelet registration these flags ask for (Dir "": none).
func (o *Options) registration() registration.Config {
	reg := registration.Config{Dir: o.RegistrationDir, DriverName: o.DriverName, Endpoint: o.KubeletCSIEndpoint}
	if reg.Dir != "" && reg.Endpoint == "" {
		if _, socket, err := parseEndpoint(o.Endpoint); err == nil {
			reg.Endpoint = socket
		}
	}
	return reg
}

// NodeOptions are the flags of the node's model code that `csi-plugin node` and the agent
// (that code without CSI) share: who this node is to its peers.
type NodeOptions struct {
	NodeID string // --node-id (default $NODE_NAME)
	NodeIP string // --node-ip (default $NODE_IP): the address peers reach this node at
}

// AddFlags registers --node-id and --node-ip on fs, their defaults from the environment.
func (o *NodeOptions) AddFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.NodeID, "node-id", os.Getenv("NODE_NAME"), "this node's ID (default: $NODE_NAME)")
	fs.StringVar(&o.NodeIP, "node-ip", os.Getenv("NODE_IP"), "this node's IP address for broadcast peers (default: $NODE_IP; "+
		"neither: the host's first address, listening on every interface)")
}

// Validate requires a node ID and, when one is given, an IP address.
func (o *NodeOptions) Validate() error {
	var errs []error
	if o.NodeID == "" {
		errs = append(errs, errors.New("--node-id is empty: set it, or $NODE_NAME"))
	}
	if o.NodeIP != "" && net.ParseIP(o.NodeIP) == nil {
		errs = append(errs, fmt.Errorf("--node-ip %q: not an IP address", o.NodeIP))
	}
	return errors.Join(errs...)
}

// parseEndpoint checks --endpoint as the driver will listen on it: unix:///path or
// tcp://host:port. It returns the network and the socket's path or the address.
func parseEndpoint(ep string) (network, address string, err error) {
	const want = "want unix:///path/csi.sock or tcp://host:port"
	u, perr := url.Parse(ep)
	switch {
	case ep == "":
		return "", "", fmt.Errorf("--endpoint is empty: %s", want)
	case perr != nil || (u.Scheme != "unix" && u.Scheme != "tcp"):
		return "", "", fmt.Errorf("--endpoint %q: %s", ep, want)
	case u.Scheme == "unix":
		p := u.Path
		if p == "" {
			p = u.Opaque
		}
		if p == "" {
			return "", "", fmt.Errorf("--endpoint %q has no socket path: %s", ep, want)
		}
		return "unix", p, nil
	default:
		if err := validHostPort("--endpoint", u.Host); err != nil || u.Host == "" {
			return "", "", fmt.Errorf("--endpoint %q: %s", ep, want)
		}
		return "tcp", u.Host, nil
	}
}

// validHostPort checks a listening address, host:port ("" is off): the host may be empty (every
// interface), the port a number up to 65535 (0: any).
func validHostPort(flagName, addr string) error {
	if addr == "" {
		return nil
	}
	_, port, err := net.SplitHostPort(addr)
	if err == nil {
		_, err = strconv.ParseUint(port, 10, 16)
	}
	if err != nil {
		return fmt.Errorf("%s %q: want host:port, e.g. :%d", flagName, addr, DefaultHTTPPort)
	}
	return nil
}

// csiName is the CSI specification's rule for a plugin's name: 63 characters or less,
// beginning and ending with an alphanumeric character, with dashes, dots and alphanumerics
// between.
var csiName = regexp.MustCompile(`^[a-zA-Z0-9]([-.a-zA-Z0-9]{0,61}[a-zA-Z0-9])?$`)

func validDriverName(name string) error {
	switch {
	case name == "":
		return errors.New("--driver-name is empty")
	case !csiName.MatchString(name):
		return fmt.Errorf("--driver-name %q: want a domain name of 63 characters or less (letters, digits, '-' and '.', "+
			"starting and ending with a letter or digit), e.g. %s", name, driver.DefaultDriverName)
	}
	return nil
}
