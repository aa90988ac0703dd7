package main

import (
	"context"
	"flag"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/modelcast/modelcast/pkg/config"
	"github.com/modelcast/modelcast/pkg/driver"
)

// TestOptionsValidate: the servers' defaults are valid (but for the node ID, which has none
// without $NODE_NAME), and every bad value or combination is refused naming its flags.
func TestOptionsValidate(t *testing.T) {
	t.Setenv("NODE_NAME", "")
	t.Setenv("NODE_IP", "")
	t.Setenv("POD_NAMESPACE", "")
	t.Setenv("KUBERNETES_SERVICE_HOST", "") // not in a pod: no Kubernetes API without --kubeconfig
	defaults := func(mode string) Options {
		o := Options{Mode: mode}
		o.AddFlags(flag.NewFlagSet(mode, flag.ContinueOnError))
		return o
	}
	for _, tc := range []struct {
		name string
		mode string
		set  func(*Options)
		want []string // every one in the error; none: valid
	}{
		{name: "node defaults", mode: driver.ModeNode, set: func(o *Options) { o.Node.NodeID = "node-1" }},
		{name: "controller defaults", mode: driver.ModeController},
		{name: "controller: the node's flags are not its own", mode: driver.ModeController, set: func(o *Options) {
			o.ProgressEvery, o.PublishWait, o.KubeletCSIEndpoint = 0, -time.Second, "relative"
		}},
		{name: "node with an IP and kubelet registration", mode: driver.ModeNode, set: func(o *Options) {
			o.Node.NodeID, o.Node.NodeIP, o.RegistrationDir = "node-1", "10.0.0.7", "/registration"
		}},
		{name: "tcp endpoint with the socket's host path", mode: driver.ModeNode, set: func(o *Options) {
			o.Node.NodeID, o.Endpoint, o.RegistrationDir, o.KubeletCSIEndpoint = "node-1", "tcp://127.0.0.1:10000", "/registration", "/var/lib/kubelet/plugins/x/csi.sock"
		}},
		{name: "HTTP off, any port", mode: driver.ModeController, set: func(o *Options) { o.HTTPEndpoint = "" }},
		{name: "HTTP on port 0", mode: driver.ModeController, set: func(o *Options) { o.HTTPEndpoint = "127.0.0.1:0" }},
		{name: "controller with a lease namespace", mode: driver.ModeController, set: func(o *Options) { o.LeaderElectionNamespace = "kube-system" }},
		{name: "mount authorization with a kubeconfig", mode: driver.ModeNode, set: func(o *Options) {
			o.Node.NodeID, o.AuthorizeMounts, o.Kubeconfig = "node-1", true, "/etc/kubernetes/kubelet.conf"
		}},

		{name: "node without an ID", mode: driver.ModeNode, want: []string{"--node-id is empty", "$NODE_NAME"}},
		{name: "node IP not an IP", mode: driver.ModeNode, set: func(o *Options) { o.Node.NodeID, o.Node.NodeIP = "node-1", "node-1.example:19898" }, want: []string{`--node-ip "node-1.example:19898"`}},
		{name: "no endpoint", mode: driver.ModeController, set: func(o *Options) { o.Endpoint = "" }, want: []string{"--endpoint is empty"}},
		{name: "endpoint without a scheme", mode: driver.ModeController, set: func(o *Options) { o.Endpoint = "/csi/csi.sock" }, want: []string{`--endpoint "/csi/csi.sock"`, "unix:///path/csi.sock"}},
		{name: "unix endpoint without a path", mode: driver.ModeController, set: func(o *Options) { o.Endpoint = "unix://" }, want: []string{`--endpoint "unix://" has no socket path`}},
		{name: "tcp endpoint without a port", mode: driver.ModeController, set: func(o *Options) { o.Endpoint = "tcp://127.0.0.1" }, want: []string{`--endpoint "tcp://127.0.0.1"`}},
		{name: "no driver name", mode: driver.ModeController, set: func(o *Options) { o.DriverName = "" }, want: []string{"--driver-name is empty"}},
		{name: "driver name with a slash", mode: driver.ModeController, set: func(o *Options) { o.DriverName = "oss/csi" }, want: []string{`--driver-name "oss/csi"`}},
		{name: "driver name too long", mode: driver.ModeController, set: func(o *Options) { o.DriverName = strings.Repeat("a", 64) }, want: []string{"--driver-name", "63 characters"}},
		{name: "lease namespace not a namespace's name", mode: driver.ModeController, set: func(o *Options) { o.LeaderElectionNamespace = "Kube_System" },
			want: []string{`--leader-election-namespace "Kube_System"`}},
		{name: "HTTP endpoint without a port", mode: driver.ModeController, set: func(o *Options) { o.HTTPEndpoint = "19899" }, want: []string{`--http-endpoint "19899"`}},
		{name: "HTTP port out of range", mode: driver.ModeController, set: func(o *Options) { o.HTTPEndpoint = ":99999" }, want: []string{`--http-endpoint ":99999"`}},
		{name: "negative publish wait", mode: driver.ModeNode, set: func(o *Options) { o.Node.NodeID, o.PublishWait = "node-1", -time.Second }, want: []string{"--publish-wait -1s"}},
		{name: "no progress cadence", mode: driver.ModeNode, set: func(o *Options) { o.Node.NodeID, o.ProgressEvery = "node-1", 0 }, want: []string{"--progress-every 0s"}},
		{name: "kubelet endpoint without registration", mode: driver.ModeNode, set: func(o *Options) {
			o.Node.NodeID, o.KubeletCSIEndpoint = "node-1", "/var/lib/kubelet/plugins/x/csi.sock"
		}, want: []string{"--kubelet-csi-endpoint needs --kubelet-registration-dir"}},
		{name: "registration with a relative host path", mode: driver.ModeNode, set: func(o *Options) {
			o.Node.NodeID, o.RegistrationDir, o.KubeletCSIEndpoint = "node-1", "/registration", "csi.sock"
		}, want: []string{`--kubelet-csi-endpoint "csi.sock"`, "absolute"}},
		{name: "registration of a tcp endpoint without a host path", mode: driver.ModeNode, set: func(o *Options) {
			o.Node.NodeID, o.Endpoint, o.RegistrationDir = "node-1", "tcp://127.0.0.1:10000", "/registration"
		}, want: []string{"--kubelet-registration-dir", "not a unix socket", "set --kubelet-csi-endpoint"}},
		{name: "registration of a relative unix socket", mode: driver.ModeNode, set: func(o *Options) {
			o.Node.NodeID, o.Endpoint, o.RegistrationDir = "node-1", "unix:csi.sock", "/registration"
		}, want: []string{"--kubelet-registration-dir", "not an absolute path", "set --kubelet-csi-endpoint"}},
		{name: "mount authorization without the Kubernetes API", mode: driver.ModeNode, set: func(o *Options) { o.Node.NodeID, o.AuthorizeMounts = "node-1", true },
			want: []string{"--authorize-mounts needs the Kubernetes API", "--kubeconfig"}},
		{name: "every error at once", mode: driver.ModeNode, set: func(o *Options) {
			o.Endpoint, o.ProgressEvery, o.HTTPEndpoint = "csi.sock", 0, "x"
		}, want: []string{"--endpoint", "--node-id", "--progress-every", "--http-endpoint"}},
		{name: "not a server's mode", mode: driver.ModeAll, want: []string{`mode "all"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := defaults(tc.mode)
			if tc.set != nil {
				tc.set(&o)
			}
			err := o.Validate()
			if len(tc.want) == 0 {
				if err != nil {
					t.Errorf("Validate() = %v; want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate() = nil; want an error saying %q", tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate() = %q; want it to say %q", err, w)
				}
			}
		})
	}
}

// TestLeaderElection: the controller's lease is in --leader-election-namespace (default
// $POD_NAMESPACE), else in the pod's own namespace when in-cluster, else nowhere (no
// election); its identity is the pod's name, else the host's, with a suffix of its own.
func TestLeaderElection(t *testing.T) {
	dir := t.TempDir()
	nsFile := filepath.Join(dir, "namespace")
	if err := os.WriteFile(nsFile, []byte("modelcast\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name                  string
		podNamespace, podName string
		args                  []string
		file                  string
		namespace, identity   string // identity: before the suffix
	}{
		{name: "in a pod", podNamespace: "kube-system", podName: "mc-controller-7d9f-x2x", file: nsFile, namespace: "kube-system", identity: "mc-controller-7d9f-x2x"},
		{name: "the flag wins", podNamespace: "kube-system", args: []string{"--leader-election-namespace=ops"}, file: nsFile, namespace: "ops", identity: host},
		{name: "in-cluster without $POD_NAMESPACE", file: nsFile, namespace: "modelcast", identity: host},
		{name: "in-cluster, no namespace file", file: filepath.Join(dir, "none"), identity: host},
		{name: "outside a cluster", identity: host},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("POD_NAMESPACE", tc.podNamespace)
			t.Setenv("POD_NAME", tc.podName)
			o := Options{Mode: driver.ModeController}
			fs := flag.NewFlagSet("controller", flag.ContinueOnError)
			o.AddFlags(fs)
			if err := fs.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			cfg, err := o.leaderElection(tc.file)
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Namespace != tc.namespace {
				t.Errorf("namespace %q, want %q", cfg.Namespace, tc.namespace)
			}
			id, suffix, ok := strings.Cut(cfg.Identity, "_")
			if !ok || id != tc.identity || len(suffix) != 8 {
				t.Errorf("identity %q, want %s_ and 8 hex digits", cfg.Identity, tc.identity)
			}
			if again, _ := o.leaderElection(tc.file); again.Identity == cfg.Identity {
				t.Errorf("two processes would both be %q", cfg.Identity)
			}
		})
	}
}

// TestAuthorizeMounts: --authorize-mounts reaches the driver, and needs no --kubeconfig in a
// pod (in-cluster), where the plugin reaches the API server by itself.
func TestAuthorizeMounts(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
	o := Options{Mode: driver.ModeNode}
	fs := flag.NewFlagSet("node", flag.ContinueOnError)
	o.AddFlags(fs)
	if err := fs.Parse([]string{"--node-id", "node-1", "--authorize-mounts"}); err != nil {
		t.Fatal(err)
	}
	if err := o.Validate(); err != nil {
		t.Errorf("in-cluster: Validate() = %v; want nil", err)
	}
	if !o.driverOptions().AuthorizeMounts {
		t.Error("--authorize-mounts does not reach the driver's options")
	}
	off := Options{Mode: driver.ModeNode}
	off.AddFlags(flag.NewFlagSet("node", flag.ContinueOnError))
	if off.AuthorizeMounts {
		t.Error("mount authorization is on by default")
	}
}

// TestDriverAgentMode: a driver in agent mode builds the node's code without a CSI endpoint: live and ready by its cache,
// and Serve refuses to run rather than listen on anything.
func TestDriverAgentMode(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts driver.Options
	}{
		{"ModeAgent", driver.Options{Mode: driver.ModeAgent}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := config.Load(nodeConfig(t, t.TempDir()), func(string) string { return "" })
			if err != nil {
				t.Fatal(err)
			}
			opts := tc.opts
			opts.NodeID, opts.NodeIP, opts.Config = "node-1", "127.0.0.1", cfg
			d, err := driver.New(opts)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			if d.Store() == nil || d.Chain() == nil {
				t.Fatalf("no cache or chain: the agent runs the node's code")
			}
			for _, path := range []string{"/healthz", "/readyz"} {
				rec := httptest.NewRecorder()
				d.HTTPHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
				if rec.Code != http.StatusOK {
					t.Errorf("%s: %d %q; want 200: an agent is judged by its cache", path, rec.Code, rec.Body)
				}
			}
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			if err := d.Serve(ctx); err == nil || !strings.Contains(err.Error(), "serves no CSI endpoint") {
				t.Errorf("Serve = %v; want a refusal", err)
			}
		})
	}

	for _, tc := range []struct {
		name string
		opts driver.Options
		want string
	}{
		{"without a node ID", driver.Options{Mode: driver.ModeAgent}, "node ID is required in agent mode"},
		{"with an endpoint", driver.Options{Mode: driver.ModeAgent, NodeID: "node-1", Endpoint: "unix:///csi/csi.sock"}, "serves no CSI endpoint"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.opts.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Validate() = %v; want an error saying %q", err, tc.want)
			}
		})
	}
}
