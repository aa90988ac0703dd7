package ossclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aliyun/alibabacloud-oss-go-sdk-v2/oss"
	"github.com/aliyun/alibabacloud-oss-go-sdk-v2/oss/retry"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// Download defaults. The part size was chosen with `make bench` (see docs/benchmarks.md):
// smaller parts pay a request per few MB, larger ones leave workers idle at an object's end
// and delay the contiguous prefix a relay forwards.
const (
	DefaultConcurrency       = 16 * 16 // OSS Connector's prefetch.vcpus × prefetch.workers
	DefaultPartSize    int64 = 8 << 20
	minPartSize        int64 = 256 << 10
	// allocChunk is the step of preallocation: workers start on an object's first parts
	// while the rest of a multi-GB shard is still being allocated.
	allocChunk int64 = 64 << 20
	bufferSize       = 256 << 10 // one read+CRC+write step of a worker
)

// DownloadOptions tune Download. Zero values mean the defaults.
type DownloadOptions struct {
	// Concurrency is the number of ranged GETs in flight (OSS Connector's prefetch.vcpus ×
	// prefetch.workers). Capped at MaxConcurrency and at the number of parts.
	Concurrency int
	// PartSize is the length of one ranged GET, rounded up to whole chunks.
	PartSize int64
	// Layout cuts the model into chunks (default: NewLayout(m, DefaultChunkSize)).
	Layout *Layout
	// Progress, if set, is called after every write. Calls are serialized, values never
	// decrease, and it must return quickly (it runs on the download's hot path).
	Progress func(Progress)
	// Chunk, if set, is called when chunk i is written, with its CRC-64 — before the object's
	// CRC-64 is checked. Calls come from many workers at once, in any order.
	Chunk func(i int, crc uint64)
	// Resume, if set, says which bytes the files under dir already hold (verified by the
	// caller): only the rest is fetched, and the objects it completes are checked with the
	// CRCs given for the bytes already there.
	Resume *Resume
}

// Resume describes the chunks already present under dir, verified by the caller, in any
// order: chunk i is there whole when Have[i], with CRCs[i] its CRC-64; Partial holds chunks of
// which only the first Bytes are there. A chain node that received chunks out of order from a
// peer continues from OSS with exactly what it lacks.
type Resume struct {
	Have    []bool
	CRCs    []uint64
	Partial map[int]PartialChunk
}

// PartialChunk is the start of a chunk: its first Bytes, whose CRC-64 is CRC.
type PartialChunk struct {
	Bytes int64
	CRC   uint64
}

func (r *Resume) partialOf(i int) (PartialChunk, bool) {
	if r == nil {
		return PartialChunk{}, false
	}
	p, ok := r.Partial[i]
	return p, ok
}

func (r *Resume) isPartial(i int) bool { _, ok := r.partialOf(i); return ok }

// has reports whether chunk i is present whole.
func (r *Resume) has(i int) bool { return r != nil && i < len(r.Have) && r.Have[i] }

// check validates r against layout and returns the bytes it says are present.
func (r *Resume) check(layout *Layout) (int64, error) {
	if r == nil {
		return 0, nil
	}
	if len(r.Have) > layout.Len() || len(r.CRCs) < len(r.Have) {
		return 0, fmt.Errorf("resume: %d chunks present (%d CRCs) for a model of %d chunks", len(r.Have), len(r.CRCs), layout.Len())
	}
	var present int64
	for i, ok := range r.Have {
		if ok {
			present += layout.Chunk(i).Size
		}
	}
	for i, p := range r.Partial {
		if i < 0 || i >= layout.Len() || r.has(i) || p.Bytes <= 0 || p.Bytes >= layout.Chunk(i).Size {
			return 0, fmt.Errorf("resume: %d bytes of chunk %d do not fit the model's %d chunks", p.Bytes, i, layout.Len())
		}
		present += p.Bytes
	}
	return present, nil
}

// part is one ranged GET: chunks [first, end) of one object, starting skip bytes into chunk
// first (a resumed download's first part).
type part struct {
	obj        int
	first, end int
	off, size  int64 // object bytes [off, off+size)
	skip       int64
	initCRC    uint64 // CRC of the skipped bytes of chunk first
}

