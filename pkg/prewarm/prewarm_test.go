package prewarm_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/record"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/modelcast/modelcast/pkg/apis/modelcast/v1alpha1"
	"github.com/modelcast/modelcast/pkg/cache"
	"github.com/modelcast/modelcast/pkg/ossclient"
	"github.com/modelcast/modelcast/pkg/prewarm"
)

func mc(name string, nodeNames []string, selector map[string]string) *v1alpha1.ModelCache {
	return &v1alpha1.ModelCache{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name},
		Spec:       v1alpha1.ModelCacheSpec{OSSPath: "oss://bucket/" + name + "/", NodeNames: nodeNames, NodeSelector: selector},
	}
}

func TestSelects(t *testing.T) {
	gpu := map[string]string{"gpu": "a100", "zone": "b"}
	for _, tc := range []struct {
		name     string
		names    []string
		selector map[string]string
		labels   map[string]string
		want     bool
	}{
		{"name listed", []string{"other", "node-1"}, nil, nil, true},
		{"name not listed", []string{"other"}, nil, gpu, false},
		{"selector matches", nil, map[string]string{"gpu": "a100"}, gpu, true},
		{"selector needs every label", nil, map[string]string{"gpu": "a100", "zone": "c"}, gpu, false},
		{"selector, node without labels", nil, map[string]string{"gpu": "a100"}, nil, false},
		{"both, only the name matches", []string{"node-1"}, map[string]string{"gpu": "h100"}, gpu, true},
		{"both, only the selector matches", []string{"other"}, map[string]string{"zone": "b"}, gpu, true},
		{"both, neither matches", []string{"other"}, map[string]string{"zone": "c"}, gpu, false},
		{"neither set", nil, nil, gpu, false},
		{"empty selector selects nothing", nil, map[string]string{}, gpu, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := prewarm.Selects(mc("m", tc.names, tc.selector), "node-1", tc.labels); got != tc.want {
				t.Errorf("Selects = %v, want %v", got, tc.want)
			}
		})
	}
	t.Run("label changes", func(t *testing.T) {
		m := mc("m", nil, map[string]string{"gpu": "a100"})
		labels := map[string]string{"gpu": "a100"}
		if !prewarm.Selects(m, "node-1", labels) {
			t.Fatal("labels match: want selected")
		}
		labels["gpu"] = "h100"
		if prewarm.Selects(m, "node-1", labels) {
			t.Fatal("label changed: want not selected")
		}
		delete(labels, "gpu")
		if prewarm.Selects(m, "node-1", labels) {
			t.Fatal("label removed: want not selected")
		}
	})
}

// fakeCache records pins and releases; pin decides each Pin's outcome.
type fakeCache struct {
	mu       sync.Mutex
	pins     map[string]string // holder → ossPath
	calls    []string          // "pin holder ossPath", "release holder"
	secrets  []*prewarm.Secret // each Pin's
	pin      func(ctx context.Context, spec v1alpha1.ModelCacheSpec, report func(cache.Progress)) (int64, error)
	attempts int
}

func (c *fakeCache) Pin(ctx context.Context, spec v1alpha1.ModelCacheSpec, secret *prewarm.Secret, holder string, report func(cache.Progress)) (cache.Meta, error) {
	c.mu.Lock()
	c.calls = append(c.calls, "pin "+holder+" "+spec.OSSPath)
	c.secrets = append(c.secrets, secret)
	c.attempts++
	pin := c.pin
	c.mu.Unlock()
	size := int64(100)
	var err error
	if pin != nil {
		size, err = pin(ctx, spec, report)
	}
	if err != nil {
		return cache.Meta{}, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.pins[holder] = spec.OSSPath
	return cache.Meta{Size: size, FromOSS: size, From: "OSS"}, nil
}

func (c *fakeCache) Release(holder string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls = append(c.calls, "release "+holder)
	delete(c.pins, holder)
	return nil
}

func (c *fakeCache) Pins() map[string]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]string{}
	for k, v := range c.pins {
		out[k] = v
	}
	return out
}

func (c *fakeCache) Calls() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.calls)
}

