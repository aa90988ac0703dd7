package netbench

import (
	"os"
	"testing"
	"time"
)

// TestBenchQuick is make bench-quick: four hosts on shaped 1 Gbit/s links broadcast a 256 MiB
// model. It checks correctness and byte counts, not timings: every node ends with the model,
// each file's CRC-64 re-checked, and OSS served exactly one copy.
func TestBenchQuick(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: network namespaces and tc")
	}
	const size = 256 << 20
	env, err := NewEnv(t.Context(), EnvConfig{Prefix: "mcq", Hosts: 4, LinkRate: "1gbit", OSSRate: "1gbit",
		Models: map[string]int64{"quick/": size}, Log: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	defer env.Close()
	start := time.Now()
	res, err := env.Run(t.Context(), Scenario{Kind: Chain, N: 4, Model: "quick/", Size: size, Link: "1gbit"}, 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("4 nodes ready in %v..%v (median %v), OSS %.3fx, peers %d bytes, agents %.1f core-s for %d bytes forwarded; run %v",
		res.Min(), res.Max(), res.Median(), res.OSSRatio(), res.PeerBytes, res.CPU, res.Forwarded, time.Since(start))
	if len(res.Ready) != 4 || len(res.Staged) != 4 {
		t.Errorf("%d nodes ready, %d staged times; want 4 of each", len(res.Ready), len(res.Staged))
	}
	for i := range min(len(res.Ready), len(res.Staged)) {
		// The agents run with --verify: a node's model is staged before its re-read ends.
		if s, r := res.Staged[i], res.Ready[i]; s <= 0 || s >= r {
			t.Errorf("node %d: staged after %v, ready after %v: want 0 < staged < ready", i, s, r)
		}
	}
	if res.CPU <= 0 {
		t.Errorf("agents' CPU %.2f core-s: the run's CPU floor (CPUFloor) needs every agent's CPU time", res.CPU)
	}
	if res.OSSBytes != size {
		t.Errorf("OSS served %d bytes for a %d-byte model: want exactly one copy", res.OSSBytes, size)
	}
	if res.PeerBytes != 3*size {
		t.Errorf("peers carried %d bytes, want three copies (%d)", res.PeerBytes, 3*size)
	}
}

// TestHeadQuick is make bench-quick's single-node part: a 256 MiB model, the emulator with the
// object-store profile, a chain's head alone against a direct fetch (RunHead). Every run must
// stage the whole model, verified, with OSS serving exactly one copy; head ÷ direct has a
// generous bound for a noisy two-vCPU machine (make bench reports the figure against 0.9).
func TestHeadQuick(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: tmpfs mounts")
	}
	const size = 256 << 20
	res, err := RunHead(t.Context(), HeadConfig{Size: size, Rounds: 3, RelayRuns: 1, Log: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("head %.3f GB/s, direct %.3f GB/s, head ÷ direct %.3f (median of %d rounds); %v",
		res.HeadGBps(), res.DirectGBps(), res.Ratio(), len(res.Rounds), res.Took)
	if len(res.Runs) != 4*len(res.Rounds) || len(res.Rounds) != 3 {
		t.Errorf("%d runs in %d rounds, want 12 in 3", len(res.Runs), len(res.Rounds))
	}
	for _, r := range res.Runs {
		if !r.Verified || r.Received != size || r.OSSBytes != size {
			t.Errorf("round %d %s: verified %v, staged %d bytes, OSS served %d: want the whole %d-byte model, verified, one copy from OSS",
				r.Round, r.Mode, r.Verified, r.Received, r.OSSBytes, size)
		}
	}
	if len(res.Relays) != 1 || len(res.Bare) != 1 {
		t.Errorf("%d loopback relays and %d bare hops, want one of each", len(res.Relays), len(res.Bare))
	} else if b := res.Bare[0]; b.Bytes != size || b.CPU <= 0 {
		t.Errorf("bare hop: %d bytes in %.3f core-s, want %d bytes and some CPU", b.Bytes, b.CPU, size)
	}
	if v := res.Ratio(); v < 0.5 {
		t.Errorf("head ÷ direct = %.3f, want ≥ 0.5", v)
	}
}
