//go:build !purego

package crc64ecma

import (
	"testing"

	"golang.org/x/sys/cpu"
)

// TestDetect guards against the kernels silently going untested: the tests
// run every implementation up to bestImpl.
func TestDetect(t *testing.T) {
	if cpu.X86.HasPCLMULQDQ && cpu.X86.HasSSE41 && bestImpl < implSSE {
		t.Errorf("CPU has PCLMULQDQ and SSE4.1 but bestImpl = %s", implNames[bestImpl])
	}
	if cpu.X86.HasAVX512F && cpu.X86.HasAVX512VPCLMULQDQ && bestImpl != implAVX512 {
		t.Errorf("CPU has AVX-512 VPCLMULQDQ but bestImpl = %s", implNames[bestImpl])
	}
}
