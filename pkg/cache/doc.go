// Package cache is a node's store of staged models on tmpfs.
//
// A model (an OSS prefix pinned by its manifest) is staged once per node into
// incoming/<key>/, verified by its Source, and committed by renaming it to models/<key>/:
// nobody ever sees a partial model. Concurrent Acquires of one model share one staging,
// which runs detached from the callers: a caller whose context ends gets a *StagingError
// saying how far it got, and a retry joins the staging in flight.
//
// Every Acquire names a holder (the CSI target path); references are persisted under the
// root and reconciled with the mount table when the store starts, so a restart of the plugin
// loses no reference. A holder that is not a mount (a ModelCache's claim on the node) pins the
// model with Pin: recorded under the root too, kept after a restart without a mount, released
// by Release like any holder. A model without holders is removed ExpireAfter after its last release,
// or earlier, least recently used first, when staging another model needs the room (the
// soft cap, maxCacheAdviseGB). A holder whose Acquire stopped waiting keeps a pending hold:
// the model is kept for it until it comes back, or RetryHold after the staging ends (a
// caller's retry, however far its backoff went, finds the model staged). A model that cannot fit in the tmpfs or in the node's available
// memory even after eviction fails before a byte is written (ErrNoSpace).
//
// The package knows nothing of CSI or Redis: bytes come from a Source (OSS directly, or the
// broadcast chain).
package cache
