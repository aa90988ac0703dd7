package ossclient

import "sync"

// Progress is the state of a download, reported after every write.
type Progress struct {
	// Total is the model's size.
	Total int64
	// Done counts bytes written, in whatever order parts complete.
	Done int64
	// Contiguous: bytes [0, Contiguous) of the model's byte stream (its objects concatenated in
	// manifest order) are written. A relay can forward them in order while later parts are
	// still in flight.
	Contiguous int64
	// Verified: bytes [0, Verified) lie in objects whose CRC-64 matched OSS. Objects are the
	// unit of verification: OSS publishes one CRC per object.
	Verified int64
}

// tracker turns part writes and object verifications, which happen out of order on many
// workers, into the monotonic Progress of the whole model.
type tracker struct {
	mu       sync.Mutex
	p        Progress
	written  []int64 // bytes written per part
	complete []bool  // per part
	next     int     // first part not complete
	verified []bool  // per object
	nextObj  int     // first object not verified
	parts    []part
	m        *Manifest
	report   func(Progress)
}

// newTracker starts with the resumed bytes already present, and the objects present whole
// counted as verified (by the caller).
func newTracker(m *Manifest, parts []part, resumed int64, present []bool, report func(Progress)) *tracker {
	t := &tracker{
		p:        Progress{Total: m.Size(), Done: resumed},
		written:  make([]int64, len(parts)),
		complete: make([]bool, len(parts)),
		verified: make([]bool, len(m.Objects)),
		parts:    parts,
		m:        m,
		report:   report,
	}
	copy(t.verified, present) // nil: none
	t.advance()
	return t
}

// wrote records n more bytes written at the end of part i's written prefix.
func (t *tracker) wrote(i int, n int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.written[i] += n
	t.p.Done += n
	if i == t.next {
		t.p.Contiguous += n
	}
	t.emit()
}

// partComplete records that part i is entirely written.
func (t *tracker) partComplete(i int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.complete[i] = true
	t.advance()
	t.emit()
}

// objectVerified records that object o's CRC-64 matched.
func (t *tracker) objectVerified(o int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.verified[o] = true
	t.advance()
	t.emit()
}

// advance moves the contiguous and verified watermarks past complete parts and verified
// objects (empty objects are verified from the start).
func (t *tracker) advance() {
	for t.next < len(t.parts) && t.complete[t.next] {
		t.next++
	}
	if t.next < len(t.parts) {
		p := t.parts[t.next]
		t.p.Contiguous = t.m.Offset(p.obj) + p.off + p.skip + t.written[t.next]
	} else {
		t.p.Contiguous = t.p.Total
	}
	for t.nextObj < len(t.verified) && (t.verified[t.nextObj] || t.m.Objects[t.nextObj].Size == 0) {
		t.nextObj++
	}
	if t.nextObj < len(t.verified) {
		t.p.Verified = t.m.Offset(t.nextObj)
	} else {
		t.p.Verified = t.p.Total
	}
}

func (t *tracker) emit() {
	if t.report != nil {
		t.report(t.p)
	}
}
