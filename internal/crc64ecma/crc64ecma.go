// Package crc64ecma computes CRC-64/XZ, the reflected CRC with the ECMA-182
// polynomial that hash/crc64 computes with its ECMA table and that Alibaba
// Cloud OSS returns in x-oss-hash-crc64ecma, fast enough to verify multi-GB
// model downloads in-line.
//
// hash/crc64 is table-driven (about 1-2 GB/s). On amd64 this package instead
// folds the input with carry-less multiplication (PCLMULQDQ), as in Intel's
// "Fast CRC Computation for Generic Polynomials Using PCLMULQDQ Instruction":
// 128-bit lanes of the message are repeatedly multiplied by x^D mod P and
// added to the lanes D bits further on, until one lane remains, which a
// Barrett reduction turns into the CRC. CPUs with AVX-512 VPCLMULQDQ fold
// four lanes per instruction. All constants are derived from the polynomial
// in poly.go. Inputs under 16 bytes, the last len%16 bytes, other
// architectures, the purego build tag and CPUs without PCLMULQDQ and SSE4.1
// use hash/crc64.
//
// Combine joins the CRCs of consecutive parts, e.g. of a multipart download,
// in O(log n) multiplications modulo the polynomial.
package crc64ecma

import (
	"encoding/binary"
	"hash"
	"hash/crc64"
)

// Size is the size of a CRC-64 checksum in bytes.
const Size = 8

var table = crc64.MakeTable(crc64.ECMA)

// impl selects an implementation of update; the tests run every supported
// one. Production code always uses bestImpl.
type impl int

const (
	implGeneric impl = iota // hash/crc64
	implSSE                 // PCLMULQDQ on 128-bit registers
	implAVX512              // VPCLMULQDQ on 512-bit registers, then implSSE
)

// Update returns the CRC of p appended to the data whose CRC is crc, the
// same as crc64.Update(crc, crc64.MakeTable(crc64.ECMA), p).
func Update(crc uint64, p []byte) uint64 { return update(crc, p, bestImpl) }

// Checksum returns the CRC of p: Update(0, p).
func Checksum(p []byte) uint64 { return update(0, p, bestImpl) }

// Combine returns the CRC of A||B given crc1 = CRC(A), crc2 = CRC(B) and
// len2 = len(B). It panics if len2 < 0.
//
// With init and final inversion the CRC is affine in the message, and the
// inversions of both parts cancel: CRC(A||B) = crc1·x^(8·len2) mod P ⊕ crc2.
// The power is assembled from the set bits of len2 using the precomputed
// x^(8·2^k) mod P, so at most 63 modular multiplications.
func Combine(crc1, crc2 uint64, len2 int64) uint64 {
	if len2 < 0 {
		panic("crc64ecma: negative length")
	}
	for k := 0; len2 != 0; k, len2 = k+1, len2>>1 {
		if len2&1 != 0 {
			crc1 = mulmod(crc1, xPow8[k])
		}
	}
	return crc1 ^ crc2
}

// New returns a hash.Hash64 computing the CRC. Its Sum appends the CRC in
// big-endian order, as hash/crc64 does.
func New() hash.Hash64 { return new(digest) }

type digest struct{ crc uint64 }

func (d *digest) Size() int                   { return Size }
func (d *digest) BlockSize() int              { return 1 }
func (d *digest) Reset()                      { d.crc = 0 }
func (d *digest) Sum64() uint64               { return d.crc }
func (d *digest) Sum(in []byte) []byte        { return binary.BigEndian.AppendUint64(in, d.crc) }
func (d *digest) Write(p []byte) (int, error) { d.crc = Update(d.crc, p); return len(p), nil }
