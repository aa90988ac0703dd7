package coord

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

// ChainStatus is one model's chain as Redis holds it, for operators.
type ChainStatus struct {
	Tenant, Key string
	// Info describes the model (zero when no node has renewed it within the model's TTL).
	Info ModelInfo
	// Members are the nodes in position order, live or not.
	Members []Member
}

// Chains lists the model chains of tenant ("" for every tenant), ordered by tenant and model.
func (c *Coordinator) Chains(ctx context.Context, tenant string) ([]ChainStatus, error) {
	pattern := keyPrefix + ":{*}:chain"
	if tenant != "" {
		if err := ValidTenant(tenant); err != nil {
			return nil, err
		}
		pattern = fmt.Sprintf("%s:{%s/*}:chain", keyPrefix, tenant)
	}
	keys, err := c.scan(ctx, pattern)
	if err != nil {
		return nil, fmt.Errorf("list chains: %w", err)
	}
	var out []ChainStatus
	for _, k := range keys {
		t, key, ok := parseChainKey(k)
		if !ok {
			continue
		}
		members, err := c.Members(ctx, t, key)
		if err != nil {
			return nil, fmt.Errorf("read the chain of %s/%s: %w", t, key, err)
		}
		if len(members) == 0 {
			continue // it emptied between the scan and the read
		}
		st := ChainStatus{Tenant: t, Key: key, Members: members}
		desc, err := c.rdb.Get(ctx, infoKey(t, key)).Bytes()
		switch {
		case errors.Is(err, redis.Nil):
		case err != nil:
			return nil, fmt.Errorf("read the description of %s/%s: %w", t, key, err)
		default:
			_ = json.Unmarshal(desc, &st.Info) // an unreadable description leaves it blank
		}
		out = append(out, st)
	}
	slices.SortFunc(out, func(a, b ChainStatus) int {
		return cmp.Or(cmp.Compare(a.Tenant, b.Tenant), cmp.Compare(a.Info.URI, b.Info.URI), cmp.Compare(a.Key, b.Key))
	})
	return out, nil
}

// scan returns the keys matching pattern, from every master of a cluster.
func (c *Coordinator) scan(ctx context.Context, pattern string) ([]string, error) {
	seen := map[string]bool{}
	var out []string
	collect := func(ctx context.Context, client redis.Cmdable) error {
		it := client.Scan(ctx, 0, pattern, 500).Iterator()
		for it.Next(ctx) {
			if k := it.Val(); !seen[k] {
				seen[k] = true
				out = append(out, k)
			}
		}
		return it.Err()
	}
	var err error
	if cc, ok := c.rdb.(*redis.ClusterClient); ok {
		var mu sync.Mutex // masters are scanned concurrently
		err = cc.ForEachMaster(ctx, func(ctx context.Context, client *redis.Client) error {
			mu.Lock()
			defer mu.Unlock()
			return collect(ctx, client)
		})
	} else {
		err = collect(ctx, c.rdb)
	}
	slices.Sort(out)
	return out, err
}

// parseChainKey splits "modelcast:{tenant/key}:chain".
func parseChainKey(k string) (tenant, key string, ok bool) {
	rest, ok := strings.CutPrefix(k, keyPrefix+":{")
	if !ok {
		return "", "", false
	}
	rest, ok = strings.CutSuffix(rest, "}:chain")
	if !ok {
		return "", "", false
	}
	tenant, key, ok = strings.Cut(rest, "/")
	return tenant, key, ok && ValidTenant(tenant) == nil && key != ""
}
