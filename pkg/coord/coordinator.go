package coord

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Coordinator keeps a tenant's broadcast metadata in Redis. Every call is one round trip (or
// one Lua script, loaded once and run by SHA).
type Coordinator struct {
	rdb      redis.UniversalClient
	modelTTL time.Duration // chains, progress and sums live this long after their last refresh
}

// NewCoordinator wraps a Redis client.
func NewCoordinator(rdb redis.UniversalClient) *Coordinator {
	return &Coordinator{rdb: rdb, modelTTL: time.Hour}
}

// addr names the Redis server, for logs.
// Addr is the Redis address, for logs.
func (c *Coordinator) Addr() string {
	if rc, ok := c.rdb.(*redis.Client); ok {
		return rc.Options().Addr
	}
	return "redis"
}

// Ping checks that Redis answers; the error names the address and the user (see Ping).
func (c *Coordinator) Ping(ctx context.Context) error {
	if rc, ok := c.rdb.(*redis.Client); ok {
		return Ping(ctx, rc)
	}
	return c.rdb.Ping(ctx).Err()
}

// tokenTTL is how long a tenant's peer secret outlives its last node's heartbeat: no key
// modelcast writes lives forever.
const tokenTTL = 24 * time.Hour

// Token returns the tenant's peer secret, creating it (once, SET NX) if needed.
func (c *Coordinator) Token(ctx context.Context, tenant string) (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	if err := c.rdb.SetNX(ctx, tokenKey(tenant), hex.EncodeToString(b), tokenTTL).Err(); err != nil {
		return "", err
	}
	return c.rdb.Get(ctx, tokenKey(tenant)).Result()
}

// ReadToken returns the tenant's peer secret, "" when there is none. It never creates one: the
// data plane checks requests with it.
func (c *Coordinator) ReadToken(ctx context.Context, tenant string) (string, error) {
	tok, err := c.rdb.Get(ctx, tokenKey(tenant)).Result()
	if errors.Is(err, redis.Nil) {
		return "", nil
	}
	return tok, err
}

// Register announces the node's peer address for ttl (the heartbeat renews it) and renews
// the tenant's secret.
func (c *Coordinator) Register(ctx context.Context, tenant, node, addr string, ttl time.Duration) error {
	_, err := c.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		pipe.Set(ctx, nodeKey(tenant, node), addr, ttl)
		pipe.PExpire(ctx, tokenKey(tenant), tokenTTL)
		return nil
	})
	return err
}

// Deregister removes the node's address (a clean shutdown).
func (c *Coordinator) Deregister(ctx context.Context, tenant, node string) error {
	return c.rdb.Del(ctx, nodeKey(tenant, node)).Err()
}

// Manifest returns the manifest published for the model path, or nil.
func (c *Coordinator) Manifest(ctx context.Context, tenant, pathID string) ([]byte, error) {
	b, err := c.rdb.Get(ctx, manifestKey(tenant, pathID)).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	return b, err
}

// PublishManifest publishes data unless a manifest is already there (SET NX) and returns the
// one that is published (data, or the earlier one). replace overwrites instead: a node that
// found the published manifest stale (objects changed in OSS) publishes the new version.
func (c *Coordinator) PublishManifest(ctx context.Context, tenant, pathID string, data []byte, ttl time.Duration, replace bool) ([]byte, error) {
	key := manifestKey(tenant, pathID)
	if replace {
		return data, c.rdb.Set(ctx, key, data, ttl).Err()
	}
	ok, err := c.rdb.SetNX(ctx, key, data, ttl).Result()
	if err != nil || ok {
		return data, err
	}
	return c.rdb.Get(ctx, key).Bytes()
}

// nextPosLua computes the position after every one given so far: the sequence, or the last
// member's position if Redis lost the sequence but not the chain.
const nextPosLua = `
local function nextpos()
  local seq = tonumber(redis.call('GET', KEYS[2]) or '0')
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  if last[2] and tonumber(last[2]) > seq then seq = tonumber(last[2]) end
  return seq + 1
end
`

// joinScript gives a node its position in a model's chain: the one it has, the one it asks
// for (ARGV[5] > 0: the position it had before Redis lost the chain, so that the chain keeps
// its order and who streams from whom), or the next one. A fresh staging (ARGV[5] = 0) always
// goes to the end: an entry the node has already belongs to a process of it that is gone (a
// crash leaves no Leave), and a node with no bytes at an early position would read OSS while
// the nodes after it hold the model. It records the node's progress and the model's
// description, and renews the model's keys.
var joinScript = redis.NewScript(nextPosLua + `
local pos = redis.call('ZSCORE', KEYS[1], ARGV[1])
if pos and tonumber(ARGV[5]) == 0 then pos = nil end
if not pos then
  pos = tonumber(ARGV[5])
  if pos <= 0 then pos = nextpos() end
  if pos >= nextpos() then redis.call('SET', KEYS[2], pos) end
  redis.call('ZADD', KEYS[1], pos, ARGV[1])
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
redis.call('PEXPIRE', KEYS[3], ARGV[2])
redis.call('SET', KEYS[4], ARGV[4], 'PX', ARGV[2])
return tonumber(pos)`)

// tailScript moves a node to the end of a model's chain.
var tailScript = redis.NewScript(nextPosLua + `
local pos = nextpos()
redis.call('SET', KEYS[2], pos, 'PX', ARGV[2])
redis.call('ZADD', KEYS[1], pos, ARGV[1])
return pos`)

// leaveScript takes a node out of a model's chain.
var leaveScript = redis.NewScript(`
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1`)

// ModelInfo describes a model in Redis, for operators (csi-plugin status).
type ModelInfo struct {
	URI   string `json:"uri"`
	Size  int64  `json:"size"`
	Files int    `json:"files"`
}

