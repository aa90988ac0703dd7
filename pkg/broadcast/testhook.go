//go:build modelcast_testhooks

package broadcast

// SetTestCorruptChunk makes the data plane send chunk i with one byte flipped, once. A test
// hook: it exists only in builds with the modelcast_testhooks tag (test/chaintest builds the
// agent so), never in the production binary.
func (n *Broadcaster) SetTestCorruptChunk(i int) { n.srv.corrupt.Store(int64(i) + 1) }
