package ossemu

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
)

// maxPutSize is OSS's limit for a simple upload.
const maxPutSize = 5 << 30

func base64Std(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// setObjectHeaders sets the headers OSS sends with an object (GET and HEAD).
func setObjectHeaders(h http.Header, o *object) {
	h.Set("ETag", o.etag)
	h.Set("Last-Modified", o.modTime.Format(http.TimeFormat))
	h.Set("Content-Type", o.contentType) // set, so net/http never sniffs
	h.Set("Accept-Ranges", "bytes")
	h.Set("X-Oss-Hash-Crc64ecma", strconv.FormatUint(o.crc, 10))
	h.Set("X-Oss-Object-Type", "Normal")
	h.Set("X-Oss-Storage-Class", "Standard")
	if o.contentMD5 != "" {
		h.Set("Content-MD5", o.contentMD5)
	}
}

// applyResponseOverrides applies the response-* query parameters, which
// override response headers.
func applyResponseOverrides(h http.Header, rq *request) {
	for _, header := range []string{"Content-Type", "Content-Language", "Expires", "Cache-Control", "Content-Disposition", "Content-Encoding"} {
		if v := rq.query.Get("response-" + strings.ToLower(header)); v != "" {
			h.Set(header, v)
		}
	}
}

// getPlan is how a GET or HEAD will be answered, decided before any fault
// is applied.
type getPlan struct {
	o           *object   // the version this request serves
	err         *ossError // answer this error instead
	notModified bool
	start, n    int64 // the body: n bytes from start (GET)
	partial     bool
}

// bodyLen is the length of the body the plan sends, -1 without a body.
func (p *getPlan) bodyLen(op Op) int64 {
	if p.err != nil || p.notModified || op != OpGet {
		return -1
	}
	return p.n
}

func planGet(rq *request, o *object) getPlan {
	p := getPlan{o: o, n: o.size}
	switch preconditions(rq.r.Header, o) {
	case http.StatusPreconditionFailed:
		p.err = newError(http.StatusPreconditionFailed, "PreconditionFailed", "At least one of the pre-conditions you specified did not hold.")
		return p
	case http.StatusNotModified:
		p.notModified = true
		return p
	}
	if rq.op != OpGet {
		return p
	}
	standard := strings.EqualFold(rq.r.Header.Get("X-Oss-Range-Behavior"), "standard")
	var ok bool
	p.start, p.n, p.partial, ok = parseRange(rq.r.Header.Get("Range"), standard, o.size)
	if !ok {
		p.err = newError(http.StatusRequestedRangeNotSatisfiable, "InvalidRange", "The requested range cannot be satisfied.").
			with("RangeRequested", rq.r.Header.Get("Range")).with("ActualObjectSize", strconv.FormatInt(o.size, 10))
	}
	return p
}

// getObject serves GetObject, HeadObject and GetObjectMeta. The object is
// captured first, so the request serves the version current at its start
// even when a fault delays it. GetObject applies faults itself, once its
// body length is known.
func (s *Server) getObject(rq *request) {
	o, e := s.store.lookup(rq.bucket, rq.key)
	p := getPlan{err: e}
	if e == nil {
		p = planGet(rq, o)
	}
	var bf bodyFault
	if rq.op == OpGet {
		rq.ranged = p.err == nil && p.partial
		var done bool
		if bf, done = s.injectFault(rq, p.bodyLen(rq.op)); done {
			return
		}
		if bf.fault != nil && bf.fault.Kind == FaultIgnoreRange {
			p.start, p.n, p.partial = 0, o.size, false // as if Range had not been sent
		}
	}
	h := rq.w.Header()
	switch {
	case p.err != nil:
		if p.err.code == "InvalidRange" {
			h.Set("Content-Range", fmt.Sprintf("bytes */%d", o.size))
		}
		s.writeError(rq, p.err)
		return
	case p.notModified:
		h.Set("ETag", o.etag)
		h.Set("Last-Modified", o.modTime.Format(http.TimeFormat))
		rq.writeHeader(http.StatusNotModified)
		return
	case rq.op != OpGet:
		setObjectHeaders(h, o)
		h.Set("Content-Length", strconv.FormatInt(o.size, 10))
		rq.writeHeader(http.StatusOK)
		return
	}
	var f *os.File
	if o.path != "" {
		var err error
		if f, err = os.Open(o.path); err != nil {
			s.writeError(rq, errInternal("The object's data cannot be read: "+err.Error()))
			return
		}
		defer f.Close()
		if _, err := f.Seek(p.start, io.SeekStart); err != nil {
			s.writeError(rq, errInternal("The object's data cannot be read: "+err.Error()))
			return
		}
	}
	setObjectHeaders(h, o)
	applyResponseOverrides(h, rq)
	h.Set("Content-Length", strconv.FormatInt(p.n, 10))
	status := http.StatusOK
	if p.partial {
		status = http.StatusPartialContent
		h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", p.start, p.start+p.n-1, o.size))
	}
	rq.writeHeader(status)
	s.streamBody(rq, o, f, p.start, p.n, bf)
}

// parseRange resolves a Range header as OSS does. A missing, malformed or
// multi-range header selects the whole object (partial false); an end past
// the object is clamped; a start at or past the end selects the whole
// object in OSS's legacy mode and is unsatisfiable (ok false) with
// x-oss-range-behavior: standard.
func parseRange(spec string, standard bool, size int64) (start, n int64, partial, ok bool) {
	whole := func() (int64, int64, bool, bool) { return 0, size, false, true }
	spec = strings.TrimSpace(spec)
	r, found := strings.CutPrefix(spec, "bytes=")
	if !found || strings.Contains(r, ",") {
		return whole()
	}
	a, b, found := strings.Cut(r, "-")
	if !found {
		return whole()
	}
	a, b = strings.TrimSpace(a), strings.TrimSpace(b)
	if a == "" { // suffix: the last b bytes
		last, err := parseDigits(b)
		if err != nil || last == 0 {
			return whole()
		}
		if size == 0 {
			if standard {
				return 0, 0, false, false
			}
			return whole()
		}
		start = max(0, size-last)
		return start, size - start, true, true
	}
	first, err := parseDigits(a)
	if err != nil {
		return whole()
	}
	end := int64(-1)
	if b != "" {
		if end, err = parseDigits(b); err != nil || end < first {
			return whole()
		}
	}
	if first >= size {
		if standard {
			return 0, 0, false, false
		}
		return whole()
	}
	if end < 0 || end >= size {
		end = size - 1
	}
	return first, end - first + 1, true, true
}

func parseDigits(s string) (int64, error) {
	if s == "" || strings.Trim(s, "0123456789") != "" {
		return 0, fmt.Errorf("not a number: %q", s)
	}
	return strconv.ParseInt(s, 10, 64)
}

// preconditions evaluates If-Match, If-Unmodified-Since, If-None-Match and
// If-Modified-Since; it returns 0 when the request proceeds.
func preconditions(h http.Header, o *object) int {
	if v := h.Get("If-Match"); v != "" && !etagMatches(v, o.etag) {
		return http.StatusPreconditionFailed
	}
	if t, err := http.ParseTime(h.Get("If-Unmodified-Since")); err == nil && o.modTime.After(t) {
		return http.StatusPreconditionFailed
	}
	if v := h.Get("If-None-Match"); v != "" && etagMatches(v, o.etag) {
		return http.StatusNotModified
	}
	if t, err := http.ParseTime(h.Get("If-Modified-Since")); err == nil && !o.modTime.After(t) {
		return http.StatusNotModified
	}
	return 0
}

// etagMatches reports whether a comma-separated list of ETags (quoted or
// not, or "*") names etag.
func etagMatches(list, etag string) bool {
	want := strings.Trim(etag, `"`)
	for _, v := range strings.Split(list, ",") {
		v = strings.TrimPrefix(strings.TrimSpace(v), "W/")
		if v == "*" || strings.EqualFold(strings.Trim(v, `"`), want) {
			return true
		}
	}
	return false
}

// putObject serves PutObject.
func (s *Server) putObject(rq *request) {
	if exists, _ := s.store.bucketInfo(rq.bucket); !exists {
		s.writeError(rq, errNoSuchBucket(rq.bucket))
		return
	}
	r := rq.r
	if r.ContentLength > maxPutSize {
		s.writeError(rq, newError(http.StatusBadRequest, "EntityTooLarge", "Your proposed upload exceeds the maximum allowed size."))
		return
	}
	var buf bytes.Buffer
	if r.ContentLength > 0 {
		buf.Grow(int(r.ContentLength))
	}
	if _, err := buf.ReadFrom(http.MaxBytesReader(rq.w, r.Body, maxPutSize)); err != nil {
		if mbe := new(http.MaxBytesError); errors.As(err, &mbe) {
			s.writeError(rq, newError(http.StatusBadRequest, "EntityTooLarge", "Your proposed upload exceeds the maximum allowed size."))
			return
		}
		s.writeError(rq, newError(http.StatusBadRequest, "IncompleteBody", "The request body could not be read: "+err.Error()))
		return
	}
	contentType := r.Header.Get("Content-Type")
	if contentType == "" {
		contentType = "application/octet-stream"
	}
	o := newMemoryObject(rq.bucket, rq.key, contentType, buf.Bytes())
	if v := r.Header.Get("Content-MD5"); v != "" && !md5Equal(v, o.contentMD5) {
		s.writeError(rq, newError(http.StatusBadRequest, "InvalidDigest", "The Content-MD5 you specified is not valid."))
		return
	}
	if v := r.Header.Get("X-Oss-Content-Sha256"); v != "" && v != "UNSIGNED-PAYLOAD" {
		sum := sha256.Sum256(o.data)
		if !strings.EqualFold(v, hex.EncodeToString(sum[:])) {
			s.writeError(rq, newError(http.StatusBadRequest, "InvalidDigest", "The x-oss-content-sha256 you specified does not match the body."))
			return
		}
	}
	if strings.EqualFold(r.Header.Get("X-Oss-Forbid-Overwrite"), "true") && s.store.exists(rq.bucket, rq.key) {
		s.writeError(rq, newError(http.StatusConflict, "FileAlreadyExists", "The object you specified already exists and can not be overwritten."))
		return
	}
	if e := s.store.put(o, false); e != nil {
		s.writeError(rq, e)
		return
	}
	h := rq.w.Header()
	h.Set("ETag", o.etag)
	h.Set("Content-MD5", o.contentMD5)
	h.Set("X-Oss-Hash-Crc64ecma", strconv.FormatUint(o.crc, 10))
	h.Set("Content-Length", "0")
	rq.writeHeader(http.StatusOK)
}

// deleteObject serves DeleteObject: 204 whether or not the key existed.
func (s *Server) deleteObject(rq *request) {
	if e := s.store.delete(rq.bucket, rq.key); e != nil {
		s.writeError(rq, e)
		return
	}
	rq.writeHeader(http.StatusNoContent)
}

// putBucket serves PutBucket; x-oss-acl public-read(-write) makes the
// bucket public.
func (s *Server) putBucket(rq *request) {
	_, _ = io.Copy(io.Discard, io.LimitReader(rq.r.Body, 1<<20)) // CreateBucketConfiguration is ignored
	acl := rq.r.Header.Get("X-Oss-Acl")
	s.store.createBucket(rq.bucket, acl == "public-read" || acl == "public-read-write")
	rq.w.Header().Set("Location", "/"+rq.bucket)
	rq.w.Header().Set("Content-Length", "0")
	rq.writeHeader(http.StatusOK)
}

// md5Equal compares a Content-MD5 header with the body's (both base64).
func md5Equal(header, body string) bool {
	h, err := base64.StdEncoding.DecodeString(header)
	b, _ := base64.StdEncoding.DecodeString(body)
	return err == nil && bytes.Equal(h, b)
}
