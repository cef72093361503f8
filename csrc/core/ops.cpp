// Whole-matrix operations: split work over threads and tiles, call the CPU
// variant's row kernels (kernel_table.h), and gather per-thread results.
#include <algorithm>
#include <cerrno>
#include <string>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "core.h"
#include "kernel_table.h"
#include "parallel.h"

namespace binllm {
namespace {

std::atomic<int> g_threads{0};

int hardware_threads() {
  const unsigned h = std::thread::hardware_concurrency();
  return h == 0 ? 1 : static_cast<int>(std::min(h, 1u << 16));
}

// More threads than this only cost memory and creation time (and invite
// thread-creation failures): set_num_threads and BINLLM_NUM_THREADS are capped here.
int max_threads() { return 4 * hardware_threads(); }

struct EnvThreads {
  int value = 0;  // 0: not set or invalid, use the hardware default
  std::string problem;
};

// BINLLM_NUM_THREADS, parsed strictly once: decimal digits only, 1..max_threads().
const EnvThreads& env_threads() {
  static const EnvThreads e = [] {
    EnvThreads r;
    const char* env = std::getenv("BINLLM_NUM_THREADS");
    if (!env || !*env) return r;
    const std::string s(env);
    char* end = nullptr;
    errno = 0;
    const long long v = (s[0] >= '0' && s[0] <= '9') ? std::strtoll(env, &end, 10) : -1;
    const bool digits = end && *end == 0 && errno == 0;
    const std::string fallback = std::to_string(hardware_threads());
    if (!digits || v < 1) {
      r.problem = "BINLLM_NUM_THREADS='" + s + "' is not a positive whole number; using the default (" +
                  fallback + " hardware threads)";
    } else if (v > max_threads()) {
      r.value = max_threads();
      r.problem = "BINLLM_NUM_THREADS='" + s + "' is more than 4 x the hardware threads; using " +
                  std::to_string(r.value);
    } else {
      r.value = static_cast<int>(v);
    }
    return r;
  }();
  return e;
}

int default_threads() {
  const int e = env_threads().value;
  return e > 0 ? e : hardware_threads();
}

// Below this many bytes touched per thread, a thread costs more than it saves.
constexpr int64_t kGrainBytes = 1 << 18;

int64_t grain_rows(int64_t bytes_per_row) {
  return std::max<int64_t>(1, kGrainBytes / std::max<int64_t>(bytes_per_row, 1));
}

void atomic_min(std::atomic<int64_t>& a, int64_t v) {
  int64_t cur = a.load();
  while ((cur < 0 || v < cur) && !a.compare_exchange_weak(cur, v)) {
  }
}

int64_t elem_size(FloatType t) { return t == FloatType::f64 ? 8 : (t == FloatType::f32 ? 4 : 2); }

}  // namespace

int num_threads() {
  const int t = g_threads.load();
  return t > 0 ? t : default_threads();
}
void set_num_threads(int n) { g_threads.store(n > 0 ? std::min(n, max_threads()) : 0); }

std::vector<std::string> config_problems() {
  std::vector<std::string> p;
  if (!env_threads().problem.empty()) p.push_back(env_threads().problem);
  const std::string v = variant_problem();
  if (!v.empty()) p.push_back(v);
  return p;
}

int64_t pack_signs(FloatType type, const void* x, int64_t n, int64_t d, int64_t s0, int64_t s1, uint8_t* out,
                   int64_t ld_out) {
  std::atomic<int64_t> bad{-1};
  const auto& k = kernels();
  parallel_for(n, grain_rows(d * elem_size(type)), [&](int64_t b, int64_t e) {
    const int64_t r = k.pack(type, x, b, e, d, s0, s1, out, ld_out);
    if (r >= 0) atomic_min(bad, r);
  });
  return bad.load();
}

namespace {
template <class T>
void unpack_t(const uint8_t* codes, int64_t n, int64_t d, int64_t ld, UnpackType type, T* out) {
  const UnpackValues pm = unpack_values(type);
  const T pos = static_cast<T>(pm.pos), neg = static_cast<T>(pm.neg);
  // One table row per byte value: 8 output elements, so a byte unpacks with one copy.
  std::vector<T> lut(256 * 8);
  for (int v = 0; v < 256; ++v)
    for (int j = 0; j < 8; ++j) lut[v * 8 + j] = (v >> (7 - j)) & 1 ? pos : neg;
  const int64_t full = d / 8, rest = d % 8;
  parallel_for(n, grain_rows(d * int64_t(sizeof(T))), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const uint8_t* c = codes + r * ld;
      T* o = out + r * d;
      for (int64_t k = 0; k < full; ++k) std::memcpy(o + 8 * k, &lut[c[k] * 8], 8 * sizeof(T));
      if (rest) std::memcpy(o + 8 * full, &lut[c[full] * 8], rest * sizeof(T));
    }
  });
}
}  // namespace

void unpack(const uint8_t* codes, int64_t n, int64_t d, int64_t ld, UnpackType type, void* out) {
  switch (type) {
    case UnpackType::f32:
      return unpack_t(codes, n, d, ld, type, static_cast<uint32_t*>(out));
    case UnpackType::f64:
      return unpack_t(codes, n, d, ld, type, static_cast<uint64_t*>(out));
    case UnpackType::f16:
    case UnpackType::bf16:
      return unpack_t(codes, n, d, ld, type, static_cast<uint16_t*>(out));
    case UnpackType::i8:
    case UnpackType::bits:
      return unpack_t(codes, n, d, ld, type, static_cast<uint8_t*>(out));
  }
}

