package ossemu

import (
	"io"
	"net"
	"net/http"
	"os"
	"time"
)

// bodyFault is what a FaultTruncate or FaultCorrupt does to a GET body.
type bodyFault struct {
	fault *Fault // nil: none
}

// plan resolves the fault for a body of n bytes: truncateAt (write that
// many bytes, then abort) and corruptAt (flip the byte there), each -1 when
// not applicable.
func (bf bodyFault) plan(n int64) (truncateAt, corruptAt int64) {
	truncateAt, corruptAt = -1, -1
	if bf.fault == nil {
		return
	}
	switch bf.fault.Kind {
	case FaultTruncate:
		if bf.fault.After < n {
			truncateAt = max(0, bf.fault.After)
		}
	case FaultCorrupt:
		corruptAt = bf.fault.After
		if corruptAt <= 0 {
			corruptAt = n / 2
		}
		if corruptAt >= n {
			corruptAt = -1
		}
	}
	return truncateAt, corruptAt
}

// injectFault takes the first fault matching the request (bodyLen is the
// length of the body it will send, -1 for none) and performs what acts
// before the answer. It reports done when the request has been answered
// (or dropped); otherwise the request proceeds, carrying body faults.
func (s *Server) injectFault(rq *request, bodyLen int64) (bf bodyFault, done bool) {
	f := s.faults.take(rq.op, rq.bucket, rq.key, bodyLen, rq.ranged)
	if f == nil {
		return bf, false
	}
	s.stats.faultsHit.Add(1)
	switch f.Kind {
	case FaultStatus:
		status := f.Status
		if status == 0 {
			status = http.StatusServiceUnavailable
		}
		s.writeError(rq, errorForStatus(status))
		return bf, true
	case FaultSlowFirstByte:
		t := time.NewTimer(f.Delay)
		defer t.Stop()
		select {
		case <-t.C:
			return bf, false
		case <-rq.r.Context().Done():
			return bf, true // the client is gone
		}
	case FaultReset:
		conn, _, err := http.NewResponseController(rq.w).Hijack()
		if err != nil {
			panic(http.ErrAbortHandler) // not hijackable: abort as best we can
		}
		if tc, ok := conn.(*net.TCPConn); ok {
			_ = tc.SetLinger(0) // close with RST
		}
		_ = conn.Close()
		return bf, true
	case FaultHang:
		<-rq.r.Context().Done() // the client gave up, or the server closed the connection
		return bf, true
	case FaultTruncate, FaultCorrupt, FaultIgnoreRange:
		return bodyFault{fault: f}, false
	case FaultEndlessList:
		rq.endlessList = true
		return bf, false
	}
	return bf, false
}

// streamBody writes n bytes of o from offset start (from f when the object
// is file-backed, f positioned at start), in chunks that each wait for
// tokens of the connection's cap (chunks no larger than its burst), then
// of the total egress limit. It stops when the client goes away (the
// request context ends or a write fails).
func (s *Server) streamBody(rq *request, o *object, f *os.File, start, n int64, bf bodyFault) {
	ctx := rq.r.Context()
	conn := connLimiterFor(ctx)
	counter := s.stats.keyCounter(o.bucket + "/" + o.key)
	truncateAt, corruptAt := bf.plan(n)
	for pos := int64(0); pos < n; {
		if pos == truncateAt {
			_ = http.NewResponseController(rq.w).Flush()
			panic(http.ErrAbortHandler) // net/http closes the connection mid-body
		}
		connLim, step := conn.limiter(s.profile.connBytesPerSec.Load())
		if connLim == nil {
			step = chunkSize
		}
		end := min(n, pos+int64(step))
		if truncateAt > pos {
			end = min(end, truncateAt)
		}
		corrupt := pos == corruptAt
		switch {
		case corrupt:
			end = pos + 1
		case corruptAt > pos:
			end = min(end, corruptAt)
		}
		if connLim != nil {
			if err := connLim.WaitN(ctx, int(end-pos)); err != nil {
				return
			}
		}
		if err := s.limiter.WaitN(ctx, int(end-pos)); err != nil {
			return
		}
		// Count the chunk before writing it, so that a client that has
		// received the bytes never sees Stats without them; a short write
		// takes back what was not written.
		planned := end - pos
		s.stats.bytesServed.Add(planned)
		counter.Add(planned)
		written, err := writeChunk(rq.w, o, f, start+pos, planned, corrupt)
		pos += written
		rq.written += written
		if written != planned {
			s.stats.bytesServed.Add(written - planned)
			counter.Add(written - planned)
		}
		if err != nil {
			// The client is gone, or a file shrank after it was stored.
			// Returning short of the Content-Length makes net/http close
			// the connection, so the client sees a truncated body.
			return
		}
	}
}

// writeChunk writes n bytes of o at offset off: from f with sendfile when
// the object is file-backed, else from memory. A corrupt chunk is one byte,
// written with its bits flipped.
func writeChunk(w io.Writer, o *object, f *os.File, off, n int64, corrupt bool) (int64, error) {
	if f != nil && !corrupt {
		return io.CopyN(w, f, n) // net/http hands *os.File sources to sendfile
	}
	var p []byte
	if f != nil {
		p = make([]byte, n)
		if _, err := io.ReadFull(f, p); err != nil {
			return 0, err
		}
	} else {
		p = o.data[off : off+n]
	}
	if corrupt {
		p = []byte{p[0] ^ 0xFF}
	}
	m, err := w.Write(p)
	return int64(m), err
}
