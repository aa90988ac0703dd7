// Package registration registers the CSI node plugin with kubelet by itself, in place of the
// node-driver-registrar sidecar: it serves kubelet's plugin registration API
// (pluginregistration.v1) on a socket in kubelet's plugins_registry directory.
package registration

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"k8s.io/klog/v2"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// ErrRejected is what Registered reports when kubelet refused the plugin; the error carries
// kubelet's message.
var ErrRejected = errors.New("kubelet rejected the registration")

// supportedVersions are the CSI versions the plugin offers kubelet.
var supportedVersions = []string{"1.0.0"}

// Config says where to serve and what to tell kubelet.
type Config struct {
	// Dir is kubelet's plugins_registry directory as this process sees it (the host's
	// /var/lib/kubelet/plugins_registry, mounted at e.g. /registration in a pod).
	Dir string
	// DriverName is the CSI driver's name; the socket is <Dir>/<DriverName>-reg.sock.
	DriverName string
	// Endpoint is the CSI socket's absolute path as kubelet on the host sees it, e.g.
	// /var/lib/kubelet/plugins/<DriverName>/csi.sock.
	Endpoint string
}

// FieldError is a Config field that is missing or wrong.
type FieldError struct {
	Field   string // Dir, DriverName or Endpoint
	Problem string
}

func (e *FieldError) Error() string { return e.Field + " " + e.Problem }

// Validate checks that every field is set and the endpoint is an absolute path; each problem
// is a *FieldError.
func (c Config) Validate() error {
	var errs []error
	if c.Dir == "" {
		errs = append(errs, &FieldError{"Dir", "is empty"})
	}
	switch {
	case c.DriverName == "":
		errs = append(errs, &FieldError{"DriverName", "is empty"})
	case strings.ContainsRune(c.DriverName, '/'):
		errs = append(errs, &FieldError{"DriverName", fmt.Sprintf("%q: must not contain a slash", c.DriverName)})
	}
	switch {
	case c.Endpoint == "":
		errs = append(errs, &FieldError{"Endpoint", "is empty: want the CSI socket's absolute path on the host"})
	case !filepath.IsAbs(c.Endpoint):
		errs = append(errs, &FieldError{"Endpoint", fmt.Sprintf("%q: want the CSI socket's absolute path on the host", c.Endpoint)})
	}
	return errors.Join(errs...)
}

// SocketPath is where the registration service listens.
func (c Config) SocketPath() string {
	return filepath.Join(c.Dir, c.DriverName+"-reg.sock")
}

// Registrar serves kubelet's registration API until the context given to Serve ends.
type Registrar struct {
	registerapi.UnimplementedRegistrationServer

	cfg      Config
	path     string
	done     chan struct{}
	rejected chan struct{} // closed at kubelet's first rejection

	mu        sync.Mutex
	notified  bool
	err       error // kubelet's last rejection (nil once it accepted)
	rejection error // kubelet's first rejection
}

// Serve listens on cfg.SocketPath() (creating the directory, replacing a stale socket) and
// answers kubelet until ctx ends; then it stops (letting calls in flight answer, for a few
// seconds at most) and removes its socket, and Done is closed.
func Serve(ctx context.Context, cfg Config) (*Registrar, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	r := &Registrar{cfg: cfg, path: cfg.SocketPath(), done: make(chan struct{}), rejected: make(chan struct{})}
	ln, err := listen(r.path)
	if err != nil {
		return nil, err
	}
	server := grpc.NewServer()
	registerapi.RegisterRegistrationServer(server, r)
	klog.InfoS("Serving kubelet plugin registration", "socket", r.path, "driver", cfg.DriverName, "endpoint", cfg.Endpoint)
	served := make(chan error, 1)
	go func() { served <- server.Serve(ln) }()
	go func() {
		defer close(r.done)
		select {
		case <-ctx.Done():
			// Gracefully: the owner may stop the registrar as soon as kubelet's rejection
			// arrives, and kubelet should still get its answer.
			stopped := make(chan struct{})
			go func() { server.GracefulStop(); close(stopped) }()
			t := time.NewTimer(stopGrace)
			select {
			case <-stopped:
			case <-t.C:
				server.Stop()
				<-stopped
			}
			t.Stop()
			<-served
		case err := <-served:
			server.Stop() // close the connections left
			klog.ErrorS(err, "Kubelet plugin registration stopped serving", "socket", r.path)
		}
		if err := os.Remove(r.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			klog.ErrorS(err, "Cannot remove the registration socket", "socket", r.path)
		}
	}()
	return r, nil
}

// stopGrace bounds how long a stopping registrar lets calls in flight finish.
const stopGrace = 5 * time.Second

func listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("registration dir: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale registration socket %s: %w", path, err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on registration socket: %w", err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		_ = ln.Close()
		return nil, fmt.Errorf("registration socket permissions: %w", err)
	}
	return ln, nil
}

// SocketPath is the socket the registrar listens on.
func (r *Registrar) SocketPath() string { return r.path }

// Done is closed once the registrar has stopped serving and removed its socket.
func (r *Registrar) Done() <-chan struct{} { return r.done }

// Rejected is closed when kubelet first reports that it did not register the plugin
// (NotifyRegistrationStatus with PluginRegistered false); Rejection then says why.
func (r *Registrar) Rejected() <-chan struct{} { return r.rejected }

// Rejection is kubelet's first rejection, an error wrapping ErrRejected with kubelet's message;
// nil while kubelet has rejected nothing.
func (r *Registrar) Rejection() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.rejection
}

// Registered reports kubelet's last word on the registration: (true, nil) once it accepted
// the plugin, (false, an error wrapping ErrRejected) when it refused it, and (false, nil)
// while it has not said.
func (r *Registrar) Registered() (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.notified && r.err == nil, r.err
}

// GetInfo tells kubelet which CSI driver this is and where its socket is.
func (r *Registrar) GetInfo(context.Context, *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	klog.V(4).InfoS("Kubelet asked for the plugin's info", "driver", r.cfg.DriverName, "endpoint", r.cfg.Endpoint)
	return &registerapi.PluginInfo{
		Type:              registerapi.CSIPlugin,
		Name:              r.cfg.DriverName,
		Endpoint:          r.cfg.Endpoint,
		SupportedVersions: supportedVersions,
	}, nil
}

// NotifyRegistrationStatus records whether kubelet accepted the plugin.
func (r *Registrar) NotifyRegistrationStatus(_ context.Context, st *registerapi.RegistrationStatus) (*registerapi.RegistrationStatusResponse, error) {
	var err error
	if !st.GetPluginRegistered() {
		err = fmt.Errorf("%w: %s", ErrRejected, st.GetError())
		klog.ErrorS(err, "Not registered with kubelet", "driver", r.cfg.DriverName, "endpoint", r.cfg.Endpoint)
	} else {
		klog.InfoS("Registered with kubelet", "driver", r.cfg.DriverName, "endpoint", r.cfg.Endpoint)
	}
	r.mu.Lock()
	r.notified, r.err = true, err
	if err != nil && r.rejection == nil {
		r.rejection = err
		close(r.rejected)
	}
	r.mu.Unlock()
	return &registerapi.RegistrationStatusResponse{}, nil
}
