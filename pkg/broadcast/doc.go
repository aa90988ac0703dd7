// Package broadcast is model broadcasting on a node: when many nodes need the same model, only the head of a
// chain of nodes reads it from OSS; every other node receives it from its predecessor and
// forwards it to its successor while still receiving, so OSS serves one stream per model and
// the time to a ready model stays flat as nodes are added.
//
// Coordination goes through Redis (or Tair), by way of package coord: node membership with
// heartbeat TTLs, per-model chain order, the manifest every node stages, per-chunk CRC-64s
// published by whoever read the chunk from OSS, each node's progress, and a per-tenant secret
// the peer data plane requires. A Broadcaster holds one replica per model it stages or serves.
//
// The data plane is HTTP/1.1 on the node's bind port. A receiver asks its predecessor for the
// model's chunks from its own offset; the sender writes each chunk as soon as it has it
// verified (tail-follow), with sendfile from its tmpfs files, each chunk framed with its
// CRC-64. The receiver checks every chunk in-line (against the frame and, when Redis has it,
// against the CRC the OSS reader published) and every object against OSS's CRC-64, writes it
// into its own staging files and serves it onward. A dead, stalled or lying predecessor is
// replaced by the nearest live node before it; with none left the node becomes the head and
// resumes from OSS at its own offset. Without Redis a node simply fetches from OSS.
//
// The package knows nothing of CSI: Broadcaster.Source gives the cache a Source per volume.
package broadcast