// fakeStatus records the entries written, by ModelCache name.
type fakeStatus struct {
	mu      sync.Mutex
	entries map[string][]v1alpha1.NodeStatus
	removed []string
}

func (s *fakeStatus) Apply(_ context.Context, namespace, name string, st v1alpha1.NodeStatus) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.entries[namespace+"/"+name] = append(s.entries[namespace+"/"+name], st)
	return nil
}

func (s *fakeStatus) Remove(_ context.Context, namespace, name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.removed = append(s.removed, namespace+"/"+name)
	return nil
}

func (s *fakeStatus) states(name string) []v1alpha1.NodeState {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []v1alpha1.NodeState
	for _, e := range s.entries["ns/"+name] {
		out = append(out, e.State)
	}
	return out
}

func (s *fakeStatus) last(name string) v1alpha1.NodeStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.entries["ns/"+name]
	if len(e) == 0 {
		return v1alpha1.NodeStatus{}
	}
	return e[len(e)-1]
}

func (s *fakeStatus) Removed() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.removed)
}

type env struct {
	kube     *fake.Clientset // the Secrets ModelCaches name
	cache    *fakeCache
	status   *fakeStatus
	recorder *record.FakeRecorder
	clock    *clocktesting.FakeClock
	r        *prewarm.Reconciler

	mu     sync.Mutex
	events []string // what the recorder received so far
}

func newEnv(t *testing.T, objs ...runtime.Object) *env {
	t.Helper()
	return newEnvWith(t, nil, objs...)
}

// newEnvWith is newEnv with mod applied to the reconciler's Config.
func newEnvWith(t *testing.T, mod func(*prewarm.Config), objs ...runtime.Object) *env {
	t.Helper()
	e := &env{kube: fake.NewClientset(objs...), cache: &fakeCache{pins: map[string]string{}}, status: &fakeStatus{entries: map[string][]v1alpha1.NodeStatus{}},
		// A buffer no test fills: the fake recorder blocks when it is full.
		recorder: record.NewFakeRecorder(1000), clock: clocktesting.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))}
	e.recorder.IncludeObject = true
	cfg := prewarm.Config{Node: "node-1", Kube: e.kube, Cache: e.cache, Status: e.status, Events: e.recorder, Clock: e.clock, RetryAfter: time.Minute}
	if mod != nil {
		mod(&cfg)
	}
	e.r = prewarm.NewReconciler(context.Background(), cfg)
	t.Cleanup(e.r.Stop)
	return e
}

// Events returns the Events posted so far ("Normal StagingModel message involvedObject{…}").
func (e *env) Events() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	for {
		select {
		case ev := <-e.recorder.Events:
			e.events = append(e.events, ev)
		default:
			return slices.Clone(e.events)
		}
	}
}

// eventsOf returns the "type reason message" of the Events posted so far whose reason is one of
// reasons (all when none), without the object.
func (e *env) eventsOf(reasons ...string) []string {
	var out []string
	for _, ev := range e.Events() {
		f := strings.SplitN(ev, " ", 3)
		if len(reasons) == 0 || slices.Contains(reasons, f[1]) {
			out = append(out, strings.TrimSuffix(ev, mcObject))
		}
	}
	return out
}

// mcObject is how the fake recorder prints a ModelCache's reference.
const mcObject = " involvedObject{kind=ModelCache,apiVersion=modelcast.io/v1alpha1}"

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond) // polling with a deadline
	}
}

func (e *env) waitState(t *testing.T, name string, want v1alpha1.NodeState) {
	t.Helper()
	waitFor(t, name+" "+string(want), func() bool { return e.status.last(name).State == want })
}

