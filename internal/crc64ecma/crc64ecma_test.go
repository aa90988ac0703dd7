package crc64ecma

import (
	"bytes"
	"fmt"
	"hash/crc64"
	"math"
	"math/rand/v2"
	"testing"
)

var implNames = map[impl]string{implGeneric: "generic", implSSE: "sse", implAVX512: "avx512"}

func forEachImpl(t *testing.T, f func(t *testing.T, i impl)) {
	t.Helper()
	for _, i := range supportedImpls() {
		t.Run(implNames[i], func(t *testing.T) { f(t, i) })
	}
}

func randBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func TestImplsCovered(t *testing.T) {
	got := supportedImpls()
	for _, i := range got {
		t.Logf("implementation %s", implNames[i])
	}
	if got[0] != implGeneric || got[len(got)-1] != bestImpl {
		t.Fatalf("supportedImpls() = %v, best %v", got, bestImpl)
	}
}

func TestCheckValue(t *testing.T) {
	const want uint64 = 0x995DC9BBDF1939FA // CRC-64/XZ check value
	forEachImpl(t, func(t *testing.T, i impl) {
		if got := update(0, []byte("123456789"), i); got != want {
			t.Errorf("CRC(123456789) = %#x, want %#x", got, want)
		}
	})
	if got := Checksum([]byte("123456789")); got != want {
		t.Errorf("Checksum = %#x, want %#x", got, want)
	}
	// 16 bytes and more take the kernel on amd64. The value is the check
	// that `xz --check=crc64` stores for this text.
	msg := []byte("The quick brown fox jumps over the lazy dog")
	if got, want := Checksum(msg), uint64(0x5B5EB8C2E54AA1C4); got != want {
		t.Errorf("Checksum(fox) = %#x, want %#x", got, want)
	}
}

// TestAllLengths compares every implementation with hash/crc64 for every
// length up to 2048 at every misalignment, from a random initial CRC.
func TestAllLengths(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	buf := randBytes(r, 2048+16)
	forEachImpl(t, func(t *testing.T, i impl) {
		for off := range 16 {
			for n := 0; n <= 2048; n++ {
				p := buf[off : off+n]
				crc := r.Uint64()
				if got, want := update(crc, p, i), crc64.Update(crc, table, p); got != want {
					t.Fatalf("off %d len %d crc %#x: got %#x, want %#x", off, n, crc, got, want)
				}
			}
		}
	})
}

func TestLarge(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	sizes := []int{1 << 20, 1<<20 + 13, 64 << 20, 64<<20 + 1, 64<<20 + 255, 64<<20 + 4095}
	if testing.Short() {
		sizes = sizes[:2]
	}
	buf := randBytes(r, sizes[len(sizes)-1]+3)
	for _, n := range sizes {
		p := buf[3 : 3+n]
		crc := r.Uint64()
		want := crc64.Update(crc, table, p)
		forEachImpl(t, func(t *testing.T, i impl) {
			if got := update(crc, p, i); got != want {
				t.Fatalf("len %d: got %#x, want %#x", n, got, want)
			}
		})
		if got := Update(crc, p); got != want {
			t.Fatalf("Update len %d: got %#x, want %#x", n, got, want)
		}
	}
}

func TestDigest(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	data := randBytes(r, 100_000)
	h, ref := New(), crc64.New(table)
	if h.Size() != ref.Size() || h.BlockSize() != ref.BlockSize() {
		t.Fatalf("Size/BlockSize = %d/%d, want %d/%d", h.Size(), h.BlockSize(), ref.Size(), ref.BlockSize())
	}
	for round := range 2 {
		for p := data; len(p) > 0; {
			n := min(len(p), r.IntN(5000))
			h.Write(p[:n])
			ref.Write(p[:n])
			p = p[n:]
		}
		if h.Sum64() != ref.Sum64() || !bytes.Equal(h.Sum([]byte("x")), ref.Sum([]byte("x"))) {
			t.Fatalf("round %d: Sum64 %#x Sum %x, want %#x %x", round, h.Sum64(), h.Sum(nil), ref.Sum64(), ref.Sum(nil))
		}
		h.Reset()
		ref.Reset()
	}
}

// slowCombine is an independent reference for Combine: zlib's original
// method, which applies 64×64 GF(2) matrices for 2^k zero bytes, squaring
// the matrix for each bit of len2.
func slowCombine(crc1, crc2 uint64, len2 int64) uint64 {
	times := func(m *[64]uint64, v uint64) (s uint64) {
		for i := 0; v != 0; i, v = i+1, v>>1 {
			if v&1 != 0 {
				s ^= m[i]
			}
		}
		return s
	}
	square := func(m *[64]uint64) {
		var sq [64]uint64
		for i := range m {
			sq[i] = times(m, m[i])
		}
		*m = sq
	}
	// op is one zero bit: crc>>1, adding the polynomial if bit 0 falls out.
	var op [64]uint64
	op[0] = polyReflected
	for i := 1; i < 64; i++ {
		op[i] = 1 << (i - 1)
	}
	square(&op) // 2 bits
	square(&op) // 4 bits
	square(&op) // 1 byte
	for ; len2 != 0; len2 >>= 1 {
		if len2&1 != 0 {
			crc1 = times(&op, crc1)
		}
		square(&op)
	}
	return crc1 ^ crc2
}

