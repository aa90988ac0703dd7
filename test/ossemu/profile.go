package ossemu

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// Names of the profiles ProfileByName knows.
const (
	// LoopbackProfile is the zero Profile: no first-byte latency and no
	// per-connection cap, the emulator answering at loopback speed.
	LoopbackProfile = "loopback"
	// ObjectStoreProfile makes the emulator behave like an object store
	// serving one client host; see ProfileByName.
	ObjectStoreProfile = "object-store"
)

// Profile is how fast the emulator answers, beside the total egress limit
// (Options.EgressBytesPerSec): a first-byte latency per request and a rate
// cap per TCP connection. The zero Profile is loopback speed.
//
// Its JSON form, used by the /-/profile admin endpoint, writes both values
// as strings: {"firstByteLatency":"20ms","connRate":"50MB"}, the latency as
// time.ParseDuration reads it and the rate as ParseRate reads it ("0" is
// unlimited). Decoding also takes numbers (nanoseconds, bytes per second)
// and leaves a field that is absent unchanged.
type Profile struct {
	// FirstByteLatency is how long every OSS request waits before its
	// response status and headers are written (admin requests excepted).
	FirstByteLatency time.Duration
	// ConnBytesPerSec caps the GetObject body bytes of each TCP
	// connection; 0 means unlimited.
	ConnBytesPerSec int64
}

// ProfileByName returns a named profile:
//
//   - "loopback": the zero Profile, the emulator's default.
//   - "object-store": FirstByteLatency 20 ms, ConnBytesPerSec 50 MB/s.
//
// The object-store values come from the product this project matches: OSS
// Connector reads Qwen2.5-72B, 135.437 GB, in 10.57 s with 16 × 16 = 256
// concurrent ranged GETs, so 12.8 GB/s ÷ 256 ≈ 50 MB/s per connection. Tens
// of milliseconds to the first byte is typical of an object store GET;
// 20 ms is what an external check of this project used. With this profile a
// client needs many connections in parallel to go fast, as against OSS, and
// the total egress limit still models a region with little bandwidth.
func ProfileByName(name string) (Profile, error) {
	switch strings.ToLower(strings.TrimSpace(name)) {
	case LoopbackProfile:
		return Profile{}, nil
	case ObjectStoreProfile:
		return Profile{FirstByteLatency: 20 * time.Millisecond, ConnBytesPerSec: 50e6}, nil
	}
	return Profile{}, fmt.Errorf("unknown profile %q (want %s or %s)", name, LoopbackProfile, ObjectStoreProfile)
}

// Validate reports a negative latency or rate.
func (p Profile) Validate() error {
	var errs []error
	if p.FirstByteLatency < 0 {
		errs = append(errs, fmt.Errorf("first-byte latency %v is negative", p.FirstByteLatency))
	}
	if p.ConnBytesPerSec < 0 {
		errs = append(errs, fmt.Errorf("connection rate %d is negative", p.ConnBytesPerSec))
	}
	return errors.Join(errs...)
}

// ApplyProfile sets the options' FirstByteLatency and ConnBytesPerSec.
func (o *Options) ApplyProfile(p Profile) {
	o.FirstByteLatency = p.FirstByteLatency
	o.ConnBytesPerSec = p.ConnBytesPerSec
}

// profileJSON is Profile's JSON form.
type profileJSON struct {
	FirstByteLatency json.RawMessage `json:"firstByteLatency,omitempty"`
	ConnRate         json.RawMessage `json:"connRate,omitempty"`
}

// MarshalJSON writes {"firstByteLatency":"20ms","connRate":"50MB"}.
func (p Profile) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		FirstByteLatency string `json:"firstByteLatency"`
		ConnRate         string `json:"connRate"`
	}{p.FirstByteLatency.String(), formatRate(p.ConnBytesPerSec)})
}

// UnmarshalJSON reads what MarshalJSON writes; numbers are accepted too
// (nanoseconds, bytes per second), absent fields are left unchanged, and
// unknown fields and negative values are errors.
func (p *Profile) UnmarshalJSON(b []byte) error {
	var in profileJSON
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		return fmt.Errorf("decode profile: %w", err)
	}
	q := *p
	if len(in.FirstByteLatency) > 0 {
		var text string
		if err := json.Unmarshal(in.FirstByteLatency, &text); err == nil {
			d, err := time.ParseDuration(text)
			if err != nil {
				return fmt.Errorf("firstByteLatency: %w", err)
			}
			q.FirstByteLatency = d
		} else if err := json.Unmarshal(in.FirstByteLatency, &q.FirstByteLatency); err != nil {
			return fmt.Errorf("firstByteLatency: %w", err)
		}
	}
	if len(in.ConnRate) > 0 {
		var text string
		if err := json.Unmarshal(in.ConnRate, &text); err == nil {
			bps, err := ParseRate(text)
			if err != nil {
				return fmt.Errorf("connRate: %w", err)
			}
			q.ConnBytesPerSec = bps
		} else if err := json.Unmarshal(in.ConnRate, &q.ConnBytesPerSec); err != nil {
			return fmt.Errorf("connRate: %w", err)
		}
	}
	if err := q.Validate(); err != nil {
		return err
	}
	*p = q
	return nil
}

