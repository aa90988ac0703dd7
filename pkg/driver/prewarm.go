package driver

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"

	"github.com/modelcast/modelcast/pkg/apis/modelcast/v1alpha1"
	"github.com/modelcast/modelcast/pkg/cache"
	"github.com/modelcast/modelcast/pkg/ossclient"
	"github.com/modelcast/modelcast/pkg/prewarm"
)

// prewarmProgressEvery is how often a ModelCache's staging reports its progress (each report
// is one status write to the API server).
const prewarmProgressEvery = 5 * time.Second

// prewarmCache pins ModelCaches' models through the path a publish takes: the resolver (with
// the ModelCache's secret as a volume's nodePublishSecretRef, else the node's own
// credentials) and the cache, staged through the chain.
type prewarmCache struct{ d *Driver }

var _ prewarm.Cache = prewarmCache{}

func (c prewarmCache) Pin(ctx context.Context, spec v1alpha1.ModelCacheSpec, secret *prewarm.Secret, holder string, report func(cache.Progress)) (cache.Meta, error) {
	attrs := map[string]string{AttrOSSPath: spec.OSSPath}
	for k, v := range map[string]string{AttrEndpoint: spec.Endpoint, AttrRegion: spec.Region, AttrTenant: spec.Tenant} {
		if v != "" {
			attrs[k] = v
		}
	}
	if spec.Broadcast != nil {
		attrs[AttrBroadcast] = strconv.FormatBool(*spec.Broadcast)
	}
	vs, err := parseVolume(attrs)
	if err != nil {
		return cache.Meta{}, err
	}
	// A secret is checked here, with the keys a volume's secret takes, although the resolver
	// checks it too: its errors say which ModelCache's secret is wrong, and a secret without
	// credentials must not fall back to the node's own, as a volume's empty secret does.
	var secrets map[string]string
	var creds ossclient.Credentials
	whose := ""
	if secret != nil {
		whose = fmt.Sprintf("the ModelCache's %s (spec.secretRef)", secret)
		var ok bool
		creds, ok, err = credentialsIn(secret.Data, whose, prewarm.ErrInvalidSecret)
		if err != nil {
			return cache.Meta{}, err
		}
		if !ok {
			return cache.Meta{}, fmt.Errorf("%w: %s holds no credentials: it needs %s and %s (and %s for STS credentials)", prewarm.ErrInvalidSecret, whose,
				strings.Join(secretIDKeys, " or "), strings.Join(secretSecretKeys, " or "), strings.Join(secretTokenKeys, " or "))
		}
		secrets = secret.Data
	}
	refused := func(err error) error {
		if secret == nil {
			return err // the resolver says the node's credentials were refused
		}
		return refusedModelCacheSecret(whose, creds, err)
	}
	model, src, err := c.d.res.model(ctx, vs, secrets)
	if err != nil {
		return cache.Meta{}, refused(err)
	}
	err = c.pin(ctx, model, src, holder, report)
	if errors.Is(err, cache.ErrHolderConflict) {
		// The pin is of a version of the model OSS no longer has (pinned before a restart):
		// follow OSS.
		klog.InfoS("A ModelCache's model changed in OSS: pinning the new version", "holder", holder, "model", model.String())
		if err := c.d.store.Release(holder); err != nil {
			return cache.Meta{}, err
		}
		err = c.pin(ctx, model, src, holder, report)
	}
	if err != nil {
		return cache.Meta{}, refused(err)
	}
	meta, _ := c.d.store.Info(model.Key())
	return meta, nil
}

// pin pins model for holder, reporting the staging's progress every prewarmProgressEvery.
func (c prewarmCache) pin(ctx context.Context, model cache.Model, src cache.Source, holder string, report func(cache.Progress)) error {
	done := make(chan error, 1)
	go func() {
		_, err := c.d.store.Pin(ctx, model, src, holder)
		done <- err
	}()
	t := c.d.opts.Clock.NewTicker(prewarmProgressEvery)
	defer t.Stop()
	for {
		select {
		case err := <-done:
			return err
		case <-t.C():
			if p, ok := c.d.store.Staging(model.Key()); ok {
				report(p)
			}
		}
	}
}

func (c prewarmCache) Release(holder string) error { return c.d.store.Release(holder) }

func (c prewarmCache) Pins() map[string]string { return c.d.store.Pins() }

// modelCacheEvents posts the watcher's Events on ModelCaches through the driver's broadcaster
// (the pods' one, flushed when the driver closes), without OSS request ids: a failure that
// repeats aggregates into one Event with a count. The ids stay in the plugin's log.
type modelCacheEvents struct{ recorder record.EventRecorder }

func (e modelCacheEvents) Event(object runtime.Object, eventtype, reason, message string) {
	e.recorder.Event(object, eventtype, reason, withoutRequestIDs(message))
}

// watchesModelCaches says whether the node plugin runs the ModelCache watcher: on a node,
// with a Kubernetes client.
func (d *Driver) watchesModelCaches() bool {
	return d.store != nil && d.opts.Mode != ModeAgent && d.opts.KubeClient != nil && d.opts.DynamicClient != nil
}

// watchModelCaches runs the ModelCache watcher until ctx ends.
func (d *Driver) watchModelCaches(ctx context.Context) {
	err := prewarm.Run(ctx, prewarm.Config{Node: d.opts.NodeID, Kube: d.opts.KubeClient, Dynamic: d.opts.DynamicClient,
		Cache: prewarmCache{d: d}, Events: modelCacheEvents{d.events.recorder}, Clock: d.opts.Clock, ModelCaches: d.modelCaches})
	if err != nil {
		klog.ErrorS(err, "The ModelCache watcher stopped: ModelCaches are not pre-warmed on this node")
	}
}

// writesTotals says whether the controller writes ModelCaches' totals: in controller mode (or
// all), with a Kubernetes client.
func (d *Driver) writesTotals() bool {
	return (d.opts.Mode == ModeController || d.opts.Mode == ModeAll) && d.opts.KubeClient != nil && d.opts.DynamicClient != nil
}

// writeTotals runs the ModelCaches' totals writer until ctx ends, while this controller holds
// the totals' lease.
func (d *Driver) writeTotals(ctx context.Context) {
	err := d.underLease(ctx, func(ctx context.Context) error {
		return prewarm.RunTotals(ctx, d.opts.KubeClient, d.opts.DynamicClient, d.opts.Clock)
	})
	if err != nil {
		klog.ErrorS(err, "The ModelCache totals writer stopped: ModelCaches' totals are not written")
	}
}
