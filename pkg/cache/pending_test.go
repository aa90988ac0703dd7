package cache

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestPendingHoldOutlastsExpiry: a holder stops waiting for a staging (kubelet's publish
// answered Unavailable) and comes back only after its retry backoff, longer than ExpireAfter.
// The model is kept for it: the retry finds it staged, nothing is fetched twice. A holder that
// never comes back keeps it only RetryHold after the staging ended; the model is then released
// as by Release.
func TestPendingHoldOutlastsExpiry(t *testing.T) {
	e := newEnv(t, 0)
	e.cfg.ExpireAfter = 30 * time.Second
	e.cfg.RetryHold = 150 * time.Second
	s := e.open(t)

	// control: a model released now, expiring after ExpireAfter. Its expiry tells that the
	// janitor looked at every model at the clock's new time (one pass under one lock).
	control := func(prefix string) Model {
		files := sizedFiles(10)
		m := testModel(t, prefix, files)
		if _, err := s.Acquire(t.Context(), m, newMemSource(files), "/pods/control/"+prefix); err != nil {
			t.Fatal(err)
		}
		if err := s.Release("/pods/control/" + prefix); err != nil {
			t.Fatal(err)
		}
		return m
	}
	gaveUp := func(m Model, src *memSource, holder string) {
		t.Helper()
		ctx, cancel := context.WithCancel(t.Context())
		errc := make(chan error, 1)
		go func() {
			_, err := s.Acquire(ctx, m, src, holder)
			errc <- err
		}()
		<-src.halfway
		cancel()
		if err := <-errc; !errors.Is(err, ErrStaging) {
			t.Fatalf("Acquire after its caller stopped waiting = %v, want ErrStaging", err)
		}
		if key, ok := s.Pending(holder); !ok || key != m.Key() {
			t.Fatalf("Pending(%s) = %q, %v; want the model's key", holder, key, ok)
		}
	}

	files := sizedFiles(1000)
	m := testModel(t, "qwen/", files)
	src := newMemSource(files)
	src.gate = make(chan struct{})
	gaveUp(m, src, "/pods/a/mount")
	lone := testModel(t, "lone/", files)
	loneSrc := newMemSource(files)
	loneSrc.gate = make(chan struct{})
	gaveUp(lone, loneSrc, "/pods/b/mount")

	c1 := control("c1/")
	close(src.gate)
	close(loneSrc.gate)
	eventually(t, "the stagings to commit", func() bool { return s.Has(m.Key()) && s.Has(lone.Key()) })

	// Past ExpireAfter: the control expires, the models waited for stay.
	e.clock.Step(31 * time.Second)
	eventually(t, "the control model to expire", func() bool { return !s.Has(c1.Key()) })
	if !s.Has(m.Key()) || !s.Has(lone.Key()) {
		t.Fatalf("a model whose holder stopped waiting expired before its retry (kept: %v, %v)", s.Has(m.Key()), s.Has(lone.Key()))
	}
	// The retry, after a backoff of two minutes, finds it.
	c2 := control("c2/")
	e.clock.Step(90 * time.Second)
	eventually(t, "the second control model to expire", func() bool { return !s.Has(c2.Key()) })
	if _, err := s.Acquire(t.Context(), m, src, "/pods/a/mount"); err != nil {
		t.Fatalf("retry: %v", err)
	}
	if n := src.fetches.Load(); n != 1 {
		t.Errorf("%d fetches, want 1: the retry should find the model staged", n)
	}
	if _, ok := s.Pending("/pods/a/mount"); ok {
		t.Errorf("the pending hold outlived the holder's Acquire")
	}

	// The holder of lone never comes back: its hold lapses RetryHold after the staging ended,
	// and the model expires ExpireAfter later.
	c3 := control("c3/")
	e.clock.Step(30 * time.Second) // 151 s after the staging: the hold lapsed
	eventually(t, "the third control model to expire", func() bool { return !s.Has(c3.Key()) })
	if _, ok := s.Pending("/pods/b/mount"); ok {
		t.Errorf("a pending hold outlasted RetryHold")
	}
	if !s.Has(lone.Key()) {
		t.Fatal("released at the hold's end, not ExpireAfter after it")
	}
	e.clock.Step(31 * time.Second) // ExpireAfter after the janitor's pass that ended the hold, and a second
	eventually(t, "the model nobody came back for to expire", func() bool { return !s.Has(lone.Key()) })
	if _, err := s.Acquire(t.Context(), m, src, "/pods/a/mount"); err != nil || !s.Has(m.Key()) {
		t.Errorf("the model held by a is gone: %v", err)
	}
}

// TestPendingHoldEnds: a pending hold ends with a failed staging, and with a release of its
// holder (the model is then released as by Release).
func TestPendingHoldEnds(t *testing.T) {
	e := newEnv(t, 0)
	e.cfg.ExpireAfter = 30 * time.Second
	s := e.open(t)
	files := sizedFiles(1000)

	m := testModel(t, "qwen/", files)
	src := newMemSource(files)
	src.gate = make(chan struct{})
	src.fail = errBoom
	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() {
		_, err := s.Acquire(ctx, m, src, "/pods/a/mount")
		errc <- err
	}()
	<-src.halfway
	cancel()
	if err := <-errc; !errors.Is(err, ErrStaging) {
		t.Fatalf("Acquire = %v, want ErrStaging", err)
	}
	close(src.gate)
	eventually(t, "the staging to fail", func() bool { _, ok := s.Staging(m.Key()); return !ok })
	if _, ok := s.Pending("/pods/a/mount"); ok {
		t.Errorf("a pending hold outlived its failed staging")
	}

	m2 := testModel(t, "llama/", files)
	src2 := newMemSource(files)
	src2.gate = make(chan struct{})
	ctx, cancel = context.WithCancel(t.Context())
	go func() {
		_, err := s.Acquire(ctx, m2, src2, "/pods/b/mount")
		errc <- err
	}()
	<-src2.halfway
	cancel()
	if err := <-errc; !errors.Is(err, ErrStaging) {
		t.Fatalf("Acquire = %v, want ErrStaging", err)
	}
	close(src2.gate)
	eventually(t, "the staging to commit", func() bool { return s.Has(m2.Key()) })
	if err := s.Release("/pods/b/mount"); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.Pending("/pods/b/mount"); ok {
		t.Errorf("a pending hold outlived its holder's release")
	}
	e.clock.Step(31 * time.Second)
	eventually(t, "the released model to expire", func() bool { return !s.Has(m2.Key()) })
}