// formatRate writes bytes per second so that ParseRate reads them back:
// "50MB", "1500kB", "123", "0".
func formatRate(bytesPerSec int64) string {
	for _, u := range []struct {
		mult int64
		name string
	}{{1e12, "TB"}, {1e9, "GB"}, {1e6, "MB"}, {1e3, "kB"}} {
		if bytesPerSec != 0 && bytesPerSec%u.mult == 0 {
			return strconv.FormatInt(bytesPerSec/u.mult, 10) + u.name
		}
	}
	return strconv.FormatInt(bytesPerSec, 10)
}

// profile holds a Server's current Profile; requests read it without locks.
type profile struct {
	firstByteLatency atomic.Int64 // nanoseconds
	connBytesPerSec  atomic.Int64
}

func (pr *profile) set(p Profile) {
	pr.firstByteLatency.Store(int64(max(0, p.FirstByteLatency)))
	pr.connBytesPerSec.Store(max(0, p.ConnBytesPerSec))
}

func (pr *profile) get() Profile {
	return Profile{
		FirstByteLatency: time.Duration(pr.firstByteLatency.Load()),
		ConnBytesPerSec:  pr.connBytesPerSec.Load(),
	}
}

// SetProfile changes the first-byte latency and the per-connection rate
// cap; negative values count as 0. A request waits the latency in
// force when it arrived; a new cap applies to open connections from their
// next body chunk.
func (s *Server) SetProfile(p Profile) { s.profile.set(p) }

// Profile returns the current first-byte latency and per-connection cap.
func (s *Server) Profile() Profile { return s.profile.get() }

// waitFirstByte waits d, or until ctx ends. Requests wait in parallel:
// nothing is locked.
func waitFirstByte(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// connLimiterKey is the context key of a connection's *connLimiter.
type connLimiterKey struct{}

// connContext gives every accepted connection a limiter of its own
// (http.Server.ConnContext), shared by the requests it carries.
func connContext(ctx context.Context, _ net.Conn) context.Context {
	return context.WithValue(ctx, connLimiterKey{}, new(connLimiter))
}

// connLimiter caps one connection's GetObject bodies. Its rate follows the
// server's profile: a limiter made for another rate is replaced.
type connLimiter struct {
	cur atomic.Pointer[connRate]
}

// connRate is a token bucket for one rate; immutable but for the bucket.
type connRate struct {
	bytesPerSec int64
	lim         *rate.Limiter
}

// connLimiterFor returns the connection's limiter, or a limiter of the
// request's own when the Server runs as a plain http.Handler inside an
// http.Server that is not its own (no ConnContext), the best it can do.
func connLimiterFor(ctx context.Context) *connLimiter {
	if cl, ok := ctx.Value(connLimiterKey{}).(*connLimiter); ok {
		return cl
	}
	return new(connLimiter)
}

// limiter returns a limiter for bytesPerSec and its burst, or nil when the
// rate is unlimited.
func (cl *connLimiter) limiter(bytesPerSec int64) (*rate.Limiter, int) {
	if bytesPerSec <= 0 {
		return nil, 0
	}
	for {
		cur := cl.cur.Load()
		if cur != nil && cur.bytesPerSec == bytesPerSec {
			return cur.lim, cur.lim.Burst()
		}
		next := &connRate{bytesPerSec: bytesPerSec, lim: rate.NewLimiter(rate.Limit(bytesPerSec), connBurst(bytesPerSec))}
		if cl.cur.CompareAndSwap(cur, next) {
			return next.lim, next.lim.Burst()
		}
	}
}

// connBurstWindow is how much time a connection's burst may cover, so that
// the cap holds over intervals this short; the burst is at most chunkSize.
const connBurstWindow = 10 * time.Millisecond

// connBurst is the token bucket size for a per-connection rate: 10 ms of
// traffic, between 1 KiB and chunkSize (at 50 MB/s, chunkSize: 5 ms).
func connBurst(bytesPerSec int64) int {
	b := bytesPerSec / int64(time.Second/connBurstWindow)
	return int(min(max(b, 1<<10), chunkSize))
}
