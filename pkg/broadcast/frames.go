package broadcast

import (
	"encoding/binary"
	"fmt"
	"io"
)

// The peer stream is a sequence of frames: a 24-byte header, then, for a chunk frame, the
// chunk's bytes from Offset. The CRC-64 is of the whole chunk (not only the bytes sent), so a
// receiver resuming inside a chunk checks it with the bytes it already had.
//
//	byte 0     kind (1 chunk, 2 end of model, 3 the sender moved to its chain's tail: re-link)
//	bytes 1-3  magic "MCF"
//	bytes 4-7  chunk index (big-endian)
//	bytes 8-11 offset in the chunk of the first byte sent
//	bytes 12-15 number of bytes that follow
//	bytes 16-23 CRC-64/ECMA of the whole chunk
const frameHeaderSize = 24

const (
	frameChunk byte = 1
	frameEnd   byte = 2
	frameMoved byte = 3
)

var frameMagic = [3]byte{'M', 'C', 'F'}

type frame struct {
	kind   byte
	index  int
	offset int64
	size   int64
	crc    uint64
}

func (f frame) encode(b []byte) []byte {
	b = append(b, f.kind, frameMagic[0], frameMagic[1], frameMagic[2])
	b = binary.BigEndian.AppendUint32(b, uint32(f.index))
	b = binary.BigEndian.AppendUint32(b, uint32(f.offset))
	b = binary.BigEndian.AppendUint32(b, uint32(f.size))
	return binary.BigEndian.AppendUint64(b, f.crc)
}

func readFrame(r io.Reader, b []byte) (frame, error) {
	b = b[:frameHeaderSize]
	if _, err := io.ReadFull(r, b); err != nil {
		return frame{}, err
	}
	if b[1] != frameMagic[0] || b[2] != frameMagic[1] || b[3] != frameMagic[2] || (b[0] != frameChunk && b[0] != frameEnd && b[0] != frameMoved) {
		return frame{}, fmt.Errorf("not a modelcast chunk frame (header %x)", b)
	}
	return frame{
		kind:   b[0],
		index:  int(binary.BigEndian.Uint32(b[4:])),
		offset: int64(binary.BigEndian.Uint32(b[8:])),
		size:   int64(binary.BigEndian.Uint32(b[12:])),
		crc:    binary.BigEndian.Uint64(b[16:]),
	}, nil
}

// A receiver asks for what it lacks in the request body: a bitmap of the chunks it has (bit
// i%8 of byte i/8 set for chunk i), then, for each chunk it has the start of, 8 bytes: the
// chunk's index and the bytes of it present (big-endian uint32 each). An empty body asks for
// the whole model. The sender answers every other chunk, each as soon as it has it verified,
// in the order it verified them; a partial chunk from where the receiver's bytes end.
type want struct {
	have    []bool
	offsets map[int]int64 // chunk → bytes of it present (0 < offset < chunk size)
}

// wantContentType is the request body's media type.
const wantContentType = "application/x-modelcast-want"

// maxStripes bounds the connections one hop is striped over.
const maxStripes = 64

// maxPartials bounds the partial chunks one request may name.
const maxPartials = 4096

func (w want) encode() []byte {
	b := make([]byte, (len(w.have)+7)/8, (len(w.have)+7)/8+8*len(w.offsets))
	for i, ok := range w.have {
		if ok {
			b[i/8] |= 1 << (i % 8)
		}
	}
	for i, off := range w.offsets {
		b = binary.BigEndian.AppendUint32(b, uint32(i))
		b = binary.BigEndian.AppendUint32(b, uint32(off))
	}
	return b
}

// decodeWant parses a request body for a model of the given chunk sizes.
func decodeWant(b []byte, sizes func(i int) int64, n int) (want, error) {
	w := want{have: make([]bool, n), offsets: map[int]int64{}}
	if len(b) == 0 {
		return w, nil
	}
	bitmap := (n + 7) / 8
	if len(b) < bitmap || (len(b)-bitmap)%8 != 0 || (len(b)-bitmap)/8 > maxPartials {
		return w, fmt.Errorf("a request body of %d bytes: want a %d-byte bitmap and up to %d 8-byte partial chunks", len(b), bitmap, maxPartials)
	}
	for i := range n {
		w.have[i] = b[i/8]&(1<<(i%8)) != 0
	}
	if n%8 != 0 && b[bitmap-1]>>(n%8) != 0 {
		return w, fmt.Errorf("the bitmap names chunks past the model's %d", n)
	}
	for rest := b[bitmap:]; len(rest) > 0; rest = rest[8:] {
		i, off := int(binary.BigEndian.Uint32(rest)), int64(binary.BigEndian.Uint32(rest[4:]))
		switch {
		case i >= n:
			return w, fmt.Errorf("partial chunk %d is past the model's %d", i, n)
		case w.have[i]:
			return w, fmt.Errorf("chunk %d is both present and partial", i)
		case w.offsets[i] != 0:
			return w, fmt.Errorf("chunk %d is named twice", i)
		case off <= 0 || off >= sizes(i):
			return w, fmt.Errorf("offset %d is outside chunk %d (%d bytes)", off, i, sizes(i))
		}
		w.offsets[i] = off
	}
	return w, nil
}
