package ossclient

import (
	"fmt"
	"sort"
)

// DefaultChunkSize is the unit of verification: every chunk gets a CRC-64 of its own as it
// arrives, a chain relays and resumes whole chunks (or the rest of one), and an object's
// CRC-64 is the combination of its chunks'. Small enough that a hop of a chain adds little
// latency, large enough that per-chunk bookkeeping is noise.
const DefaultChunkSize int64 = 1 << 20

// Layout cuts a model into chunks: each object into consecutive chunks of ChunkSize (the last
// one shorter), in manifest order. Chunk i of the model is its i-th chunk overall; every node
// that agrees on the manifest and the chunk size agrees on the layout.
type Layout struct {
	m         *Manifest
	chunkSize int64
	chunks    []Chunk
	first     []int // first chunk of each object; first[len(objects)] = len(chunks)
}

// Chunk is bytes [Offset, Offset+Size) of object Object, which are bytes [Start, Start+Size)
// of the model's byte stream.
type Chunk struct {
	Object int
	Offset int64
	Size   int64
	Start  int64
}

// End is the model offset just past the chunk.
func (c Chunk) End() int64 { return c.Start + c.Size }

// NewLayout lays m out in chunks of chunkSize (DefaultChunkSize when ≤ 0).
func NewLayout(m *Manifest, chunkSize int64) *Layout {
	if chunkSize <= 0 {
		chunkSize = DefaultChunkSize
	}
	l := &Layout{m: m, chunkSize: chunkSize, first: make([]int, len(m.Objects)+1)}
	for i, o := range m.Objects {
		l.first[i] = len(l.chunks)
		for off := int64(0); off < o.Size; off += chunkSize {
			l.chunks = append(l.chunks, Chunk{Object: i, Offset: off, Size: min(chunkSize, o.Size-off), Start: m.Offset(i) + off})
		}
	}
	l.first[len(m.Objects)] = len(l.chunks)
	return l
}

// Manifest is the model laid out.
func (l *Layout) Manifest() *Manifest { return l.m }

// ChunkSize is the size of every chunk but the last of each object.
func (l *Layout) ChunkSize() int64 { return l.chunkSize }

// Len is the number of chunks.
func (l *Layout) Len() int { return len(l.chunks) }

// Chunk returns chunk i.
func (l *Layout) Chunk(i int) Chunk { return l.chunks[i] }

// ObjectChunks returns the chunks [first, end) of object o.
func (l *Layout) ObjectChunks(o int) (first, end int) { return l.first[o], l.first[o+1] }

// Locate returns the chunk holding model offset off and off's position in it; off = Size of
// the model gives (Len(), 0).
func (l *Layout) Locate(off int64) (chunk int, within int64) {
	i := sort.Search(len(l.chunks), func(i int) bool { return l.chunks[i].End() > off })
	if i == len(l.chunks) {
		return i, 0
	}
	return i, off - l.chunks[i].Start
}

// VerifyObject combines the CRCs of object o's chunks and compares the result with the
// CRC-64 OSS holds for the object.
func (l *Layout) VerifyObject(o int, chunkCRC func(i int) uint64) error {
	first, end := l.ObjectChunks(o)
	var crc uint64
	for i := first; i < end; i++ {
		crc = crcCombine(crc, chunkCRC(i), l.chunks[i].Size)
	}
	obj := l.m.Objects[o]
	if crc != obj.CRC64 {
		return &Error{Op: "verify", Target: l.m.URI().Object(obj.Key), Kind: ErrIntegrity,
			Err: fmt.Errorf("CRC-64 of the %d bytes received is %d, OSS has %d", obj.Size, crc, obj.CRC64)}
	}
	return nil
}
