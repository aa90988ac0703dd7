//go:build !purego

#include "textflag.h"
#include "go_asm.h"

// Register conventions: SI data, CX bytes left (a multiple of 16), DX the
// *foldConsts. A lane holds 128 message bits loaded little-endian: a
// reflected polynomial R = Rhi·x^64 + Rlo with Rhi in the low qword and Rlo in
// the high one. The CRC register is added to the first 8 bytes of the
// message. See poly.go for the algebra behind each constant.

#define K(i) (foldConsts_fold+16*(i))(DX)

// acc = acc.lo·k.lo ⊕ acc.hi·k.hi ⊕ data: moves acc forward by the distance
// of k and adds the 16 bytes found there.
#define FOLD(acc, k, data) \
	MOVOA     acc, X9;     \
	PCLMULQDQ $0x00, k, acc; \
	PCLMULQDQ $0x11, k, X9;  \
	PXOR      X9, acc;     \
	MOVOU     data, X10;   \
	PXOR      X10, acc

// dst ^= src.lo·k.lo ⊕ src.hi·k.hi (clobbers src).
#define FOLDINTO(src, k, dst) \
	MOVOA     src, X9;     \
	PCLMULQDQ $0x00, k, src; \
	PCLMULQDQ $0x11, k, X9;  \
	PXOR      src, dst;    \
	PXOR      X9, dst

// The same on four 128-bit lanes per ZMM register, with a three-way XOR.
#define FOLDZ(acc, k, data) \
	VPCLMULQDQ $0x00, k, acc, Z9;   \
	VPCLMULQDQ $0x11, k, acc, acc;  \
	VPTERNLOGD $0x96, data, Z9, acc

#define FOLDZINTO(src, k, dst) \
	VPCLMULQDQ $0x00, k, src, Z9;  \
	VPCLMULQDQ $0x11, k, src, src; \
	VPTERNLOGD $0x96, src, Z9, dst

// func updateCLMUL(state uint64, p []byte, k *foldConsts, avx512 bool) uint64
TEXT ·updateCLMUL(SB), NOSPLIT, $0-56
	MOVQ state+0(FP), AX
	MOVQ p_base+8(FP), SI
	MOVQ p_len+16(FP), CX
	MOVQ k+32(FP), DX

	CMPB avx512+40(FP), $0
	JEQ  sse
	CMPQ CX, $256
	JB   sse

	// Sixteen lanes in four ZMM registers, each folded 16·128 bits forward
	// per 256-byte block.
	VMOVQ           AX, X4 // zeroes the rest of Z4, unlike MOVQ
	VMOVDQU64       0(SI), Z0
	VMOVDQU64       64(SI), Z1
	VMOVDQU64       128(SI), Z2
	VMOVDQU64       192(SI), Z3
	VPXORQ          Z4, Z0, Z0
	ADDQ            $256, SI
	SUBQ            $256, CX
	VBROADCASTI32X4 K(15), Z8

loop16:
	CMPQ CX, $256
	JB   fold16
	FOLDZ(Z0, Z8, 0(SI))
	FOLDZ(Z1, Z8, 64(SI))
	FOLDZ(Z2, Z8, 128(SI))
	FOLDZ(Z3, Z8, 192(SI))
	ADDQ $256, SI
	SUBQ $256, CX
	JMP  loop16

fold16:
	// Z0 and Z1 are 1024 bits before Z2 and Z3, Z2 512 before Z3.
	VBROADCASTI32X4 K(7), Z8
	FOLDZINTO(Z0, Z8, Z2)
	FOLDZINTO(Z1, Z8, Z3)
	VBROADCASTI32X4 K(3), Z8
	FOLDZINTO(Z2, Z8, Z3)

loop4:
	CMPQ CX, $64
	JB   fold4
	FOLDZ(Z3, Z8, 0(SI))
	ADDQ $64, SI
	SUBQ $64, CX
	JMP  loop4

