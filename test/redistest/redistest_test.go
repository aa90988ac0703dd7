package redistest_test

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/modelcast/modelcast/test/redistest"
)

// newClient returns a go-redis client for s with fast failure (short
// timeouts, one dial per attempt) and go-redis's automatic reconnection.
func newClient(t *testing.T, s *redistest.Server, customize func(*redis.Options)) *redis.Client {
	t.Helper()
	opts := &redis.Options{
		Addr:            s.Addr(),
		DialTimeout:     2 * time.Second,
		ReadTimeout:     2 * time.Second,
		WriteTimeout:    2 * time.Second,
		DialerRetries:   1,
		MaxRetries:      1,
		DisableIdentity: true,
	}
	if customize != nil {
		customize(opts)
	}
	c := redis.NewClient(opts)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// trusting returns a TLS configuration that trusts s's CA.
func trusting(t *testing.T, s *redistest.Server) *tls.Config {
	t.Helper()
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(s.CACertPEM()) {
		t.Fatalf("CACertPEM has no certificate: %q", s.CACertPEM())
	}
	return &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
}

func TestPlain(t *testing.T) {
	t.Parallel()
	s := redistest.Start(t, redistest.Options{})
	if !strings.HasPrefix(s.Addr(), "127.0.0.1:") {
		t.Errorf("Addr() = %q, want 127.0.0.1:port", s.Addr())
	}
	if s.CACertPEM() != nil {
		t.Errorf("CACertPEM() = %q without TLS, want nil", s.CACertPEM())
	}
	c := newClient(t, s, nil)
	if err := c.Set(t.Context(), "k", "v", 0).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}
	if got, err := c.Get(t.Context(), "k").Result(); err != nil || got != "v" {
		t.Fatalf("GET = %q, %v; want v", got, err)
	}
}

