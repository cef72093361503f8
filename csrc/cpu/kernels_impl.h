// One implementation of the per-ISA kernels, compiled once per variant.
//
// The including file defines BINLLM_VARIANT (a namespace) and
// BINLLM_VARIANT_GETTER. Which SIMD paths exist follows from the compiler
// flags of that file: each path handles the bulk of a row and leaves the rest
// to the next, narrower path, ending in scalar code that handles any size and
// stride. Only <cstdint>, <cstring> and intrinsics headers are used here (see
// core/kernel_table.h for why).
#include <cstdint>
#include <cstring>

#include "../core/bits.h"
#include "../core/kernel_table.h"

#if defined(__AVX2__) && defined(__F16C__) && defined(__POPCNT__)
#define BINLLM_AVX2 1
#include <immintrin.h>
#else
#define BINLLM_AVX2 0
#endif
#if BINLLM_AVX2 && defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
    defined(__AVX512VPOPCNTDQ__)
#define BINLLM_AVX512 1
#else
#define BINLLM_AVX512 0
#endif

namespace binllm {
namespace BINLLM_VARIANT {
namespace {

// ---------------------------------------------------------------- packing

inline int classify(float v) { return sign_f32(v); }
inline int classify(double v) { return sign_f64(v); }

struct Half {
  uint16_t bits;
};
struct BHalf {
  uint16_t bits;
};
inline int classify(Half v) { return sign_bits16(v.bits, kHalfInf); }
inline int classify(BHalf v) { return sign_bits16(v.bits, kBfloat16Inf); }

// Scalar packing of columns [j, d) of one row; any stride. Returns the column
// of the first NaN or -1.
template <class T>
int64_t pack_tail(const T* x, int64_t j, int64_t d, int64_t s1, uint8_t* o) {
  for (; j < d; j += 8) {
    const int64_t e = j + 8 < d ? j + 8 : d;
    uint32_t byte = 0;
    for (int64_t c = j; c < e; ++c) {
      const int s = classify(x[c * s1]);
      if (s < 0) return c;
      byte |= uint32_t(s) << bit_in_byte(c);
    }
    o[j >> 3] = static_cast<uint8_t>(byte);
  }
  return -1;
}

#if BINLLM_AVX2
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
inline __m256 load8(const BHalf* p) {
  // bfloat16 is the top half of a float32: widening by a shift is exact.
  const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}
#endif
#if BINLLM_AVX512
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const Half* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
inline __m512 load16(const BHalf* p) {
  const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}
#endif

// One row of 32-bit or 16-bit floats.
template <class T>
int64_t pack_row(const T* x, int64_t d, int64_t s1, uint8_t* o) {
  int64_t j = 0;
  if (s1 == 1) {
#if BINLLM_AVX512
    {
      // Reversing each group of 8 lanes makes the LSB-first compare mask MSB-first per byte.
      const __m512i rev = _mm512_setr_epi32(7, 6, 5, 4, 3, 2, 1, 0, 15, 14, 13, 12, 11, 10, 9, 8);
      const __m512 zero = _mm512_setzero_ps();
      for (; j + 16 <= d; j += 16) {
        __m512 v = load16(x + j);
        if (_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q)) return pack_tail(x, j, d, 1, o);
        v = _mm512_permutexvar_ps(rev, v);
        const uint16_t m = static_cast<uint16_t>(_mm512_cmp_ps_mask(v, zero, _CMP_GE_OQ));
        std::memcpy(o + (j >> 3), &m, 2);
      }
    }
#endif
#if BINLLM_AVX2
    const __m256i rev = _mm256_setr_epi32(7, 6, 5, 4, 3, 2, 1, 0);
    const __m256 zero = _mm256_setzero_ps();
    for (; j + 32 <= d; j += 32) {
      __m256 v[4];
      __m256 nan = _mm256_setzero_ps();
      for (int g = 0; g < 4; ++g) {
        v[g] = load8(x + j + 8 * g);
        nan = _mm256_or_ps(nan, _mm256_cmp_ps(v[g], v[g], _CMP_UNORD_Q));
      }
      if (_mm256_movemask_ps(nan)) return pack_tail(x, j, d, 1, o);
      uint32_t word = 0;
      for (int g = 0; g < 4; ++g) {
        const __m256 r = _mm256_permutevar8x32_ps(v[g], rev);
        word |= uint32_t(_mm256_movemask_ps(_mm256_cmp_ps(r, zero, _CMP_GE_OQ))) << (8 * g);
      }
      std::memcpy(o + (j >> 3), &word, 4);  // byte g of a little-endian word = group g
    }
    for (; j + 8 <= d; j += 8) {
      const __m256 v = load8(x + j);
      if (_mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q))) return pack_tail(x, j, d, 1, o);
      const __m256 r = _mm256_permutevar8x32_ps(v, rev);
      o[j >> 3] = static_cast<uint8_t>(_mm256_movemask_ps(_mm256_cmp_ps(r, zero, _CMP_GE_OQ)));
    }
#endif
  }
  return pack_tail(x, j, d, s1, o);
}

