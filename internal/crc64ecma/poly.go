package crc64ecma

import (
	"hash/crc64"
	"math/bits"
)

// Arithmetic in GF(2)[x] modulo the ECMA-182 polynomial
//
//	P(x) = x^64 + x^62 + x^57 + x^55 + ... + x + 1   (0x42F0E1EBA9EA3693, x^64 implicit).
//
// A polynomial of degree < 64 is held in a uint64 in one of two bit orders:
//
//   - normal: bit i is the coefficient of x^i. Used to derive constants.
//   - reflected: bit i is the coefficient of x^(63-i). This is the order of
//     the CRC register (the CRC is reflected) and of message bytes loaded
//     little-endian, so everything the hot paths touch is reflected.
//
// rev converts between the two. Multiplying two reflected values with a
// carry-less multiply (PCLMULQDQ) gives the reflected 128-bit product times x:
// bit k of clmul(rev(A), rev(B)) is the coefficient of x^(127-k) in A·B·x.
// Every constant below therefore carries one power of x less than the algebra
// would suggest.

const (
	polyNormal    = 0x42F0E1EBA9EA3693 // P(x) - x^64, normal order
	polyReflected = crc64.ECMA         // rev(polyNormal)
)

func rev(v uint64) uint64 { return bits.Reverse64(v) }

// xnmod returns x^n mod P in normal order, by n multiplications by x.
func xnmod(n int) uint64 {
	r := uint64(1)
	for ; n > 0; n-- {
		carry := r >> 63
		r = r<<1 ^ polyNormal&-carry
	}
	return r
}

// barrettMu returns floor(x^128 / P) - x^64 in normal order. The quotient has
// degree exactly 64; its x^64 term is implicit.
func barrettMu() uint64 {
	// Long division of x^128 by P. The x^64 quotient term leaves the remainder
	// x^64·(P - x^64) = hi:lo with hi = polyNormal, lo = 0; then one quotient
	// bit per remaining degree, from x^63 down to x^0.
	hi, lo, q := uint64(polyNormal), uint64(0), uint64(0)
	for i := 63; i >= 0; i-- {
		if hi>>i&1 == 0 {
			continue
		}
		q |= 1 << i
		// Subtract P·x^i = x^(64+i) + polyNormal·x^i.
		hi ^= 1 << i
		lo ^= polyNormal << i
		if i > 0 {
			hi ^= polyNormal >> (64 - i)
		}
	}
	return q
}

// mulmod returns a·b mod P for reflected a and b (result reflected).
// It is branch-free shift-and-add: at most 64 rounds, one per bit of a.
func mulmod(a, b uint64) uint64 {
	var p uint64
	for ; a != 0; a <<= 1 {
		p ^= b & -(a >> 63)             // a's x^i coefficient (bit 63 after i shifts) adds b·x^i
		b = b>>1 ^ polyReflected&-(b&1) // b *= x, reducing x^64 modulo P
	}
	return p
}

// xPow8 holds x^(8·2^k) mod P, reflected: multiplying a CRC by xPow8[k]
// appends 2^k zero bytes to the message it covers (ignoring init/xorout).
// Entry 0 is x^8; each further entry squares the one before.
var xPow8 = func() (t [63]uint64) {
	t[0] = rev(xnmod(8))
	for k := 1; k < len(t); k++ {
		t[k] = mulmod(t[k-1], t[k-1])
	}
	return t
}()

// foldConsts are the constants of the PCLMULQDQ kernels, all reflected.
// update_amd64.s finds the fields through go_asm.h.
type foldConsts struct {
	// fold[i] moves a 128-bit lane R = Rhi·x^64 + Rlo forward by D =
	// 128·(i+1) bits, i.e. to something ≡ R·x^D of degree < 128:
	//   fold[i][0] = x^(D+63) mod P, multiplied with the low  qword (Rhi),
	//   fold[i][1] = x^(D-1)  mod P, multiplied with the high qword (Rlo).
	// (D+64 and D, less the x that the reflected multiply adds.)
	// The kernels use indices 0-7 and 15 (D = 2048, the 4×512-bit
	// AVX-512 loop).
	// fold[0][1] = x^127 also does the final 128-to-64-bit fold: the CRC
	// of the last lane R is R·x^64 mod P, and R·x^64 = Rhi·x^128 + Rlo·x^64.
	fold [16][2]uint64
	// barrett reduces T = Thi·x^64 + Tlo (degree < 128) to T mod P:
	//   q = floor(Thi·μ / x^64) with μ = floor(x^128/P), then T mod P =
	//   Tlo + (q·P mod x^64).
	// μ and P both have degree 64 and so 65 coefficients; stored as μ/x and
	// P/x (dropping x^0) the x of the reflected multiply restores the
	// degree, and the dropped x^0 terms do not matter: for μ it cannot reach
	// the quotient, for P it contributes q itself, which the kernel cancels
	// by adding q once more. barrett[0] = floor(μ/x), barrett[1] = floor(P/x).
	barrett [2]uint64
}

func makeFoldConsts() (k foldConsts) {
	for i := range k.fold {
		d := 128 * (i + 1)
		k.fold[i] = [2]uint64{rev(xnmod(d + 63)), rev(xnmod(d - 1))}
	}
	// floor(μ/x) = x^63 + floor(barrettMu()/x), and likewise for P.
	k.barrett = [2]uint64{
		rev(1<<63 | barrettMu()>>1),
		rev(1<<63 | polyNormal>>1),
	}
	return k
}
