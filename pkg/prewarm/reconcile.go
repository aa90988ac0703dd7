// Package prewarm is the node's ModelCache watcher: it pins, on this node, the models of the
// ModelCaches that select it, releases them when they stop selecting it, and writes this
// node's entry of their status.
package prewarm

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/modelcast/modelcast/pkg/apis/modelcast/v1alpha1"
	"github.com/modelcast/modelcast/pkg/cache"
	"github.com/modelcast/modelcast/pkg/ossclient"
)

// HolderPrefix starts the cache holder of every ModelCache's pin: modelcache/<namespace>/<name>.
const HolderPrefix = "modelcache/"

// Holder is the cache holder of the ModelCache namespace/name's pin.
func Holder(namespace, name string) string { return HolderPrefix + namespace + "/" + name }

// Reasons of a Failed entry for a ModelCache's secret (ReasonFor).
const (
	ReasonSecretNotFound  = "SecretNotFound"
	ReasonSecretForbidden = "SecretForbidden"
	ReasonInvalidSecret   = "InvalidSecret"
)

// Cache is what the watcher asks of the node: the model of a ModelCache pinned for holder
// through the path a publish takes (resolved, staged through the chain), and released.
type Cache interface {
	// Pin resolves spec's model with the credentials in secret (spec.secretRef's Secret, as
	// a volume's nodePublishSecretRef is used; keys that are not credentials are an error
	// wrapping ErrInvalidSecret) or, when secret is nil, the node's own, and pins it for
	// holder, calling report with the staging's progress now and then meanwhile; once pinned
	// it returns the model's cache entry (its size, when and from where it was staged).
	Pin(ctx context.Context, spec v1alpha1.ModelCacheSpec, secret *Secret, holder string, report func(cache.Progress)) (cache.Meta, error)
	Release(holder string) error
	Pins() map[string]string
}

// StatusWriter writes this node's entry of a ModelCache's status.nodes (and nothing else).
type StatusWriter interface {
	Apply(ctx context.Context, namespace, name string, st v1alpha1.NodeStatus) error
	// Remove drops this node's entry; a ModelCache that no longer exists is not an error.
	Remove(ctx context.Context, namespace, name string) error
}

// Selects says whether mc selects the node: named in nodeNames, or its labels match a
// non-empty nodeSelector.
func Selects(mc *v1alpha1.ModelCache, node string, nodeLabels map[string]string) bool {
	if slices.Contains(mc.Spec.NodeNames, node) {
		return true
	}
	if len(mc.Spec.NodeSelector) == 0 {
		return false
	}
	return labels.SelectorFromSet(mc.Spec.NodeSelector).Matches(labels.Set(nodeLabels))
}

// ReasonFor is the Failed reason of a staging error.
func ReasonFor(err error) string {
	switch {
	case errors.Is(err, ErrSecretNotFound):
		return ReasonSecretNotFound
	case errors.Is(err, ErrSecretForbidden):
		return ReasonSecretForbidden
	case errors.Is(err, ErrInvalidSecret):
		return ReasonInvalidSecret
	case errors.Is(err, cache.ErrNoSpace):
		return "NoSpace"
	case errors.Is(err, ossclient.ErrNotFound):
		return "NotFound"
	case errors.Is(err, ossclient.ErrAccessDenied):
		return "AccessDenied"
	case errors.Is(err, ossclient.ErrInvalidConfig), errors.Is(err, ossclient.ErrInvalidURI):
		return "InvalidConfig"
	case errors.Is(err, ossclient.ErrTooLarge):
		return "TooLarge"
	case errors.Is(err, ossclient.ErrUnavailable):
		return "Unavailable"
	}
	return "StagingFailed"
}

// model is the part of a spec that names the model (not where it goes): a change of it is
// another model, released and pinned again.
func model(spec v1alpha1.ModelCacheSpec) v1alpha1.ModelCacheSpec {
	m := *spec.DeepCopy()
	m.NodeSelector, m.NodeNames = nil, nil
	return m
}

// Reconciler keeps one job per ModelCache that selects the node: a goroutine that pins its
// model and writes its status, retrying after a failure with a capped exponential backoff,
// and exits once the model is pinned.
type Reconciler struct {
	node   string
	kube   kubernetes.Interface // the Secrets ModelCaches name
	cache  Cache
	status StatusWriter
	events Events
	clock  clock.WithTicker
	// retry is the wait after a job's first failure, doubled after each next up to maxRetry.
	retry, maxRetry time.Duration

	ctx    context.Context // the jobs run under it
	cancel context.CancelFunc
	wg     sync.WaitGroup
	jobs   map[string]*job // by holder; only the reconcile loop touches it
	// inherited are the holders pinned before the first Reconcile (by a plugin that ran
	// before this one), whose first job here posts Events only if it stages the model again:
	// a restart of the plugin on every node is not news. Only the reconcile loop touches it.
	inherited map[string]bool
}

