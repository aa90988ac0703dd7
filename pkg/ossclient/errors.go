package ossclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"strings"
	"syscall"

	"github.com/aliyun/alibabacloud-oss-go-sdk-v2/oss"
)

// Sentinel errors. Every error this package returns for a failed OSS operation matches at most
// one of them with errors.Is; the cause (for example the SDK's *oss.ServiceError) stays
// reachable with errors.As.
var (
	// ErrInvalidURI: the model path is not a valid oss://bucket/prefix/.
	ErrInvalidURI = errors.New("invalid OSS path")
	// ErrInvalidConfig: endpoint, region or credentials are unusable; an endpoint whose host
	// name does not exist in DNS is one (the cause is then a *net.DNSError with IsNotFound; a
	// DNS server failing or timing out is ErrUnavailable).
	ErrInvalidConfig = errors.New("invalid OSS configuration")
	// ErrInvalidKey: an object key cannot become a file inside the model directory.
	ErrInvalidKey = errors.New("unsafe object key")
	// ErrNotFound: the bucket, the object or every object under the prefix is missing.
	ErrNotFound = errors.New("not found")
	// ErrAccessDenied: OSS refused the credentials or the request (HTTP 403).
	ErrAccessDenied = errors.New("access denied")
	// ErrChanged: an object no longer matches the manifest (ETag or size moved).
	ErrChanged = errors.New("object changed since the manifest was taken")
	// ErrIntegrity: the bytes received do not match the CRC-64 OSS holds for the object.
	ErrIntegrity = errors.New("integrity check failed")
	// ErrUnavailable: OSS kept failing (5xx, throttling, timeouts, resets) after retries.
	ErrUnavailable = errors.New("OSS unavailable")
	// ErrRangeIgnored: the server answered a ranged GET with something else than the range
	// asked for (200 with the whole object, or another Content-Range): it, or a proxy in
	// front of it, does not implement Range. Retrying does not help.
	ErrRangeIgnored = errors.New("the server ignored the Range header")
	// ErrTooLarge: the model has more objects or bytes than Config.Limits allow (or its
	// listing more pages): a path that is not a model's directory, such as a whole bucket.
	ErrTooLarge = errors.New("model exceeds a configured bound")
)

// Error describes one failed OSS operation on one target in a single line.
type Error struct {
	Op     string // "list", "head", "get"
	Target string // oss://bucket/key
	Kind   error  // one of the sentinels, or nil when none applies
	// Details of an OSS answer, when there was one.
	Status    int
	Code      string
	RequestID string
	Err       error // the cause
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.Op)
	b.WriteByte(' ')
	b.WriteString(e.Target)
	b.WriteString(": ")
	if e.Kind != nil {
		b.WriteString(e.Kind.Error())
	}
	switch {
	case e.Status != 0:
		if e.Kind != nil {
			b.WriteString(" (")
		}
		fmt.Fprintf(&b, "HTTP %d %s", e.Status, e.Code)
		if msg := serviceMessage(e.Err); msg != "" {
			b.WriteString(": ")
			b.WriteString(msg)
		}
		if e.RequestID != "" {
			b.WriteString(", request id ")
			b.WriteString(e.RequestID)
		}
		if e.Kind != nil {
			b.WriteByte(')')
		}
	case e.Err != nil:
		if e.Kind != nil {
			b.WriteString(": ")
		}
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

// Unwrap exposes both the sentinel and the cause.
func (e *Error) Unwrap() []error {
	var errs []error
	if e.Kind != nil {
		errs = append(errs, e.Kind)
	}
	if e.Err != nil {
		errs = append(errs, e.Err)
	}
	return errs
}

func serviceMessage(err error) string {
	var se *oss.ServiceError
	if errors.As(err, &se) {
		return strings.TrimSuffix(strings.TrimSpace(se.Message), ".")
	}
	return ""
}

// opError classifies err, returned by the SDK for op on target, into an *Error. When ctx has
// ended the cause is the context's error, returned as is (wrapped with the target) so callers
// tell "we gave up" from "OSS failed"; a timeout inside the transport while ctx is live is an
// OSS failure like any other.
func opError(ctx context.Context, op, target string, err error) error {
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return fmt.Errorf("%s %s: %w", op, target, contextCause(ctx))
	}
	var known *Error
	if errors.As(err, &known) {
		if known.Target == "" {
			known.Op, known.Target = op, target
		}
		return err
	}
	e := &Error{Op: op, Target: target, Err: err}
	var se *oss.ServiceError
	if errors.As(err, &se) {
		e.Status, e.Code, e.RequestID = se.StatusCode, se.Code, se.RequestID
		e.Kind = kindOfStatus(se.StatusCode)
		return e
	}
	if hostNotFound(err) {
		e.Kind, e.Err = ErrInvalidConfig, &noSuchHostError{err: err}
		return e
	}
	if retryableTransport(err) {
		e.Kind = ErrUnavailable
	}
	return e
}

