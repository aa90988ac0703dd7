package broadcast

import (
	"context"
	"strings"
	"sync"

	"k8s.io/klog/v2"

	"github.com/modelcast/modelcast/pkg/coord"
)

// States of a node's coordination through Redis (Broadcaster.Coordination).
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
func (n *Broadcaster) Coordination() (state, problem string) {
	if n.coord == nil {
		return CoordinationOff, ""
	}
	n.health.mu.Lock()
	defer n.health.mu.Unlock()
	return n.health.state, n.health.problem
}

// CheckRedis pings Redis and records (and logs) what it learned.
func (n *Broadcaster) CheckRedis(ctx context.Context) {
	if n.coord == nil {
		return
	}
	n.observe(n.coord.Ping(ctx))
}

// observe records the outcome of a Redis call: its state, and a log line (level 0) when it
// changes. A refusal is an error to fix and is said as one.
func (n *Broadcaster) observe(err error) {
	state, problem := CoordinationOK, ""
	if err != nil {
		problem = strings.ReplaceAll(err.Error(), "\n", " ")
		state = CoordinationUnreachable
		if coord.Refused(err) {
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
		klog.InfoS("Redis answers: models are broadcast along chains", "redis", n.coord.Addr())
	case CoordinationUnreachable:
		klog.InfoS("Redis does not answer; models come from OSS directly until it does", "redis", n.coord.Addr(), "err", problem)
	case CoordinationRefused:
		klog.ErrorS(err, "Redis refuses this node: broadcasting is off and every model comes from OSS directly until the configuration is fixed (broadcast.db: user, password, TLS CA or client certificate)", "redis", n.coord.Addr())
	}
}
