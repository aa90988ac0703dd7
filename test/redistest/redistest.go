// Package redistest runs a real redis-server (the Debian package) for tests.
//
// Start launches one redis-server child process per call, listening on a free
// port on 127.0.0.1, with a configuration generated under t.TempDir(): no
// persistence (save "", appendonly no), optionally an ACL user and TLS. It
// returns once the server answers PING, and t.Cleanup stops it. Stop, Kill
// and Restart simulate outages: Restart brings the server back on the same
// port with the same options and no data.
//
// modelcast's tests never mock Redis: code that coordinates through Redis is
// tested against this server. Start, Restart and Stop must be called from the
// test's goroutine; Stop and Kill may also be called from others.
package redistest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unicode"

	"github.com/redis/go-redis/v9"

	"github.com/modelcast/modelcast/test/freeport"
)

const (
	// readyTimeout bounds the wait for a started server to answer PING.
	readyTimeout = 10 * time.Second
	// stopTimeout bounds the wait for a clean exit after SIGTERM; then SIGKILL.
	stopTimeout = 10 * time.Second
	// pollInterval is the pause between two readiness probes.
	pollInterval = 10 * time.Millisecond
	// probeTimeout bounds one readiness probe (dial, handshake, PING).
	probeTimeout = time.Second
	// portAttempts is how many free ports Start tries when another process
	// takes the chosen port before redis-server binds it.
	portAttempts = 3
	// logTailBytes is how much of the server's log error messages quote.
	logTailBytes = 4 << 10
)

// errAddrInUse reports that redis-server could not bind its port.
var errAddrInUse = errors.New("address already in use")

// Options configure a server. The zero value is a plain-TCP server without
// authentication.
type Options struct {
	// Username and Password, when set, create an ACL user with that password
	// and every permission (+@all ~* &*) and disable the default user
	// ("user default off"). Password alone sets the default user's password
	// instead, as requirepass does. Username requires Password.
	Username, Password string
	// TLS makes the server accept TLS connections only (tls-port; port 0),
	// with a certificate for 127.0.0.1 and localhost issued by a throwaway
	// CA; CACertPEM returns the CA to trust. Clients are not asked for
	// certificates unless ClientCerts.
	TLS bool
	// ClientCerts (with TLS) makes the server require a client certificate
	// issued by its CA; ClientCertFiles returns one.
	ClientCerts bool
}

func (o Options) validate() error {
	if o.Username != "" && o.Password == "" {
		return fmt.Errorf("options: username %q needs a password", o.Username)
	}
	if strings.ContainsFunc(o.Username, func(r rune) bool {
		return unicode.IsSpace(r) || !unicode.IsPrint(r) || r == '"' || r == '\''
	}) {
		return fmt.Errorf("options: username %q: spaces, quotes and control characters are not allowed", o.Username)
	}
	return nil
}

// Server is a redis-server child process. Its methods are safe for
// concurrent use.
type Server struct {
	t       testing.TB
	opts    Options
	bin     string // redis-server's path
	dir     string // configuration, certificates, log and data
	conf    string
	logPath string
	addr    string
	caPEM   []byte // TLS only

	mu   sync.Mutex // serialises Stop, Kill and Restart
	proc *process   // nil while stopped
}

// process is one run of redis-server.
type process struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once the process has exited and been reaped
	err  error         // cmd.Wait's result; read only after done is closed
}

// Start runs a redis-server with opts on a free port of 127.0.0.1 and waits
// until it answers PING. t.Cleanup stops it. It calls t.Fatal when
// redis-server is not installed or does not come up.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("redistest: redis-server not found (%v): install redis-server, e.g. hack/ensure-deps.sh or apt-get install -y redis-server", err)
	}
	if err := opts.validate(); err != nil {
		t.Fatalf("redistest: %v", err)
	}
	dir := t.TempDir() // removed after the cleanup below has stopped the server
	s := &Server{
		t:       t,
		opts:    opts,
		bin:     bin,
		dir:     dir,
		conf:    filepath.Join(dir, "redis.conf"),
		logPath: filepath.Join(dir, "redis.log"),
	}
	if err := os.Mkdir(filepath.Join(dir, "data"), 0o700); err != nil {
		t.Fatalf("redistest: %v", err)
	}
	if opts.TLS {
		if s.caPEM, err = writeCertificates(dir); err != nil {
			t.Fatalf("redistest: %v", err)
		}
	}
	t.Cleanup(s.cleanup)

	s.mu.Lock()
	defer s.mu.Unlock()
	for range portAttempts {
		if err = s.configure(); err != nil {
			break
		}
		if err = s.startLocked(); !errors.Is(err, errAddrInUse) {
			break
		}
	}
	if err != nil {
		t.Fatalf("redistest: %v", err)
	}
	return s
}