// Download writes every object of m under dir (which must exist; files are created, or
// reused without truncation), fetching parts in parallel with resumable ranged GETs. Each
// request carries If-Match with the manifest's ETag, so a model changed in OSS mid-download
// fails with ErrChanged instead of mixing versions; every chunk's CRC-64 is computed in-line
// and the chunks' CRCs are combined and checked against each object's CRC-64 from OSS
// (ErrIntegrity). When Download returns nil every byte under dir has been verified. On error,
// files under dir are incomplete: the caller discards them or resumes.
func (c *Client) Download(ctx context.Context, m *Manifest, dir string, opts DownloadOptions) error {
	start := time.Now()
	d, err := c.newDownload(m, dir, opts)
	if err != nil {
		return err
	}
	defer d.root.Close()
	err = d.run(ctx)
	d.files.closeAll()
	if err != nil {
		return err
	}
	klog.FromContext(ctx).V(2).Info("Downloaded model", "model", m.URI().String(), "bytes", m.Size()-d.resumed,
		"seconds", time.Since(start).Seconds(), "requests", d.requests.Load(), "retries", d.retries.Load())
	return nil
}

type download struct {
	c        *Client
	m        *Manifest
	layout   *Layout
	root     *os.Root
	parts    []part
	chunkCRC []uint64       // per chunk, set when the chunk is complete
	left     []atomic.Int32 // parts of each object not yet complete
	alloc    watermark      // model bytes [0, alloc) are preallocated
	files    *fileTable
	track    *tracker
	onChunk  func(int, uint64)
	workers  int
	resumed  int64        // bytes present before the download
	next     atomic.Int64 // next part to hand out: parts go out in model order
	requests atomic.Int64
	retries  atomic.Int64
}

func (c *Client) newDownload(m *Manifest, dir string, opts DownloadOptions) (*download, error) {
	layout := opts.Layout
	if layout == nil {
		layout = NewLayout(m, DefaultChunkSize)
	} else if layout.m != m && layout.m.Fingerprint() != m.Fingerprint() {
		return nil, fmt.Errorf("download %s: the layout is of another model", m.URI())
	}
	cs := layout.ChunkSize()
	partSize := max(opts.PartSize, 0)
	if partSize == 0 {
		partSize = DefaultPartSize
	}
	chunksPerPart := int(max(1, (max(partSize, minPartSize)+cs-1)/cs))
	workers := opts.Concurrency
	if workers <= 0 {
		workers = DefaultConcurrency
	}
	workers = min(workers, MaxConcurrency)

	d := &download{c: c, m: m, layout: layout, left: make([]atomic.Int32, len(m.Objects)), onChunk: opts.Chunk,
		chunkCRC: make([]uint64, layout.Len())}
	r := opts.Resume
	resumed, err := r.check(layout)
	if err != nil {
		return nil, fmt.Errorf("download %s: %w", m.URI(), err)
	}
	d.resumed = resumed
	if r != nil {
		for i, ok := range r.Have {
			if ok {
				d.chunkCRC[i] = r.CRCs[i]
			}
		}
	}
	present := make([]bool, len(m.Objects)) // objects the caller has whole: nothing to fetch or check
	for i, o := range m.Objects {
		if o.Size == 0 && o.CRC64 != 0 {
			return nil, &Error{Op: "get", Target: m.URI().Object(o.Key), Kind: ErrIntegrity, Err: fmt.Errorf("manifest gives an empty object CRC-64 %d", o.CRC64)}
		}
		// Parts cover the runs of missing chunks, at most chunksPerPart each; a chunk present
		// in part starts a part of its own, skipping its bytes.
		first, end := layout.ObjectChunks(i)
		n := 0
		for c := first; c < end; {
			if r.has(c) {
				c++
				continue
			}
			p := part{obj: i, first: c, end: c + 1}
			if pc, ok := r.partialOf(c); ok {
				p.skip, p.initCRC = pc.Bytes, pc.CRC
			}
			for p.end < end && p.end-c < chunksPerPart && !r.has(p.end) && !r.isPartial(p.end) {
				p.end++
			}
			p.off = layout.Chunk(c).Offset
			last := layout.Chunk(p.end - 1)
			p.size = last.Offset + last.Size - p.off
			d.parts = append(d.parts, p)
			n++
			c = p.end
		}
		d.left[i].Store(int32(n))
		present[i] = n == 0 && o.Size > 0
	}
	d.workers = max(1, min(workers, len(d.parts)))
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("download %s: %w", m.URI(), err)
	}
	d.root = root
	d.files = &fileTable{root: root, m: m, mmap: HugeTmpfs(dir), open: make(map[int]*objectFile)}
	d.track = newTracker(m, d.parts, d.resumed, present, opts.Progress)
	return d, nil
}