int64_t pack_row(const double* x, int64_t d, int64_t s1, uint8_t* o) {
  int64_t j = 0;
#if BINLLM_AVX2
  if (s1 == 1) {
    // Compare in float64: narrowing first would turn -1e-300 into -0.0 (+1).
    const __m256d zero = _mm256_setzero_pd();
    for (; j + 8 <= d; j += 8) {
      const __m256d a = _mm256_loadu_pd(x + j), b = _mm256_loadu_pd(x + j + 4);
      const __m256d nan = _mm256_or_pd(_mm256_cmp_pd(a, a, _CMP_UNORD_Q), _mm256_cmp_pd(b, b, _CMP_UNORD_Q));
      if (_mm256_movemask_pd(nan)) return pack_tail(x, j, d, 1, o);
      const uint32_t m = uint32_t(_mm256_movemask_pd(_mm256_cmp_pd(a, zero, _CMP_GE_OQ))) |
                         uint32_t(_mm256_movemask_pd(_mm256_cmp_pd(b, zero, _CMP_GE_OQ))) << 4;
      o[j >> 3] = reverse8(m);
    }
  }
#endif
  return pack_tail(x, j, d, s1, o);
}

template <class T>
int64_t pack_rows_t(const T* x, int64_t r0, int64_t r1, int64_t d, int64_t s0, int64_t s1,
                    uint8_t* out, int64_t ld) {
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t bad = pack_row(x + r * s0, d, s1, out + r * ld);
    if (bad >= 0) return r * d + bad;
  }
  return -1;
}

int64_t pack(FloatType type, const void* x, int64_t r0, int64_t r1, int64_t d, int64_t s0,
             int64_t s1, uint8_t* out, int64_t ld) {
  switch (type) {
    case FloatType::f32:
      return pack_rows_t(static_cast<const float*>(x), r0, r1, d, s0, s1, out, ld);
    case FloatType::f64:
      return pack_rows_t(static_cast<const double*>(x), r0, r1, d, s0, s1, out, ld);
    case FloatType::f16:
      return pack_rows_t(static_cast<const Half*>(x), r0, r1, d, s0, s1, out, ld);
    case FloatType::bf16:
      return pack_rows_t(static_cast<const BHalf*>(x), r0, r1, d, s0, s1, out, ld);
  }
  return -1;
}

// ---------------------------------------------------------------- popcount