func TestACLUser(t *testing.T) {
	t.Parallel()
	s := redistest.Start(t, redistest.Options{Username: "modelcast", Password: `p@ss "word"\`})
	for _, tc := range []struct {
		name, user, pass string
		wantPrefix       string // of the auth error; "" for success
	}{
		{"right password", "modelcast", `p@ss "word"\`, ""},
		{"wrong password", "modelcast", "nope", "WRONGPASS"},
		{"default user without password", "", "", "NOAUTH"},
		{"default user with the password", "default", `p@ss "word"\`, "WRONGPASS"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newClient(t, s, func(o *redis.Options) { o.Username, o.Password = tc.user, tc.pass })
			err := c.Set(t.Context(), "k", tc.name, 0).Err()
			switch {
			case tc.wantPrefix == "" && err != nil:
				t.Fatalf("SET: %v", err)
			case tc.wantPrefix == "":
				if got, err := c.Get(t.Context(), "k").Result(); err != nil || got != tc.name {
					t.Errorf("GET = %q, %v; want %q", got, err, tc.name)
				}
			case !redis.IsAuthError(err) || !strings.Contains(err.Error(), tc.wantPrefix):
				t.Errorf("SET error = %v, want an auth error (%s)", err, tc.wantPrefix)
			}
		})
	}
}

func TestPasswordOnly(t *testing.T) {
	t.Parallel()
	s := redistest.Start(t, redistest.Options{Password: "secret"})
	if err := newClient(t, s, func(o *redis.Options) { o.Password = "secret" }).Ping(t.Context()).Err(); err != nil {
		t.Errorf("PING with the password: %v", err)
	}
	if err := newClient(t, s, nil).Ping(t.Context()).Err(); !redis.IsAuthError(err) {
		t.Errorf("PING without password: error %v, want an auth error", err)
	}
}

func TestTLS(t *testing.T) {
	t.Parallel()
	s := redistest.Start(t, redistest.Options{TLS: true})
	t.Run("trusting the CA", func(t *testing.T) {
		for _, addr := range []string{s.Addr(), strings.Replace(s.Addr(), "127.0.0.1", "localhost", 1)} {
			c := newClient(t, s, func(o *redis.Options) { o.Addr, o.TLSConfig = addr, trusting(t, s) })
			if err := c.Set(t.Context(), "k", "v", 0).Err(); err != nil {
				t.Fatalf("SET via %s: %v", addr, err)
			}
			if got, err := c.Get(t.Context(), "k").Result(); err != nil || got != "v" {
				t.Fatalf("GET via %s = %q, %v; want v", addr, got, err)
			}
		}
	})
	t.Run("plain TCP", func(t *testing.T) {
		if err := newClient(t, s, nil).Ping(t.Context()).Err(); err == nil {
			t.Error("PING over plain TCP to the TLS port succeeded")
		}
	})
	t.Run("not trusting the CA", func(t *testing.T) {
		c := newClient(t, s, func(o *redis.Options) { o.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12} })
		var unknown x509.UnknownAuthorityError
		if err := c.Ping(t.Context()).Err(); !errors.As(err, &unknown) {
			t.Errorf("PING error = %v, want x509.UnknownAuthorityError", err)
		}
	})
}

func TestStopRestart(t *testing.T) {
	t.Parallel()
	s := redistest.Start(t, redistest.Options{})
	addr := s.Addr()
	c := newClient(t, s, nil) // one client through the outage: go-redis reconnects by itself
	if err := c.Set(t.Context(), "k", "v", 0).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}
	s.Stop()
	s.Stop() // idempotent
	if err := c.Ping(t.Context()).Err(); err == nil {
		t.Fatal("PING succeeded while stopped")
	}
	s.Restart()
	if s.Addr() != addr {
		t.Errorf("Addr() after Restart = %s, want %s", s.Addr(), addr)
	}
	if err := c.Get(t.Context(), "k").Err(); !errors.Is(err, redis.Nil) {
		t.Errorf("GET of data from before the outage: error %v, want redis.Nil (data lost)", err)
	}
	if err := c.Set(t.Context(), "k", "w", 0).Err(); err != nil {
		t.Fatalf("SET after Restart: %v", err)
	}
	s.Restart() // restarting a running server stops it first
	if err := c.Ping(t.Context()).Err(); err != nil {
		t.Errorf("PING after a second Restart: %v", err)
	}
}

func TestKill(t *testing.T) {
	t.Parallel()
	s := redistest.Start(t, redistest.Options{})
	c := newClient(t, s, nil)
	if err := c.Ping(t.Context()).Err(); err != nil {
		t.Fatalf("PING: %v", err)
	}
	s.Kill()
	if err := c.Ping(t.Context()).Err(); err == nil {
		t.Fatal("PING succeeded after Kill")
	}
	s.Kill() // no-ops once dead
	s.Stop()
	s.Restart()
	if err := c.Ping(t.Context()).Err(); err != nil {
		t.Errorf("PING after Restart: %v", err)
	}
}

// TestTLSAndACLRestart checks that Restart keeps both TLS and the ACL user.
func TestTLSAndACLRestart(t *testing.T) {
	t.Parallel()
	s := redistest.Start(t, redistest.Options{Username: "u", Password: "p", TLS: true})
	c := newClient(t, s, func(o *redis.Options) { o.Username, o.Password, o.TLSConfig = "u", "p", trusting(t, s) })
	if err := c.Ping(t.Context()).Err(); err != nil {
		t.Fatalf("PING: %v", err)
	}
	s.Kill()
	s.Restart()
	if err := c.Ping(t.Context()).Err(); err != nil {
		t.Fatalf("PING after Restart: %v", err)
	}
	if err := newClient(t, s, func(o *redis.Options) { o.TLSConfig = trusting(t, s) }).Ping(t.Context()).Err(); !redis.IsAuthError(err) {
		t.Errorf("PING without credentials after Restart: error %v, want an auth error", err)
	}
}

// fatalRecorder is a testing.TB whose Fatal and Fatalf record the message
// and end the calling goroutine, as the real ones do.
type fatalRecorder struct {
	testing.TB
	mu  sync.Mutex
	msg string
}

func (r *fatalRecorder) Fatalf(format string, args ...any) {
	r.mu.Lock()
	r.msg = fmt.Sprintf(format, args...)
	r.mu.Unlock()
	runtime.Goexit()
}

func (r *fatalRecorder) Fatal(args ...any) { r.Fatalf("%s", fmt.Sprint(args...)) }

// startFatal runs Start in a goroutine of its own and returns the message
// it passed to t.Fatal, if any.
func startFatal(t *testing.T, opts redistest.Options) (msg string, fataled bool) {
	r := &fatalRecorder{TB: t}
	returned := false
	done := make(chan struct{})
	go func() {
		defer close(done)
		redistest.Start(r, opts)
		returned = true
	}()
	<-done
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.msg, !returned
}

func TestStartWithoutRedisServer(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	msg, fataled := startFatal(t, redistest.Options{})
	if !fataled {
		t.Fatal("Start succeeded without redis-server in PATH")
	}
	for _, want := range []string{"redis-server not found", "install redis-server", "hack/ensure-deps.sh"} {
		if !strings.Contains(msg, want) {
			t.Errorf("fatal message %q does not contain %q", msg, want)
		}
	}
}

func TestStartInvalidOptions(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		opts redistest.Options
	}{
		{"username without password", redistest.Options{Username: "u"}},
		{"username with a space", redistest.Options{Username: "a b", Password: "p"}},
		{"username with a quote", redistest.Options{Username: `a"b`, Password: "p"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if msg, fataled := startFatal(t, tc.opts); !fataled || !strings.Contains(msg, "username") {
				t.Errorf("Start: fataled %v with %q, want a fatal error about the username", fataled, msg)
			}
		})
	}
}
