//go:build modelcast_testhooks

package main

import (
	"flag"

	"github.com/modelcast/modelcast/pkg/driver"
)

// addTestHooks registers the agent's test hooks (builds with the modelcast_testhooks tag only,
// as test/chaintest makes): -test-corrupt-chunk sends that chunk to a peer with a byte flipped,
// once. It returns what applies them to the driver.
func addTestHooks(fs *flag.FlagSet) func(*driver.Driver) {
	corrupt := fs.Int("test-corrupt-chunk", -1, "test hook: send this chunk to a peer with one byte flipped, once")
	return func(d *driver.Driver) {
		if *corrupt >= 0 {
			d.Chain().SetTestCorruptChunk(*corrupt)
		}
	}
}
