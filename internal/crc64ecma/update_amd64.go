//go:build !purego

package crc64ecma

import (
	"hash/crc64"

	"golang.org/x/sys/cpu"
)

// updateCLMUL is the kernel in update_amd64.s. It takes the CRC register
// (the inverted CRC) and returns it; len(p) must be a non-zero multiple of 16.
// With avx512 set, inputs of 256 bytes or more are folded with VPCLMULQDQ on
// ZMM registers, 256 bytes per round (faster than SSE from 256 bytes on).
//
//go:noescape
func updateCLMUL(state uint64, p []byte, k *foldConsts, avx512 bool) uint64

var (
	kernelConsts = makeFoldConsts()
	bestImpl     = detectImpl()
)

func detectImpl() impl {
	x := &cpu.X86
	switch {
	case !x.HasPCLMULQDQ || !x.HasSSE41:
		return implGeneric
	case x.HasAVX512F && x.HasAVX512VPCLMULQDQ && x.HasAVX2:
		return implAVX512
	}
	return implSSE
}

// supportedImpls lists the implementations this CPU can run, for tests.
func supportedImpls() []impl {
	s := []impl{implGeneric}
	for i := implSSE; i <= bestImpl; i++ {
		s = append(s, i)
	}
	return s
}

// minCLMUL is the shortest input given to the kernel, which needs a 16-byte
// block; the table of hash/crc64 is slower from there on (BenchmarkThreshold).
const minCLMUL = 16

func update(crc uint64, p []byte, i impl) uint64 {
	if i >= implSSE && len(p) >= minCLMUL {
		n := len(p) &^ 15
		crc = ^updateCLMUL(^crc, p[:n], &kernelConsts, i == implAVX512)
		p = p[n:]
	}
	return crc64.Update(crc, table, p)
}
