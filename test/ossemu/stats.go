package ossemu

import (
	"sync"
	"sync/atomic"
)

// Op classifies requests for Stats and for matching faults.
type Op string

// The operations the emulator distinguishes.
const (
	OpList  Op = "list"  // ListObjectsV2
	OpHead  Op = "head"  // HeadObject
	OpGet   Op = "get"   // GetObject
	OpPut   Op = "put"   // PutObject
	OpMeta  Op = "meta"  // GetObjectMeta
	OpOther Op = "other" // everything else (PutBucket, DeleteObject, unsupported requests)
)

// Stats are the emulator's counters since start or the last ResetStats.
type Stats struct {
	// BytesServed is the number of GetObject body bytes actually written.
	BytesServed int64
	// Requests counts requests by operation (admin requests excluded).
	Requests map[Op]int64
	// InFlightGets is the number of GetObject requests being served now;
	// MaxInFlightGets the largest value it has reached.
	InFlightGets, MaxInFlightGets int64
	// ErrorsByCode counts the OSS error codes answered, injected ones included.
	ErrorsByCode map[string]int64
	// FaultsHit counts requests that consumed an injected fault.
	FaultsHit int64
	// BytesByKey is BytesServed split by "bucket/key".
	BytesByKey map[string]int64
	// Connections counts the TCP connections accepted.
	Connections int64
}

// stats collects the counters. Hot paths touch atomics only.
type stats struct {
	bytesServed atomic.Int64
	inFlight    atomic.Int64
	maxInFlight atomic.Int64
	faultsHit   atomic.Int64
	connections atomic.Int64

	mu       sync.Mutex
	requests map[Op]int64
	errors   map[string]int64
	byKey    map[string]*atomic.Int64
}

func newStats() *stats {
	return &stats{
		requests: map[Op]int64{},
		errors:   map[string]int64{},
		byKey:    map[string]*atomic.Int64{},
	}
}

func (st *stats) countRequest(op Op) {
	st.mu.Lock()
	st.requests[op]++
	st.mu.Unlock()
}

func (st *stats) countError(code string) {
	st.mu.Lock()
	st.errors[code]++
	st.mu.Unlock()
}

// startGet marks a GetObject in flight; the returned function ends it.
func (st *stats) startGet() (done func()) {
	n := st.inFlight.Add(1)
	for {
		m := st.maxInFlight.Load()
		if n <= m || st.maxInFlight.CompareAndSwap(m, n) {
			break
		}
	}
	return func() { st.inFlight.Add(-1) }
}

// keyCounter returns the byte counter of "bucket/key".
func (st *stats) keyCounter(name string) *atomic.Int64 {
	st.mu.Lock()
	defer st.mu.Unlock()
	c, ok := st.byKey[name]
	if !ok {
		c = new(atomic.Int64)
		st.byKey[name] = c
	}
	return c
}

func (st *stats) snapshot() Stats {
	st.mu.Lock()
	defer st.mu.Unlock()
	out := Stats{
		BytesServed:     st.bytesServed.Load(),
		Requests:        make(map[Op]int64, len(st.requests)),
		InFlightGets:    st.inFlight.Load(),
		MaxInFlightGets: st.maxInFlight.Load(),
		ErrorsByCode:    make(map[string]int64, len(st.errors)),
		FaultsHit:       st.faultsHit.Load(),
		BytesByKey:      make(map[string]int64, len(st.byKey)),
		Connections:     st.connections.Load(),
	}
	for k, v := range st.requests {
		out.Requests[k] = v
	}
	for k, v := range st.errors {
		out.ErrorsByCode[k] = v
	}
	for k, c := range st.byKey {
		if n := c.Load(); n != 0 {
			out.BytesByKey[k] = n
		}
	}
	return out
}

// reset zeroes the counters. Counters held by streaming requests are zeroed
// in place, so their later bytes are still counted.
func (st *stats) reset() {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.bytesServed.Store(0)
	st.maxInFlight.Store(st.inFlight.Load())
	st.faultsHit.Store(0)
	st.connections.Store(0)
	clear(st.requests)
	clear(st.errors)
	for _, c := range st.byKey {
		c.Store(0)
	}
}