func TestReconcilePinsAndReportsReady(t *testing.T) {
	e := newEnv(t)
	e.r.Reconcile([]*v1alpha1.ModelCache{mc("a", []string{"node-1"}, nil)}, nil, false)
	e.waitState(t, "a", v1alpha1.NodeReady)
	if got, want := e.cache.Calls(), []string{"pin modelcache/ns/a oss://bucket/a/"}; !slices.Equal(got, want) {
		t.Errorf("calls = %q, want %q", got, want)
	}
	if got, want := e.status.states("a"), []v1alpha1.NodeState{v1alpha1.NodePending, v1alpha1.NodeReady}; !slices.Equal(got, want) {
		t.Errorf("states = %v, want %v", got, want)
	}
	last := e.status.last("a")
	if last.Node != "node-1" || last.Bytes != 100 || last.TotalBytes != 100 || last.LastUpdateTime == nil {
		t.Errorf("ready entry = %+v, want node-1 with 100 of 100 bytes and a time", last)
	}
	// A reconcile with the same ModelCache (its selection changed, its model not) pins nothing again.
	e.r.Reconcile([]*v1alpha1.ModelCache{mc("a", []string{"node-1", "node-2"}, nil)}, nil, false)
	if got := e.cache.Calls(); len(got) != 1 {
		t.Errorf("calls after an unchanged model = %q, want the one pin", got)
	}
	want := []string{
		"Normal StagingModel Staging oss://bucket/a/ on node node-1" + mcObject,
		"Normal ModelReady Model oss://bucket/a/ ready on node node-1: 100 B in 0s from OSS (peers 0 B, OSS 100 B)" + mcObject,
	}
	if got := e.Events(); !slices.Equal(got, want) {
		t.Errorf("events = %q, want %q", got, want)
	}
}

func TestReconcileReportsStagingProgress(t *testing.T) {
	e := newEnv(t)
	proceed := make(chan struct{})
	e.cache.pin = func(ctx context.Context, _ v1alpha1.ModelCacheSpec, report func(cache.Progress)) (int64, error) {
		report(cache.Progress{Done: 0, Total: 1000, From: "OSS (position 1 of 2, chain head)"})
		e.clock.Step(2 * time.Second)
		report(cache.Progress{Done: 400, Total: 1000, From: "OSS (position 1 of 2, chain head)"})
		<-proceed
		return 1000, nil
	}
	e.r.Reconcile([]*v1alpha1.ModelCache{mc("a", []string{"node-1"}, nil)}, nil, false)
	waitFor(t, "the second progress report", func() bool { return e.status.last("a").Bytes == 400 })
	got := e.status.last("a")
	want := v1alpha1.NodeStatus{Node: "node-1", State: v1alpha1.NodeStaging, Bytes: 400, TotalBytes: 1000, Rate: 200, Source: "OSS (position 1 of 2, chain head)"}
	got.LastUpdateTime = nil
	if got != want {
		t.Errorf("staging entry = %+v, want %+v", got, want)
	}
	close(proceed)
	e.waitState(t, "a", v1alpha1.NodeReady)
	wantEvents := []string{"Normal ModelReady Model oss://bucket/a/ ready on node node-1: 1.0 kB in 2s from OSS (peers 0 B, OSS 1.0 kB)"}
	if got := e.eventsOf(prewarm.EventReady); !slices.Equal(got, wantEvents) {
		t.Errorf("ready events = %q, want %q (the time since the job began)", got, wantEvents)
	}
}

// TestReconcileReleasesWhenUnselected: a ModelCache that stops selecting the node (its names,
// or the node's labels) or is deleted is released and this node's entry removed; the first
// two get a ModelReleased Event, a deleted one none (nobody reads Events of an object that is
// gone).
func TestReconcileReleasesWhenUnselected(t *testing.T) {
	e := newEnv(t)
	gpu := map[string]string{"gpu": "a100"}
	byLabel := mc("by-label", nil, gpu)
	e.r.Reconcile([]*v1alpha1.ModelCache{mc("a", []string{"node-1"}, nil), mc("b", []string{"node-1"}, nil), mc("c", []string{"node-1"}, nil), byLabel}, gpu, false)
	for _, name := range []string{"a", "b", "c", "by-label"} {
		e.waitState(t, name, v1alpha1.NodeReady)
	}
	// a names another node now, c is deleted, the node's label changed.
	e.r.Reconcile([]*v1alpha1.ModelCache{mc("a", []string{"node-2"}, nil), mc("b", []string{"node-1"}, nil), byLabel}, map[string]string{"gpu": "h100"}, false)
	pins := e.cache.Pins()
	for _, name := range []string{"a", "c", "by-label"} {
		if _, ok := pins["modelcache/ns/"+name]; ok {
			t.Errorf("%s is still pinned after it stopped selecting the node", name)
		}
	}
	if _, ok := pins["modelcache/ns/b"]; !ok {
		t.Error("b was released although it still selects the node")
	}
	if got, want := e.status.Removed(), []string{"ns/a", "ns/by-label", "ns/c"}; !slices.Equal(got, want) {
		t.Errorf("entries removed = %q, want %q", got, want)
	}
	want := []string{
		"Normal ModelReleased Released oss://bucket/a/ on node node-1: the ModelCache no longer selects the node",
		"Normal ModelReleased Released oss://bucket/by-label/ on node node-1: the ModelCache no longer selects the node",
	}
	if got := e.eventsOf(prewarm.EventReleased); !slices.Equal(got, want) {
		t.Errorf("released events = %q, want %q (none for the deleted c)", got, want)
	}
}

