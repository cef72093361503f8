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
inline int32_t pc64(uint64_t v) { return __builtin_popcountll(v); }

// popcount(a XOR b) over nb bytes; NB > 0 fixes the size at compile time.
template <int NB>
inline int32_t xor_popcount(const uint8_t* a, const uint8_t* b, int64_t nb) {
  if (NB > 0) nb = NB;
  int32_t s = 0;
  int64_t k = 0;
  for (; k + 8 <= nb; k += 8) s += pc64(load_u64(a + k) ^ load_u64(b + k));
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
    int32_t s = 0;
    for (int k = 0; k < W; ++k) s += pc64(w[k] ^ load_u64(item + 8 * k));
    return s;
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
// popcounts of 8 codes of 8 bytes (two vectors of 4), as 8 ordered 32-bit lanes.
inline __m256i popcnt_8x64(__m256i v0, __m256i v1) {
#if BINLLM_AVX512
  const __m256i p0 = _mm256_popcnt_epi64(v0), p1 = _mm256_popcnt_epi64(v1);
#else
  const __m256i p0 = _mm256_sad_epu8(popcnt_bytes(v0), _mm256_setzero_si256());
  const __m256i p1 = _mm256_sad_epu8(popcnt_bytes(v1), _mm256_setzero_si256());
#endif
  // lanes now [i0,i4,i1,i5,i2,i6,i3,i7] -> restore item order
  const __m256i mixed = _mm256_or_si256(p0, _mm256_slli_epi64(p1, 32));
  return _mm256_permutevar8x32_epi32(mixed, _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7));
}
// Popcounts of items [j, j+8) for contiguous 4- or 8-byte codes.
template <int NB>
inline __m256i popcnt_block8(const uint8_t* q, const uint8_t* items, int64_t j) {
  if (NB == 4) {
    const __m256i vq = _mm256_set1_epi32(static_cast<int>(load_u32(q)));
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(items + 4 * j));
    return popcnt_lanes32(_mm256_xor_si256(v, vq));
  }
  const __m256i vq = _mm256_set1_epi64x(static_cast<long long>(load_u64(q)));
  const __m256i* p = reinterpret_cast<const __m256i*>(items + 8 * j);
  return popcnt_8x64(_mm256_xor_si256(_mm256_loadu_si256(p), vq),
                     _mm256_xor_si256(_mm256_loadu_si256(p + 1), vq));
}
// Popcounts of items [j, j+8) for contiguous 16- or 32-byte codes, as 8
// ordered 32-bit lanes: byte counts per item are summed with SAD, then the
// per-item partial sums are folded together with unpack/permute.
template <int NB>
inline __m256i popcnt_block8_wide(const __m256i* qv, const uint8_t* items, int64_t j) {
  const __m256i z = _mm256_setzero_si256();
  auto sad = [&](const uint8_t* p, __m256i qx) {
    return _mm256_sad_epu8(popcnt_bytes(_mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)), qx)), z);
  };
  __m256i half[2];
  for (int h = 0; h < 2; ++h) {
    const uint8_t* base = items + (j + 4 * h) * NB;
    if (NB == 16) {
      // one vector = 2 items: [a0 b0 | a1 b1]
      const __m256i v0 = sad(base, qv[0]), v1 = sad(base + 32, qv[0]);
      const __m256i t = _mm256_add_epi64(_mm256_unpacklo_epi64(v0, v1), _mm256_unpackhi_epi64(v0, v1));
      half[h] = _mm256_permute4x64_epi64(t, 0xD8);  // [i0 i2 | i1 i3] -> [i0 i1 | i2 i3]
    } else {
      __m256i v[4];
      for (int k = 0; k < 4; ++k) v[k] = sad(base + 32 * k, qv[0]);
      const __m256i t01 = _mm256_add_epi64(_mm256_unpacklo_epi64(v[0], v[1]), _mm256_unpackhi_epi64(v[0], v[1]));
      const __m256i t23 = _mm256_add_epi64(_mm256_unpacklo_epi64(v[2], v[3]), _mm256_unpackhi_epi64(v[2], v[3]));
      half[h] = _mm256_add_epi64(_mm256_permute2x128_si256(t01, t23, 0x20), _mm256_permute2x128_si256(t01, t23, 0x31));
    }
  }
  const __m256i mixed = _mm256_or_si256(half[0], _mm256_slli_epi64(half[1], 32));
  return _mm256_permutevar8x32_epi32(mixed, _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7));
}
// The query as a vector for the 16- and 32-byte paths. The 4- and 8-byte
// paths broadcast the query themselves and must not read 32 bytes of a
// 4-byte row, so they get a zero vector.
template <int NB>
inline __m256i query_vector(const uint8_t* q) {
  if (NB == 16) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q));
    return _mm256_set_m128i(h, h);
  }
  if (NB == 32) return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q));
  return _mm256_setzero_si256();
}
template <int NB>
inline __m256i popcnt_any8(const __m256i* qv, const uint8_t* q, const uint8_t* items, int64_t j) {
  if (NB == 4 || NB == 8) return popcnt_block8<NB>(q, items, j);
  return popcnt_block8_wide<NB>(qv, items, j);
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

// ---------------------------------------------------------------- scores

template <ScoreKind K, int NB, class T>
void score_row_nb(const uint8_t* q, const uint8_t* items, int64_t m, int64_t ldi, int64_t d, T* out) {
  int64_t j = 0;
#if BINLLM_AVX2
  if (simd_nb(NB) && ldi == NB) {
    const __m256i vd = _mm256_set1_epi32(static_cast<int>(d));
    const __m256i qv[1] = {query_vector<NB>(q)};
    for (; j + 8 <= m; j += 8) store8(out + j, to_score8<K>(popcnt_any8<NB>(qv, q, items, j), vd));
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

template <int NB>
int64_t filter_row_nb(const uint8_t* q, const uint8_t* items, int64_t m, int64_t ldi, int64_t d,
                      int32_t t, uint32_t* idx, uint16_t* dist) {
  int64_t n = 0, j = 0;
#if BINLLM_AVX2
  if (simd_nb(NB) && ldi == NB) {
    // Almost every item is rejected once the threshold is tight, so the hot
    // path is popcount + compare + movemask with no stores.
    const __m256i vt = _mm256_set1_epi32(t);
    const __m256i qv[1] = {query_vector<NB>(q)};
    for (; j + 8 <= m; j += 8) {
      const __m256i pc = popcnt_any8<NB>(qv, q, items, j);
      uint32_t keep = ~uint32_t(_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(pc, vt)))) & 0xFFu;
      if (!keep) continue;
      alignas(32) int32_t pcs[8];
      _mm256_store_si256(reinterpret_cast<__m256i*>(pcs), pc);
      while (keep) {
        const int b = __builtin_ctz(keep);
        keep &= keep - 1;
        idx[n] = static_cast<uint32_t>(j + b);
        dist[n++] = static_cast<uint16_t>(pcs[b]);
      }
    }
  }
#endif
  const int64_t nb = nbytes(d);
  if (words_only(NB)) {
    const QueryWords<NB> qw(q);
    for (; j < m; ++j) {
      const int32_t h = qw.popcount_xor(items + j * ldi);
      if (h <= t) {
        idx[n] = static_cast<uint32_t>(j);
        dist[n++] = static_cast<uint16_t>(h);
      }
    }
    return n;
  }
  for (; j < m; ++j) {
    const int32_t h = xor_popcount<NB>(q, items + j * ldi, nb);
    if (h <= t) {
      idx[n] = static_cast<uint32_t>(j);
      dist[n++] = static_cast<uint16_t>(h);
    }
  }
  return n;
}

int64_t filter_row(const uint8_t* q, const uint8_t* items, int64_t m, int64_t ldi, int64_t d, int32_t t,
                   uint32_t* idx, uint16_t* dist) {
  switch (nbytes(d)) {
    case 4: return filter_row_nb<4>(q, items, m, ldi, d, t, idx, dist);
    case 8: return filter_row_nb<8>(q, items, m, ldi, d, t, idx, dist);
    case 16: return filter_row_nb<16>(q, items, m, ldi, d, t, idx, dist);
    case 32: return filter_row_nb<32>(q, items, m, ldi, d, t, idx, dist);
    default: return filter_row_nb<0>(q, items, m, ldi, d, t, idx, dist);
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
const CpuKernels table = {BINLLM_STR(BINLLM_VARIANT), pack, score_row_i32, score_row_i16, filter_row,
                          score_pairs};

}  // namespace
}  // namespace BINLLM_VARIANT

const CpuKernels* BINLLM_VARIANT_GETTER() { return &BINLLM_VARIANT::table; }

}  // namespace binllm