void score_pairs(ScoreKind kind, const uint8_t* a, int64_t lda, const uint8_t* b, int64_t ldb, int64_t n,
                 int64_t d, int32_t* out) {
  const auto& k = kernels();
  parallel_for(n, grain_rows(2 * nbytes(d)),
               [&](int64_t r0, int64_t r1) { k.score_pairs(kind, a, lda, b, ldb, r0, r1, d, out); });
}

namespace {
// Tiles of query rows x item blocks: an item block stays in L2 while a group of
// queries streams over it, and small n still spreads over threads.
template <class T, class RowFn>
void score_all_tiled(const uint8_t* a, int64_t lda, int64_t n, const uint8_t* b, int64_t ldb, int64_t m,
                     int64_t d, T* out, RowFn row) {
  if (n == 0 || m == 0) return;
  const int64_t nb = nbytes(d);
  const int64_t ib = std::max<int64_t>(512, (int64_t(1) << 17) / nb);
  const int64_t rb = 64;
  const int64_t tiles_i = (m + ib - 1) / ib, tiles_r = (n + rb - 1) / rb;
  const int64_t tile_bytes = std::min(rb, n) * std::min(ib, m) * int64_t(sizeof(T));
  parallel_for(tiles_i * tiles_r, std::max<int64_t>(1, kGrainBytes / tile_bytes), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t r0 = (t / tiles_i) * rb, j0 = (t % tiles_i) * ib;
      const int64_t r1 = std::min(n, r0 + rb), len = std::min(ib, m - j0);
      for (int64_t r = r0; r < r1; ++r) row(a + r * lda, b + j0 * ldb, len, out + r * m + j0);
    }
  });
}
}  // namespace

void score_all_i32(ScoreKind kind, const uint8_t* a, int64_t lda, int64_t n, const uint8_t* b, int64_t ldb,
                   int64_t m, int64_t d, int32_t* out) {
  const auto& k = kernels();
  score_all_tiled(a, lda, n, b, ldb, m, d, out, [&](const uint8_t* q, const uint8_t* it, int64_t len, int32_t* o) {
    k.score_row_i32(kind, q, it, len, ldb, d, o);
  });
}

void score_all_i16(ScoreKind kind, const uint8_t* a, int64_t lda, int64_t n, const uint8_t* b, int64_t ldb,
                   int64_t m, int64_t d, int16_t* out) {
  const auto& k = kernels();
  score_all_tiled(a, lda, n, b, ldb, m, d, out, [&](const uint8_t* q, const uint8_t* it, int64_t len, int16_t* o) {
    k.score_row_i16(kind, q, it, len, ldb, d, o);
  });
}

void topk_dot(const uint8_t* q, int64_t ldq, int64_t n, const uint8_t* items, int64_t ldi, int64_t m, int64_t d,
              int64_t k, int32_t* scores, int64_t* indices) {
  const auto& kern = kernels();
  constexpr int64_t kBlock = 1024;
  parallel_for(n, grain_rows(m * nbytes(d)), [&](int64_t r0, int64_t r1) {
    std::vector<uint32_t> bidx(kBlock);
    std::vector<uint16_t> bdist(kBlock);
    std::vector<int64_t> hist(static_cast<size_t>(d) + 1);
    std::vector<uint32_t> cidx;
    std::vector<uint16_t> cdist;
    std::vector<std::pair<uint16_t, uint32_t>> best;
    for (int64_t r = r0; r < r1; ++r) {
      // Scores take only d + 1 values: a histogram of the candidates' distances
      // tells when k of them beat distance t, so t can only shrink and the
      // kernel rejects nearly every later item without storing it.
      std::fill(hist.begin(), hist.end(), 0);
      cidx.clear();
      cdist.clear();
      int32_t t = static_cast<int32_t>(d);
      int64_t cnt = 0;  // candidates with distance <= t
      for (int64_t j0 = 0; j0 < m; j0 += kBlock) {
        const int64_t len = std::min(kBlock, m - j0);
        const int64_t c = kern.filter_row(q + r * ldq, items + j0 * ldi, len, ldi, d, t, bidx.data(), bdist.data());
        for (int64_t x = 0; x < c; ++x) {
          cidx.push_back(static_cast<uint32_t>(j0) + bidx[x]);
          cdist.push_back(bdist[x]);
          ++hist[bdist[x]];
        }
        cnt += c;
        while (t > 0 && cnt - hist[t] >= k) {
          cnt -= hist[t];
          hist[t] = 0;
          --t;
        }
        if (static_cast<int64_t>(cidx.size()) > 4 * (cnt + kBlock)) {
          size_t w = 0;
          for (size_t x = 0; x < cidx.size(); ++x)
            if (cdist[x] <= t) cidx[w] = cidx[x], cdist[w++] = cdist[x];
          cidx.resize(w);
          cdist.resize(w);
        }
      }
      // Candidates are in item order, so the first ties at t are the lowest indices.
      int64_t ties = k - (cnt - hist[t]);
      best.clear();
      for (size_t x = 0; x < cidx.size(); ++x) {
        if (cdist[x] < t || (cdist[x] == t && ties-- > 0)) best.emplace_back(cdist[x], cidx[x]);
      }
      std::stable_sort(best.begin(), best.end(),
                       [](const auto& u, const auto& v) { return u.first < v.first; });
      for (int64_t x = 0; x < k; ++x) {
        scores[r * k + x] = score_from_popcount<ScoreKind::dot>(d, best[x].first);
        indices[r * k + x] = best[x].second;
      }
    }
  });
}

std::string compiler_info() {
#if defined(__clang__)
  return std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  return std::string("gcc ") + __VERSION__;
#elif defined(_MSC_VER)
  return "msvc " + std::to_string(_MSC_VER);
#else
  return "unknown";
#endif
}

}  // namespace binllm
