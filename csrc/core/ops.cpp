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

namespace {
// Top-k tiling. Streaming all m items once per query reads them from L3 or
// memory n times (3.2 MB per query at m = 100k, d = 256), which capped top-k
// below the all-pairs rate at wide codes; instead a group of queries filters
// one L1-sized block of items after another, so each block is fetched once
// per group. Each query keeps its own running state between blocks.
constexpr int64_t kTopkBlockBytes = 1 << 15;   // item block: about L1
constexpr int64_t kTopkStateBytes = 1 << 18;   // distance histograms of a query group
constexpr int64_t kTopkMaxGroup = 64;          // queries per group
constexpr int64_t kTopkWarm = 256;             // first filter step of a query
// Splitting a block (CpuKernels::split_items) costs about what it saves one
// query, so it pays from a few queries per group on.
constexpr int64_t kTopkSplitMin = 4;

// The candidates of one query so far, in item order. Scores take only d + 1
// values: a histogram of the candidates' distances tells when k of them beat
// distance t, so t can only shrink and the filter rejects nearly every later
// item without storing it.
struct TopkQuery {
  std::vector<uint32_t> idx;
  std::vector<uint16_t> dist;
  uint32_t* hist = nullptr;  // d + 1 counts, in the group's shared buffer
  int32_t t = 0;             // no item farther than t can be in the top k
  int64_t cnt = 0;           // candidates with distance <= t
};
}  // namespace

void topk_dot(const uint8_t* q, int64_t ldq, int64_t n, const uint8_t* items, int64_t ldi, int64_t m, int64_t d,
              int64_t k, int32_t* scores, int64_t* indices) {
  const auto& kern = kernels();
  const int64_t nb = nbytes(d);
  const int64_t block = std::clamp<int64_t>(kTopkBlockBytes / nb, 64, 8192);
  const int64_t group = std::clamp<int64_t>(kTopkStateBytes / ((d + 1) * 4), 1, kTopkMaxGroup);
  parallel_for(n, grain_rows(m * nb), [&](int64_t r0, int64_t r1) {
    std::vector<uint32_t> bidx(static_cast<size_t>(block));
    std::vector<uint16_t> bdist(static_cast<size_t>(block));
    std::vector<uint8_t> split;
    const int64_t g_max = std::min(group, r1 - r0);
    std::vector<uint32_t> hist(static_cast<size_t>(g_max * (d + 1)));
    std::vector<TopkQuery> st(static_cast<size_t>(g_max));
    for (int64_t g = 0; g < g_max; ++g) st[g].hist = hist.data() + g * (d + 1);
    std::vector<std::pair<uint16_t, uint32_t>> best;
    // Filters items [j0, j0 + len) (at `it`) for one query and updates its state.
    // sp: nullptr or items [j0, j0 + (len & ~7)) in the split layout.
    auto filter_step = [&](TopkQuery& s, const uint8_t* qr, const uint8_t* it, const uint8_t* sp, int64_t j0,
                           int64_t len) {
      // Once k candidates are within t, a later item at distance t would
      // lose every tie to them (higher index): only < t can still enter.
      const int32_t pass = s.cnt >= k ? s.t - 1 : s.t;
      const int64_t c = kern.filter_row(qr, it, len, ldi, d, pass, bidx.data(), bdist.data(), sp);
      for (int64_t x = 0; x < c; ++x) {
        s.idx.push_back(static_cast<uint32_t>(j0) + bidx[x]);
        s.dist.push_back(bdist[x]);
        ++s.hist[bdist[x]];
      }
      s.cnt += c;
      while (s.t > 0 && s.cnt - s.hist[s.t] >= k) {
        s.cnt -= s.hist[s.t];
        s.hist[s.t] = 0;
        --s.t;
      }
      // Drop candidates beyond t once they are the majority: amortised
      // O(1) per candidate, and the lists of a group stay small.
      if (static_cast<int64_t>(s.idx.size()) > 2 * s.cnt + block) {
        size_t w = 0;
        for (size_t x = 0; x < s.idx.size(); ++x)
          if (s.dist[x] <= s.t) s.idx[w] = s.idx[x], s.dist[w++] = s.dist[x];
        s.idx.resize(w);
        s.dist.resize(w);
      }
    };
    for (int64_t g0 = r0; g0 < r1; g0 += g_max) {
      const int64_t g1 = std::min(r1, g0 + g_max);
      std::fill(hist.begin(), hist.end(), 0u);
      for (auto& s : st) {
        s.idx.clear();
        s.dist.clear();
        s.t = static_cast<int32_t>(d);
        s.cnt = 0;
      }
      for (int64_t j0 = 0; j0 < m; j0 += block) {
        const int64_t len = std::min(block, m - j0);
        const uint8_t* sp = nullptr;
        if (g1 - g0 >= kTopkSplitMin) {
          if (split.empty()) split.resize(static_cast<size_t>(2 * nb * block));
          if (kern.split_items(items + j0 * ldi, len, ldi, d, split.data()) > 0) sp = split.data();
        }
        for (int64_t r = g0; r < g1; ++r) {
          TopkQuery& s = st[r - g0];
          // Until t is tight nearly every item is a candidate, so the first
          // block goes in growing steps (kTopkWarm items, then as many as
          // seen so far) with t shrinking in between: a few hundred
          // candidates per query instead of a whole block's.
          for (int64_t a = 0; a < len;) {
            const int64_t step = std::min(len - a, std::max(kTopkWarm, j0 + a));
            // steps start at multiples of 8 (kTopkWarm is one), so the split layout stays aligned
            filter_step(s, q + r * ldq, items + (j0 + a) * ldi, sp ? sp + 2 * nb * a : nullptr, j0 + a, step);
            a += step;
          }
        }
      }
      for (int64_t r = g0; r < g1; ++r) {
        const TopkQuery& s = st[r - g0];
        // Candidates are in item order, so the first ties at t are the lowest indices.
        int64_t ties = k - (s.cnt - s.hist[s.t]);
        best.clear();
        for (size_t x = 0; x < s.idx.size(); ++x) {
          if (s.dist[x] < s.t || (s.dist[x] == s.t && ties-- > 0)) best.emplace_back(s.dist[x], s.idx[x]);
        }
        std::stable_sort(best.begin(), best.end(), [](const auto& u, const auto& v) { return u.first < v.first; });
        for (int64_t x = 0; x < k; ++x) {
          scores[r * k + x] = score_from_popcount<ScoreKind::dot>(d, best[x].first);
          indices[r * k + x] = best[x].second;
        }
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