// hostNotFound reports whether err says the endpoint's host name does not exist (NXDOMAIN, or
// no address records): a configuration error. A DNS server that fails (SERVFAIL, unreachable)
// or times out is a transient failure like any other, and so is not this.
func hostNotFound(err error) bool {
	var dns *net.DNSError
	return errors.As(err, &dns) && dns.IsNotFound && !dns.IsTemporary && !dns.IsTimeout
}

// noSuchHostError is the cause of an ErrInvalidConfig for an endpoint whose host name does
// not resolve; the *net.DNSError stays reachable with errors.As.
type noSuchHostError struct{ err error }

func (e *noSuchHostError) Error() string {
	var dns *net.DNSError
	errors.As(e.err, &dns)
	return "the endpoint's host name does not resolve: " + dns.Error()
}

func (e *noSuchHostError) Unwrap() error { return e.err }

// contextCause is why ctx ended: its cause (os/signal's "terminated signal received", which
// matches context.Canceled), with the context's error (context.Canceled or DeadlineExceeded)
// wrapped beside it when the cause does not match that already: both reachable with errors.Is.
func contextCause(ctx context.Context) error {
	err, cause := ctx.Err(), context.Cause(ctx)
	if err != nil && cause != nil && !errors.Is(cause, err) {
		return fmt.Errorf("%w: %w", err, cause)
	}
	return cause
}

// kindOfStatus maps an HTTP status from OSS to a sentinel. 404 comes first: HEAD answers carry
// no body, so the status is all there is.
func kindOfStatus(status int) error {
	switch {
	case status == 404:
		return ErrNotFound
	case status == 403:
		return ErrAccessDenied
	case status == 412, status == 416:
		// If-Match failed, or the object shrank under a range we planned from the manifest.
		return ErrChanged
	case status >= 500, status == 429, status == 408:
		return ErrUnavailable
	}
	return nil
}

// retryable reports whether a failed request (or a body read that broke off) is worth trying
// again while ctx lives: throttling, server errors and transport failures (timeouts included)
// are; refusals and changes are not.
func retryable(ctx context.Context, err error) bool {
	if err == nil || ctx.Err() != nil {
		return false
	}
	var se *oss.ServiceError
	if errors.As(err, &se) {
		return kindOfStatus(se.StatusCode) == ErrUnavailable
	}
	return retryableTransport(err)
}

func retryableTransport(err error) bool {
	var ne net.Error
	switch {
	case hostNotFound(err):
		return false // no retry makes a name exist
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.ECONNREFUSED),
		errors.Is(err, syscall.EPIPE), errors.Is(err, syscall.ECONNABORTED),
		errors.Is(err, errShortBody), errors.Is(err, context.DeadlineExceeded):
		// The transport's own timeouts (connect, response header, read) match DeadlineExceeded.
		return true
	case errors.As(err, &ne):
		return true
	}
	return false
}

// ErrorCode names the cause of a failed request in a few bounded words, for metrics: the OSS
// error code ("NoSuchKey", "SlowDown"), "HTTP<status>" for an answer without one, or the
// transport's trouble ("Timeout", "ConnectionReset", "ConnectionRefused", "ShortBody",
// "NoSuchHost", "Network"), "RangeIgnored" or "Changed" for an answer that is not what was
// asked; "Other" otherwise.
func ErrorCode(err error) string {
	var se *oss.ServiceError
	if errors.As(err, &se) {
		if codeRE.MatchString(se.Code) {
			return se.Code
		}
		return fmt.Sprintf("HTTP%d", se.StatusCode)
	}
	var ne net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "Timeout"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE), errors.Is(err, syscall.ECONNABORTED):
		return "ConnectionReset"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "ConnectionRefused"
	case errors.Is(err, errShortBody), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return "ShortBody"
	case hostNotFound(err):
		return "NoSuchHost"
	case errors.As(err, &ne):
		return "Network"
	case errors.Is(err, ErrRangeIgnored):
		return "RangeIgnored"
	case errors.Is(err, ErrChanged):
		return "Changed"
	}
	return "Other"
}

// codeRE: OSS error codes are short CamelCase words; anything else is not used as a label.
var codeRE = regexp.MustCompile(`^[A-Za-z]{1,40}$`)

// observe reports a failed request to Config.OnRequestError.
func (c *Client) observe(ctx context.Context, op string, err error) {
	if err == nil || ctx.Err() != nil || c.cfg.OnRequestError == nil {
		return
	}
	c.cfg.OnRequestError(op, ErrorCode(err))
}

// errShortBody: a response ended before the bytes it announced.
var errShortBody = errors.New("response body ended early")
