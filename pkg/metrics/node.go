package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/modelcast/modelcast/pkg/broadcast"
	"github.com/modelcast/modelcast/pkg/cache"
)

// nodeCollector turns the cache's and the chain's snapshots into metrics at scrape time: the
// numbers live where the work is done, not twice.
type nodeCollector struct {
	store *cache.Store
	node  *broadcast.Broadcaster
}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(prometheus.BuildFQName(namespace, "", name), help, labels, nil)
}

var (
	receivedBytes = desc("received_bytes_total", "Model bytes this node received, by source (oss, peer).", "source")
	servedBytes   = desc("served_bytes_total", "Model bytes this node sent to peers along broadcast chains.")
	peerStreams   = desc("peer_streams", "Streams this node is serving to peers now.")
	chainEvents   = desc("chain_events_total", "Broadcast chain events: join (a chain joined), relink (a predecessor replaced), takeover (became head midway), fallback (Redis out of reach: straight to OSS), stepback (a slow node moved to its chain's tail).", "event")
	corruptChunks = desc("peer_corrupt_chunks_total", "Chunks from peers that failed their CRC-64 and were fetched again.")
	authFailures  = desc("peer_auth_failures_total", "Peer data-plane requests refused for a missing or wrong tenant token.")
	coordination  = desc("broadcast_coordination", "1 for the node's state with Redis: ok, unreachable (models come from OSS until it answers), refused (wrong user, password or certificate: a configuration to fix; models come from OSS), off (broadcast off or no Redis).", "state")

	cacheModels     = desc("cache_models", "Models ready in the cache (staged, verified, committed).")
	cacheReferenced = desc("cache_models_referenced", "Models in the cache held by at least one volume.")
	cacheStagings   = desc("cache_stagings", "Stagings in flight.")
	cacheReferences = desc("cache_references", "Volumes (target paths) holding a cached model.")
	cacheBytes      = desc("cache_bytes", "Bytes in the cache by state: ready (committed models), staging (written so far by stagings in flight).", "state")
	cacheSoftCap    = desc("cache_soft_cap_bytes", "The cache's soft cap (prefetch.maxCacheAdviseGB); 0: none.")
	cacheFSSize     = desc("cache_filesystem_size_bytes", "Size of the cache's tmpfs.")
	cacheFSFree     = desc("cache_filesystem_free_bytes", "Free bytes of the cache's tmpfs.")
	cacheReleases   = desc("cache_releases_total", "References dropped (volumes unpublished).")
	cacheEvictions  = desc("cache_evictions_total", "Models removed from the cache: expired (unused for expireTimeSec) or space (making room for another model).", "reason")
)

func (c *nodeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{receivedBytes, servedBytes, peerStreams, chainEvents, corruptChunks, authFailures, coordination,
		cacheModels, cacheReferenced, cacheStagings, cacheReferences, cacheBytes, cacheSoftCap, cacheFSSize, cacheFSFree, cacheReleases, cacheEvictions} {
		ch <- d
	}
}

func (c *nodeCollector) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v), labels...)
	}
	s := c.store.Stats()
	counter(receivedBytes, s.ReceivedOSS, "oss")
	counter(receivedBytes, s.ReceivedPeers, "peer")
	gauge(cacheModels, int64(s.Models))
	gauge(cacheReferenced, int64(s.Referenced))
	gauge(cacheStagings, int64(s.Stagings))
	gauge(cacheReferences, int64(s.Holders))
	gauge(cacheBytes, s.ModelBytes, "ready")
	gauge(cacheBytes, s.StagingBytes, "staging")
	gauge(cacheSoftCap, s.SoftCap)
	gauge(cacheFSSize, s.FSSize)
	gauge(cacheFSFree, s.FSFree)
	counter(cacheReleases, s.Releases)
	counter(cacheEvictions, s.Expired, "expired")
	counter(cacheEvictions, s.Evicted, "space")

	n := c.node.Stats()
	counter(servedBytes, n.Served)
	gauge(peerStreams, n.Streams)
	counter(chainEvents, n.Joins, "join")
	counter(chainEvents, n.Relinks, "relink")
	counter(chainEvents, n.Takeovers, "takeover")
	counter(chainEvents, n.Fallbacks, "fallback")
	counter(chainEvents, n.StepBacks, "stepback")
	counter(corruptChunks, n.CorruptChunks)
	counter(authFailures, n.AuthFailures)
	for _, st := range broadcast.CoordinationStates {
		v := int64(0)
		if st == n.Coordination {
			v = 1
		}
		gauge(coordination, v, st)
	}
}
