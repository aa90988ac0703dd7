package ossemu

import (
	"encoding/binary"
	"math/bits"
)

// The synthetic model's bytes come from wyrand, a counter-based generator:
// word i of a stream is a function of (key, i) alone, so any segment can be
// generated independently (in parallel) at about 1 ns per 8 bytes.
const (
	wyP0 = 0xa0761d6478bd642f
	wyP1 = 0xe7037ed1a0b428db
)

// streamKey derives the key of stream i from a seed.
func streamKey(seed int64, i int) uint64 {
	return splitmix64(uint64(seed) ^ splitmix64(uint64(i)+1))
}

func splitmix64(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// fillRandom writes bytes [off, off+len(p)) of stream key into p; off must
// be a multiple of 8.
func fillRandom(key uint64, off int64, p []byte) {
	s := key + uint64(off/8)*wyP0
	i := 0
	for ; i+8 <= len(p); i += 8 {
		s += wyP0
		hi, lo := bits.Mul64(s, s^wyP1)
		binary.LittleEndian.PutUint64(p[i:], hi^lo)
	}
	if i < len(p) {
		s += wyP0
		hi, lo := bits.Mul64(s, s^wyP1)
		var tail [8]byte
		binary.LittleEndian.PutUint64(tail[:], hi^lo)
		copy(p[i:], tail[:])
	}
}

// rng is a small sequential generator for the model's text files.
type rng struct{ s uint64 }

func (r *rng) next() uint64 {
	r.s += wyP0
	hi, lo := bits.Mul64(r.s, r.s^wyP1)
	return hi ^ lo
}

// intn returns a value in [0, n).
func (r *rng) intn(n int) int { return int(r.next() % uint64(n)) }