// TestReconcileRecreatedModelCache: a ModelCache deleted and created again under the same name
// between two reconciles (another UID) is another object: its job starts again and writes its
// entry, with its Events on the new object, and the pin of the same model is kept.
func TestReconcileRecreatedModelCache(t *testing.T) {
	kube := fake.NewClientset()
	b := record.NewBroadcaster()
	b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: kube.CoreV1().Events("")})
	t.Cleanup(b.Shutdown)
	e := newEnvWith(t, func(c *prewarm.Config) {
		c.Kube = kube
		c.Events = b.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "modelcast", Host: "node-1"})
	})
	first := mc("a", []string{"node-1"}, nil)
	first.UID = "uid-1"
	e.r.Reconcile([]*v1alpha1.ModelCache{first}, nil, false)
	e.waitState(t, "a", v1alpha1.NodeReady)
	again := mc("a", []string{"node-1"}, nil)
	again.UID = "uid-2"
	e.r.Reconcile([]*v1alpha1.ModelCache{again}, nil, false)
	waitFor(t, "the new object's entry", func() bool { return len(e.status.states("a")) == 4 })
	e.waitState(t, "a", v1alpha1.NodeReady)
	if got := e.cache.Calls(); slices.Contains(got, "release modelcache/ns/a") {
		t.Errorf("calls = %q: the pin of the same model was released", got)
	}
	// The Events reach the API server on the right object: one StagingModel and one ModelReady
	// on each UID, none released.
	var got []string
	waitFor(t, "four Events", func() bool {
		list, err := kube.CoreV1().Events("ns").List(t.Context(), metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		got = nil
		for _, ev := range list.Items {
			o := ev.InvolvedObject
			got = append(got, fmt.Sprintf("%s %s/%s %s/%s %s %s %s", o.Kind, o.APIVersion, o.Namespace, o.Name, o.UID, ev.Reason, ev.Type, ev.Source.Host))
		}
		return len(got) >= 4
	})
	slices.Sort(got)
	want := []string{
		"ModelCache modelcast.io/v1alpha1/ns a/uid-1 ModelReady Normal node-1",
		"ModelCache modelcast.io/v1alpha1/ns a/uid-1 StagingModel Normal node-1",
		"ModelCache modelcast.io/v1alpha1/ns a/uid-2 ModelReady Normal node-1",
		"ModelCache modelcast.io/v1alpha1/ns a/uid-2 StagingModel Normal node-1",
	}
	if !slices.Equal(got, want) {
		t.Errorf("events = %q, want %q", got, want)
	}
}