// Addr returns the server's address, "127.0.0.1:port". It does not change
// across Restart.
func (s *Server) Addr() string { return s.addr }

// CACertFile returns the path of the CA certificate's PEM file (see CACertPEM); "" unless
// Options.TLS.
func (s *Server) CACertFile() string {
	if !s.opts.TLS {
		return ""
	}
	return filepath.Join(s.dir, caCertFile)
}

// ClientCertFiles returns the paths of a client certificate and its key,
// issued by the server's CA; "" unless Options.TLS.
func (s *Server) ClientCertFiles() (cert, key string) {
	if !s.opts.TLS {
		return "", ""
	}
	return filepath.Join(s.dir, clientCertFile), filepath.Join(s.dir, clientKeyFile)
}

// CACertPEM returns the PEM certificate of the CA that issued the server's
// certificate; nil unless Options.TLS.
func (s *Server) CACertPEM() []byte { return bytes.Clone(s.caPEM) }

// Stop shuts the server down (SIGTERM, then SIGKILL after 10 s) and waits
// until it has exited. Its data is lost. Stopping a stopped server does
// nothing.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopLocked(syscall.SIGTERM)
}

// Kill ends the server with SIGKILL, without a clean shutdown, and returns
// once the process is gone. Killing a stopped server does nothing.
func (s *Server) Kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopLocked(syscall.SIGKILL)
}

// Restart stops the server if it runs, then starts it again on the same port
// with the same options and no data, and waits until it answers PING. It
// calls t.Fatal if the server does not come back (for instance when another
// process took the port meanwhile).
func (s *Server) Restart() {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopLocked(syscall.SIGTERM)
	if err := s.startLocked(); err != nil {
		s.t.Fatalf("redistest: restart: %v", err)
	}
}

func (s *Server) cleanup() {
	s.Stop()
	if s.t.Failed() {
		s.t.Logf("redistest: log of redis-server %s:\n%s", s.addr, s.logTail(0))
	}
}

// configure picks a free port and writes the configuration file for it.
func (s *Server) configure() error {
	port, err := freeport.Get()
	if err != nil {
		return err
	}
	s.addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	if err := os.WriteFile(s.conf, s.config(port), 0o600); err != nil {
		return fmt.Errorf("write redis.conf: %w", err)
	}
	return nil
}

// config renders redis.conf for port.
func (s *Server) config(port int) []byte {
	var b bytes.Buffer
	line := func(args ...string) { b.WriteString(strings.Join(args, " ") + "\n") }
	line("# generated by modelcast's test/redistest")
	line("bind", "127.0.0.1")
	line("daemonize", "no")
	line("save", `""`)
	line("appendonly", "no")
	line("dir", quote(filepath.Join(s.dir, "data")))
	line("logfile", `""`) // stdout, which goes to redis.log
	if s.opts.TLS {
		line("port", "0")
		line("tls-port", strconv.Itoa(port))
		line("tls-cert-file", quote(filepath.Join(s.dir, serverCertFile)))
		line("tls-key-file", quote(filepath.Join(s.dir, serverKeyFile)))
		line("tls-ca-cert-file", quote(filepath.Join(s.dir, caCertFile)))
		line("tls-auth-clients", map[bool]string{true: "yes", false: "no"}[s.opts.ClientCerts])
	} else {
		line("port", strconv.Itoa(port))
	}
	if s.opts.Password != "" {
		// A SHA-256 hash ("#...") keeps any password out of the file's syntax.
		sum := sha256.Sum256([]byte(s.opts.Password))
		user := s.opts.Username
		if user == "" {
			user = "default"
		} else if user != "default" {
			line("user", "default", "off")
		}
		line("user", quote(user), "on", "resetpass", "#"+hex.EncodeToString(sum[:]), "~*", "&*", "+@all")
	}
	return b.Bytes()
}

