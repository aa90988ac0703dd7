package ossemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/aliyun/alibabacloud-oss-go-sdk-v2/oss"
)

func TestFaultStatus(t *testing.T) {
	srv := Start(t, Options{})
	srv.PutObject("bkt", "k", []byte("data"))
	c := newClient(srv) // 3 attempts

	srv.InjectFault(Fault{Op: OpGet, Key: "k", Kind: FaultStatus, Count: 2})
	if got, _ := getBytes(t, c, "bkt", "k"); string(got) != "data" {
		t.Errorf("GetObject after two 503s = %q", got)
	}
	st := srv.Stats()
	if st.FaultsHit != 2 || st.ErrorsByCode["ServiceUnavailable"] != 2 || st.Requests[OpGet] != 3 {
		t.Errorf("stats = %+v", st)
	}

	srv.InjectFault(Fault{Op: OpHead, Kind: FaultStatus, Status: http.StatusInternalServerError, Count: -1})
	_, err := c.HeadObject(ctxT(t), &oss.HeadObjectRequest{Bucket: oss.Ptr("bkt"), Key: oss.Ptr("k")})
	wantServiceError(t, err, http.StatusInternalServerError, "InternalError")
	if st := srv.Stats(); st.FaultsHit != 5 {
		t.Errorf("FaultsHit = %d, want 5 (2 + 3 attempts)", st.FaultsHit)
	}
	srv.ClearFaults()
	if _, err := c.HeadObject(ctxT(t), &oss.HeadObjectRequest{Bucket: oss.Ptr("bkt"), Key: oss.Ptr("k")}); err != nil {
		t.Errorf("HeadObject after ClearFaults: %v", err)
	}
}

func TestFaultMatching(t *testing.T) {
	srv := Start(t, Options{})
	for _, k := range []string{"a/1", "a/2", "b/1"} {
		srv.PutObject("bkt", k, []byte(k))
		srv.PutObject("other", k, []byte(k))
	}
	c := newClient(srv, withRetries(1))
	srv.InjectFault(Fault{Bucket: "bkt", KeyPrefix: "a/", Kind: FaultStatus, Status: http.StatusServiceUnavailable, Count: 1})
	srv.InjectFault(Fault{Op: OpGet, Kind: FaultStatus, Status: http.StatusTooManyRequests, Count: 2})
	get := func(bucket, key string) int {
		res, err := c.GetObject(ctxT(t), &oss.GetObjectRequest{Bucket: oss.Ptr(bucket), Key: oss.Ptr(key)})
		if err != nil {
			return serviceError(t, err).StatusCode
		}
		res.Body.Close()
		return res.StatusCode
	}
	for i, tc := range []struct {
		bucket, key string
		want        int
	}{
		{"other", "a/1", 429}, // first fault does not match the bucket; second does
		{"bkt", "a/2", 503},   // first fault, now used up
		{"bkt", "a/1", 429},   // second fault, now used up
		{"bkt", "a/1", 200},
	} {
		if got := get(tc.bucket, tc.key); got != tc.want {
			t.Errorf("request %d (%s/%s): status %d, want %d", i, tc.bucket, tc.key, got, tc.want)
		}
	}
	// Body faults only hit GET bodies that reach After.
	srv.InjectFault(Fault{Kind: FaultTruncate, After: 3})
	if _, err := c.HeadObject(ctxT(t), &oss.HeadObjectRequest{Bucket: oss.Ptr("bkt"), Key: oss.Ptr("b/1")}); err != nil {
		t.Errorf("HeadObject with a pending truncate fault: %v", err)
	}
	if got, _ := getBytes(t, c, "bkt", "b/1"); string(got) != "b/1" {
		t.Errorf("GET of a 3-byte body with a pending truncate fault after 3 = %q", got)
	}
	if st := srv.Stats(); st.FaultsHit != 3 {
		t.Errorf("FaultsHit = %d, want 3", st.FaultsHit)
	}
	srv.PutObject("bkt", "long", []byte("0123456789"))
	res, err := c.GetObject(ctxT(t), &oss.GetObjectRequest{Bucket: oss.Ptr("bkt"), Key: oss.Ptr("long")})
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if got, err := io.ReadAll(res.Body); string(got) != "012" || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("GET of a 10-byte body: %q, %v; want 3 bytes then io.ErrUnexpectedEOF", got, err)
	}
	if st := srv.Stats(); st.FaultsHit != 4 {
		t.Errorf("FaultsHit = %d, want 4", st.FaultsHit)
	}
}