func TestReconcileRepinsAnotherModel(t *testing.T) {
	e := newEnv(t)
	e.r.Reconcile([]*v1alpha1.ModelCache{mc("a", []string{"node-1"}, nil)}, nil, false)
	e.waitState(t, "a", v1alpha1.NodeReady)
	changed := mc("a", []string{"node-1"}, nil)
	changed.Spec.OSSPath = "oss://bucket/other/"
	e.r.Reconcile([]*v1alpha1.ModelCache{changed}, nil, false)
	waitFor(t, "the new model pinned", func() bool { return e.cache.Pins()["modelcache/ns/a"] == "oss://bucket/other/" })
	want := []string{"pin modelcache/ns/a oss://bucket/a/", "release modelcache/ns/a", "pin modelcache/ns/a oss://bucket/other/"}
	if got := e.cache.Calls(); !slices.Equal(got, want) {
		t.Errorf("calls = %q, want %q", got, want)
	}
	if got := e.status.Removed(); len(got) != 0 {
		t.Errorf("entries removed = %q, want none (the ModelCache still selects the node)", got)
	}
	e.waitState(t, "a", v1alpha1.NodeReady)
	wantEvents := []string{
		"Normal StagingModel Staging oss://bucket/a/ on node node-1",
		"Normal ModelReleased Released oss://bucket/a/ on node node-1: the ModelCache names another model now",
		"Normal StagingModel Staging oss://bucket/other/ on node node-1",
	}
	if got := e.eventsOf(prewarm.EventStaging, prewarm.EventReleased); !slices.Equal(got, wantEvents) {
		t.Errorf("events = %q, want %q", got, wantEvents)
	}
}

func secret(name string, data map[string]string) *corev1.Secret {
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name}, Data: map[string][]byte{}}
	for k, v := range data {
		s.Data[k] = []byte(v)
	}
	return s
}

func withSecret(m *v1alpha1.ModelCache, name string) *v1alpha1.ModelCache {
	m.Spec.SecretRef = &v1alpha1.SecretReference{Name: name}
	return m
}

// secretReads returns the verbs of the watcher's requests on Secrets: only gets, as the chart
// grants.
func (e *env) secretReads() []string {
	var out []string
	for _, a := range e.kube.Actions() {
		if a.GetResource().Resource == "secrets" {
			out = append(out, a.GetVerb()+" "+a.GetNamespace()+"/"+a.(k8stesting.GetAction).GetName())
		}
	}
	return out
}

// TestReconcilePinsWithTheSecret: a ModelCache's secretRef is read (a get in its namespace,
// on each attempt) and its data passed to the cache as the credentials; without secretRef no
// Secret is read and the cache uses the node's own.
func TestReconcilePinsWithTheSecret(t *testing.T) {
	e := newEnv(t, secret("oss", map[string]string{"akId": "LTAI5tExampleKey", "akSecret": "example-secret"}))
	e.r.Reconcile([]*v1alpha1.ModelCache{withSecret(mc("a", []string{"node-1"}, nil), "oss"), mc("b", []string{"node-1"}, nil)}, nil, false)
	e.waitState(t, "a", v1alpha1.NodeReady)
	e.waitState(t, "b", v1alpha1.NodeReady)
	e.cache.mu.Lock()
	secrets := slices.Clone(e.cache.secrets)
	e.cache.mu.Unlock()
	var got []string
	for _, s := range secrets {
		if s == nil {
			got = append(got, "none")
			continue
		}
		got = append(got, fmt.Sprintf("%s/%s %v", s.Namespace, s.Name, s.Data))
	}
	slices.Sort(got)
	if want := []string{"none", "ns/oss map[akId:LTAI5tExampleKey akSecret:example-secret]"}; !slices.Equal(got, want) {
		t.Errorf("secrets passed to the cache = %q, want %q", got, want)
	}
	if got, want := e.secretReads(), []string{"get ns/oss"}; !slices.Equal(got, want) {
		t.Errorf("requests on Secrets = %q, want %q (a get, never a list or watch)", got, want)
	}
	if got := e.eventsOf(prewarm.EventStaging); !slices.Contains(got, "Normal StagingModel Staging oss://bucket/a/ on node node-1 with the credentials of secret ns/oss") {
		t.Errorf("staging events = %q, want one naming the secret", got)
	}
	// The data never print.
	for _, s := range secrets {
		if s != nil {
			if out := fmt.Sprintf("%v %+v %#v %s", s, s, s, s); strings.Contains(out, "example-secret") {
				t.Errorf("a Secret prints its data: %s", out)
			}
		}
	}
}