inline uint32_t load_u32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
inline uint64_t load_u64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}
#if (defined(__x86_64__) || defined(__i386__)) && !defined(__POPCNT__)
// Baseline x86 (the generic variant) has no POPCNT instruction, and
// __builtin_popcountll becomes a libgcc call per word. Counting bits per byte
// with shifts and masks (SWAR) instead, and summing the bytes of up to 31
// words (<= 248 per byte) with one multiply, is several times faster.
#define BINLLM_SWAR_POPCOUNT 1
#else
#define BINLLM_SWAR_POPCOUNT 0
#endif
// The bit count of each byte of x, in that byte (<= 8).
inline uint64_t byte_counts(uint64_t x) {
  x -= (x >> 1) & 0x5555555555555555ull;
  x = (x & 0x3333333333333333ull) + ((x >> 2) & 0x3333333333333333ull);
  return (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0Full;
}
// The sum of the 8 bytes of b, when that sum is <= 255 (the multiply adds
// all bytes into the top one).
inline int32_t sum_bytes_small(uint64_t b) { return static_cast<int32_t>((b * 0x0101010101010101ull) >> 56); }
// The sum of the 8 bytes of b, any byte values: pairs of bytes are added into
// 16-bit fields first (<= 510 each, sum <= 2040).
inline int32_t sum_bytes(uint64_t b) {
  b = (b & 0x00FF00FF00FF00FFull) + ((b >> 8) & 0x00FF00FF00FF00FFull);
  return static_cast<int32_t>((b * 0x0001000100010001ull) >> 48);
}
constexpr int kSwarWords = 31;  // words whose byte counts (<= 8 each) can be added per byte
inline int32_t pc64(uint64_t v) {
#if BINLLM_SWAR_POPCOUNT
  return sum_bytes_small(byte_counts(v));
#else
  return __builtin_popcountll(v);
#endif
}
// popcount(x_0 XOR y_0) + ... over nw 8-byte words, word k from word(k).
template <class Word>
inline int32_t words_popcount(int64_t nw, Word word) {
  int32_t s = 0;
#if BINLLM_SWAR_POPCOUNT
  for (int64_t k0 = 0; k0 < nw; k0 += kSwarWords) {
    const int64_t k1 = k0 + kSwarWords < nw ? k0 + kSwarWords : nw;
    uint64_t acc = 0;
    for (int64_t k = k0; k < k1; ++k) acc += byte_counts(word(k));
    s += k1 - k0 <= 3 ? sum_bytes_small(acc) : sum_bytes(acc);  // 3 words: at most 192 bits
  }
#else
  for (int64_t k = 0; k < nw; ++k) s += pc64(word(k));
#endif
  return s;
}

// popcount(a XOR b) over nb bytes; NB > 0 fixes the size at compile time.
template <int NB>
inline int32_t xor_popcount(const uint8_t* a, const uint8_t* b, int64_t nb) {
  if (NB > 0) nb = NB;
  int64_t k = nb & ~int64_t(7);
  int32_t s = words_popcount(nb >> 3, [&](int64_t w) { return load_u64(a + 8 * w) ^ load_u64(b + 8 * w); });
  if (k + 4 <= nb) {
    s += pc64(load_u32(a + k) ^ load_u32(b + k));
    k += 4;
  }
  for (; k < nb; ++k) s += pc64(uint32_t(a[k] ^ b[k]));
  return s;
}

// The query's words held in locals: `out` and the item codes are byte pointers
// that may alias anything, so a query read through a pointer would be
// reloaded for every item.
template <int NB>
struct QueryWords {
  static constexpr int W = NB > 0 ? NB / 8 : 1;
  uint64_t w[W];
  explicit QueryWords(const uint8_t* q) {
    for (int k = 0; k < W; ++k) w[k] = NB >= 8 ? load_u64(q + 8 * k) : 0;
  }
  inline int32_t popcount_xor(const uint8_t* item) const {
    return words_popcount(W, [&](int64_t k) { return w[k] ^ load_u64(item + 8 * k); });
  }
};
constexpr bool words_only(int NB) { return NB >= 16 && NB % 8 == 0; }


#if BINLLM_AVX2
inline __m256i popcnt_bytes(__m256i v) {
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1,
                                       2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0F);
  const __m256i lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(v, low));
  const __m256i hi = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v, 4), low));
  return _mm256_add_epi8(lo, hi);
}
// popcount of each 32-bit lane of 8 codes of 4 bytes.
inline __m256i popcnt_lanes32(__m256i v) {
#if BINLLM_AVX512
  return _mm256_popcnt_epi32(v);
#else
  const __m256i c = popcnt_bytes(v);
  return _mm256_madd_epi16(_mm256_maddubs_epi16(c, _mm256_set1_epi8(1)), _mm256_set1_epi16(1));
#endif
}
// popcounts of 8 codes of 8 bytes (two vectors of 4), as 8 ordered 32-bit
// lanes, without VPOPCNTQ (the AVX-512 variant uses one zmm instead).
inline __m256i popcnt_8x64(__m256i v0, __m256i v1) {
  const __m256i p0 = _mm256_sad_epu8(popcnt_bytes(v0), _mm256_setzero_si256());
  const __m256i p1 = _mm256_sad_epu8(popcnt_bytes(v1), _mm256_setzero_si256());
  // lanes now [i0,i4,i1,i5,i2,i6,i3,i7] -> restore item order
  const __m256i mixed = _mm256_or_si256(p0, _mm256_slli_epi64(p1, 32));
  return _mm256_permutevar8x32_epi32(mixed, _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7));
}
// The query held in registers for one row-kernel call: `y` for the 256-bit
// paths and, with AVX-512, `z` for the 512-bit ones, each the query's NB
// bytes repeated; zero for sizes without a SIMD path. Never more than NB
// bytes are read from the row: a 4-byte row can end at the end of its buffer.
struct QueryVec {
  __m256i y;
#if BINLLM_AVX512
  __m512i z;
#endif
};
template <int NB>
inline QueryVec query_vector(const uint8_t* q) {
  QueryVec v;
  __m128i h = _mm_setzero_si128();
  if (NB == 4) {
    v.y = _mm256_set1_epi32(static_cast<int>(load_u32(q)));
  } else if (NB == 8) {
    v.y = _mm256_set1_epi64x(static_cast<long long>(load_u64(q)));
  } else if (NB == 16) {
    h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q));
    v.y = _mm256_set_m128i(h, h);
  } else if (NB == 32) {
    v.y = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q));
  } else {
    v.y = _mm256_setzero_si256();  // no SIMD path for this size: nothing to read
  }