func TestCombine(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	data := randBytes(r, 1<<20)
	for range 200 {
		a := r.IntN(len(data) + 1)
		b := a + r.IntN(len(data)-a+1)
		if r.IntN(4) == 0 {
			b = a + r.IntN(min(64, len(data)-a)+1) // short second parts too
		}
		crc1, crc2 := Checksum(data[:a]), Checksum(data[a:b])
		want := Checksum(data[:b])
		if got := Combine(crc1, crc2, int64(b-a)); got != want {
			t.Fatalf("split %d+%d: got %#x, want %#x", a, b-a, got, want)
		}
		if got := slowCombine(crc1, crc2, int64(b-a)); got != want {
			t.Fatalf("slowCombine split %d+%d: got %#x, want %#x", a, b-a, got, want)
		}
	}
	// len2 = 0: the empty part has CRC 0.
	for _, c := range []uint64{0, 1, r.Uint64(), math.MaxUint64} {
		if got := Combine(c, Checksum(nil), 0); got != c {
			t.Fatalf("Combine(%#x, 0, 0) = %#x", c, got)
		}
	}
	// Zero-filled second parts of moderate size against hash/crc64.
	zeros := make([]byte, 1<<21)
	for _, n := range []int{1, 7, 8, 255, 256, 4096, 1<<20 - 1, 1 << 21} {
		crc1 := r.Uint64()
		want := crc64.Update(crc1, table, zeros[:n])
		if got := Combine(crc1, crc64.Checksum(zeros[:n], table), int64(n)); got != want {
			t.Fatalf("zeros %d: got %#x, want %#x", n, got, want)
		}
	}
	// Huge parts against the matrix method.
	for _, n := range []int64{1 << 40, 1<<40 + 12345, 1<<62 + 1, math.MaxInt64, r.Int64()} {
		crc1, crc2 := r.Uint64(), r.Uint64()
		if got, want := Combine(crc1, crc2, n), slowCombine(crc1, crc2, n); got != want {
			t.Fatalf("len2 %d: got %#x, want %#x", n, got, want)
		}
	}
}

func TestCombineNegative(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("Combine with len2 < 0 did not panic")
		}
	}()
	Combine(1, 2, -1)
}

func FuzzUpdate(f *testing.F) {
	f.Add(uint64(0), uint8(0), []byte("123456789"))
	f.Add(uint64(1<<63), uint8(3), bytes.Repeat([]byte{0xA5}, 300))
	f.Add(uint64(42), uint8(15), make([]byte, 1000))
	f.Fuzz(func(t *testing.T, crc uint64, off uint8, data []byte) {
		data = data[min(int(off%16), len(data)):] // vary alignment
		want := crc64.Update(crc, table, data)
		for _, i := range supportedImpls() {
			if got := update(crc, data, i); got != want {
				t.Fatalf("%s: len %d crc %#x: got %#x, want %#x", implNames[i], len(data), crc, got, want)
			}
		}
	})
}

var sizes = []struct {
	name string
	n    int
}{{"64", 64}, {"4K", 4 << 10}, {"256K", 256 << 10}, {"4M", 4 << 20}}

func BenchmarkUpdate(b *testing.B) {
	fns := []struct {
		name string
		f    func(uint64, []byte) uint64
	}{
		{"std", func(c uint64, p []byte) uint64 { return crc64.Update(c, table, p) }},
		{"fast", Update},
	}
	for _, fn := range fns {
		for _, s := range sizes {
			b.Run(fn.name+"/"+s.name, func(b *testing.B) {
				p := make([]byte, s.n)
				b.SetBytes(int64(s.n))
				for b.Loop() {
					fn.f(0, p)
				}
			})
		}
	}
}

// BenchmarkThreshold compares the implementations around the sizes where
// update switches between them.
func BenchmarkThreshold(b *testing.B) {
	for _, n := range []int{15, 16, 32, 64, 128, 192, 256, 512, 1024} {
		p := make([]byte, n)
		for _, i := range supportedImpls() {
			b.Run(fmt.Sprintf("%s/%d", implNames[i], n), func(b *testing.B) {
				b.SetBytes(int64(n))
				for b.Loop() {
					update(0, p, i)
				}
			})
		}
	}
}

func BenchmarkCombine(b *testing.B) {
	for _, n := range []int64{4<<20 + 12345, 1<<40 - 1} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			for b.Loop() {
				Combine(0x0123456789ABCDEF, 0xFEDCBA9876543210, n)
			}
		})
	}
}
