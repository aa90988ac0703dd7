package chain

import (
	"encoding/binary"
	"fmt"
	"io"
)

// The peer stream is a sequence of frames: a 24-byte header, then, for a chunk frame, the
// chunk's bytes from Offset. The CRC-64 is of the whole chunk (not only the bytes sent), so a
// receiver resuming inside a chunk checks it with the bytes it already had.
//
//	byte 0     kind (1 chunk, 2 end of model)
//	bytes 1-3  magic "MCF"
//	bytes 4-7  chunk index (big-endian)
//	bytes 8-11 offset in the chunk of the first byte sent
//	bytes 12-15 number of bytes that follow
//	bytes 16-23 CRC-64/ECMA of the whole chunk
const frameHeaderSize = 24

const (
	frameChunk byte = 1
	frameEnd   byte = 2
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
	if b[1] != frameMagic[0] || b[2] != frameMagic[1] || b[3] != frameMagic[2] || (b[0] != frameChunk && b[0] != frameEnd) {
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