fold4:
	// Halve twice: the low half of Z3 is 256 bits before the high half,
	// then the low lane of that 128 bits before the high lane.
	VEXTRACTI64X4  $1, Z3, Y4
	VBROADCASTI128 K(1), Y8
	VPCLMULQDQ     $0x00, Y8, Y3, Y9
	VPCLMULQDQ     $0x11, Y8, Y3, Y3
	VPXOR          Y9, Y3, Y3
	VPXOR          Y4, Y3, Y3
	VEXTRACTI128   $1, Y3, X4
	VMOVDQU        K(0), X8
	VPCLMULQDQ     $0x00, X8, X3, X9
	VPCLMULQDQ     $0x11, X8, X3, X3
	VPXOR          X9, X3, X3
	VPXOR          X4, X3, X7
	VZEROUPPER
	JMP            loop1

sse:
	MOVQ AX, X11
	CMPQ CX, $128
	JB   short

	// Eight lanes, each folded 8·128 bits forward per 128-byte block.
	MOVOU 0(SI), X0
	MOVOU 16(SI), X1
	MOVOU 32(SI), X2
	MOVOU 48(SI), X3
	MOVOU 64(SI), X4
	MOVOU 80(SI), X5
	MOVOU 96(SI), X6
	MOVOU 112(SI), X7
	PXOR  X11, X0
	ADDQ  $128, SI
	SUBQ  $128, CX
	MOVOU K(7), X8

loop8:
	CMPQ CX, $128
	JB   fold8
	FOLD(X0, X8, 0(SI))
	FOLD(X1, X8, 16(SI))
	FOLD(X2, X8, 32(SI))
	FOLD(X3, X8, 48(SI))
	FOLD(X4, X8, 64(SI))
	FOLD(X5, X8, 80(SI))
	FOLD(X6, X8, 96(SI))
	FOLD(X7, X8, 112(SI))
	ADDQ $128, SI
	SUBQ $128, CX
	JMP  loop8

fold8:
	// Lane i lies 128·(7-i) bits before lane 7.
	MOVOU K(6), X8
	FOLDINTO(X0, X8, X7)
	MOVOU K(5), X8
	FOLDINTO(X1, X8, X7)
	MOVOU K(4), X8
	FOLDINTO(X2, X8, X7)
	MOVOU K(3), X8
	FOLDINTO(X3, X8, X7)
	MOVOU K(2), X8
	FOLDINTO(X4, X8, X7)
	MOVOU K(1), X8
	FOLDINTO(X5, X8, X7)
	MOVOU K(0), X8
	FOLDINTO(X6, X8, X7)
	JMP   loop1

short:
	MOVOU 0(SI), X7
	PXOR  X11, X7
	ADDQ  $16, SI
	SUBQ  $16, CX
	MOVOU K(0), X8

loop1:
	// One lane, folded 128 bits forward per 16-byte block.
	TESTQ CX, CX
	JZ    reduce
	FOLD(X7, X8, 0(SI))
	ADDQ  $16, SI
	SUBQ  $16, CX
	JMP   loop1

reduce:
	// The CRC is R·x^64 mod P for the last lane R. First fold it to
	// T ≡ Rhi·x^128 + Rlo·x^64 of degree < 128, with K(0).hi = x^127.
	MOVOA     X7, X9
	PCLMULQDQ $0x10, X8, X7 // Rhi·x^127·x
	PSRLDQ    $8, X9        // Rlo·x^64: Rlo moves to the high-degree qword
	PXOR      X9, X7        // T: X7.lo holds Thi, X7.hi holds Tlo

	// Barrett: q = floor(Thi·μ / x^64); T mod P = Tlo ⊕ (q·P mod x^64).
	MOVOU     foldConsts_barrett(DX), X10 // {μ/x, P/x}
	MOVOA     X7, X9
	PCLMULQDQ $0x00, X10, X9 // X9.lo = q
	MOVOA     X9, X11
	PCLMULQDQ $0x10, X10, X9 // X9.hi = q·(P-1) mod x^64
	PSLLDQ    $8, X11        // {0, q}
	PXOR      X11, X9        // X9.hi = q·P mod x^64
	PXOR      X7, X9         // X9.hi = T mod P
	PEXTRQ    $1, X9, AX
	MOVQ      AX, ret+48(FP)
	RET
