package cache

import "sync/atomic"

// Stats is a snapshot of the store for monitoring. Counters only grow for the life of the
// Store; the rest is the state at the time of the call.
type Stats struct {
	// Models are the committed models; Referenced those held by at least one holder; Holders
	// the references (published volumes and pins); Pins the references that are pins
	// (Store.Pin); Stagings the stagings in flight.
	Models, Referenced, Holders, Pins, Stagings int
	// ModelBytes is the size of the committed models; StagingBytes the bytes written so far by
	// the stagings in flight.
	ModelBytes, StagingBytes int64
	// SoftCap is the configured soft cap (0: none); FSSize and FSFree describe the cache's file
	// system (the tmpfs).
	SoftCap, FSSize, FSFree int64

	// ReceivedOSS and ReceivedPeers count the bytes stagings received, by source.
	ReceivedOSS, ReceivedPeers int64
	// Staged and StageFailures count stagings that ended, by outcome.
	Staged, StageFailures int64
	// Releases counts references dropped (unpublished volumes, released pins).
	Releases int64
	// Expired counts models removed ExpireAfter after their last release; Evicted those removed
	// early to make room for another model.
	Expired, Evicted int64
}

// StageResult describes a staging that ended, for Config.OnStaged.
type StageResult struct {
	Key, Model string
	Size       int64
	Seconds    float64
	// FromOSS and FromPeers are the bytes received by source.
	FromOSS, FromPeers int64
	Err                error // nil: the model is committed
}

// counters are the Store's monotonic counts.
type counters struct {
	receivedOSS, receivedPeers atomic.Int64
	staged, stageFailures      atomic.Int64
	releases                   atomic.Int64
	expired, evicted           atomic.Int64
}

// raise sets v to n if n is larger and adds the difference to total: a staging's progress
// reports come from many workers and may arrive out of order, and counters must only grow.
func raise(v *atomic.Int64, n int64, total *atomic.Int64) {
	for {
		old := v.Load()
		if n <= old {
			return
		}
		if v.CompareAndSwap(old, n) {
			total.Add(n - old)
			return
		}
	}
}

// Stats returns a snapshot of the store.
func (s *Store) Stats() Stats {
	st := Stats{
		SoftCap:     s.cfg.SoftCap,
		ReceivedOSS: s.count.receivedOSS.Load(), ReceivedPeers: s.count.receivedPeers.Load(),
		Staged: s.count.staged.Load(), StageFailures: s.count.stageFailures.Load(),
		Releases: s.count.releases.Load(),
		Expired:  s.count.expired.Load(), Evicted: s.count.evicted.Load(),
	}
	if room, err := measureRoom(s.root, s.cfg.MemInfo); err == nil {
		st.FSSize, st.FSFree = room.FSTotal, room.FSFree
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	st.Models, st.Holders, st.Pins, st.Stagings = len(s.entries), len(s.holders), len(s.pins), len(s.stagings)
	for _, e := range s.entries {
		st.ModelBytes += e.meta.Size
		if len(e.holders) > 0 {
			st.Referenced++
		}
	}
	for _, g := range s.stagings {
		st.StagingBytes += g.bytes.Load()
	}
	return st
}
