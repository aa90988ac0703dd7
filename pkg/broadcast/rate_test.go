package broadcast_test

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/modelcast/modelcast/pkg/broadcast"
	"github.com/modelcast/modelcast/pkg/cache"
	"github.com/modelcast/modelcast/pkg/coord"
	"github.com/modelcast/modelcast/pkg/ossclient"
	"github.com/modelcast/modelcast/test/ossemu"
	"github.com/modelcast/modelcast/test/redistest"
)

// TestPublishedRateOfASlowStaging: a chain head reads a model slowly over many connections, so
// its chunks are verified in bursts seconds apart (every part completes a chunk at about the
// same time). The rate it publishes — what `csi-plugin status` shows, with the time left at
// that rate — is the model's rate, not a window's share of one burst or of none.
func TestPublishedRateOfASlowStaging(t *testing.T) {
	const (
		parts    = 16
		partSize = 3 * 256 << 10                      // three chunks per part
		period   = 3 * time.Second                    // between bursts: a chunk per connection
		connRate = (256 << 10) * time.Second / period // bytes per second per connection
		size     = parts * partSize
		want     = float64(parts * connRate) // bytes per second
	)
	emu := ossemu.Start(t, ossemu.Options{Region: region, Credentials: []ossemu.Credential{{AccessKeyID: ak, AccessKeySecret: sk}},
		ConnBytesPerSec: int64(connRate)})
	emu.CreateBucket("models", ossemu.BucketOptions{})
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(rand.Uint32())
	}
	emu.PutObject("models", "slow/model.safetensors", data)
	srv := redistest.Start(t, redistest.Options{})
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr(), MaxRetries: 1})
	t.Cleanup(func() { _ = rdb.Close() })

	cn, err := broadcast.New(broadcast.Config{NodeID: "n1", Addr: "127.0.0.1:0", Tenant: "team", ChunkSize: 256 << 10,
		HeadConcurrency: parts, HeadPartSize: partSize, Heartbeat: 200 * time.Millisecond}, rdb)
	if err != nil {
		t.Fatal(err)
	}
	store, err := cache.New(cache.Config{Root: t.TempDir(), ExpireAfter: time.Hour, MemoryReserve: 1, OnRelease: cn.Release})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close(); cn.Close() })
	oc, err := ossclient.New(ossclient.Config{Endpoint: emu.Endpoint(), Region: region,
		Credentials: ossclient.Credentials{AccessKeyID: ak, AccessKeySecret: sk}})
	if err != nil {
		t.Fatal(err)
	}
	m, err := cn.ResolveManifest(t.Context(), "team", oc, ossclient.URI{Bucket: "models", Prefix: "slow/"})
	if err != nil {
		t.Fatal(err)
	}
	model := cache.Model{Endpoint: oc.Endpoint(), Manifest: m}
	src := cn.Source(cache.OSSSource{Client: oc, Options: ossclient.DownloadOptions{Concurrency: parts}}, "team")

	start := time.Now()
	staged := make(chan error, 1)
	go func() {
		_, err := store.Acquire(t.Context(), model, src, "pod")
		staged <- err
	}()
	type reading struct {
		at    time.Duration
		bytes int64
		rate  float64
	}
	var readings []reading
	coord := coord.NewCoordinator(rdb)
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for done := false; !done; {
		select {
		case err := <-staged:
			if err != nil {
				t.Fatal(err)
			}
			done = true
			continue
		case <-tick.C:
		}
		members, err := coord.Members(t.Context(), "team", model.Key())
		if err != nil || len(members) != 1 {
			continue // not joined yet
		}
		// From the second burst on, the rate has two to go by.
		if p := members[0].Progress; p.Bytes >= 2*parts*(256<<10) && !p.Complete {
			readings = append(readings, reading{time.Since(start), p.Bytes, p.Rate})
		}
	}
	took := time.Since(start)
	avg := float64(size) / took.Seconds()
	if avg > 1.1*want {
		t.Fatalf("staged at %.0f B/s, faster than the emulator's %.0f B/s allow", avg, want)
	}
	if len(readings) < 3 {
		t.Fatalf("%d readings of the rate between the second burst and the end, want several", len(readings))
	}
	for _, r := range readings {
		if r.rate < 0.6*avg || r.rate > 1.6*avg {
			t.Errorf("after %v (%d of %d bytes verified): published rate %.0f B/s; the staging's was %.0f B/s (%d bytes in %v)",
				r.at.Round(10*time.Millisecond), r.bytes, size, r.rate, avg, size, took.Round(10*time.Millisecond))
		}
	}
}