#if BINLLM_AVX512
  if (NB == 4 || NB == 8)
    v.z = _mm512_broadcast_i64x4(v.y);
  else if (NB == 16)
    v.z = _mm512_broadcast_i32x4(h);
  else
    v.z = _mm512_broadcast_i64x4(v.y);
#endif
  return v;
}
// Popcounts of items [j, j+8) for contiguous 4- or 8-byte codes.
template <int NB>
inline __m256i popcnt_block8(const QueryVec& qv, const uint8_t* items, int64_t j) {
  if (NB == 4) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(items + 4 * j));
    return popcnt_lanes32(_mm256_xor_si256(v, qv.y));
  }
#if BINLLM_AVX512
  // One zmm holds the 8 codes; keeping the low 32 bits of each 64-bit count
  // (one permute) leaves them in item order.
  const __m512i p = _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(items + 8 * j), qv.z));
  const __m512i lo = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 0, 0, 0, 0, 0, 0, 0, 0);
  return _mm512_castsi512_si256(_mm512_permutexvar_epi32(lo, p));
#else
  const __m256i* p = reinterpret_cast<const __m256i*>(items + 8 * j);
  return popcnt_8x64(_mm256_xor_si256(_mm256_loadu_si256(p), qv.y),
                     _mm256_xor_si256(_mm256_loadu_si256(p + 1), qv.y));