// startLocked starts redis-server and waits until it answers PING. On
// failure the process is gone and the error quotes its log.
func (s *Server) startLocked() error {
	logf, err := os.OpenFile(s.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("open redis-server log: %w", err)
	}
	info, err := logf.Stat()
	if err != nil {
		_ = logf.Close()
		return fmt.Errorf("open redis-server log: %w", err)
	}
	logStart := info.Size()
	cmd := exec.Command(s.bin, s.conf)
	cmd.Dir = s.dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = sysProcAttr()
	err = cmd.Start()
	_ = logf.Close() // the child has its own copy
	if err != nil {
		return fmt.Errorf("start %s: %w", s.bin, err)
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	s.proc = p

	err = s.waitReady(p)
	if err == nil {
		return nil
	}
	s.stopLocked(syscall.SIGKILL)
	log := s.logTail(logStart)
	if strings.Contains(log, "Address already in use") {
		err = fmt.Errorf("%w: %w", errAddrInUse, err)
	}
	return fmt.Errorf("redis-server on %s: %w\nits log:\n%s", s.addr, err, log)
}

// waitReady polls the server with PING until it answers, it exits, or
// readyTimeout passes.
func (s *Server) waitReady(p *process) error {
	deadline := time.Now().Add(readyTimeout)
	for {
		err := s.probe()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no answer to PING within %v: %w", readyTimeout, err)
		}
		select {
		case <-p.done:
			return fmt.Errorf("exited before answering PING (%v)", p.err)
		case <-time.After(pollInterval):
		}
	}
}

// probe sends one PING with the server's credentials, through a new client
// so that no pool state (dial-error back-off) carries over between probes.
// A bare TCP dial first keeps go-redis from logging refused connections
// while the server starts.
func (s *Server) probe() error {
	conn, err := net.DialTimeout("tcp", s.addr, probeTimeout)
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	_ = conn.Close()
	opts := &redis.Options{
		Addr:            s.addr,
		Username:        s.opts.Username,
		Password:        s.opts.Password,
		DialTimeout:     probeTimeout,
		ReadTimeout:     probeTimeout,
		WriteTimeout:    probeTimeout,
		DialerRetries:   1,
		MaxRetries:      -1,
		PoolSize:        1,
		DisableIdentity: true,
	}
	if s.opts.TLS {
		roots := x509.NewCertPool()
		roots.AppendCertsFromPEM(s.caPEM)
		opts.TLSConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
		if s.opts.ClientCerts {
			cert, err := tls.LoadX509KeyPair(s.ClientCertFiles())
			if err != nil {
				return fmt.Errorf("client certificate: %w", err)
			}
			opts.TLSConfig.Certificates = []tls.Certificate{cert}
		}
	}
	c := redis.NewClient(opts)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("ping: %w", err)
	}
	return nil
}

// stopLocked sends sig to the running process, if any, and waits until it
// has exited, sending SIGKILL after stopTimeout.
func (s *Server) stopLocked(sig syscall.Signal) {
	p := s.proc
	if p == nil {
		return
	}
	s.proc = nil
	_ = p.cmd.Process.Signal(sig) // fails only if it has exited already
	select {
	case <-p.done:
	case <-time.After(stopTimeout):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// logTail returns the end of the server's log from byte offset from on.
func (s *Server) logTail(from int64) string {
	f, err := os.Open(s.logPath)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	from = max(from, info.Size()-logTailBytes)
	b, err := io.ReadAll(io.NewSectionReader(f, from, info.Size()-from))
	if err != nil {
		return fmt.Sprintf("(log unreadable: %v)", err)
	}
	return string(b)
}

// quote makes s one argument of redis.conf: a double-quoted string in which
// backslashes, quotes and bytes outside printable ASCII are escaped.
func quote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"' || c == '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c < 0x20 || c >= 0x7f:
			fmt.Fprintf(&b, `\x%02x`, c)
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('"')
	return b.String()
}
