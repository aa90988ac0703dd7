package agenttest

import (
	"context"
	"fmt"
	"time"

	"github.com/modelcast/modelcast/pkg/agent"
	"github.com/modelcast/modelcast/pkg/coord"
	"github.com/modelcast/modelcast/pkg/ossclient"
)

// chainPoll is the pause between two reads of a chain.
const chainPoll = 50 * time.Millisecond

// WaitChain reads the chain of the model at uri (oss://bucket/prefix/, as the agents were
// given it) in tenant's key space until cond accepts its members (coord.Members: position
// order, dead ones too), and returns them; it fails when ctx ends. Redis errors are retried:
// a test may restart Redis meanwhile.
func WaitChain(ctx context.Context, c *coord.Coordinator, tenant, uri string, cond func([]coord.Member) bool) ([]coord.Member, error) {
	u, err := ossclient.ParseURI(uri)
	if err != nil {
		return nil, err
	}
	uri = u.String() // as the chain's description has it: oss://bucket/prefix/
	key := ""        // the model's key, once a chain of uri is found
	var last []coord.Member
	var lastErr error
	t := time.NewTicker(chainPoll)
	defer t.Stop()
	for {
		if key == "" {
			chains, err := c.Chains(ctx, tenant)
			lastErr = err
			for _, ch := range chains {
				if ch.Info.URI == uri {
					key = ch.Key
				}
			}
		}
		if key != "" {
			members, err := c.Members(ctx, tenant, key)
			if err == nil && cond(members) {
				return members, nil
			}
			last, lastErr = members, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("the chain of %s in tenant %s: %w (members %+v, last error %v)", uri, tenant, context.Cause(ctx), last, lastErr)
		case <-t.C:
		}
	}
}

// WaitJoined waits until the agent is a live member of its model's chain in tenant (its
// heartbeat current) and returns its membership; it fails when ctx ends, or when the agent
// exits or prints an error first.
func (p *Proc) WaitJoined(ctx context.Context, c *coord.Coordinator, tenant string) (coord.Member, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		_, err := p.WaitForContext(ctx, func(agent.Event) bool { return false })
		cancel(err) // the agent exited or failed (or ctx ended: then cancel is a no-op)
	}()
	var me coord.Member
	_, err := WaitChain(ctx, c, tenant, p.model, func(ms []coord.Member) bool {
		for _, m := range ms {
			if m.Node == p.Name && m.Alive() {
				me = m
				return true
			}
		}
		return false
	})
	if err != nil {
		return me, fmt.Errorf("%s did not join: %w", p.Name, err)
	}
	return me, nil
}