func TestFaultTruncate(t *testing.T) {
	srv := Start(t, Options{})
	data := pseudoRandom(1<<20, 4)
	srv.PutObject("bkt", "k", data)
	srv.InjectFault(Fault{Op: OpGet, Key: "k", Kind: FaultTruncate, After: 300_000})
	c := newClient(srv)
	res, err := c.GetObject(ctxT(t), &oss.GetObjectRequest{Bucket: oss.Ptr("bkt"), Key: oss.Ptr("k")})
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if res.ContentLength != int64(len(data)) {
		t.Errorf("Content-Length = %d, want the full %d", res.ContentLength, len(data))
	}
	got, err := io.ReadAll(res.Body)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("read error = %v, want io.ErrUnexpectedEOF", err)
	}
	if !bytes.Equal(got, data[:300_000]) {
		t.Errorf("read %d bytes before the cut, want the first 300000", len(got))
	}
	if got, _ := getBytes(t, c, "bkt", "k"); !bytes.Equal(got, data) {
		t.Error("the next GET is not whole")
	}
}

func TestFaultCorrupt(t *testing.T) {
	srv := Start(t, Options{})
	data := pseudoRandom(1<<20, 5)
	srv.PutObject("bkt", "mem", data)
	path := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.PutFile("bkt", "file", path); err != nil {
		t.Fatal(err)
	}
	c := newClient(srv)
	for _, tc := range []struct {
		after    int64
		rng      string
		bodyOff  int // offset of the body in data
		wantDiff int // offset in the body of the flipped byte
	}{
		{after: 0, wantDiff: 1 << 19},
		{after: 12345, wantDiff: 12345},
		{after: 262144, wantDiff: 262144}, // on a chunk boundary
		{after: 10, rng: "bytes=1000-1999", bodyOff: 1000, wantDiff: 10},
		{after: 0, rng: "bytes=1000-1999", bodyOff: 1000, wantDiff: 500},
	} {
		for _, key := range []string{"mem", "file"} {
			t.Run(fmt.Sprintf("%s/%d/%s", key, tc.after, tc.rng), func(t *testing.T) {
				srv.InjectFault(Fault{Key: key, Kind: FaultCorrupt, After: tc.after})
				req := &oss.GetObjectRequest{Bucket: oss.Ptr("bkt"), Key: oss.Ptr(key)}
				want := data
				if tc.rng != "" {
					req.Range = oss.Ptr(tc.rng)
					want = data[tc.bodyOff : tc.bodyOff+1000]
				}
				res, err := c.GetObject(ctxT(t), req)
				if err != nil {
					t.Fatal(err)
				}
				defer res.Body.Close()
				got, err := io.ReadAll(res.Body)
				if err != nil || len(got) != len(want) {
					t.Fatalf("read %d bytes, %v; want %d", len(got), err, len(want))
				}
				var diffs []int
				for i := range got {
					if got[i] != want[i] {
						diffs = append(diffs, i)
					}
				}
				if len(diffs) != 1 || diffs[0] != tc.wantDiff {
					t.Errorf("bytes differ at %v, want only at %d", diffs, tc.wantDiff)
				}
			})
		}
	}
}

func TestFaultReset(t *testing.T) {
	srv := Start(t, Options{})
	srv.PutObject("bkt", "k", []byte("data"))
	srv.InjectFault(Fault{Op: OpGet, Kind: FaultReset})
	resp, _, err := rawRequest(t, srv, http.MethodGet, "/bkt/k", nil, nil)
	if err == nil {
		t.Fatalf("GET through a reset = %v, want an error", resp.Status)
	}
	// The SDK retries a reset connection.
	srv.InjectFault(Fault{Op: OpGet, Kind: FaultReset})
	if got, _ := getBytes(t, newClient(srv), "bkt", "k"); string(got) != "data" {
		t.Errorf("GetObject after a reset = %q", got)
	}
	if st := srv.Stats(); st.FaultsHit != 2 {
		t.Errorf("FaultsHit = %d, want 2", st.FaultsHit)
	}
}

func TestFaultSlowFirstByte(t *testing.T) {
	srv := Start(t, Options{})
	srv.PutObject("bkt", "k", []byte("data"))
	const delay = 300 * time.Millisecond
	srv.InjectFault(Fault{Op: OpHead, Kind: FaultSlowFirstByte, Delay: delay})
	c := newClient(srv)
	start := time.Now()
	if _, err := c.HeadObject(ctxT(t), &oss.HeadObjectRequest{Bucket: oss.Ptr("bkt"), Key: oss.Ptr("k")}); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < delay {
		t.Errorf("HeadObject answered after %v, want at least %v", d, delay)
	}
}

