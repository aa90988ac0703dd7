// Package metrics is modelcast's operator surface over HTTP: Prometheus metrics of the node
// (bytes by source, staging times, the cache, the chain, OSS errors, CSI calls) and of the
// controller, and the liveness and readiness endpoints.
//
// Every metric is registered on the Metrics' own registry (no global state). Labels only take
// bounded values: CSI method names and gRPC codes, OSS error codes, fixed reasons and events;
// never model paths, object keys, pods or nodes.
package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/modelcast/modelcast/pkg/broadcast"
	"github.com/modelcast/modelcast/pkg/cache"
)

const namespace = "modelcast"

// Metrics holds a registry and the metrics modelcast records as things happen; the state of
// the cache and the chain is read when Prometheus scrapes (WatchNode). Its methods are safe
// for concurrent use, and for a nil *Metrics (they do nothing).
type Metrics struct {
	reg       *prometheus.Registry
	calls     *prometheus.HistogramVec
	staging   *prometheus.HistogramVec
	ossErrors *prometheus.CounterVec
}

// New returns metrics on a fresh registry, with the Go runtime's and the process's own and
// modelcast_build_info{version}.
func New(version string) *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		calls: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "csi_operation_duration_seconds",
			Help:    "Duration of CSI calls by method and gRPC code (NodePublishVolume waits for staging until shortly before kubelet's deadline).",
			Buckets: []float64{0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 120},
		}, []string{"method", "code"}),
		staging: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "staging_duration_seconds",
			Help:    "Time to a ready model: from the first request for it on this node to its verified commit in the cache, by result (ok or error).",
			Buckets: []float64{1, 2, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1200, 1800, 3600},
		}, []string{"result"}),
		ossErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "oss_request_errors_total",
			Help: "Failed OSS requests by operation (list, head, get) and error code (OSS's, HTTP<status>, or Timeout, ConnectionReset, ShortBody, …); every failed ranged GET attempt counts, retried or not.",
		}, []string{"op", "code"}),
	}
	buildInfo := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace, Name: "build_info", Help: "Always 1, labelled with the plugin's version.",
		ConstLabels: prometheus.Labels{"version": version},
	})
	buildInfo.Set(1)
	m.reg.MustRegister(m.calls, m.staging, m.ossErrors, buildInfo,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Registry is where the metrics are registered (for a handler, or for tests to gather).
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// ObserveCall records one CSI call.
func (m *Metrics) ObserveCall(method, code string, d time.Duration) {
	if m == nil {
		return
	}
	m.calls.WithLabelValues(method, code).Observe(d.Seconds())
}

// ObserveStaging records a staging that ended (cache.Config.OnStaged).
func (m *Metrics) ObserveStaging(r cache.StageResult) {
	if m == nil {
		return
	}
	result := "ok"
	if r.Err != nil {
		result = "error"
	}
	m.staging.WithLabelValues(result).Observe(r.Seconds)
}

// OSSRequestError counts a failed OSS request (ossclient.Config.OnRequestError).
func (m *Metrics) OSSRequestError(op, code string) {
	if m == nil {
		return
	}
	m.ossErrors.WithLabelValues(op, code).Inc()
}

// WatchNode exports the state and counters of the node's cache and chain part, read at every
// scrape.
func (m *Metrics) WatchNode(store *cache.Store, node *broadcast.Broadcaster) {
	if m == nil {
		return
	}
	m.reg.MustRegister(&nodeCollector{store: store, node: node})
}