// TestReconcileSecretFailures: a missing Secret, one the node plugin may not read and one the
// cache finds invalid are Failed entries with their reasons and what to do; the node's own
// credentials are never used instead. A fixed Secret is read again at the next attempt.
func TestReconcileSecretFailures(t *testing.T) {
	t.Run("not found, then created", func(t *testing.T) {
		e := newEnv(t)
		e.r.Reconcile([]*v1alpha1.ModelCache{withSecret(mc("a", []string{"node-1"}, nil), "oss")}, nil, false)
		e.waitState(t, "a", v1alpha1.NodeFailed)
		got := e.status.last("a")
		if got.Reason != prewarm.ReasonSecretNotFound || !strings.Contains(got.Message, "secret ns/oss (spec.secretRef) does not exist") ||
			!strings.Contains(got.Message, "akId and akSecret") {
			t.Errorf("entry = %+v, want reason %s naming the secret and its keys", got, prewarm.ReasonSecretNotFound)
		}
		if calls := e.cache.Calls(); len(calls) != 0 {
			t.Errorf("calls = %q, want none: the node's own credentials must not be used instead", calls)
		}
		if _, err := e.kube.CoreV1().Secrets("ns").Create(t.Context(), secret("oss", map[string]string{"akId": "LTAI5tExampleKey", "akSecret": "s"}), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the retry timer", func() bool { return e.clock.HasWaiters() })
		e.clock.Step(time.Minute)
		e.waitState(t, "a", v1alpha1.NodeReady)
	})
	t.Run("forbidden", func(t *testing.T) {
		e := newEnv(t, secret("oss", map[string]string{"akId": "LTAI5tExampleKey", "akSecret": "s"}))
		// The API server's answer without a Role of modelCache.secretNamespaces in ns.
		e.kube.PrependReactor("get", "secrets", func(a k8stesting.Action) (bool, runtime.Object, error) {
			return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "secrets"}, a.(k8stesting.GetAction).GetName(),
				errors.New(`User "system:serviceaccount:kube-system:modelcast-node" cannot get resource "secrets" in API group "" in the namespace "ns"`))
		})
		e.r.Reconcile([]*v1alpha1.ModelCache{withSecret(mc("a", []string{"node-1"}, nil), "oss")}, nil, false)
		e.waitState(t, "a", v1alpha1.NodeFailed)
		got := e.status.last("a")
		for _, want := range []string{"the node plugin is not allowed to read Secrets in namespace ns", "modelCache.secretNamespaces", "cannot get resource \"secrets\""} {
			if !strings.Contains(got.Message, want) {
				t.Errorf("message %q lacks %q", got.Message, want)
			}
		}
		if got.Reason != prewarm.ReasonSecretForbidden {
			t.Errorf("reason = %q, want %q", got.Reason, prewarm.ReasonSecretForbidden)
		}
		if evs := e.eventsOf(prewarm.ReasonSecretForbidden); len(evs) != 1 || !strings.HasPrefix(evs[0], "Warning SecretForbidden Staging oss://bucket/a/ on node node-1 failed: the node plugin is not allowed") {
			t.Errorf("events = %q, want a Warning SecretForbidden saying why", evs)
		}
		if calls := e.cache.Calls(); len(calls) != 0 {
			t.Errorf("calls = %q, want none: the node's own credentials must not be used instead", calls)
		}
	})
	t.Run("invalid", func(t *testing.T) {
		e := newEnv(t, secret("oss", map[string]string{"accessKeyId": "LTAI5tExampleKey"}))
		e.cache.pin = func(context.Context, v1alpha1.ModelCacheSpec, func(cache.Progress)) (int64, error) {
			return 0, fmt.Errorf("%w: the ModelCache's secret ns/oss has unknown key(s) accessKeyId", prewarm.ErrInvalidSecret)
		}
		e.r.Reconcile([]*v1alpha1.ModelCache{withSecret(mc("a", []string{"node-1"}, nil), "oss")}, nil, false)
		e.waitState(t, "a", v1alpha1.NodeFailed)
		if got := e.status.last("a"); got.Reason != prewarm.ReasonInvalidSecret || !strings.Contains(got.Message, "accessKeyId") {
			t.Errorf("entry = %+v, want reason %s with the cache's message", got, prewarm.ReasonInvalidSecret)
		}
	})
}