func (d *download) run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	// Preallocation runs ahead of the workers in model order: the space is reserved before a
	// byte of the object is written (tmpfs fails early, not at 90 %), and its cost overlaps
	// the network instead of delaying the first request.
	g.Go(func() error { return d.preallocate(ctx) })
	for range d.workers {
		g.Go(func() error {
			buf := make([]byte, bufferSize)
			for {
				i := int(d.next.Add(1) - 1)
				if i >= len(d.parts) {
					return nil
				}
				if err := d.fetchPart(ctx, i, buf); err != nil {
					return err
				}
			}
		})
	}
	return g.Wait()
}

func (d *download) preallocate(ctx context.Context) error {
	for i, o := range d.m.Objects {
		err := allocate(d.root, d.m.Path(i), o.Size, func(done int64) error {
			d.alloc.advance(d.m.Offset(i) + done)
			return contextCause(ctx)
		})
		if err != nil {
			return fmt.Errorf("download %s: %w", d.m.URI(), err)
		}
	}
	return nil
}

// Preallocate creates every file of m under dir (and its directories) with its size
// reserved, keeping what files already exist hold. A relay receiving a model from a peer
// prepares its files so; Download with Resume continues in them.
func Preallocate(m *Manifest, dir string) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	for i, o := range m.Objects {
		if err := allocate(root, m.Path(i), o.Size, func(int64) error { return nil }); err != nil {
			return fmt.Errorf("preallocate %s: %w", m.URI(), err)
		}
	}
	return nil
}

// allocate creates the file at rel (and its directories) and reserves size bytes for it,
// allocChunk at a time, reporting each step to progress (which may stop it with an error).
// An existing file keeps its bytes (fallocate never overwrites); a longer one is cut to size.
func allocate(root *os.Root, rel string, size int64, progress func(done int64) error) error {
	if dir := path.Dir(rel); dir != "." {
		if err := root.MkdirAll(dir, 0o755); err != nil {
			return err
		}
	}
	f, err := root.OpenFile(rel, os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if st, serr := f.Stat(); serr == nil && st.Size() > size {
		err = f.Truncate(size)
	}
	for off := int64(0); off < size && err == nil; {
		n := min(allocChunk, size-off)
		err = unix.Fallocate(int(f.Fd()), 0, off, n)
		if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) {
			err, n = f.Truncate(size), size-off // the file system cannot reserve: size it
		}
		if err != nil {
			err = fmt.Errorf("preallocate %s (%d bytes): %w", rel, size, err)
			break
		}
		off += n
		err = progress(off)
	}
	if size == 0 && err == nil {
		err = progress(0)
	}
	return errors.Join(err, f.Close())
}

// watermark is a monotonic position that goroutines can wait for.
type watermark struct {
	mu      sync.Mutex
	at      int64
	changed chan struct{}
}

func (w *watermark) advance(to int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if to <= w.at {
		return
	}
	w.at = to
	if w.changed != nil {
		close(w.changed)
		w.changed = nil
	}
}

// wait returns when the watermark reaches to, or ctx ends.
func (w *watermark) wait(ctx context.Context, to int64) error {
	for {
		w.mu.Lock()
		if w.at >= to {
			w.mu.Unlock()
			return nil
		}
		if w.changed == nil {
			w.changed = make(chan struct{})
		}
		ch := w.changed
		w.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return contextCause(ctx)
		}
	}
}

// fetchPart downloads part i, resuming after transient failures at the first byte it does not
// have yet, and records its chunks' CRCs.
func (d *download) fetchPart(ctx context.Context, i int, buf []byte) error {
	p := d.parts[i]
	o := &d.m.Objects[p.obj]
	if err := d.alloc.wait(ctx, d.m.Offset(p.obj)+p.off+p.size); err != nil {
		return err
	}
	f, err := d.files.get(p.obj)
	if err != nil {
		return fmt.Errorf("download %s: %w", d.m.URI(), err)
	}
	st := rangeState{chunk: p.first, inChunk: p.skip, crc: p.initCRC, done: p.skip}
	for failures := 0; ; {
		before := st.done
		err := d.getRange(ctx, i, f, &st, buf)
		if err == nil {
			break
		}
		target := d.m.URI().Object(o.Key)
		if !retryable(ctx, err) {
			return opError(ctx, "get", target, err)
		}
		if st.done > before {
			failures = 0
		}
		if failures++; failures > d.c.cfg.Retry.MaxFailures {
			return opError(ctx, "get", target, err)
		}
		d.retries.Add(1)
		klog.FromContext(ctx).V(2).Info("Retrying part", "object", target, "offset", p.off+st.done, "attempt", failures+1, "err", errSummary(err))
		t := time.NewTimer(d.c.cfg.Retry.delay(failures))
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return opError(ctx, "get", target, ctx.Err())
		}
	}
	d.track.partComplete(i)
	if d.left[p.obj].Add(-1) == 0 {
		return d.verifyObject(p.obj)
	}
	return nil
}