#endif
}
#if BINLLM_AVX512
// Popcounts of items [j, j+8) for contiguous 16- or 32-byte codes with
// 512-bit VPOPCNTQ (one count per 64-bit word), as 8 ordered 32-bit lanes.
// Word counts are <= 64, so two vectors' counts share each 64-bit lane (low
// and high 32 bits): every shuffle and add of the word-summing tree then
// serves two sets of items. About 2 instructions per pair at d = 256, where
// the byte lookup of the AVX2 path (which this variant used to share) takes
// about 10.
template <int NB>
inline __m256i popcnt_block8_zmm(__m512i qz, const uint8_t* items, int64_t j) {
  const uint8_t* base = items + j * NB;
  auto pc = [&](int a) { return _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(base + 64 * a), qz)); };
  if (NB == 16) {
    // 64-bit lane l: word l%2 of item l/2 (low half), of item 4 + l/2 (high half)
    const __m512i s = _mm512_or_si512(pc(0), _mm512_slli_epi64(pc(1), 32));
    // add the two words of each item: swap the 64-bit halves of every 128-bit lane
    const __m512i t = _mm512_add_epi32(s, _mm512_shuffle_epi32(s, _MM_PERM_BADC));
    // 32-bit lane 4i holds item i, lane 4i + 1 item 4 + i
    const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 0, 0, 0, 0, 0, 0, 0, 0);
    return _mm512_castsi512_si256(_mm512_permutexvar_epi32(order, t));
  }
  // NB == 32. 64-bit lane l of s01: word l%4 of item l/4 (low), of item 2 + l/4 (high);
  // s23 the same for items 4.. and 6..
  const __m512i s01 = _mm512_or_si512(pc(0), _mm512_slli_epi64(pc(1), 32));
  const __m512i s23 = _mm512_or_si512(pc(2), _mm512_slli_epi64(pc(3), 32));
  // 128-bit lane L: words 2(L%2) + 0/1 summed, of s01 (low 64) and s23 (high 64)
  const __m512i u = _mm512_add_epi32(_mm512_unpacklo_epi64(s01, s23), _mm512_unpackhi_epi64(s01, s23));
  // add the other pair of words: swap neighbouring 128-bit lanes
  const __m512i w = _mm512_add_epi32(u, _mm512_shuffle_i64x2(u, u, _MM_SHUFFLE(2, 3, 0, 1)));
  // 32-bit lanes 0..3 hold items 0, 2, 4, 6; lanes 8..11 items 1, 3, 5, 7
  const __m512i order = _mm512_setr_epi32(0, 8, 1, 9, 2, 10, 3, 11, 0, 0, 0, 0, 0, 0, 0, 0);
  return _mm512_castsi512_si256(_mm512_permutexvar_epi32(order, w));
}
#endif
// Popcounts of items [j, j+8) of 16- or 32-byte codes, as 8 ordered 32-bit
// lanes, from bytes(c): the byte counts of 32-byte chunk c of the items
// (item i starts at byte i * NB). The byte counts are first added byte-wise
// with unpack/permute until each 8-byte group belongs to one item (at most 32
// per byte: no overflow), so one SAD per 4 items finishes the sum instead of
// one per vector followed by a tree of 64-bit adds.
template <int NB, class Bytes>
inline __m256i wide_counts8(Bytes bytes, int64_t j) {
  const __m256i z = _mm256_setzero_si256();
  __m256i half[2];
  for (int h = 0; h < 2; ++h) {
    const int64_t c = (j + 4 * h) * NB / 32;
    if (NB == 16) {
      // one chunk = 2 items of two 8-byte words: [a0 a1 | b0 b1], [c0 c1 | d0 d1]
      const __m256i v0 = bytes(c), v1 = bytes(c + 1);
      // [a0+a1 c0+c1 | b0+b1 d0+d1] -> 64-bit sums of items 0, 2, 1, 3
      half[h] = _mm256_sad_epu8(_mm256_add_epi8(_mm256_unpacklo_epi64(v0, v1), _mm256_unpackhi_epi64(v0, v1)), z);
    } else {
      __m256i v[4];  // item k: [w0 w1 | w2 w3]
      for (int k = 0; k < 4; ++k) v[k] = bytes(c + k);
      // [a0+a1 b0+b1 | a2+a3 b2+b3], the same for c, d
      const __m256i t01 = _mm256_add_epi8(_mm256_unpacklo_epi64(v[0], v[1]), _mm256_unpackhi_epi64(v[0], v[1]));
      const __m256i t23 = _mm256_add_epi8(_mm256_unpacklo_epi64(v[2], v[3]), _mm256_unpackhi_epi64(v[2], v[3]));
      // [a b | c d] -> 64-bit sums of items 0, 1, 2, 3
      const __m256i u = _mm256_add_epi8(_mm256_permute2x128_si256(t01, t23, 0x20),
                                        _mm256_permute2x128_si256(t01, t23, 0x31));
      half[h] = _mm256_sad_epu8(u, z);
    }
  }
  const __m256i mixed = _mm256_or_si256(half[0], _mm256_slli_epi64(half[1], 32));
  // mixed holds items [0 4 2 6 1 5 3 7] (NB = 16) or [0 4 1 5 2 6 3 7] (NB = 32)
  const __m256i order = NB == 16 ? _mm256_setr_epi32(0, 4, 2, 6, 1, 5, 3, 7) : _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
  return _mm256_permutevar8x32_epi32(mixed, order);
}
// Popcounts of items [j, j+8) for contiguous 16- or 32-byte codes.
template <int NB>
inline __m256i popcnt_block8_wide(__m256i qy, const uint8_t* items, int64_t j) {
  return wide_counts8<NB>([&](int64_t c) {
    return popcnt_bytes(_mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(items + 32 * c)), qy));
  }, j);
}
// Popcounts of items [j, j+8) of contiguous NB-byte codes, in item order.
template <int NB>
inline __m256i popcnt_any8(const QueryVec& qv, const uint8_t* items, int64_t j) {
  if (NB == 4 || NB == 8) return popcnt_block8<NB>(qv, items, j);
#if BINLLM_AVX512
  return popcnt_block8_zmm<NB>(qv.z, items, j);
#else
  return popcnt_block8_wide<NB>(qv.y, items, j);
#endif
}
constexpr bool simd_nb(int NB) { return NB == 4 || NB == 8 || NB == 16 || NB == 32; }

