package ossemu

// The combination below is the GF(2) matrix method of zlib's crc32_combine,
// applied to the reflected CRC-64/ECMA polynomial. It lets segments of one
// object be checksummed in parallel and the results joined, whatever
// implementation crc64ECMA uses.

// ecmaReflected is CRC-64/ECMA-182's polynomial in reflected bit order
// (the same value as hash/crc64.ECMA).
const ecmaReflected = 0xC96C5795D7870F42

// crc64Combine returns the CRC of A||B given crcA = CRC(A), crcB = CRC(B)
// and lenB = len(B).
func crc64Combine(crcA, crcB uint64, lenB int64) uint64 {
	if lenB <= 0 {
		return crcA
	}
	var even, odd [64]uint64
	odd[0] = ecmaReflected // operator for one zero bit
	row := uint64(1)
	for n := 1; n < 64; n++ {
		odd[n] = row
		row <<= 1
	}
	gf2Square(&even, &odd) // two zero bits
	gf2Square(&odd, &even) // four zero bits
	n := uint64(lenB)
	for {
		gf2Square(&even, &odd) // first pass: one zero byte
		if n&1 != 0 {
			crcA = gf2Times(&even, crcA)
		}
		n >>= 1
		if n == 0 {
			break
		}
		gf2Square(&odd, &even)
		if n&1 != 0 {
			crcA = gf2Times(&odd, crcA)
		}
		n >>= 1
		if n == 0 {
			break
		}
	}
	return crcA ^ crcB
}

func gf2Times(mat *[64]uint64, vec uint64) uint64 {
	var sum uint64
	for i := 0; vec != 0; i, vec = i+1, vec>>1 {
		if vec&1 != 0 {
			sum ^= mat[i]
		}
	}
	return sum
}

func gf2Square(square, mat *[64]uint64) {
	for n := range 64 {
		square[n] = gf2Times(mat, mat[n])
	}
}
