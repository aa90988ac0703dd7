package crc64ecma

import (
	"math/bits"
	"math/rand/v2"
	"testing"
)

// mulmodNormal is a·b mod P in normal order by Horner's rule, an independent
// reference for mulmod.
func mulmodNormal(a, b uint64) uint64 {
	var p uint64
	for i := 63; i >= 0; i-- {
		p = p<<1 ^ polyNormal&-(p>>63)
		p ^= b & -(a >> i & 1)
	}
	return p
}

// powNormal is x^n mod P by square-and-multiply, a reference for xnmod.
func powNormal(n uint64) uint64 {
	r, s := uint64(1), uint64(2) // 1 and x
	for ; n > 0; n >>= 1 {
		if n&1 != 0 {
			r = mulmodNormal(r, s)
		}
		s = mulmodNormal(s, s)
	}
	return r
}

// clmul is the 128-bit carry-less product of a and b in normal order.
func clmul(a, b uint64) (hi, lo uint64) {
	for i := range 64 {
		if b>>i&1 != 0 {
			lo ^= a << i
			if i > 0 {
				hi ^= a >> (64 - i)
			}
		}
	}
	return hi, lo
}

func TestPolynomial(t *testing.T) {
	if rev(polyNormal) != polyReflected {
		t.Fatalf("rev(polyNormal) = %#x, want %#x", rev(polyNormal), uint64(polyReflected))
	}
}

func TestMulmod(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 10))
	for range 10000 {
		a, b := r.Uint64(), r.Uint64()
		if r.IntN(8) == 0 {
			a &= 1<<r.IntN(64) - 1
		}
		if got, want := mulmod(a, b), rev(mulmodNormal(rev(a), rev(b))); got != want {
			t.Fatalf("mulmod(%#x, %#x) = %#x, want %#x", a, b, got, want)
		}
	}
}

func TestPowers(t *testing.T) {
	for n := range 5000 {
		if got, want := xnmod(n), powNormal(uint64(n)); got != want {
			t.Fatalf("xnmod(%d) = %#x, want %#x", n, got, want)
		}
	}
	for k, got := range xPow8 {
		want := powNormal(1 << k) // x^(2^k), then to the 8th power
		for range 3 {
			want = mulmodNormal(want, want)
		}
		if want = rev(want); got != want {
			t.Fatalf("xPow8[%d] = %#x, want %#x", k, got, want)
		}
	}
}

func TestBarrettMu(t *testing.T) {
	// μ = x^64 + m is floor(x^128/P) iff μ·P = x^128 + r with deg r < 64:
	// (x^64 + m)(x^64 + p) = x^128 + x^64·(m + p + hi(m·p)) + lo(m·p).
	m := barrettMu()
	if hi, _ := clmul(m, polyNormal); m^polyNormal^hi != 0 {
		t.Fatalf("barrettMu() = %#x is not floor(x^128/P)", m)
	}
}

func TestFoldConsts(t *testing.T) {
	k := makeFoldConsts()
	for i, got := range k.fold {
		d := 128 * (i + 1)
		if want := [2]uint64{rev(powNormal(uint64(d + 63))), rev(powNormal(uint64(d - 1)))}; got != want {
			t.Errorf("fold[%d] = %#x, want %#x", i, got, want)
		}
	}
	if got, want := k.barrett[1], bits.RotateLeft64(polyReflected, 1); got != want {
		t.Errorf("barrett[1] = %#x, want %#x", got, want)
	}
}