type job struct {
	inherited       bool // the holder's pin was there before the plugin started
	namespace, name string
	uid             types.UID
	ref             *corev1.ObjectReference // the ModelCache, for its Events
	model           v1alpha1.ModelCacheSpec
	cancel          context.CancelFunc
	done            chan struct{}
}

// NewReconciler returns a reconciler for cfg.Node whose jobs run under ctx (with its values,
// not its cancellation: Stop ends them). It uses cfg's Kube (for the Secrets ModelCaches
// name), Cache, Status (required here: Run defaults it), Events (none when nil), Clock,
// RetryAfter and MaxRetryAfter.
func NewReconciler(ctx context.Context, cfg Config) *Reconciler {
	cfg.defaults()
	if cfg.Events == nil {
		cfg.Events = noEvents{}
	}
	jctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	return &Reconciler{node: cfg.Node, kube: cfg.Kube, cache: cfg.Cache, status: cfg.Status, events: cfg.Events, clock: cfg.Clock,
		retry: cfg.RetryAfter, maxRetry: cfg.MaxRetryAfter, ctx: jctx, cancel: cancel, jobs: map[string]*job{}}
}

// Reconcile makes the jobs and pins match the ModelCaches that exist (caches) and select the
// node (its labels are nodeLabels). With releaseUnknown (after the first sync) it also
// releases the cache's ModelCache pins that no selecting ModelCache claims: those changed or
// deleted while the plugin was down.
func (r *Reconciler) Reconcile(caches []*v1alpha1.ModelCache, nodeLabels map[string]string, releaseUnknown bool) {
	if r.inherited == nil {
		r.inherited = map[string]bool{}
		for holder := range r.cache.Pins() {
			r.inherited[holder] = strings.HasPrefix(holder, HolderPrefix)
		}
	}
	exists := map[string]*v1alpha1.ModelCache{}
	want := map[string]*v1alpha1.ModelCache{}
	for _, mc := range caches {
		holder := Holder(mc.Namespace, mc.Name)
		exists[holder] = mc
		if Selects(mc, r.node, nodeLabels) {
			want[holder] = mc
		}
	}
	for _, holder := range slices.Sorted(maps.Keys(r.jobs)) {
		j := r.jobs[holder]
		mc, selected := want[holder]
		sameModel := selected && equalModel(j.model, model(mc.Spec))
		if sameModel && mc.UID == j.uid {
			continue
		}
		j.cancel()
		<-j.done
		delete(r.jobs, holder)
		switch now := exists[holder]; {
		case now == nil || now.UID != j.uid:
			// Deleted (or deleted and created again): no Event, nobody would read it on an
			// object that is gone. A new one of the same model keeps the pin for its own job.
			if !sameModel {
				r.release(holder)
			}
			if !selected {
				r.removeEntry(j.namespace, j.name)
			}
		case selected:
			r.release(holder)
			r.event(j.ref, false, EventReleased, fmt.Sprintf("Released %s on node %s: the ModelCache names another model now", j.model.OSSPath, r.node))
		default:
			r.release(holder)
			r.removeEntry(j.namespace, j.name)
			r.event(j.ref, false, EventReleased, fmt.Sprintf("Released %s on node %s: the ModelCache no longer selects the node", j.model.OSSPath, r.node))
		}
	}
	if releaseUnknown {
		for _, holder := range slices.Sorted(maps.Keys(r.cache.Pins())) {
			if _, ok := want[holder]; ok || !strings.HasPrefix(holder, HolderPrefix) {
				continue
			}
			ns, name, _ := strings.Cut(strings.TrimPrefix(holder, HolderPrefix), "/")
			r.release(holder)
			r.removeEntry(ns, name)
		}
	}
	for _, holder := range slices.Sorted(maps.Keys(want)) {
		if r.jobs[holder] != nil {
			continue
		}
		mc := want[holder]
		jctx, cancel := context.WithCancel(r.ctx)
		j := &job{inherited: r.inherited[holder], namespace: mc.Namespace, name: mc.Name, uid: mc.UID, model: model(mc.Spec), cancel: cancel, done: make(chan struct{}),
			ref: &corev1.ObjectReference{Kind: "ModelCache", APIVersion: v1alpha1.GroupVersion.String(), Namespace: mc.Namespace, Name: mc.Name, UID: mc.UID}}
		r.jobs[holder] = j
		delete(r.inherited, holder) // its next job is this plugin's own
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			defer close(j.done)
			r.run(jctx, holder, j, *mc.Spec.DeepCopy())
		}()
	}
}

// release drops holder's pin.
func (r *Reconciler) release(holder string) {
	if err := r.cache.Release(holder); err != nil {
		klog.ErrorS(err, "Could not release a ModelCache's pin", "holder", holder)
	} else {
		klog.V(2).InfoS("Released a ModelCache's pin", "holder", holder)
	}
}

