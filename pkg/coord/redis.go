package coord

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisConfig says how to reach Redis or Tair.
type RedisConfig struct {
	// Addr is host:port. URL (redis:// or rediss://user:password@host:port/db) may be given
	// instead; its parts win.
	Addr, URL          string
	Username, Password string
	TLS                bool
	CACert             []byte // PEM; the system's roots when empty
	// ClientCert is presented to servers that require a client certificate.
	ClientCert *tls.Certificate
}

// NewRedisClient builds a client for rc. It connects lazily and reconnects by itself (a Redis
// outage must not need a restart); errors are for an unusable configuration only. Ping tells
// whether Redis answers.
func NewRedisClient(rc RedisConfig) (*redis.Client, error) {
	// Fail fast: a Redis that does not answer must not hold a mount up (it falls back to OSS).
	opts := &redis.Options{Addr: rc.Addr, Username: rc.Username, Password: rc.Password, MaxRetries: 1,
		DialTimeout: 3 * time.Second, ReadTimeout: 3 * time.Second, WriteTimeout: 3 * time.Second,
		DialerRetries: 1, DialerRetryTimeout: 50 * time.Millisecond}
	if rc.URL != "" {
		u, err := redis.ParseURL(rc.URL)
		if err != nil {
			return nil, fmt.Errorf("redis URL: %w", redactURLError(err, rc.URL))
		}
		u.MaxRetries, u.DialTimeout, u.ReadTimeout, u.WriteTimeout = opts.MaxRetries, opts.DialTimeout, opts.ReadTimeout, opts.WriteTimeout
		u.DialerRetries, u.DialerRetryTimeout = opts.DialerRetries, opts.DialerRetryTimeout
		opts = u
	}
	if opts.Addr == "" {
		return nil, errors.New("redis: no address (broadcast.db.host or broadcast.db.url)")
	}
	if (rc.TLS || len(rc.CACert) > 0 || rc.ClientCert != nil) && opts.TLSConfig == nil {
		opts.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	if opts.TLSConfig != nil && rc.ClientCert != nil {
		opts.TLSConfig.Certificates = []tls.Certificate{*rc.ClientCert}
	}
	if opts.TLSConfig != nil && len(rc.CACert) > 0 {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(rc.CACert) {
			return nil, errors.New("redis CA certificate: no PEM certificate found")
		}
		opts.TLSConfig.RootCAs = pool
	}
	return redis.NewClient(opts), nil
}

// Ping checks that Redis answers with the client's credentials. The error names the address
// and the user, never the password.
func Ping(ctx context.Context, client *redis.Client) error {
	if err := client.Ping(ctx).Err(); err != nil {
		opts := client.Options()
		who := ""
		if opts.Username != "" {
			who = " as user " + strconv.Quote(opts.Username)
		}
		return fmt.Errorf("redis %s%s: %w", opts.Addr, who, err)
	}
	return nil
}

func redactURLError(err error, url string) error {
	return errors.New(redactPassword(err.Error(), url))
}

func redactPassword(msg, raw string) string {
	if u, err := url.Parse(raw); err == nil && u.User != nil {
		if p, ok := u.User.Password(); ok && p != "" {
			return strings.ReplaceAll(msg, p, "****")
		}
	}
	return msg
}

// Refused reports whether err is Redis (or its TLS endpoint) refusing this node, rather than
// not answering: authentication, permission and certificate errors.
func Refused(err error) bool {
	var unknownCA x509.UnknownAuthorityError
	var hostname x509.HostnameError
	var invalid x509.CertificateInvalidError
	var record tls.RecordHeaderError
	var verify *tls.CertificateVerificationError
	if errors.As(err, &unknownCA) || errors.As(err, &hostname) || errors.As(err, &invalid) || errors.As(err, &record) || errors.As(err, &verify) {
		return true
	}
	var alert tls.AlertError
	if errors.As(err, &alert) {
		return true // the server refused the handshake (a client certificate it wants, say)
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "remote error" {
		return true
	}
	msg := err.Error()
	for _, s := range []string{"WRONGPASS", "NOAUTH", "NOPERM", "invalid password", "invalid username-password", "AUTH <password> called without any password"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}