// TestSlowGetServesVersionAtStart replaces an object while a GET of it is
// held by a slow first byte.
func TestSlowGetServesVersionAtStart(t *testing.T) {
	srv := Start(t, Options{})
	srv.PutObject("bkt", "k", []byte("old"))
	srv.InjectFault(Fault{Op: OpGet, Kind: FaultSlowFirstByte, Delay: 200 * time.Millisecond})
	c := newClient(srv)
	got := make(chan string, 1)
	go func() {
		res, err := c.GetObject(ctxT(t), &oss.GetObjectRequest{Bucket: oss.Ptr("bkt"), Key: oss.Ptr("k")})
		if err != nil {
			got <- err.Error()
			return
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		got <- string(b)
	}()
	waitFor(t, "the GET held", func() bool { return srv.Stats().FaultsHit == 1 })
	srv.PutObject("bkt", "k", []byte("new"))
	if g := <-got; g != "old" {
		t.Errorf("held GET = %q, want the version at its start", g)
	}
}

// TestInFlightGets holds N GETs open with a slow first byte and checks the
// in-flight counters.
func TestInFlightGets(t *testing.T) {
	srv := Start(t, Options{})
	srv.PutObject("bkt", "k", []byte("data"))
	const n = 6
	srv.InjectFault(Fault{Op: OpGet, Kind: FaultSlowFirstByte, Delay: time.Hour, Count: n})
	c := newClient(srv, withRetries(1))
	ctx, cancel := context.WithCancel(ctxT(t))
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			res, err := c.GetObject(ctx, &oss.GetObjectRequest{Bucket: oss.Ptr("bkt"), Key: oss.Ptr("k")})
			if err == nil {
				res.Body.Close()
				t.Error("GET held by the fault succeeded")
			}
		})
	}
	waitFor(t, "all GETs in flight", func() bool { return srv.Stats().InFlightGets == n })
	cancel() // the server sees the clients go and ends the requests
	wg.Wait()
	waitFor(t, "no GET in flight", func() bool { return srv.Stats().InFlightGets == 0 })
	if st := srv.Stats(); st.MaxInFlightGets != n || st.Requests[OpGet] != n || st.FaultsHit != n || st.Connections != n {
		t.Errorf("stats = %+v", st)
	}
	srv.ResetStats()
	if st := srv.Stats(); st.MaxInFlightGets != 0 || len(st.Requests) != 0 || st.FaultsHit != 0 || st.Connections != 0 {
		t.Errorf("stats after reset = %+v", st)
	}
}

func TestEgressLimit(t *testing.T) {
	srv := Start(t, Options{EgressBytesPerSec: 16 << 20})
	data := pseudoRandom(8<<20, 6)
	srv.PutObject("bkt", "k", data)
	c := newClient(srv)
	start := time.Now()
	got, _ := getBytes(t, c, "bkt", "k")
	if d := time.Since(start); d < 400*time.Millisecond {
		t.Errorf("8 MiB at 16 MiB/s took %v, want at least 0.4s", d)
	}
	if !bytes.Equal(got, data) {
		t.Error("throttled body differs")
	}

	// The limit is shared by all connections: two 4 MiB GETs in parallel.
	srv.PutObject("bkt", "half", data[:4<<20])
	start = time.Now()
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			res, err := c.GetObject(ctxT(t), &oss.GetObjectRequest{Bucket: oss.Ptr("bkt"), Key: oss.Ptr("half")})
			if err != nil {
				t.Error(err)
				return
			}
			defer res.Body.Close()
			_, _ = io.Copy(io.Discard, res.Body)
		})
	}
	wg.Wait()
	if d := time.Since(start); d < 400*time.Millisecond {
		t.Errorf("2 × 4 MiB in parallel at 16 MiB/s took %v, want at least 0.4s", d)
	}

	srv.SetEgressRate(0)
	srv.ResetStats()
	getBytes(t, c, "bkt", "k")
	st := srv.Stats()
	if st.BytesServed != 8<<20 || st.BytesByKey["bkt/k"] != 8<<20 || st.Requests[OpGet] != 1 {
		t.Errorf("stats = %+v", st)
	}
}

