package broadcast

import (
	"fmt"
	"testing"
	"time"
)

// TestSteadyRate drives the published rate's estimator through verified byte counts sampled
// every 500 ms, as progress is published: a steady flow, bursts seconds apart (whole or split
// over two or three samples), and a stall.
func TestSteadyRate(t *testing.T) {
	const mb = 1 << 20
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	at := func(i int) time.Time { return t0.Add(time.Duration(i) * 500 * time.Millisecond) }
	// run samples bytes(i) at every step up to n (inclusive) and returns the rate then.
	run := func(n int, bytes func(i int) int64) float64 {
		l := &replica{}
		var r float64
		for i := 0; i <= n; i++ {
			l.bytes = bytes(i)
			l.sampleLocked(at(i))
			r = l.steadyRateLocked(at(i))
		}
		return r
	}
	near := func(name string, got, want float64) {
		t.Helper()
		if got < 0.9*want || got > 1.1*want {
			t.Errorf("%s: rate %.0f, want about %.0f", name, got, want)
		}
	}
	// 2 MB/s, 1 MB a sample.
	near("steady", run(40, func(i int) int64 { return int64(i) * mb }), 2*mb)
	// 8 MB every 4 s (2 MB/s), seen at any point between bursts.
	burst := func(i int) int64 { return int64(i/8) * 8 * mb }
	for _, n := range []int{17, 20, 23, 40, 47} {
		near("bursts", run(n, burst), 2*mb)
	}
	// The same, each burst but the first seen half in one sample, half in the next.
	split := func(i int) int64 {
		b := burst(i)
		if i >= 8 && i%8 == 0 {
			b -= 4 * mb
		}
		return b
	}
	for _, n := range []int{18, 20, 23, 24, 40, 41, 47} { // 24 and 40: a burst half seen
		near(fmt.Sprint("split bursts to ", n), run(n, split), 2*mb)
	}
	// The same, each burst but the first seen in three samples, the middle one quiet (a busy
	// machine verifying one burst's chunks over a second), from the third burst on (until a
	// second pause between bursts is seen, the rate is the plain one since the first byte).
	gapped := func(i int) int64 {
		b := burst(i)
		if i >= 8 && (i%8 == 0 || i%8 == 1) {
			b -= 6 * mb
		}
		return b
	}
	for _, n := range []int{24, 25, 26, 30, 40, 41, 42, 47} {
		near(fmt.Sprint("gapped bursts to ", n), run(n, gapped), 2*mb)
	}
	// A burst of which one chunk in sixteen is seen yet (CI caught the rate at 0.55× then).
	trickle := func(i int) int64 {
		b := burst(i)
		if i >= 8 && i%8 == 0 {
			b -= 15 * mb / 2
		}
		return b
	}
	for _, n := range []int{24, 32, 40} {
		near(fmt.Sprint("a burst begun, to ", n), run(n, trickle), 2*mb)
	}
	// Bursts, then nothing from 24 s on: the rate falls, to nothing once the window passed.
	stalled := func(i int) int64 { return burst(min(i, 48)) }
	if r := run(60, stalled); r > 1.5*mb {
		t.Errorf("6 s into a stall: rate %.0f, want it falling under %d", r, 3*mb/2)
	}
	if r := run(48+2*int(rateHistory/time.Second), stalled); r != 0 {
		t.Errorf("a stall longer than the history: rate %.0f, want 0", r)
	}
	// Nothing yet.
	if r := run(10, func(int) int64 { return 0 }); r != 0 {
		t.Errorf("before the first byte: rate %.0f, want 0", r)
	}
}
