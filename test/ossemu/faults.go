package ossemu

import (
	"fmt"
	"strings"
	"sync"
	"time"
)

// FaultKind is what an injected fault does to the request it hits.
type FaultKind int

const (
	// FaultStatus answers Status (503 ServiceUnavailable when 0) with an
	// OSS error document instead of serving the request.
	FaultStatus FaultKind = iota
	// FaultSlowFirstByte sleeps Delay before serving the request normally.
	FaultSlowFirstByte
	// FaultTruncate sends the headers with the full Content-Length, writes
	// only After bytes of the body, then aborts the connection. GET only.
	FaultTruncate
	// FaultCorrupt flips one byte of the body at offset After (the middle of
	// the body when After is 0), leaving everything else intact. GET only.
	FaultCorrupt
	// FaultReset closes the connection without any response.
	FaultReset
	// FaultHang accepts the request and never answers: no status, no headers, until the
	// client goes away (or the server closes). An endpoint that stalls.
	FaultHang
	// FaultEndlessList answers a ListObjectsV2 page as usual but with IsTruncated true and,
	// as its NextContinuationToken, the token the request sent (none for a first page): a
	// listing that never advances, so a client following IsTruncated gets the same page
	// (an empty one, past the end or under an empty prefix) for as long as the fault lasts.
	// ListObjectsV2 only.
	FaultEndlessList
	// FaultIgnoreRange answers a ranged GetObject as a server that does not implement
	// Range does: 200 OK with the whole object and no Content-Range (a proxy in front of
	// OSS that drops the header answers so). Ranged GetObject requests only.
	FaultIgnoreRange
)

func (k FaultKind) String() string {
	switch k {
	case FaultStatus:
		return "status"
	case FaultSlowFirstByte:
		return "slow-first-byte"
	case FaultTruncate:
		return "truncate"
	case FaultCorrupt:
		return "corrupt"
	case FaultReset:
		return "reset"
	case FaultHang:
		return "hang"
	case FaultEndlessList:
		return "endless-list"
	case FaultIgnoreRange:
		return "ignore-range"
	}
	return fmt.Sprintf("FaultKind(%d)", int(k))
}

func (k FaultKind) valid() bool { return k >= FaultStatus && k <= FaultIgnoreRange }

// MarshalText encodes the kind by name (e.g. "truncate").
func (k FaultKind) MarshalText() ([]byte, error) {
	if !k.valid() {
		return nil, fmt.Errorf("unknown fault kind %d", int(k))
	}
	return []byte(k.String()), nil
}

// UnmarshalText accepts the names MarshalText produces.
func (k *FaultKind) UnmarshalText(b []byte) error {
	for c := FaultStatus; c.valid(); c++ {
		if strings.EqualFold(string(b), c.String()) {
			*k = c
			return nil
		}
	}
	return fmt.Errorf("unknown fault kind %q (want status, slow-first-byte, truncate, corrupt, reset, hang, endless-list or ignore-range)", b)
}

// Fault is a failure injected into matching requests. Empty match fields
// match anything. Faults are matched in injection order, once per request,
// after authentication (for GetObject, once the object and range are
// resolved; the request still serves the version current at its start); a
// matching request consumes one count of the first fault it matches.
// FaultTruncate and FaultCorrupt match only GetObject responses whose body
// is longer than After, so every hit truncates or corrupts a body;
// FaultEndlessList matches only ListObjectsV2 requests; FaultIgnoreRange
// only GetObject requests with a satisfiable Range.
type Fault struct {
	Op        Op     `json:"op,omitempty"`
	Bucket    string `json:"bucket,omitempty"`
	Key       string `json:"key,omitempty"`
	KeyPrefix string `json:"keyPrefix,omitempty"`

	Kind   FaultKind     `json:"kind"`
	Status int           `json:"status,omitempty"` // FaultStatus
	Delay  time.Duration `json:"delay,omitempty"`  // FaultSlowFirstByte
	After  int64         `json:"after,omitempty"`  // FaultTruncate, FaultCorrupt: body offset
	// Count is how many matching requests the fault hits: 0 means 1, -1 forever.
	Count int `json:"count,omitempty"`
}

// matches reports whether the fault hits a request; bodyLen is the length
// of the body the request would be sent, -1 for none; ranged tells a
// GetObject answered with part of the object.
func (f *Fault) matches(op Op, bucket, key string, bodyLen int64, ranged bool) bool {
	if (f.Kind == FaultTruncate || f.Kind == FaultCorrupt) && (op != OpGet || f.After >= bodyLen) {
		return false // body faults need a body that reaches offset After
	}
	if f.Kind == FaultEndlessList && op != OpList {
		return false
	}
	if f.Kind == FaultIgnoreRange && (op != OpGet || !ranged) {
		return false
	}
	return (f.Op == "" || f.Op == op) &&
		(f.Bucket == "" || f.Bucket == bucket) &&
		(f.Key == "" || f.Key == key) &&
		strings.HasPrefix(key, f.KeyPrefix)
}

// faults is the ordered list of injected faults.
type faults struct {
	mu   sync.Mutex
	list []*Fault
}

func (fs *faults) add(f Fault) {
	if f.Count == 0 {
		f.Count = 1
	}
	fs.mu.Lock()
	fs.list = append(fs.list, &f)
	fs.mu.Unlock()
}

func (fs *faults) clear() {
	fs.mu.Lock()
	fs.list = nil
	fs.mu.Unlock()
}

// take consumes one count of the first fault matching the request and
// returns a copy of it, or nil.
func (fs *faults) take(op Op, bucket, key string, bodyLen int64, ranged bool) *Fault {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	for i, f := range fs.list {
		if !f.matches(op, bucket, key, bodyLen, ranged) {
			continue
		}
		hit := *f
		if f.Count > 0 {
			f.Count--
			if f.Count == 0 {
				fs.list = append(fs.list[:i:i], fs.list[i+1:]...)
			}
		}
		return &hit
	}
	return nil
}
