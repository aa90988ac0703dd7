package ossemu

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/time/rate"
	"k8s.io/klog/v2"
)

// Credential is an access key the emulator accepts.
type Credential struct {
	AccessKeyID, AccessKeySecret string
	// SecurityToken, when set, must be sent in x-oss-security-token (STS).
	SecurityToken string
}

// Options configure a Server.
type Options struct {
	// Region, when set, is the only region V4 signatures may be scoped to.
	Region string
	// Credentials are the accepted access keys; none disables authentication.
	Credentials []Credential
	// EgressBytesPerSec limits GetObject body bytes across all connections;
	// 0 means unlimited.
	EgressBytesPerSec int64
	// FirstByteLatency is how long every OSS request (not the admin
	// endpoints) waits before its response status and headers are written;
	// the wait ends early when the client goes away. Requests wait in
	// parallel. See Profile and ProfileByName.
	FirstByteLatency time.Duration
	// ConnBytesPerSec caps the GetObject body bytes of each TCP connection,
	// shared by the keep-alive requests it carries, beside the total
	// EgressBytesPerSec; 0 means unlimited.
	ConnBytesPerSec int64
	// Admin serves the /-/ admin endpoints (stats, faults, egress, profile).
	Admin bool
}

// chunkSize is the unit of body writes and the egress token bucket's burst.
const chunkSize = 256 << 10

// Server is an OSS emulator. Its methods are safe for concurrent use.
type Server struct {
	opts     Options
	creds    map[string]Credential
	store    *store
	stats    *stats
	faults   faults
	limiter  *rate.Limiter
	profile  profile
	http     *http.Server
	idPrefix string
	seq      atomic.Uint64

	mu       sync.Mutex
	endpoint string
}

// New returns a server that serves nothing until Serve is called.
func New(opts Options) *Server {
	var id [4]byte
	_, _ = rand.Read(id[:]) // never fails
	s := &Server{
		opts:     opts,
		creds:    make(map[string]Credential, len(opts.Credentials)),
		store:    newStore(),
		stats:    newStats(),
		limiter:  rate.NewLimiter(egressLimit(opts.EgressBytesPerSec), chunkSize),
		idPrefix: hex.EncodeToString(id[:]),
	}
	for _, c := range opts.Credentials {
		s.creds[c.AccessKeyID] = c
	}
	s.profile.set(Profile{FirstByteLatency: opts.FirstByteLatency, ConnBytesPerSec: opts.ConnBytesPerSec})
	s.http = &http.Server{
		Handler:           s,
		ReadHeaderTimeout: time.Minute,
		ErrorLog:          klog.NewStandardLogger("INFO"),
		ConnContext:       connContext,
		ConnState: func(_ net.Conn, state http.ConnState) {
			if state == http.StateNew {
				s.stats.connections.Add(1)
			}
		},
	}
	return s
}

// Start starts a server on a free loopback port for the duration of a test.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("ossemu: listen: %v", err)
	}
	s := New(opts)
	s.setEndpoint(ln)
	go func() { _ = s.Serve(ln) }()
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// Serve serves OSS requests on ln until Close or Shutdown; it then returns nil.
func (s *Server) Serve(ln net.Listener) error {
	s.setEndpoint(ln)
	if err := s.http.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve %s: %w", ln.Addr(), err)
	}
	return nil
}

// Close stops the server at once, aborting requests in flight.
func (s *Server) Close() error { return s.http.Close() }

// Shutdown stops accepting requests and waits for those in flight until
// ctx ends.
func (s *Server) Shutdown(ctx context.Context) error { return s.http.Shutdown(ctx) }

// Endpoint is the base URL, "http://127.0.0.1:port", valid once Start
// returned or Serve began.
func (s *Server) Endpoint() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.endpoint
}

func (s *Server) setEndpoint(ln net.Listener) {
	s.mu.Lock()
	s.endpoint = "http://" + ln.Addr().String()
	s.mu.Unlock()
}

