package broadcast

import (
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// A stream to a successor is sent by whoever verifies its next chunk. The goroutine that
// verified it (a receiver of this node's own stream, or the head's download) writes the
// chunk's frame header and sendfiles its bytes itself, with non-blocking raw system calls,
// as far as the socket takes them. Only a full socket hands the stream to its own goroutine
// (the HTTP handler), which waits in the poller for room and sends the rest. Before, every
// verified chunk woke each stream's goroutine to send it, and on a machine where waking a
// thread is dear that hand-off cost more than the bytes (docs/design.md).
//
// Whoever sends holds the stream's lock; a sender that finds it taken leaves a mark (dirty)
// that the holder checks after letting go, so no verified chunk waits for a later one.

// outStream is one stream to a successor, from its response's header on: the chunks the
// receiver lacks, in the order this node verifies them, each as a frame, then the end frame.
type outStream struct {
	s    *server
	l    *replica
	conn *rawWriteConn
	// moved and released end the stream after the frame in flight (nil: never)
	moved, released <-chan struct{}
	// wake tells the stream's goroutine that the socket filled with bytes left to send, or that
	// the stream ended or failed.
	wake  chan struct{}
	dirty atomic.Bool // a sender found the lock taken

	mu      sync.Mutex
	have    []bool        // chunks not to send: the receiver has them, or another stripe carries them
	offsets map[int]int64 // chunk → bytes the receiver has of it already
	left    int           // chunks still to send
	k       int           // the next index into the replica's verification order to look at
	files   fileCache     // the objects sent from
	hdr     []byte        // frame header buffer
	head    []byte        // the rest of the frame header in flight
	mem     []byte        // the rest of a chunk sent from memory (the corruption test hook)
	src     uintptr       // the file of the chunk in flight
	off, n  int64         // its rest: n bytes at off
	last    byte          // the kind of the frame in flight
	full    bool          // the socket filled with bytes left to send
	stopped bool          // the stream's goroutine returned: send nothing more
	ended   bool          // the end or moved frame went out
	result  error         // what the stream ended with: nil (the end frame) or errMoved
	err     error         // a failure to send
}

func newOutStream(s *server, l *replica, conn *rawWriteConn, wt want, left int) *outStream {
	moved, released := l.signals()
	return &outStream{s: s, l: l, conn: conn, moved: moved, released: released, wake: make(chan struct{}, 1),
		have: wt.have, offsets: wt.offsets, left: left, hdr: make([]byte, 0, frameHeaderSize)}
}

// kick sends what the stream can send now without waiting.
func (st *outStream) kick() {
	st.dirty.Store(true)
	for st.dirty.Load() && st.mu.TryLock() {
		st.dirty.Store(false)
		st.drainLocked()
		st.mu.Unlock()
	}
}

// drainLocked sends frames until the socket is full, nothing verified is left to send, the
// stream ends or fails. A full socket, the end and a failure wake the stream's goroutine.
func (st *outStream) drainLocked() {
	if st.stopped || st.ended || st.err != nil {
		return
	}
	for {
		if len(st.head) == 0 && len(st.mem) == 0 && st.n == 0 && !st.nextLocked() {
			st.full = false
			if st.err == nil {
				return // caught up
			}
		} else if full, err := st.sendLocked(); err != nil {
			st.err = err
		} else if full {
			st.full = true
		} else if st.last == frameEnd || st.last == frameMoved {
			st.ended = true
			if st.last == frameMoved {
				st.result = errMoved
			}
		} else {
			continue
		}
		select {
		case st.wake <- struct{}{}:
		default:
		}
		return
	}
}

// nextLocked puts the next frame in flight: the next verified chunk the receiver lacks, the end
// frame once every chunk went, or frameMoved once the node moved. It reports false when there
// is none yet, or the model was released (a failure).
func (st *outStream) nextLocked() bool {
	switch {
	case st.left == 0:
		return st.frameLocked(frame{kind: frameEnd, index: st.l.layout.Len()})
	case closed(st.released):
		st.err = errReleased
		return false
	case closed(st.moved): // finish the frame in flight, then say so
		return st.frameLocked(frame{kind: frameMoved})
	}
	for {
		i, crc, ok := st.l.orderAt(st.k)
		if !ok {
			return false
		}
		st.k++
		if st.have[i] {
			continue
		}
		c := st.l.layout.Chunk(i)
		offset := st.offsets[i]
		f, err := st.files.get(st.l, c.Object)
		if err != nil {
			st.err = err
			return false
		}
		st.left--
		st.frameLocked(frame{kind: frameChunk, index: i, offset: offset, size: c.Size - offset, crc: crc})
		st.src, st.off, st.n = f.Fd(), c.Offset+offset, c.Size-offset
		if h := st.s.corrupt.Load(); h > 0 && int64(i) == h-1 && st.s.corrupt.CompareAndSwap(h, 0) {
			st.corruptLocked(f, i)
		}
		return true
	}
}

func (st *outStream) frameLocked(f frame) bool {
	if st.last == frameEnd || st.last == frameMoved {
		return false // sent already
	}
	st.head, st.last = f.encode(st.hdr[:0]), f.kind
	return true
}

// corruptLocked is the test hook: the chunk in flight goes from memory with one byte flipped.
func (st *outStream) corruptLocked(f *os.File, i int) {
	b := make([]byte, st.n)
	if _, err := f.ReadAt(b, st.off); err != nil {
		st.err = err
		return
	}
	b[st.n/2] ^= 0x5a
	klog.InfoS("Test hook: sending a corrupted chunk", "chunk", i)
	st.mem, st.n = b, 0
}

// sendLocked sends what it can of the frame in flight, without waiting: its header, then its
// bytes. It reports whether the socket filled first.
func (st *outStream) sendLocked() (full bool, err error) {
	var errno syscall.Errno
	op := "write"
	before := int64(len(st.mem)) + st.n // the chunk's bytes still to send
	cerr := st.conn.raw.Control(func(fd uintptr) {
		for _, b := range []*[]byte{&st.head, &st.mem} {
			full, errno = moveRaw(fd, func() bool { return len(*b) > 0 }, func(fd uintptr) (uintptr, syscall.Errno) {
				r, _, e := unix.RawSyscall(unix.SYS_WRITE, fd, uintptr(unsafe.Pointer(&(*b)[0])), uintptr(len(*b)))
				if e == 0 {
					*b = (*b)[r:]
				}
				return r, e
			})
			if full || errno != 0 {
				return
			}
		}
		op = "sendfile"
		full, errno = moveRaw(fd, func() bool { return st.n > 0 }, func(fd uintptr) (uintptr, syscall.Errno) {
			r, _, e := unix.RawSyscall6(unix.SYS_SENDFILE, fd, st.src, uintptr(unsafe.Pointer(&st.off)), uintptr(min(st.n, 1<<30)), 0, 0)
			if e == 0 {
				st.n -= int64(r)
			}
			return r, e
		})
	})
	st.s.served.Add(before - int64(len(st.mem)) - st.n)
	switch {
	case cerr != nil:
		return false, opError(op, st.conn, cerr)
	case errno != 0:
		return false, opError(op, st.conn, os.NewSyscallError(op, errno))
	case !full && (len(st.head) > 0 || len(st.mem) > 0 || st.n > 0):
		return false, fmt.Errorf("send a frame: %w", io.ErrUnexpectedEOF) // a source ended early
	}
	return full, nil
}

// waitRoom waits in the poller for room in the socket while the stream has bytes left that do
// not fit, sending them as room comes.
func (st *outStream) waitRoom() error {
	err := st.conn.raw.Write(func(uintptr) bool {
		st.mu.Lock()
		defer st.mu.Unlock()
		st.dirty.Store(false)
		st.drainLocked() // tries the socket again: a full one then wakes the poller when it drains
		return !st.full || st.stopped || st.ended || st.err != nil
	})
	if err != nil {
		return opError("write", st.conn, err)
	}
	if st.dirty.Load() {
		st.kick()
	}
	return nil
}

// interrupt ends the stream's wait for room, now and later (a write deadline in the past): the
// model was released, and a receiver that stopped reading without going away (a frozen
// successor) would keep the stream waiting, and the released model's files open, for as long
// as it stays frozen.
func (st *outStream) interrupt() { _ = st.conn.SetWriteDeadline(time.Now()) }

// closed reports whether ch is closed (a nil ch never is).
func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// state reports whether the stream ended (and with what) or waits for room.
func (st *outStream) state() (ended bool, result error, full bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.err != nil {
		return true, st.err, false
	}
	return st.ended, st.result, st.full
}

// stop sends nothing more and closes the stream's files (the connection is net/http's).
func (st *outStream) stop() {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.stopped = true
	st.files.close()
}
