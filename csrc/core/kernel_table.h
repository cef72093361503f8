// The interface between the core and the CPU kernels that differ per
// instruction set. The core (ops.cpp) calls through this table; cpu/ implements
// it: cpu/kernels_impl.h is compiled once per variant (generic, avx2, avx512)
// with that variant's compiler flags, and cpu/dispatch.cpp picks one table at
// load time. Variant translation units use no
// std templates, since an inline template instantiated with AVX-512 flags could
// be merged by the linker into code that runs on a CPU without AVX-512.
#pragma once
#include <cstdint>

#include "bits.h"

namespace binllm {

struct CpuKernels {
  const char* name;
  // Packs rows [r0, r1); returns the flat index of the first NaN or -1.
  int64_t (*pack)(FloatType type, const void* x, int64_t r0, int64_t r1, int64_t d, int64_t s0,
                  int64_t s1, uint8_t* out, int64_t ld_out);
  // out[j] = score(q, items_j), j < m.
  void (*score_row_i32)(ScoreKind kind, const uint8_t* q, const uint8_t* items, int64_t m,
                        int64_t ldi, int64_t d, int32_t* out);
  void (*score_row_i16)(ScoreKind kind, const uint8_t* q, const uint8_t* items, int64_t m,
                        int64_t ldi, int64_t d, int16_t* out);
  // A faster layout, for this variant, of an item block that several queries
  // filter: writes items [0, r) to out (room for 2 * nbytes(d) bytes per
  // item) and returns r = m rounded down to a multiple of 8; returns 0 and
  // writes nothing when the variant has no such layout for d.
  int64_t (*split_items)(const uint8_t* items, int64_t m, int64_t ldi, int64_t d, uint8_t* out);
  // Items j < m whose Hamming distance to q is <= t: writes j and the distance,
  // in increasing j; returns how many. idx/dist hold room for m entries.
  // split: nullptr, or items [0, m & ~7) in the split_items layout (the
  // items themselves are still read for the rest).
  int64_t (*filter_row)(const uint8_t* q, const uint8_t* items, int64_t m, int64_t ldi, int64_t d,
                        int32_t t, uint32_t* idx, uint16_t* dist, const uint8_t* split);
  // out[r] = score(a_r, b_r) for r in [r0, r1).
  void (*score_pairs)(ScoreKind kind, const uint8_t* a, int64_t lda, const uint8_t* b, int64_t ldb,
                      int64_t r0, int64_t r1, int64_t d, int32_t* out);
};

const CpuKernels* generic_kernels();
#if defined(BINLLM_X86)
const CpuKernels* avx2_kernels();
const CpuKernels* avx512_kernels();
#endif

// The table in use (dispatch.cpp).
const CpuKernels& kernels();

}  // namespace binllm
