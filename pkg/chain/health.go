package chain

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
	"k8s.io/klog/v2"
)

// States of a node's coordination through Redis (Node.Coordination).
const (
	// CoordinationOff: broadcasting is off or no Redis is configured.
	CoordinationOff = "off"
	// CoordinationOK: Redis answers.
	CoordinationOK = "ok"
	// CoordinationUnreachable: Redis does not answer (down, restarting, a network problem).
	CoordinationUnreachable = "unreachable"
	// CoordinationRefused: Redis answers but refuses this node: a wrong user or password, a
	// missing permission, or a certificate this node does not trust. A configuration to fix,
	// not an outage to wait out.
	CoordinationRefused = "refused"
)

// CoordinationStates lists every state, for metrics.
var CoordinationStates = []string{CoordinationOff, CoordinationOK, CoordinationUnreachable, CoordinationRefused}

// health is what the node last learned of Redis.
type health struct {
	mu      sync.Mutex
	state   string
	problem string // the last error, for people ("" when ok)
}

// Coordination reports the node's state with Redis and, when not ok, what went wrong.
func (n *Node) Coordination() (state, problem string) {
	if n.coord == nil {
		return CoordinationOff, ""
	}
	n.health.mu.Lock()
	defer n.health.mu.Unlock()
	return n.health.state, n.health.problem
}

// CheckRedis pings Redis and records (and logs) what it learned.
func (n *Node) CheckRedis(ctx context.Context) {
	if n.coord == nil {
		return
	}
	var err error
	if c, ok := n.coord.rdb.(*redis.Client); ok {
		err = Ping(ctx, c) // names the address and the user
	} else {
		err = n.coord.rdb.Ping(ctx).Err()
	}
	n.observe(err)
}

// observe records the outcome of a Redis call: its state, and a log line (level 0) when it
// changes. A refusal is an error to fix and is said as one.
func (n *Node) observe(err error) {
	state, problem := CoordinationOK, ""
	if err != nil {
		problem = strings.ReplaceAll(err.Error(), "\n", " ")
		state = CoordinationUnreachable
		if refused(err) {
			state = CoordinationRefused
		}
	}
	n.health.mu.Lock()
	was := n.health.state
	n.health.state, n.health.problem = state, problem
	n.health.mu.Unlock()
	if state == was {
		return
	}
	switch state {
	case CoordinationOK:
		klog.InfoS("Redis answers: models are broadcast along chains", "redis", n.coord.addr())
	case CoordinationUnreachable:
		klog.InfoS("Redis does not answer; models come from OSS directly until it does", "redis", n.coord.addr(), "err", problem)
	case CoordinationRefused:
		klog.ErrorS(err, "Redis refuses this node: broadcasting is off and every model comes from OSS directly until the configuration is fixed (broadcast.db: user, password, TLS CA or client certificate)", "redis", n.coord.addr())
	}
}

// refused reports whether err is Redis (or its TLS endpoint) refusing this node, rather than
// not answering: authentication, permission and certificate errors.
func refused(err error) bool {
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
