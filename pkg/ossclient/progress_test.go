package ossclient

import "testing"

// TestTrackerWatermarks drives the tracker through out-of-order part completions and checks
// the contiguous and verified prefixes at every step.
func TestTrackerWatermarks(t *testing.T) {
	m, err := NewManifest("models", "m/", []Object{
		{Key: "m/a", Size: 10}, // parts 0 (0-5), 1 (5-10)
		{Key: "m/b", Size: 0},  // no parts, verified from the start
		{Key: "m/c", Size: 4},  // part 2
	})
	if err != nil {
		t.Fatal(err)
	}
	parts := []part{{obj: 0, off: 0, size: 5}, {obj: 0, off: 5, size: 5}, {obj: 2, off: 0, size: 4}}
	var seen []Progress
	tr := newTracker(m, parts, 0, nil, func(p Progress) { seen = append(seen, p) })
	last := func() Progress { return seen[len(seen)-1] }
	check := func(step string, done, contiguous, verified int64) {
		t.Helper()
		if p := last(); p.Done != done || p.Contiguous != contiguous || p.Verified != verified || p.Total != 14 {
			t.Errorf("%s: %+v, want done %d contiguous %d verified %d", step, p, done, contiguous, verified)
		}
	}
	tr.wrote(2, 4) // the last part first: not contiguous
	check("tail written", 4, 0, 0)
	tr.partComplete(2)
	tr.objectVerified(2)
	check("tail verified", 4, 0, 0)
	tr.wrote(0, 3) // head part partially written: contiguous follows it
	check("head partial", 7, 3, 0)
	tr.wrote(1, 5)
	tr.partComplete(1)
	check("middle complete", 12, 3, 0)
	tr.wrote(0, 2)
	tr.partComplete(0)
	check("head complete", 14, 14, 0)
	tr.objectVerified(0)
	check("all verified", 14, 14, 14)
	for i := 1; i < len(seen); i++ {
		a, b := seen[i-1], seen[i]
		if b.Done < a.Done || b.Contiguous < a.Contiguous || b.Verified < a.Verified {
			t.Errorf("progress went backwards: %+v then %+v", a, b)
		}
		if b.Verified > b.Contiguous || b.Contiguous > b.Done {
			t.Errorf("inconsistent progress %+v", b)
		}
	}
}