// removeEntry drops this node's entry of a ModelCache that no longer selects it.
func (r *Reconciler) removeEntry(namespace, name string) {
	ctx, cancel := context.WithTimeout(r.ctx, 30*time.Second)
	defer cancel()
	if err := r.status.Remove(ctx, namespace, name); err != nil {
		klog.ErrorS(err, "Could not remove the node's status entry", "modelCache", klog.KRef(namespace, name))
	}
}

// Stop ends the jobs and waits for them. Pins stay: a restarted plugin keeps them.
func (r *Reconciler) Stop() {
	r.cancel()
	r.wg.Wait()
}

func (r *Reconciler) run(ctx context.Context, holder string, j *job, spec v1alpha1.ModelCacheSpec) {
	ref := klog.KRef(j.namespace, j.name)
	write := func(st v1alpha1.NodeStatus) {
		st.Node = r.node
		now := metav1.NewTime(r.clock.Now())
		st.LastUpdateTime = &now
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := r.status.Apply(wctx, j.namespace, j.name, st); err != nil && ctx.Err() == nil {
			klog.ErrorS(err, "Could not write the node's status entry", "modelCache", ref, "state", st.State)
		}
	}
	began := r.clock.Now()
	staging := fmt.Sprintf("Staging %s on node %s", spec.OSSPath, r.node)
	if spec.SecretRef != nil {
		staging += fmt.Sprintf(" with the credentials of secret %s/%s", j.namespace, spec.SecretRef.Name)
	}
	if !j.inherited {
		r.event(j.ref, false, EventStaging, staging)
	}
	wait := r.retry
	for {
		write(v1alpha1.NodeStatus{State: v1alpha1.NodePending})
		var last cache.Progress
		var lastAt time.Time
		meta, err := r.pin(ctx, holder, j, spec, func(p cache.Progress) {
			now := r.clock.Now()
			var rate int64
			if !lastAt.IsZero() && now.After(lastAt) && p.Done >= last.Done {
				rate = int64(float64(p.Done-last.Done) / now.Sub(lastAt).Seconds())
			}
			last, lastAt = p, now
			write(v1alpha1.NodeStatus{State: v1alpha1.NodeStaging, Bytes: p.Done, TotalBytes: p.Total, Rate: rate, Source: p.From})
		})
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			klog.V(2).InfoS("Pinned a ModelCache's model", "modelCache", ref, "model", spec.OSSPath, "bytes", meta.Size)
			write(v1alpha1.NodeStatus{State: v1alpha1.NodeReady, Bytes: meta.Size, TotalBytes: meta.Size})
			if !j.inherited || meta.StagedAt.After(began) {
				r.event(j.ref, false, EventReady, readyMessage(spec.OSSPath, r.node, meta, began, r.clock.Now()))
			}
			return
		}
		reason := ReasonFor(err)
		msg := fmt.Sprintf("%v; retrying in %s", err, shortDuration(wait))
		klog.ErrorS(err, "Could not stage a ModelCache's model; trying again later", "modelCache", ref, "model", spec.OSSPath, "reason", reason, "retryAfter", wait)
		write(v1alpha1.NodeStatus{State: v1alpha1.NodeFailed, Reason: reason, Message: msg})
		r.event(j.ref, true, reason, fmt.Sprintf("Staging %s on node %s failed: %s", spec.OSSPath, r.node, msg))
		t := r.clock.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C():
		}
		// Capped exponential backoff: a failure that lasts (a missing Secret, a bucket's
		// policy) costs the API server and OSS little, one that passes is retried soon.
		wait = min(2*wait, r.maxRetry)
	}
}

// pin is one staging attempt: the ModelCache's secret, read again each time (it may have
// been created, fixed or rotated since), then the model pinned with it. Without secretRef the
// node's own credentials are used; with one, never: its failure is the attempt's.
func (r *Reconciler) pin(ctx context.Context, holder string, j *job, spec v1alpha1.ModelCacheSpec, report func(cache.Progress)) (cache.Meta, error) {
	var secret *Secret
	if spec.SecretRef != nil {
		var err error
		if secret, err = readSecret(ctx, r.kube, j.namespace, spec.SecretRef.Name); err != nil {
			return cache.Meta{}, err
		}
	}
	return r.cache.Pin(ctx, spec, secret, holder, report)
}

func equalModel(a, b v1alpha1.ModelCacheSpec) bool {
	return a.OSSPath == b.OSSPath && a.Endpoint == b.Endpoint && a.Region == b.Region && a.Tenant == b.Tenant &&
		ptrEq(a.Broadcast, b.Broadcast) && ptrEq(a.SecretRef, b.SecretRef)
}

func ptrEq[T comparable](a, b *T) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}