func TestReconcileRetriesAFailure(t *testing.T) {
	e := newEnv(t)
	e.cache.pin = func(context.Context, v1alpha1.ModelCacheSpec, func(cache.Progress)) (int64, error) {
		e.cache.mu.Lock()
		n := e.cache.attempts
		e.cache.mu.Unlock()
		if n == 1 {
			return 0, fmt.Errorf("stage oss://bucket/a/: %w", cache.ErrNoSpace)
		}
		return 100, nil
	}
	e.r.Reconcile([]*v1alpha1.ModelCache{mc("a", []string{"node-1"}, nil)}, nil, false)
	e.waitState(t, "a", v1alpha1.NodeFailed)
	if got, want := e.status.last("a"), "stage oss://bucket/a/: not enough room for the model; retrying in 1m"; got.Reason != "NoSpace" || got.Message != want {
		t.Errorf("failed entry = %+v, want reason NoSpace with the message %q", got, want)
	}
	want := []string{"Warning NoSpace Staging oss://bucket/a/ on node node-1 failed: stage oss://bucket/a/: not enough room for the model; retrying in 1m"}
	if got := e.eventsOf("NoSpace"); !slices.Equal(got, want) {
		t.Errorf("failed events = %q, want %q", got, want)
	}
	waitFor(t, "the retry timer", func() bool { return e.clock.HasWaiters() })
	e.clock.Step(time.Minute)
	e.waitState(t, "a", v1alpha1.NodeReady)
}

// TestReconcileBacksOff: with the default waits, a staging that keeps failing is retried
// after 10 s, then twice as long after each failure up to 5 minutes, each wait in the Failed
// entry's message and the Warning Event; not a moment earlier (the injected clock). Once
// pinned the job ends, and the next job (a changed model) waits 10 s again.
func TestReconcileBacksOff(t *testing.T) {
	e := newEnvWith(t, func(c *prewarm.Config) { c.RetryAfter = 0 }) // the defaults
	e.cache.pin = func(_ context.Context, spec v1alpha1.ModelCacheSpec, _ func(cache.Progress)) (int64, error) {
		e.cache.mu.Lock()
		n := e.cache.attempts
		e.cache.mu.Unlock()
		if n <= 7 || n == 9 { // a's first seven attempts, and the first of the changed model
			return 0, fmt.Errorf("list %s: %w", spec.OSSPath, ossclient.ErrUnavailable)
		}
		return 100, nil
	}
	attempts := func() int {
		e.cache.mu.Lock()
		defer e.cache.mu.Unlock()
		return e.cache.attempts
	}
	waitFailed := func(n int) {
		t.Helper()
		waitFor(t, fmt.Sprintf("attempt %d failed and waiting", n), func() bool {
			return attempts() == n && e.status.last("a").State == v1alpha1.NodeFailed && e.clock.HasWaiters()
		})
	}
	e.r.Reconcile([]*v1alpha1.ModelCache{mc("a", []string{"node-1"}, nil)}, nil, false)
	waits := []struct {
		d    time.Duration
		text string
	}{{10 * time.Second, "10s"}, {20 * time.Second, "20s"}, {40 * time.Second, "40s"}, {80 * time.Second, "1m20s"},
		{160 * time.Second, "2m40s"}, {5 * time.Minute, "5m"}, {5 * time.Minute, "5m"}}
	for i, w := range waits {
		waitFailed(i + 1)
		want := "list oss://bucket/a/: " + ossclient.ErrUnavailable.Error() + "; retrying in " + w.text
		if got := e.status.last("a"); got.Reason != "Unavailable" || got.Message != want {
			t.Fatalf("attempt %d: entry %+v, want reason Unavailable and the message %q", i+1, got, want)
		}
		evs := e.eventsOf("Unavailable")
		if wantEv := "Warning Unavailable Staging oss://bucket/a/ on node node-1 failed: " + want; len(evs) != i+1 || evs[i] != wantEv {
			t.Fatalf("attempt %d: events %q, want the last %q", i+1, evs, wantEv)
		}
		e.clock.Step(w.d - time.Millisecond)
		if !e.clock.HasWaiters() || attempts() != i+1 {
			t.Fatalf("attempt %d: retried before %s", i+1, w.text)
		}
		e.clock.Step(time.Millisecond)
	}
	e.waitState(t, "a", v1alpha1.NodeReady)
	if n := attempts(); n != 8 {
		t.Errorf("%d attempts, want 8", n)
	}
	changed := mc("a", []string{"node-1"}, nil)
	changed.Spec.OSSPath = "oss://bucket/other/"
	e.r.Reconcile([]*v1alpha1.ModelCache{changed}, nil, false)
	waitFailed(9)
	if got := e.status.last("a").Message; !strings.HasSuffix(got, "; retrying in 10s") {
		t.Errorf("a new job's first failure: %q, want the first wait again (10s)", got)
	}
	e.clock.Step(10 * time.Second)
	e.waitState(t, "a", v1alpha1.NodeReady)
}

