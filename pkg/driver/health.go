package driver

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// HTTPHandler serves the plugin's metrics and health: /healthz is live when the CSI endpoint
// answers Probe; /readyz is ready when Probe also says ready (on a node: the cache is open on
// its tmpfs). A process that serves no CSI endpoint (the node agent) is judged by its cache.
func (d *Driver) HTTPHandler() http.Handler {
	return d.opts.Metrics.Handler(d.live, d.ready)
}

func (d *Driver) live(ctx context.Context) error {
	if !d.serving.Load() {
		return d.noEndpoint()
	}
	_, err := d.probe(ctx)
	return err
}

func (d *Driver) ready(ctx context.Context) error {
	if !d.serving.Load() {
		if err := d.noEndpoint(); err != nil {
			return err
		}
		return d.cacheCheck()
	}
	ready, err := d.probe(ctx)
	if err != nil {
		return err
	}
	if !ready {
		if err := d.cacheCheck(); err != nil {
			return err
		}
		return errors.New("CSI Probe answered not ready")
	}
	return nil
}

// noEndpoint is the liveness of a driver that is not serving CSI: fine for the node agent
// (which never serves it), a failure for a plugin whose endpoint is down.
func (d *Driver) noEndpoint() error {
	if d.opts.Mode == ModeAgent {
		return nil
	}
	return fmt.Errorf("the CSI endpoint %s is not serving", d.opts.Endpoint)
}

// cacheCheck is the cache's readiness (nil without a cache).
func (d *Driver) cacheCheck() error {
	if d.store == nil {
		return nil
	}
	return d.store.Check()
}

// probe calls Probe through the CSI endpoint itself, as kubelet's side would: it proves the
// socket is there and the server answers.
func (d *Driver) probe(ctx context.Context) (bool, error) {
	network, addr, err := parseEndpoint(d.opts.Endpoint)
	if err != nil {
		return false, err
	}
	target := "passthrough:///" + addr
	if network == "unix" {
		target = "unix://" + addr
	}
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return false, fmt.Errorf("CSI endpoint %s: %w", d.opts.Endpoint, err)
	}
	defer conn.Close()
	res, err := csi.NewIdentityClient(conn).Probe(ctx, &csi.ProbeRequest{})
	if err != nil {
		return false, fmt.Errorf("CSI Probe on %s: %w", d.opts.Endpoint, err)
	}
	return res.GetReady().GetValue(), nil
}