// rangeState is how far a part got: done bytes of the part, inside chunk at inChunk bytes
// with the running CRC of that chunk's bytes so far.
type rangeState struct {
	chunk   int
	inChunk int64
	crc     uint64
	done    int64
}

// noRetry: parts retry themselves, resuming where the body broke off; a request-level retry in
// the SDK would only multiply attempts.
func noRetry(o *oss.Options) { o.Retryer = retry.NopRetryer{} }

// getRange requests the rest of part i (from st.done) and streams it into dst, advancing st
// chunk by chunk; st stays accurate when it fails midway.
func (d *download) getRange(ctx context.Context, i int, dst *objectFile, st *rangeState, buf []byte) error {
	p := d.parts[i]
	o := &d.m.Objects[p.obj]
	off, n := p.off+st.done, p.size-st.done
	end := off + n - 1
	d.requests.Add(1)
	res, err := d.c.sdk.GetObject(ctx, &oss.GetObjectRequest{
		Bucket:        oss.Ptr(d.m.Bucket),
		Key:           oss.Ptr(o.Key),
		Range:         oss.Ptr("bytes=" + strconv.FormatInt(off, 10) + "-" + strconv.FormatInt(end, 10)),
		RangeBehavior: oss.Ptr("standard"),
		IfMatch:       oss.Ptr(o.ETag),
	}, noRetry)
	if err != nil {
		d.c.observe(ctx, "get", err)
		return err
	}
	defer res.Body.Close()
	if err := checkRange(res, o, off, end); err != nil {
		d.c.observe(ctx, "get", err)
		return err
	}
	dst.prepare(off, n)
	for st.done < p.size {
		c := d.layout.Chunk(st.chunk)
		at := c.Offset + st.inChunk
		b := dst.buffer(at, min(int64(len(buf)), c.Size-st.inChunk), buf)
		k, rerr := io.ReadFull(res.Body, b)
		if k > 0 {
			st.crc = crcUpdate(st.crc, b[:k])
			if werr := dst.commit(b[:k], at); werr != nil {
				return fmt.Errorf("write %s: %w", d.m.Path(p.obj), werr)
			}
			st.inChunk += int64(k)
			st.done += int64(k)
			d.track.wrote(i, int64(k))
			if st.inChunk == c.Size {
				d.chunkCRC[st.chunk] = st.crc
				if d.onChunk != nil {
					d.onChunk(st.chunk, st.crc)
				}
				st.chunk, st.inChunk, st.crc = st.chunk+1, 0, 0
			}
		}
		if rerr != nil {
			if rerr == io.EOF {
				rerr = errShortBody
			}
			d.c.observe(ctx, "get", rerr)
			return rerr
		}
	}
	// Read to EOF so the connection goes back to the pool for the next part.
	_, _ = res.Body.Read(buf[:1])
	return nil
}

// checkRange makes sure the answer is the requested range of the manifest's version, even
// behind a proxy that ignores If-Match or Range. A server that ignores Range (200 with the
// whole object, or a Content-Range other than the one asked for, of the same object) is
// ErrRangeIgnored, not ErrChanged: the object is what the manifest says, the server is not.
func checkRange(res *oss.GetObjectResult, o *Object, off, end int64) error {
	changed := func(format string, args ...any) error {
		return &Error{Op: "get", Kind: ErrChanged, Err: fmt.Errorf(format, args...)}
	}
	ignored := func(format string, args ...any) error {
		return &Error{Op: "get", Kind: ErrRangeIgnored, Err: fmt.Errorf(format, args...)}
	}
	if etag := oss.ToString(res.ETag); etag != "" && etag != o.ETag {
		return changed("ETag is %s, the manifest has %s", etag, o.ETag)
	}
	whole := off == 0 && end == o.Size-1
	switch res.StatusCode {
	case 206:
		want := fmt.Sprintf("bytes %d-%d/%d", off, end, o.Size)
		cr := oss.ToString(res.ContentRange)
		switch total, ok := contentRangeTotal(cr); {
		case cr == want:
		case ok && total != o.Size:
			return changed("asked for %q, got Content-Range %q: the object is no longer %d bytes", want, cr, o.Size)
		case cr == "":
			return ignored("asked for bytes %d-%d of %d, got HTTP 206 without a Content-Range", off, end, o.Size)
		default:
			return ignored("asked for %q, got Content-Range %q", want, cr)
		}
	case 200:
		switch {
		case whole && res.ContentLength == o.Size:
		case whole:
			return changed("asked for the whole object of %d bytes, got %d bytes", o.Size, res.ContentLength)
		default:
			return ignored("asked for bytes %d-%d of %d, got HTTP 200 with %d bytes instead of 206 Partial Content (a proxy between this node and OSS may drop the header)",
				off, end, o.Size, res.ContentLength)
		}
	default:
		return fmt.Errorf("unexpected HTTP status %d for a ranged GET", res.StatusCode)
	}
	return nil
}

