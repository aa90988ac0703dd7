// Package coord is how nodes coordinate model broadcasting through Redis (or Tair), which holds
// only small metadata, under keys prefixed by the tenant with hash tags (a Redis Cluster keeps
// each model's keys in one slot): node membership with heartbeat TTLs, each model's chain order
// (Lua scripts, so positions follow the data flow even after Redis lost its data), each node's
// progress, the manifest every node stages, per-chunk CRC-64s published by whoever read the
// chunk from OSS, a per-tenant secret the peer data plane requires, and the chains as an
// operator sees them. Every key has a TTL.
//
// It knows nothing of the data plane: package broadcast uses it.
package coord