template <ScoreKind K>
inline __m256i to_score8(__m256i pc, __m256i vd) {
  return K == ScoreKind::dot ? _mm256_sub_epi32(vd, _mm256_slli_epi32(pc, 1)) : pc;
}
inline void store8(int32_t* o, __m256i v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(o), v); }
inline void store8(int16_t* o, __m256i v) {
  const __m128i h = _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(o), h);
}
#endif

// ---------------------------------------------------------------- split items

// AVX2 without VPOPCNTQ counts bits by nibble lookup: per 32 bytes an XOR,
// 3 instructions to split q XOR x into nibbles, 2 lookups and an add. Since
// nibble(q ^ x) = nibble(q) ^ nibble(x), top-k splits each item block once
// (split_items) when a group of queries filters it, and every query then
// pays 5 instead of 7: 2 XORs, 2 lookups and an add. The split layout: for
// each 32-byte chunk of the items' bytes (1 item of 32 bytes or 2 of 16), its
// low nibbles (32 bytes) then its high nibbles (32 bytes).
#define BINLLM_SPLIT (BINLLM_AVX2 && !BINLLM_AVX512)
#if BINLLM_SPLIT
constexpr bool split_nb(int NB) { return NB == 16 || NB == 32; }

int64_t split_items(const uint8_t* items, int64_t m, int64_t ldi, int64_t d, uint8_t* out) {
  const int64_t nb = nbytes(d);
  if (!split_nb(static_cast<int>(nb))) return 0;
  const int64_t r = m & ~int64_t(7);  // whole groups of 8: the split filter loop's unit
  const __m256i low = _mm256_set1_epi8(0x0F);
  for (int64_t c = 0; c < r * nb / 32; ++c) {
    __m256i v;
    if (nb == 32) {
      v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(items + c * ldi));
    } else {
      const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(items + 2 * c * ldi));
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(items + (2 * c + 1) * ldi));
      v = _mm256_set_m128i(b, a);
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 64 * c), _mm256_and_si256(v, low));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 64 * c + 32), _mm256_and_si256(_mm256_srli_epi16(v, 4), low));
  }
  return r;
}

// Popcounts of items [j, j+8) from the split layout; qlo/qhi: the query's
// nibbles, laid out as one chunk.
template <int NB>
inline __m256i popcnt_block8_split(__m256i qlo, __m256i qhi, const uint8_t* split, int64_t j) {
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1,
                                       2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  return wide_counts8<NB>([&](int64_t c) {
    const __m256i lo = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(split + 64 * c)), qlo);
    const __m256i hi = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(split + 64 * c + 32)), qhi);
    return _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi));
  }, j);
}
#else
int64_t split_items(const uint8_t*, int64_t, int64_t, int64_t, uint8_t*) { return 0; }
#endif

// ---------------------------------------------------------------- scores

