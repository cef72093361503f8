// binllm C++ core: plain functions over pointers, sizes and strides.
//
// Shapes use the conventions of bits.h: a code matrix is n rows of
// nbytes(d) bytes, row r starting at codes + r * ld (ld >= nbytes(d) bytes).
// Functions never allocate their outputs, never know Python, and report bad
// data (NaN, malformed text) through their return value, not exceptions, so
// that callers can name the offending row. Work is split over std::threads
// (see parallel.h); every function is safe to call without the GIL.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "bits.h"

namespace binllm {

// ---- CPU variants (cpu/dispatch.cpp) ---------------------------------------
// Names of the variants compiled into this build, best last.
std::vector<std::string> compiled_variants();
// Variants this CPU can run.
std::vector<std::string> supported_variants();
// The variant in use (chosen once at load: the best supported one).
std::string current_variant();
// Forces a variant; throws std::invalid_argument if unknown or unsupported.
void set_variant(const std::string& name);
// What was wrong with BINLLM_CPU_VARIANT (then the best supported variant is
// used), or "" when it is unset or valid.
std::string variant_problem();

// ---- threads (ops.cpp) ------------------------------------------------------
// Threads per call: set_num_threads, else BINLLM_NUM_THREADS, else the hardware
// threads; never more than 4 x the hardware threads.
int num_threads();
void set_num_threads(int n);  // n <= 0: back to the default

// Problems found in the BINLLM_* environment variables, each naming the
// variable, its value and the fallback in use. Empty when all is well.
std::vector<std::string> config_problems();

// ---- packing ----------------------------------------------------------------
// x: n x d elements of `type`, element (r, j) at x + (r * s0 + j * s1) elements.
// out: n rows of nbytes(d) bytes, row stride ld_out.
// Returns -1 on success, or the flat index r * d + j of the first NaN (the
// smallest such index); rows before it are packed, the rest is unspecified.
int64_t pack_signs(FloatType type, const void* x, int64_t n, int64_t d, int64_t s0, int64_t s1,
                   uint8_t* out, int64_t ld_out);

// Writes n x d elements (row stride d) of +-1 in `type`, or 0/1 for bits.
void unpack(const uint8_t* codes, int64_t n, int64_t d, int64_t ld, UnpackType type, void* out);

// ---- scores -----------------------------------------------------------------
// Row-aligned: out[r] = score(a_r, b_r), n values.
void score_pairs(ScoreKind kind, const uint8_t* a, int64_t lda, const uint8_t* b, int64_t ldb,
                 int64_t n, int64_t d, int32_t* out);
// All pairs: out[i * m + j] = score(a_i, b_j), n x m values, int32 or int16.
// For int16 the caller guarantees d <= 32767.
void score_all_i32(ScoreKind kind, const uint8_t* a, int64_t lda, int64_t n, const uint8_t* b,
                   int64_t ldb, int64_t m, int64_t d, int32_t* out);
void score_all_i16(ScoreKind kind, const uint8_t* a, int64_t lda, int64_t n, const uint8_t* b,
                   int64_t ldb, int64_t m, int64_t d, int16_t* out);

// Top-k by +-1 inner product (equivalently smallest Hamming distance) of every
// query row over all m items; best first, ties to the lower item index.
// scores/indices: n x k. Requires 1 <= k <= m and d <= 65535.
void topk_dot(const uint8_t* q, int64_t ldq, int64_t n, const uint8_t* items, int64_t ldi,
              int64_t m, int64_t d, int64_t k, int32_t* scores, int64_t* indices);

// ---- text -------------------------------------------------------------------
// Bit strings: row r is written as d characters '0'/'1' at out + r * d.
void format_bits(const uint8_t* codes, int64_t n, int64_t d, int64_t ld, char* out);
// Dotted decimal: row r is written at out + r * width (width = dotted_width(d)),
// NUL-padded; its length goes to lengths[r].
int64_t dotted_width(int64_t d);
void format_dotted(const uint8_t* codes, int64_t n, int64_t d, int64_t ld, char* out,
                   int64_t* lengths);

// Parsing. Row r's text is (texts[r], lens[r]). On success returns -1 and
// fills n packed rows (stride nbytes(d)); otherwise returns the first bad row
// and sets *error to a static description of what is wrong with it.
int64_t parse_bits(const char* const* texts, const int64_t* lens, int64_t n, int64_t d,
                   uint8_t* out, const char** error);
int64_t parse_dotted(const char* const* texts, const int64_t* lens, int64_t n, int64_t d,
                     uint8_t* out, const char** error);

// Build facts for diagnostics.
std::string compiler_info();

}  // namespace binllm
