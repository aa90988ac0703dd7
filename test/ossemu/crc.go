package ossemu

import "hash/crc64"

// crc64ECMA extends crc (0 for an empty prefix) with p, exactly as OSS's
// x-oss-hash-crc64ecma and hash/crc64 with the ECMA table compute it.
//
// The emulator deliberately uses the standard library, not the project's fast
// internal/crc64ecma: it is the oracle the client's checks are tested against,
// so it must not share their code.
func crc64ECMA(crc uint64, p []byte) uint64 {
	return crc64.Update(crc, crc64.MakeTable(crc64.ECMA), p)
}