template <ScoreKind K, int NB, class T>
void score_row_nb(const uint8_t* q, const uint8_t* items, int64_t m, int64_t ldi, int64_t d, T* out) {
  int64_t j = 0;
#if BINLLM_AVX2
  if (simd_nb(NB) && ldi == NB) {
    const __m256i vd = _mm256_set1_epi32(static_cast<int>(d));
    const QueryVec qv = query_vector<NB>(q);
    for (; j + 8 <= m; j += 8) store8(out + j, to_score8<K>(popcnt_any8<NB>(qv, items, j), vd));
  }
#endif
  const int64_t nb = nbytes(d);
  if (words_only(NB)) {
    const QueryWords<NB> qw(q);
    for (; j < m; ++j) out[j] = static_cast<T>(score_from_popcount<K>(d, qw.popcount_xor(items + j * ldi)));
    return;
  }
  for (; j < m; ++j) out[j] = static_cast<T>(score_from_popcount<K>(d, xor_popcount<NB>(q, items + j * ldi, nb)));
}

template <ScoreKind K, class T>
void score_row_k(const uint8_t* q, const uint8_t* items, int64_t m, int64_t ldi, int64_t d, T* out) {
  switch (nbytes(d)) {
    case 4: return score_row_nb<K, 4>(q, items, m, ldi, d, out);
    case 8: return score_row_nb<K, 8>(q, items, m, ldi, d, out);
    case 16: return score_row_nb<K, 16>(q, items, m, ldi, d, out);
    case 32: return score_row_nb<K, 32>(q, items, m, ldi, d, out);
    default: return score_row_nb<K, 0>(q, items, m, ldi, d, out);
  }
}

template <class T>
void score_row(ScoreKind kind, const uint8_t* q, const uint8_t* items, int64_t m, int64_t ldi,
               int64_t d, T* out) {
  if (kind == ScoreKind::dot)
    score_row_k<ScoreKind::dot>(q, items, m, ldi, d, out);
  else
    score_row_k<ScoreKind::hamming>(q, items, m, ldi, d, out);
}

void score_row_i32(ScoreKind kind, const uint8_t* q, const uint8_t* items, int64_t m, int64_t ldi,
                   int64_t d, int32_t* out) {
  score_row(kind, q, items, m, ldi, d, out);
}
void score_row_i16(ScoreKind kind, const uint8_t* q, const uint8_t* items, int64_t m, int64_t ldi,
                   int64_t d, int16_t* out) {
  score_row(kind, q, items, m, ldi, d, out);
}

#if BINLLM_AVX2
// The SIMD part of filter_row: items [j, m & ~7) with pc8(j) the popcounts
// of items [j, j+8) in order; appends to idx/dist at n and returns the next j.
// Almost every item is rejected once the threshold is tight, so the hot path
// is popcount + one compare and movemask per 16 items, no stores.
template <class Pc8>
inline int64_t filter_simd(Pc8 pc8, int64_t j, int64_t m, int32_t t, uint32_t* idx, uint16_t* dist, int64_t& n) {
  const __m256i vt = _mm256_set1_epi32(t);
  auto emit = [&](__m256i pc, int64_t j0) {
    uint32_t keep = ~uint32_t(_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(pc, vt)))) & 0xFFu;
    if (!keep) return;
    alignas(32) int32_t pcs[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(pcs), pc);
    while (keep) {
      const int b = __builtin_ctz(keep);
      keep &= keep - 1;
      idx[n] = static_cast<uint32_t>(j0 + b);
      dist[n++] = static_cast<uint16_t>(pcs[b]);
    }
  };
  for (; j + 16 <= m; j += 16) {
    const __m256i p0 = pc8(j), p1 = pc8(j + 8);
    // some item is within t iff the smaller of each pair of counts is
    const __m256i far = _mm256_cmpgt_epi32(_mm256_min_epi32(p0, p1), vt);
    if (_mm256_movemask_ps(_mm256_castsi256_ps(far)) == 0xFF) continue;
    emit(p0, j);
    emit(p1, j + 8);
  }
  for (; j + 8 <= m; j += 8) emit(pc8(j), j);
  return j;
}
#endif