func TestReconcileReleasesUnknownPinsAtStart(t *testing.T) {
	e := newEnv(t)
	e.cache.pins = map[string]string{
		"modelcache/ns/a":          "oss://bucket/a/", // still selects the node: kept
		"modelcache/ns/gone":       "oss://bucket/gone/",
		"/var/lib/kubelet/pods/x/": "oss://bucket/pod/", // a pod's mount: not the watcher's
	}
	e.r.Reconcile([]*v1alpha1.ModelCache{mc("a", []string{"node-1"}, nil)}, nil, true)
	e.waitState(t, "a", v1alpha1.NodeReady)
	pins := e.cache.Pins()
	if _, ok := pins["modelcache/ns/gone"]; ok {
		t.Error("the pin of a ModelCache that no longer selects the node was kept")
	}
	if _, ok := pins["modelcache/ns/a"]; !ok {
		t.Error("the pin of a ModelCache that selects the node was released")
	}
	if _, ok := pins["/var/lib/kubelet/pods/x/"]; !ok {
		t.Error("a pod's holder was released")
	}
	if got, want := e.status.Removed(), []string{"ns/gone"}; !slices.Equal(got, want) {
		t.Errorf("entries removed = %q, want %q", got, want)
	}
	// A plugin's restart on every node is not news: a's pin, kept, gets no Event.
	if got := e.Events(); len(got) != 0 {
		t.Errorf("events = %q, want none for a pin kept across a restart", got)
	}
	// Its next job is this plugin's own.
	changed := mc("a", []string{"node-1"}, nil)
	changed.Spec.OSSPath = "oss://bucket/other/"
	e.r.Reconcile([]*v1alpha1.ModelCache{changed}, nil, false)
	e.waitState(t, "a", v1alpha1.NodeReady)
	waitFor(t, "the new model's ModelReady", func() bool { return len(e.eventsOf(prewarm.EventReady)) == 1 })
	if got := e.eventsOf(prewarm.EventStaging); len(got) != 1 {
		t.Errorf("staging events = %q, want the new model's", got)
	}
}

func TestStopEndsStagingsAndKeepsPins(t *testing.T) {
	e := newEnv(t)
	e.cache.pins["modelcache/ns/done"] = "oss://bucket/done/"
	started := make(chan struct{})
	e.cache.pin = func(ctx context.Context, spec v1alpha1.ModelCacheSpec, _ func(cache.Progress)) (int64, error) {
		if spec.OSSPath == "oss://bucket/done/" {
			return 100, nil
		}
		close(started)
		<-ctx.Done()
		return 0, fmt.Errorf("pin: %w", errors.Join(cache.ErrStaging, ctx.Err()))
	}
	e.r.Reconcile([]*v1alpha1.ModelCache{mc("slow", []string{"node-1"}, nil), mc("done", []string{"node-1"}, nil)}, nil, true)
	<-started
	e.waitState(t, "done", v1alpha1.NodeReady)
	e.r.Stop() // returns only once the slow staging's job has ended
	for _, c := range e.cache.Calls() {
		if c[:7] == "release" {
			t.Errorf("stopping released a pin: %q", c)
		}
	}
	if got := e.status.last("slow").State; got != v1alpha1.NodePending {
		t.Errorf("slow's last state = %q, want Pending (a stopped staging is not a failure)", got)
	}
	for _, ev := range e.Events() {
		if !strings.HasPrefix(ev, "Normal StagingModel ") && !strings.HasPrefix(ev, "Normal ModelReady ") {
			t.Errorf("stopping posted %q", ev)
		}
	}
}