// SetEgressRate changes the egress limit; 0 means unlimited.
func (s *Server) SetEgressRate(bytesPerSec int64) { s.limiter.SetLimit(egressLimit(bytesPerSec)) }

func egressLimit(bytesPerSec int64) rate.Limit {
	if bytesPerSec <= 0 {
		return rate.Inf
	}
	return rate.Limit(bytesPerSec)
}

// InjectFault adds a fault after those already injected.
func (s *Server) InjectFault(f Fault) { s.faults.add(f) }

// ClearFaults removes every injected fault.
func (s *Server) ClearFaults() { s.faults.clear() }

// Stats returns a copy of the counters.
func (s *Server) Stats() Stats { return s.stats.snapshot() }

// ResetStats zeroes the counters (MaxInFlightGets restarts from InFlightGets).
func (s *Server) ResetStats() { s.stats.reset() }

// request is one OSS request being served.
type request struct {
	w       http.ResponseWriter
	r       *http.Request
	query   url.Values
	id      string
	bucket  string // "" for service-level requests
	key     string // "" for bucket-level requests
	op      Op
	status  int
	written int64
	// latency is the first-byte latency in force when the request arrived.
	latency time.Duration
	// endlessList: a FaultEndlessList hit this ListObjectsV2 request.
	endlessList bool
	// ranged: this GetObject is answered with part of the object (FaultIgnoreRange
	// matches only such requests).
	ranged bool
}

// writeHeader writes the response status and headers after the first-byte
// latency, or at once when the client has gone away meanwhile (the body
// writes that may follow then fail or stop on the request's context).
func (rq *request) writeHeader(status int) {
	waitFirstByte(rq.r.Context(), rq.latency)
	rq.status = status
	rq.w.WriteHeader(status)
}

// ServeHTTP implements the OSS REST API subset described in the package
// documentation.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rq := &request{w: w, r: r, query: r.URL.Query(), id: fmt.Sprintf("%s%016X", s.idPrefix, s.seq.Add(1))}
	h := w.Header()
	h.Set("Server", "AliyunOSS")
	h.Set("X-Oss-Request-Id", rq.id)
	if s.opts.Admin && isAdminRequest(r) {
		s.serveAdmin(w, r)
		return
	}
	rq.latency = time.Duration(s.profile.firstByteLatency.Load())
	rq.bucket, rq.key = target(r)
	handler := s.route(rq)
	s.stats.countRequest(rq.op)
	if rq.op == OpGet {
		defer s.stats.startGet()()
	}
	if v := klog.V(4); v.Enabled() {
		defer func() {
			v.InfoS("request", "requestID", rq.id, "method", r.Method, "bucket", rq.bucket, "key", rq.key,
				"op", rq.op, "status", rq.status, "bytes", rq.written, "duration", time.Since(start))
		}()
	}
	if e := s.authenticate(rq); e != nil {
		s.writeError(rq, e)
		return
	}
	if rq.op != OpGet { // GetObject takes its fault once it knows its body
		if _, done := s.injectFault(rq, -1); done {
			return
		}
	}
	handler(rq)
}

// writeError answers e as OSS does: an XML document, or for HEAD (which
// has no body) the same document base64-encoded in x-oss-err.
func (s *Server) writeError(rq *request, e *ossError) {
	s.stats.countError(e.code)
	body := e.body(rq.id, rq.r.Host)
	h := rq.w.Header()
	h.Set("Content-Type", "application/xml")
	h.Set("X-Oss-Ec", errorCondition(e.code))
	if rq.r.Method == http.MethodHead {
		h.Set("X-Oss-Err", base64Std(body))
		h.Set("Content-Length", "0")
		rq.writeHeader(e.status)
		return
	}
	h.Set("Content-Length", fmt.Sprint(len(body)))
	rq.writeHeader(e.status)
	n, _ := rq.w.Write(body)
	rq.written += int64(n)
}