template <int NB>
int64_t filter_row_nb(const uint8_t* q, const uint8_t* items, int64_t m, int64_t ldi, int64_t d,
                      int32_t t, uint32_t* idx, uint16_t* dist, const uint8_t* split) {
  int64_t n = 0, j = 0;
  (void)split;
#if BINLLM_AVX2
  if (simd_nb(NB)) {
    const QueryVec qv = query_vector<NB>(q);
#if BINLLM_SPLIT
    if (split_nb(NB) && split) {
      const __m256i low = _mm256_set1_epi8(0x0F);
      const __m256i qlo = _mm256_and_si256(qv.y, low), qhi = _mm256_and_si256(_mm256_srli_epi16(qv.y, 4), low);
      j = filter_simd([&](int64_t x) { return popcnt_block8_split<NB>(qlo, qhi, split, x); }, j, m, t, idx, dist, n);
    }
#endif
    if (ldi == NB)
      j = filter_simd([&](int64_t x) { return popcnt_any8<NB>(qv, items, x); }, j, m, t, idx, dist, n);
  }
#endif
  // Distances of a chunk of items first, then the threshold test: the
  // distance loop has no branch or conditional store, so the compiler can
  // vectorize it like score_row (the generic variant's SWAR counts).
  constexpr int64_t kChunk = 64;
  int32_t h[kChunk];
  const int64_t nb = nbytes(d);
  const QueryWords<NB> qw(q);
  for (; j < m; j += kChunk) {
    const int64_t e = m - j < kChunk ? m - j : kChunk;
    const uint8_t* it = items + j * ldi;
    int32_t near = 0;  // some distance of the chunk is <= t
    if (words_only(NB)) {
      for (int64_t x = 0; x < e; ++x) {
        h[x] = qw.popcount_xor(it + x * ldi);
        near |= h[x] <= t;
      }
    } else {
      for (int64_t x = 0; x < e; ++x) {
        h[x] = xor_popcount<NB>(q, it + x * ldi, nb);
        near |= h[x] <= t;
      }
    }
    if (!near) continue;  // the usual case once t is tight: no scan
    for (int64_t x = 0; x < e; ++x) {
      if (h[x] <= t) {
        idx[n] = static_cast<uint32_t>(j + x);
        dist[n++] = static_cast<uint16_t>(h[x]);
      }
    }
  }
  return n;
}

int64_t filter_row(const uint8_t* q, const uint8_t* items, int64_t m, int64_t ldi, int64_t d, int32_t t,
                   uint32_t* idx, uint16_t* dist, const uint8_t* split) {
  switch (nbytes(d)) {
    case 4: return filter_row_nb<4>(q, items, m, ldi, d, t, idx, dist, split);
    case 8: return filter_row_nb<8>(q, items, m, ldi, d, t, idx, dist, split);
    case 16: return filter_row_nb<16>(q, items, m, ldi, d, t, idx, dist, split);
    case 32: return filter_row_nb<32>(q, items, m, ldi, d, t, idx, dist, split);
    default: return filter_row_nb<0>(q, items, m, ldi, d, t, idx, dist, split);
  }
}

template <ScoreKind K>
void score_pairs_k(const uint8_t* a, int64_t lda, const uint8_t* b, int64_t ldb, int64_t r0, int64_t r1,
                   int64_t d, int32_t* out) {
  const int64_t nb = nbytes(d);
  for (int64_t r = r0; r < r1; ++r) out[r] = score_from_popcount<K>(d, xor_popcount<0>(a + r * lda, b + r * ldb, nb));
}

void score_pairs(ScoreKind kind, const uint8_t* a, int64_t lda, const uint8_t* b, int64_t ldb, int64_t r0,
                 int64_t r1, int64_t d, int32_t* out) {
  if (kind == ScoreKind::dot)
    score_pairs_k<ScoreKind::dot>(a, lda, b, ldb, r0, r1, d, out);
  else
    score_pairs_k<ScoreKind::hamming>(a, lda, b, ldb, r0, r1, d, out);
}

#define BINLLM_STR2(x) #x
#define BINLLM_STR(x) BINLLM_STR2(x)
const CpuKernels table = {BINLLM_STR(BINLLM_VARIANT), pack, score_row_i32, score_row_i16, split_items,
                          filter_row, score_pairs};

}  // namespace
}  // namespace BINLLM_VARIANT

const CpuKernels* BINLLM_VARIANT_GETTER() { return &BINLLM_VARIANT::table; }

}  // namespace binllm
