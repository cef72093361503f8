// Bit conventions of binllm's packed codes, written once for every backend.
//
// * A code of d dimensions is stored in nbytes(d) = ceil(d/8) bytes.
// * MSB-first: byte k holds dimensions 8k..8k+7, dimension 8k in bit 7, so a
//   dotted-decimal number *is* the byte value and a bit string reads the bytes
//   left to right (the same order as numpy.packbits).
// * sign(x) = +1 (bit 1) iff x >= 0; both +0.0 and -0.0 map to +1. NaN is an
//   error that callers report; it never becomes a bit silently.
// * Bits past d in the last byte are always zero, so byte-wise XOR/popcount of
//   two codes counts exactly the d real dimensions.
// * The +-1 inner product of two codes is d - 2 * popcount(a XOR b).
//
// Everything here is usable from host and device code. On the host every
// function is `static inline` (internal linkage): the per-ISA kernel files
// include this header with different -m flags, and an external inline
// function compiled with AVX-512 could be picked by the linker for code that
// runs on any CPU (an ODR violation).
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define BINLLM_HD static __host__ __device__ __forceinline__
#else
#define BINLLM_HD static inline
#endif

namespace binllm {

BINLLM_HD int64_t nbytes(int64_t d) { return (d + 7) / 8; }

// Mask of the valid bits of the last byte of a d-dimensional code.
BINLLM_HD uint8_t tail_mask(int64_t d) {
  const int r = static_cast<int>(d & 7);
  return r == 0 ? uint8_t(0xFF) : uint8_t(0xFF00 >> r);
}

// Bit position (0 = least significant) that dimension j takes inside its byte.
BINLLM_HD int bit_in_byte(int64_t j) { return 7 - static_cast<int>(j & 7); }

// Reverses the 8 bits of a byte: turns an LSB-first lane mask (what SIMD
// movemask instructions produce) into the MSB-first byte of the convention.
BINLLM_HD uint8_t reverse8(uint32_t b) {
  b = ((b & 0xF0u) >> 4) | ((b & 0x0Fu) << 4);
  b = ((b & 0xCCu) >> 2) | ((b & 0x33u) << 2);
  b = ((b & 0xAAu) >> 1) | ((b & 0x55u) << 1);
  return static_cast<uint8_t>(b);
}

// Sign classification on raw IEEE bits, so that float16/bfloat16 need no
// conversion: +1 iff the sign bit is clear or the value is a zero.
// Returns 1 (x >= 0), 0 (x < 0) or -1 (NaN).
BINLLM_HD int sign_bits16(uint16_t v, uint16_t inf_bits) {
  const uint16_t mag = v & 0x7FFFu;
  if (mag > inf_bits) return -1;
  return ((v & 0x8000u) == 0 || mag == 0) ? 1 : 0;
}
BINLLM_HD int sign_f32(float x) { return x != x ? -1 : (x >= 0.0f ? 1 : 0); }
BINLLM_HD int sign_f64(double x) { return x != x ? -1 : (x >= 0.0 ? 1 : 0); }

constexpr uint16_t kHalfInf = 0x7C00u;      // float16 +inf
constexpr uint16_t kBfloat16Inf = 0x7F80u;  // bfloat16 +inf

// Element types accepted by sign packing.
enum class FloatType : int { f32 = 0, f64 = 1, f16 = 2, bf16 = 3 };

// Output element types of unpacking: +-1 in a float or int8 type, or 0/1 bits.
enum class UnpackType : int { f32 = 0, f64 = 1, f16 = 2, bf16 = 3, i8 = 4, bits = 5 };

// The raw bit patterns an unpacked bit 1 (pos) and 0 (neg) become in each
// UnpackType, in the low bytes of a uint64: +1/-1 for the float and int8
// types, 1/0 for bits. The CPU and CUDA unpack kernels both take them from here.
struct UnpackValues {
  uint64_t pos, neg;
};
BINLLM_HD UnpackValues unpack_values(UnpackType t) {
  switch (t) {
    case UnpackType::f32: return {0x3F800000u, 0xBF800000u};
    case UnpackType::f64: return {0x3FF0000000000000ull, 0xBFF0000000000000ull};
    case UnpackType::f16: return {0x3C00u, 0xBC00u};
    case UnpackType::bf16: return {0x3F80u, 0xBF80u};
    case UnpackType::i8: return {0x01u, 0xFFu};
    case UnpackType::bits: return {0x01u, 0x00u};
  }
  return {0, 0};
}

// Whether a score kernel writes +-1 inner products or Hamming distances.
enum class ScoreKind : int { dot = 0, hamming = 1 };

// The score of two codes whose XOR has popcount pc. Computed in 64 bits: with
// d <= 2**31 - 1 (checked by the bindings) the result always fits int32.
BINLLM_HD int32_t score_from_popcount(ScoreKind kind, int64_t d, int32_t pc) {
  return kind == ScoreKind::dot ? static_cast<int32_t>(d - 2 * int64_t(pc)) : pc;
}
// The same with the kind fixed at compile time, for the inner loops.
template <ScoreKind K>
BINLLM_HD int32_t score_from_popcount(int64_t d, int32_t pc) {
  return K == ScoreKind::dot ? static_cast<int32_t>(d - 2 * int64_t(pc)) : pc;
}

}  // namespace binllm
