package ossclient

import "github.com/modelcast/modelcast/internal/crc64ecma"

// crcUpdate extends a CRC-64/ECMA (the checksum OSS reports in x-oss-hash-crc64ecma).
func crcUpdate(crc uint64, p []byte) uint64 { return crc64ecma.Update(crc, p) }

// crcCombine returns the CRC of A||B from CRC(A), CRC(B) and len(B).
func crcCombine(crc1, crc2 uint64, len2 int64) uint64 { return crc64ecma.Combine(crc1, crc2, len2) }