// TestFaultHang: a hung request gets no answer at all until its client gives up; then the
// request ends on the server too, and the next request is served.
func TestFaultHang(t *testing.T) {
	srv := Start(t, Options{})
	srv.PutObject("bkt", "k", []byte("data"))
	srv.InjectFault(Fault{Op: OpList, Kind: FaultHang})
	c := newClient(srv, withRetries(1))
	ctx, cancel := context.WithCancel(ctxT(t))
	errc := make(chan error, 1)
	go func() {
		_, err := c.ListObjectsV2(ctx, &oss.ListObjectsV2Request{Bucket: oss.Ptr("bkt")})
		errc <- err
	}()
	waitFor(t, "the LIST held", func() bool { return srv.Stats().FaultsHit == 1 })
	select {
	case err := <-errc:
		t.Fatalf("a hung LIST answered: %v", err)
	default:
	}
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Errorf("hung LIST after the client gave up: %v, want context.Canceled", err)
	}
	if got, _ := getBytes(t, newClient(srv), "bkt", "k"); string(got) != "data" {
		t.Errorf("GetObject after a hang = %q", got)
	}
	var k FaultKind
	if err := k.UnmarshalText([]byte("hang")); err != nil || k != FaultHang {
		t.Errorf("UnmarshalText(hang) = %v, %v", k, err)
	}
}

// TestFaultEndlessList: a hit LIST page claims more pages and points back at itself, so a
// client following IsTruncated gets the same page again; other requests are not hit, and
// once the fault is used up the listing ends as usual.
func TestFaultEndlessList(t *testing.T) {
	srv := Start(t, Options{})
	for _, k := range []string{"m/a", "m/b", "m/c"} {
		srv.PutObject("bkt", k, []byte(k))
	}
	c := newClient(srv)
	list := func(token *string) (*oss.ListObjectsV2Result, []string) {
		t.Helper()
		res, err := c.ListObjectsV2(ctxT(t), &oss.ListObjectsV2Request{Bucket: oss.Ptr("bkt"), Prefix: oss.Ptr("m/"), MaxKeys: 2, ContinuationToken: token})
		if err != nil {
			t.Fatal(err)
		}
		var keys []string
		for _, o := range res.Contents {
			keys = append(keys, oss.ToString(o.Key))
		}
		return res, keys
	}

	srv.InjectFault(Fault{Bucket: "bkt", Kind: FaultEndlessList})
	if got, _ := getBytes(t, c, "bkt", "m/a"); string(got) != "m/a" {
		t.Errorf("GetObject with a pending endless-list fault = %q", got)
	}
	// A first page: truncated, with no token to go on with (the client starts over).
	if res, keys := list(nil); !res.IsTruncated || res.NextContinuationToken != nil || !slices.Equal(keys, []string{"m/a", "m/b"}) {
		t.Errorf("first page under the fault: truncated %v, token %v, keys %v; want truncated, no token, [m/a m/b]",
			res.IsTruncated, res.NextContinuationToken, keys)
	}
	res, _ := list(nil)
	token := res.NextContinuationToken
	if !res.IsTruncated || token == nil {
		t.Fatalf("a normal first page of 2 of 3 keys: truncated %v, token %v", res.IsTruncated, token)
	}
	// The last page, twice: it points back at itself.
	srv.InjectFault(Fault{Kind: FaultEndlessList, Count: 2})
	for i := range 2 {
		res, keys := list(token)
		if !res.IsTruncated || oss.ToString(res.NextContinuationToken) != oss.ToString(token) || !slices.Equal(keys, []string{"m/c"}) {
			t.Errorf("last page under the fault, hit %d: truncated %v, token %q, keys %v; want truncated, the token sent %q, [m/c]",
				i+1, res.IsTruncated, oss.ToString(res.NextContinuationToken), keys, oss.ToString(token))
		}
	}
	if res, keys := list(token); res.IsTruncated || res.NextContinuationToken != nil || !slices.Equal(keys, []string{"m/c"}) {
		t.Errorf("last page once the fault is used up: truncated %v, token %v, keys %v", res.IsTruncated, res.NextContinuationToken, keys)
	}
	if st := srv.Stats(); st.FaultsHit != 3 {
		t.Errorf("FaultsHit = %d, want 3", st.FaultsHit)
	}
	var k FaultKind
	if err := k.UnmarshalText([]byte("endless-list")); err != nil || k != FaultEndlessList {
		t.Errorf("UnmarshalText(endless-list) = %v, %v", k, err)
	}
}
