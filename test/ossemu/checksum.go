package ossemu

import (
	"fmt"
	"io"
	"runtime"
	"sync/atomic"

	"golang.org/x/sync/errgroup"
)

// segmentSize is the unit of parallel checksumming and generation, and the
// size of each worker's buffer.
const segmentSize = 8 << 20

// parallelCRC computes the CRC-64 of a size-byte stream produced segment by
// segment, on all CPUs. produce returns the bytes of [off, off+n): it may
// fill and return scratch (a per-worker buffer of at least n bytes) or
// return another slice. Segment CRCs are combined in order, so memory stays
// bounded by one buffer per worker.
func parallelCRC(size int64, produce func(off, n int64, scratch []byte) ([]byte, error)) (uint64, error) {
	segments := int((size + segmentSize - 1) / segmentSize)
	if segments == 0 {
		return 0, nil
	}
	crcs := make([]uint64, segments)
	workers := min(runtime.GOMAXPROCS(0), segments)
	var next atomic.Int64
	var g errgroup.Group
	for range workers {
		g.Go(func() error {
			var scratch []byte
			for {
				i := next.Add(1) - 1
				if i >= int64(segments) {
					return nil
				}
				off := i * segmentSize
				n := min(segmentSize, size-off)
				if scratch == nil {
					scratch = make([]byte, min(segmentSize, size))
				}
				p, err := produce(off, n, scratch[:n])
				if err != nil {
					return err
				}
				crcs[i] = crc64ECMA(0, p)
			}
		})
	}
	if err := g.Wait(); err != nil {
		return 0, err
	}
	crc := crcs[0]
	for i := 1; i < segments; i++ {
		off := int64(i) * segmentSize
		crc = crc64Combine(crc, crcs[i], min(segmentSize, size-off))
	}
	return crc, nil
}

// crcReaderAt computes the CRC-64 of the first size bytes of r.
func crcReaderAt(r io.ReaderAt, size int64) (uint64, error) {
	return parallelCRC(size, func(off, n int64, scratch []byte) ([]byte, error) {
		m, err := r.ReadAt(scratch, off)
		if int64(m) < n {
			if err == nil {
				err = io.ErrUnexpectedEOF
			}
			return nil, fmt.Errorf("read %d bytes at %d: %w", n, off, err)
		}
		return scratch, nil
	})
}