// contentRangeTotal is the complete length in a Content-Range header ("bytes a-b/total").
func contentRangeTotal(cr string) (int64, bool) {
	_, total, ok := strings.Cut(cr, "/")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(total, 10, 64)
	return n, err == nil
}

// verifyObject combines the CRCs of object o's chunks and compares with the manifest.
func (d *download) verifyObject(o int) error {
	if err := d.files.close(o); err != nil {
		return fmt.Errorf("download %s: close %s: %w", d.m.URI(), d.m.Path(o), err)
	}
	if err := d.layout.VerifyObject(o, func(i int) uint64 { return d.chunkCRC[i] }); err != nil {
		return err
	}
	d.track.objectVerified(o)
	return nil
}

// fileTable keeps one open file per object while its parts are written.
type fileTable struct {
	mu   sync.Mutex
	root *os.Root
	m    *Manifest
	mmap bool // write through memory mappings (huge-page tmpfs)
	open map[int]*objectFile
}

// objectFile is an object's preallocated file. On a tmpfs with huge pages it is written through
// a shared memory mapping: the socket's bytes land in the page cache with one copy instead of
// two, and parallel parts of one file do not serialize on its inode lock as write(2) does. On
// 4 KiB pages, faulting the mapping in costs more than the copy it saves, so parts are written
// with pwrite(2) (docs/benchmarks.md has both figures).
type objectFile struct {
	f    *os.File
	data []byte // the mapping; nil when writing with pwrite
}

func (t *fileTable) get(o int) (*objectFile, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if f := t.open[o]; f != nil {
		return f, nil
	}
	f, err := t.root.OpenFile(t.m.Path(o), os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	of := &objectFile{f: f}
	if size := t.m.Objects[o].Size; size > 0 && t.mmap {
		if data, err := unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err == nil {
			of.data = data
		}
	}
	t.open[o] = of
	return of, nil
}

// prepare faults in the pages of [off, off+n) in one call (they were reserved by fallocate),
// instead of one page fault per 4 KiB as the socket's bytes arrive.
func (of *objectFile) prepare(off, n int64) {
	if of.data != nil {
		_ = unix.Madvise(of.data[off:off+n], unix.MADV_POPULATE_WRITE) // best effort (Linux ≥ 5.14)
	}
}

// buffer returns where the n bytes at off should be read into: the mapping itself, or buf.
func (of *objectFile) buffer(off, n int64, buf []byte) []byte {
	if of.data != nil {
		return of.data[off : off+n]
	}
	return buf[:n]
}

// commit makes p, the bytes at off returned by buffer and filled, part of the file.
func (of *objectFile) commit(p []byte, off int64) error {
	if of.data != nil {
		return nil // already in place
	}
	_, err := of.f.WriteAt(p, off)
	return err
}

func (of *objectFile) close() error {
	var err error
	if of.data != nil {
		err = unix.Munmap(of.data)
		of.data = nil
	}
	return errors.Join(err, of.f.Close())
}

func (t *fileTable) close(o int) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	of := t.open[o]
	if of == nil {
		return nil
	}
	delete(t.open, o)
	return of.close()
}

func (t *fileTable) closeAll() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for o, of := range t.open {
		_ = of.close()
		delete(t.open, o)
	}
}

// errSummary is a one-line description of err for logs (the SDK's own messages span lines).
func errSummary(err error) string {
	var se *oss.ServiceError
	if errors.As(err, &se) {
		return fmt.Sprintf("HTTP %d %s (request id %s)", se.StatusCode, se.Code, se.RequestID)
	}
	return strings.ReplaceAll(err.Error(), "\n", " ")
}
