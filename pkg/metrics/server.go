package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/klog/v2"
)

// Check is a health check: nil when healthy, else what is wrong.
type Check func(ctx context.Context) error

// checkTimeout bounds one health check.
const checkTimeout = 3 * time.Second

// Handler serves /metrics, /healthz (live: 200 when live answers nil) and /readyz (ready:
// 200 when ready answers nil). A failing check answers 503 with its error, one line.
func (m *Metrics) Handler(live, ready Check) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg}))
	mux.Handle("GET /healthz", checkHandler(live))
	mux.Handle("GET /readyz", checkHandler(ready))
	return mux
}

func checkHandler(check Check) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), checkTimeout)
		defer cancel()
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if err := check(ctx); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "%v\n", err)
			return
		}
		fmt.Fprintln(w, "ok")
	})
}

// Serve listens on addr and serves h until ctx ends. It returns once the listener is up (or
// failed); done is closed when the server has stopped.
func Serve(ctx context.Context, addr string, h http.Handler) (bound string, done <-chan struct{}, err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, fmt.Errorf("metrics and health: listen on %s: %w", addr, err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			klog.ErrorS(err, "Metrics and health server stopped", "address", addr)
		}
	}()
	go func() {
		select {
		case <-ctx.Done():
		case <-stopped:
			return
		}
		sctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	klog.InfoS("Serving metrics and health", "address", ln.Addr().String(), "paths", "/metrics /healthz /readyz")
	return ln.Addr().String(), stopped, nil
}
