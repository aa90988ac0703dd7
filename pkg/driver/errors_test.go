package driver

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/modelcast/modelcast/pkg/cache"
	"github.com/modelcast/modelcast/pkg/ossclient"
)

// TestToStatus: the one error-to-code mapper, for every kind of error the services return,
// wrapped as they are wrapped; the message is the error's own.
func TestToStatus(t *testing.T) {
	ossErr := func(kind error) error {
		return fmt.Errorf("list oss://b/m/: %w", &ossclient.Error{Op: "list", Target: "oss://b/m/", Kind: kind, Err: errors.New("cause")})
	}
	staging := &cache.StagingError{Model: "oss://b/m/", Done: 1, Total: 2, From: "OSS", Err: context.DeadlineExceeded}
	for _, tc := range []struct {
		name string
		err  error
		want codes.Code
	}{
		{"staging goes on", fmt.Errorf("acquire: %w", staging), codes.Unavailable},
		{"not ready", fmt.Errorf("%w: cache closed", errNotReady), codes.Unavailable},
		{"listing goes on", fmt.Errorf("%w: still listing oss://b/m/", errPending), codes.Unavailable},
		{"OSS unavailable", ossErr(ossclient.ErrUnavailable), codes.Unavailable},
		{"invalid request", fmt.Errorf("%w: target path is required", errInvalid), codes.InvalidArgument},
		{"invalid URI", fmt.Errorf("volume attribute ossPath: %w", ossclient.ErrInvalidURI), codes.InvalidArgument},
		{"invalid config", fmt.Errorf("%w: endpoint", ossclient.ErrInvalidConfig), codes.InvalidArgument},
		{"volume endpoint does not resolve", fmt.Errorf("volume attribute endpoint %q: %w", "oss.invalid", ossErr(ossclient.ErrInvalidConfig)), codes.InvalidArgument},
		{"node endpoint does not resolve", &nodeConfigError{fmt.Errorf("the node's default endpoint: %w", ossErr(ossclient.ErrInvalidConfig))}, codes.FailedPrecondition},
		{"range ignored", ossErr(ossclient.ErrRangeIgnored), codes.FailedPrecondition},
		{"unsafe key", ossErr(ossclient.ErrInvalidKey), codes.FailedPrecondition},
		{"model past a bound", ossErr(ossclient.ErrTooLarge), codes.FailedPrecondition},
		{"not found", ossErr(ossclient.ErrNotFound), codes.NotFound},
		{"access denied", ossErr(ossclient.ErrAccessDenied), codes.PermissionDenied},
		{"mount not authorized", fmt.Errorf("%w: namespace %q may not mount oss://b/m/", errNotAuthorized, "team-b"), codes.PermissionDenied},
		{"no room", fmt.Errorf("stage: %w: needs 9 GB", cache.ErrNoSpace), codes.ResourceExhausted},
		{"changed", ossErr(ossclient.ErrChanged), codes.Aborted},
		{"integrity", ossErr(ossclient.ErrIntegrity), codes.DataLoss},
		{"holder conflict", fmt.Errorf("%w: /t holds k1", cache.ErrHolderConflict), codes.FailedPrecondition},
		{"target in use", fmt.Errorf("%w: /t holds vol-1", errAlreadyExists), codes.AlreadyExists},
		{"busy", fmt.Errorf("%w: on /t", errBusy), codes.Aborted},
		{"deadline", fmt.Errorf("list: %w", context.DeadlineExceeded), codes.DeadlineExceeded},
		{"canceled", fmt.Errorf("list: %w", context.Canceled), codes.Canceled},
		{"anything else", errors.New("mount: device busy"), codes.Internal},
		{"a status already", status.Error(codes.OutOfRange, "too big"), codes.OutOfRange},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := toStatus(tc.err)
			if c := status.Code(got); c != tc.want {
				t.Errorf("code %v, want %v", c, tc.want)
			}
			if msg := status.Convert(got).Message(); msg != status.Convert(tc.err).Message() {
				t.Errorf("message %q, want the error's own %q", msg, tc.err.Error())
			}
		})
	}
	if toStatus(nil) != nil {
		t.Error("toStatus(nil) is not nil")
	}
}
