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
// Everything here is inline and usable from host and device code.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define BINLLM_HD __host__ __device__ __forceinline__
#else
#define BINLLM_HD inline
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

// Whether a score kernel writes +-1 inner products or Hamming distances.
enum class ScoreKind : int { dot = 0, hamming = 1 };

BINLLM_HD int32_t score_from_popcount(ScoreKind kind, int64_t d, int32_t pc) {
  return kind == ScoreKind::dot ? static_cast<int32_t>(d) - 2 * pc : pc;
}

}  // namespace binllm