// Join places the node in the model's chain (idempotent: a node keeps its position) and
// records its progress and the model's description; it also renews the chain's TTL, so
// heartbeats keep it alive. A node missing from the chain gets position prefer when it is
// positive (the one it had: Redis lost the chain), else the next one.
func (c *Coordinator) Join(ctx context.Context, tenant, key, node string, info ModelInfo, p NodeProgress, prefer int) (int, error) {
	desc, err := json.Marshal(info)
	if err != nil {
		return 0, err
	}
	pos, err := joinScript.Run(ctx, c.rdb, []string{chainKey(tenant, key), seqKey(tenant, key), progressKey(tenant, key), infoKey(tenant, key)},
		node, c.modelTTL.Milliseconds(), p.encode(), desc, prefer).Int()
	if err != nil {
		return 0, fmt.Errorf("join the chain of %s: %w", key, err)
	}
	return pos, nil
}

// MoveToTail gives the node the position after every other in the model's chain.
func (c *Coordinator) MoveToTail(ctx context.Context, tenant, key, node string) (int, error) {
	pos, err := tailScript.Run(ctx, c.rdb, []string{chainKey(tenant, key), seqKey(tenant, key)}, node, c.modelTTL.Milliseconds()).Int()
	if err != nil {
		return 0, fmt.Errorf("move to the tail of the chain of %s: %w", key, err)
	}
	return pos, nil
}

// Leave takes the node out of the model's chain.
func (c *Coordinator) Leave(ctx context.Context, tenant, key, node string) error {
	return leaveScript.Run(ctx, c.rdb, []string{chainKey(tenant, key), progressKey(tenant, key)}, node).Err()
}

// NodeProgress is what a node publishes about a model: contiguous verified bytes, whether it
// holds the whole model, and where its bytes come from.
type NodeProgress struct {
	Bytes    int64
	Complete bool
	From     string
	Rate     float64 // bytes per second, recently
}

func (p NodeProgress) encode() string {
	state := "staging"
	if p.Complete {
		state = "complete"
	}
	return fmt.Sprintf("%d|%s|%.0f|%s", p.Bytes, state, p.Rate, p.From)
}

func decodeProgress(s string) NodeProgress {
	f := strings.SplitN(s, "|", 4)
	var p NodeProgress
	if len(f) == 4 {
		p.Bytes, _ = strconv.ParseInt(f[0], 10, 64)
		p.Complete = f[1] == "complete"
		p.Rate, _ = strconv.ParseFloat(f[2], 64)
		p.From = f[3]
	}
	return p
}

// Member is one node of a model's chain as Redis sees it.
type Member struct {
	Node     string
	Position int
	Addr     string // "" when the node's heartbeat has expired
	Progress NodeProgress
}

// Alive reports whether the node's heartbeat is current.
func (m Member) Alive() bool { return m.Addr != "" }

// Members lists the model's chain in position order, with each node's address (if alive) and
// progress.
func (c *Coordinator) Members(ctx context.Context, tenant, key string) ([]Member, error) {
	zs, err := c.rdb.ZRangeWithScores(ctx, chainKey(tenant, key), 0, -1).Result()
	if err != nil {
		return nil, err
	}
	if len(zs) == 0 {
		return nil, nil
	}
	progress, err := c.rdb.HGetAll(ctx, progressKey(tenant, key)).Result()
	if err != nil {
		return nil, err
	}
	keys := make([]string, len(zs))
	members := make([]Member, len(zs))
	for i, z := range zs {
		node, _ := z.Member.(string)
		members[i] = Member{Node: node, Position: int(z.Score), Progress: decodeProgress(progress[node])}
		keys[i] = nodeKey(tenant, node)
	}
	addrs, err := c.rdb.MGet(ctx, keys...).Result()
	if err != nil {
		return nil, err
	}
	for i, a := range addrs {
		if s, ok := a.(string); ok {
			members[i].Addr = s
		}
	}
	return members, nil
}

// SetProgress records the node's progress on a model.
func (c *Coordinator) SetProgress(ctx context.Context, tenant, key, node string, p NodeProgress) error {
	_, err := c.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		pipe.HSet(ctx, progressKey(tenant, key), node, p.encode())
		pipe.PExpire(ctx, progressKey(tenant, key), c.modelTTL)
		return nil
	})
	return err
}

// sumSize is the bytes per chunk in the sums string: the CRC-64, big-endian (0: not published).
const sumSize = 8

// PublishSums records the CRC-64s of chunks first, first+1, … as read from OSS.
func (c *Coordinator) PublishSums(ctx context.Context, tenant, key string, first int, crcs []uint64) error {
	b := make([]byte, len(crcs)*sumSize)
	for i, crc := range crcs {
		binary.BigEndian.PutUint64(b[i*sumSize:], crc)
	}
	_, err := c.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		pipe.SetRange(ctx, sumsKey(tenant, key), int64(first*sumSize), string(b))
		pipe.PExpire(ctx, sumsKey(tenant, key), c.modelTTL)
		return nil
	})
	return err
}

// Sums returns the published CRC-64s of chunks [first, first+n) (0 where none is published).
func (c *Coordinator) Sums(ctx context.Context, tenant, key string, first, n int) ([]uint64, error) {
	s, err := c.rdb.GetRange(ctx, sumsKey(tenant, key), int64(first*sumSize), int64((first+n)*sumSize-1)).Result()
	if err != nil {
		return nil, err
	}
	out := make([]uint64, n)
	for i := range n {
		if (i+1)*sumSize <= len(s) {
			out[i] = binary.BigEndian.Uint64([]byte(s[i*sumSize : (i+1)*sumSize]))
		}
	}
	return out, nil
}
