package driver

import (
	"context"
	"errors"

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

// toStatus is the one place where errors become gRPC codes. The message is the error's own:
// domain errors are written to be read by a person (kubelet shows them in the pod's events).
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
	case errors.Is(err, errInvalid), errors.Is(err, ossclient.ErrInvalidURI), errors.Is(err, ossclient.ErrInvalidConfig):
		code = codes.InvalidArgument
	case errors.Is(err, ossclient.ErrInvalidKey):
		code = codes.FailedPrecondition // the bucket holds keys that cannot become files
	case errors.Is(err, ossclient.ErrNotFound):
		code = codes.NotFound
	case errors.Is(err, ossclient.ErrAccessDenied):
		code = codes.PermissionDenied
	case errors.Is(err, cache.ErrNoSpace):
		code = codes.ResourceExhausted
	case errors.Is(err, ossclient.ErrChanged):
		code = codes.Aborted // the model changed in OSS: a retry takes the new version
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
	return status.Error(code, err.Error())
}
