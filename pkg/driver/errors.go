package driver

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/modelcast/modelcast/pkg/cache"
	"github.com/modelcast/modelcast/pkg/ossclient"
)

// errInvalid marks a request the caller must change (InvalidArgument).
var errInvalid = errors.New("invalid request")

// errNotReady marks a service that cannot serve yet (Unavailable).
var errNotReady = errors.New("not ready")

// errPending marks work that goes on after the caller stopped waiting for it (a listing of
// OSS): the caller's retry joins it (Unavailable).
var errPending = errors.New("still in progress")

// errAlreadyExists marks a target that already holds another volume or model (AlreadyExists).
var errAlreadyExists = errors.New("target already in use")

// errBusy marks a target with another operation in flight (Aborted): kubelet retries.
var errBusy = errors.New("operation in progress")

// errNotAuthorized marks a publish that mount authorization refuses (PermissionDenied): no
// ModelCache of the pod's namespace declares the volume's model, or the pod's namespace is
// unknown.
var errNotAuthorized = errors.New("mount not authorized")

// toStatus is the one place where errors become gRPC codes. The message is the error's own:
// domain errors are written to be read by a person (kubelet shows them in the pod's events),
// without OSS request ids (each failure would make an Event of its own); the returned
// error's text, which the call's log line shows, keeps them.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	code := codes.Internal
	switch {
	case errors.Is(err, cache.ErrStaging), errors.Is(err, errNotReady), errors.Is(err, errPending), errors.Is(err, ossclient.ErrUnavailable):
		// Staging goes on (or OSS is briefly unavailable): kubelet retries and the retry joins it.
		code = codes.Unavailable
	case errors.Is(err, errNodeConfig):
		code = codes.FailedPrecondition // the node's configuration, not the volume's, is wrong
	case errors.Is(err, errInvalid), errors.Is(err, ossclient.ErrInvalidURI), errors.Is(err, ossclient.ErrInvalidConfig):
		code = codes.InvalidArgument
	case errors.Is(err, ossclient.ErrInvalidKey):
		code = codes.FailedPrecondition // the bucket holds keys that cannot become files
	case errors.Is(err, ossclient.ErrTooLarge):
		code = codes.FailedPrecondition // past model.maxObjects or model.maxSizeGB of the node's config
	case errors.Is(err, ossclient.ErrNotFound):
		code = codes.NotFound
	case errors.Is(err, ossclient.ErrAccessDenied), errors.Is(err, errNotAuthorized):
		code = codes.PermissionDenied
	case errors.Is(err, cache.ErrNoSpace):
		code = codes.ResourceExhausted
	case errors.Is(err, ossclient.ErrChanged):
		code = codes.Aborted // the model changed in OSS: a retry takes the new version
	case errors.Is(err, ossclient.ErrRangeIgnored):
		code = codes.FailedPrecondition // the endpoint (or a proxy before it) cannot serve ranges
	case errors.Is(err, ossclient.ErrIntegrity):
		code = codes.DataLoss
	case errors.Is(err, cache.ErrHolderConflict):
		code = codes.FailedPrecondition
	case errors.Is(err, errAlreadyExists):
		code = codes.AlreadyExists
	case errors.Is(err, errBusy):
		code = codes.Aborted
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	}
	return &statusError{st: status.New(code, withoutRequestIDs(err.Error())), cause: err}
}

// statusError is a gRPC status for the caller and, for the log, the whole error it came from.
type statusError struct {
	st    *status.Status
	cause error
}

func (e *statusError) Error() string {
	return fmt.Sprintf("rpc error: code = %s desc = %s", e.st.Code(), e.cause.Error())
}

// GRPCStatus is what gRPC sends the caller.
func (e *statusError) GRPCStatus() *status.Status { return e.st }

func (e *statusError) Unwrap() error { return e.cause }
