package driver

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/status"

	"github.com/modelcast/modelcast/pkg/cache"
	"github.com/modelcast/modelcast/pkg/ossclient"
)

// TestPublishWaitsForKubeletsDeadline: with the default options, a publish under kubelet's
// deadline (2 minutes) waits until shortly before it, not a shorter fixed time: a staging
// that ends while kubelet's call is open starts the pod at once, not after kubelet's
// backoff. A wait set with PublishWait caps it; a caller without a deadline waits as long as
// kubelet's call would.
func TestPublishWaitsForKubeletsDeadline(t *testing.T) {
	node := func(wait time.Duration) *nodeServer {
		o := Options{PublishWait: wait}
		o.defaults()
		return &nodeServer{maxWait: o.PublishWait, margin: o.PublishMargin, clock: o.Clock}
	}
	waits := func(n *nodeServer, timeout time.Duration) time.Duration {
		ctx := t.Context()
		if timeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, timeout)
			defer cancel()
		}
		wctx, cancel := n.waitContext(ctx)
		defer cancel()
		deadline, ok := wctx.Deadline()
		if !ok {
			t.Fatal("a publish waits without a bound")
		}
		return time.Until(deadline)
	}
	near := func(what string, got, want time.Duration) {
		t.Helper()
		if got > want || got < want-time.Second {
			t.Errorf("%s: waits %v, want %v", what, got.Round(time.Millisecond), want)
		}
	}
	near("default, kubelet's deadline", waits(node(0), 2*time.Minute), 2*time.Minute-5*time.Second)
	near("default, no deadline", waits(node(0), 0), 2*time.Minute-5*time.Second)
	near("default, a short deadline", waits(node(0), 4*time.Second), 3*time.Second)
	near("--publish-wait 10s, kubelet's deadline", waits(node(10*time.Second), 2*time.Minute), 10*time.Second)
	near("--publish-wait 10s, no deadline", waits(node(10*time.Second), 0), 10*time.Second)
}

// TestStatusWithoutRequestIDs: the message a call answers (kubelet posts it in the pod's
// FailedMount Events) has no OSS request id, so that identical failures aggregate; the error
// the call's log line prints keeps it.
func TestStatusWithoutRequestIDs(t *testing.T) {
	get := &ossclient.Error{Op: "get", Target: "oss://b/m/model.safetensors", Kind: ossclient.ErrUnavailable, Status: 503,
		Code: "ServiceUnavailable", RequestID: "6780A1B2C3D4E5F601234567", Err: errors.New("cause")}
	for _, tc := range []struct {
		name string
		err  error
		want string
	}{
		{"ossclient's error", fmt.Errorf("stage oss://b/m/: %w", get),
			"stage oss://b/m/: get oss://b/m/model.safetensors: OSS unavailable (HTTP 503 ServiceUnavailable)"},
		{"without a kind", fmt.Errorf("list: %w", &ossclient.Error{Op: "list", Target: "oss://b/m/", Status: 400, Code: "InvalidArgument", RequestID: "ABC-123", Err: errors.New("x")}),
			"list: list oss://b/m/: HTTP 400 InvalidArgument"},
		{"a summary in parentheses", errors.New("part 3: HTTP 500 InternalError (request id 6780A1B2C3D4E5F601234567); giving up"),
			"part 3: HTTP 500 InternalError; giving up"},
		{"the SDK's text", errors.New("Error returned by Service.\nHttp Status Code: 503.\nError Code: SlowDown.\nRequest Id: 6780A1B2.\nMessage: slow down."),
			"Error returned by Service.\nHttp Status Code: 503.\nError Code: SlowDown.\nMessage: slow down."},
		{"staging progress", fmt.Errorf("acquire: %w", &cache.StagingError{Model: "oss://b/m/", Done: 1e9, Total: 2e9, From: "OSS"}),
			"acquire: staging oss://b/m/: 1.0 GB of 2.0 GB from OSS"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := toStatus(tc.err)
			if got := status.Convert(st).Message(); got != tc.want {
				t.Errorf("message %q, want %q", got, tc.want)
			}
			if !strings.Contains(st.Error(), tc.err.Error()) {
				t.Errorf("logged as %q: the whole error %q is lost", st.Error(), tc.err)
			}
		})
	}
}
