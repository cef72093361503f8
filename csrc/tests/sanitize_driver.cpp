// Checks every kernel of the C++ core against plain scalar references, for a
// build with -fsanitize=address,undefined (CMake option BINLLM_SANITIZE=ON).
//
// Plain C++, no Python: every input and output lives in its own heap buffer of
// exactly the size the kernel may touch, so a read or write past it is an ASan
// report. Runs odd sizes (d = 1..1000 around the SIMD widths, n/m = 0, 1,
// odd), padded and transposed strides, on every CPU variant this machine
// supports with 1 and 4 threads, plus a seeded fuzz of the two text parsers.
// Prints one line per mismatch and exits 1 if there was any.
#include <algorithm>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "core/core.h"

using namespace binllm;

namespace {

int64_t g_failures = 0, g_checks = 0;
std::string g_ctx;

void check(bool ok, const std::string& what) {
  ++g_checks;
  if (ok) return;
  if (++g_failures <= 50) std::printf("MISMATCH [%s] %s\n", g_ctx.c_str(), what.c_str());
}

// A heap buffer of exactly n elements (new[] of 0 is a valid, unreadable block).
template <class T>
struct Buf {
  std::unique_ptr<T[]> p;
  int64_t n;
  explicit Buf(int64_t n_) : p(new T[static_cast<size_t>(n_ > 0 ? n_ : 0)]()), n(n_) {}
  T* data() { return p.get(); }
  T& operator[](int64_t i) { return p[static_cast<size_t>(i)]; }
};

const int64_t kDims[] = {1, 7, 8, 9, 31, 32, 33, 63, 64, 65, 127, 128, 129, 255, 256, 257, 1000};
const int64_t kRows[] = {0, 1, 7, 17, 33};

int64_t nb_of(int64_t d) { return (d + 7) / 8; }
uint8_t mask_of(int64_t d) { return d % 8 ? uint8_t(0xFF00 >> (d % 8)) : uint8_t(0xFF); }
bool bit(const uint8_t* row, int64_t j) { return (row[j / 8] >> (7 - j % 8)) & 1; }

// Codes: n rows at stride ld in an exact buffer of (n - 1) * ld + nb bytes, zero tail bits.
Buf<uint8_t> random_codes(std::mt19937_64& rng, int64_t n, int64_t d, int64_t ld) {
  const int64_t nb = nb_of(d);
  Buf<uint8_t> b(n > 0 ? (n - 1) * ld + nb : 0);
  for (int64_t i = 0; i < b.n; ++i) b[i] = static_cast<uint8_t>(rng());
  for (int64_t r = 0; r < n; ++r) b[r * ld + nb - 1] &= mask_of(d);
  return b;
}

int32_t ref_hamming(const uint8_t* a, const uint8_t* b, int64_t d) {
  int32_t h = 0;
  for (int64_t j = 0; j < d; ++j) h += bit(a, j) != bit(b, j);
  return h;
}

// ------------------------------------------------------------------ packing

// Reference sign classes: 1 (x >= 0 or a zero), 0 (x < 0), -1 (NaN).
int ref_sign(double x) { return x != x ? -1 : (x >= 0 ? 1 : 0); }
int ref_sign16(uint16_t v, int exp_bits) {
  const int mant_bits = 15 - exp_bits;
  const uint16_t exp = (v >> mant_bits) & ((1u << exp_bits) - 1), mant = v & ((1u << mant_bits) - 1);
  if (exp == (1u << exp_bits) - 1 && mant) return -1;
  if ((v & 0x7FFF) == 0) return 1;
  return (v & 0x8000) ? 0 : 1;
}

uint16_t random16(std::mt19937_64& rng, int exp_bits) {
  const int mant_bits = 15 - exp_bits;
  const uint64_t r = rng();
  uint16_t e = static_cast<uint16_t>(r % ((1u << exp_bits) - 1));  // never all ones: no NaN/inf
  uint16_t v = static_cast<uint16_t>(((r >> 20) & 1) << 15 | e << mant_bits | ((r >> 24) & ((1u << mant_bits) - 1)));
  switch ((r >> 40) % 16) {
    case 0: return 0x0000;
    case 1: return 0x8000;
    case 2: return static_cast<uint16_t>(((1u << exp_bits) - 1) << mant_bits);  // +inf
    case 3: return static_cast<uint16_t>(0x8000 | ((1u << exp_bits) - 1) << mant_bits);
    case 4: return static_cast<uint16_t>(0x8000 | 1);  // smallest negative subnormal
    default: return v;
  }
}

template <class T>
T random_float(std::mt19937_64& rng) {
  std::normal_distribution<double> nd;
  switch (rng() % 16) {
    case 0: return T(0.0);
    case 1: return -T(0.0);
    case 2: return T(-1e-300);
    case 3: return T(1e-300);
    case 4: return -std::numeric_limits<T>::infinity();
    case 5: return std::numeric_limits<T>::denorm_min() * T(-1);
    default: return static_cast<T>(nd(rng) * 3);
  }
}

// One layout of an n x d element matrix: strides in elements and the exact buffer size.
struct Layout {
  int64_t s0, s1, size;
  const char* name;
};
std::vector<Layout> layouts(int64_t n, int64_t d) {
  auto size = [&](int64_t s0, int64_t s1) { return n > 0 ? (n - 1) * s0 + (d - 1) * s1 + 1 : 0; };
  return {{d, 1, size(d, 1), "contiguous"},
          {3 * d + 5, 3, size(3 * d + 5, 3), "strided"},
          {1, std::max<int64_t>(n, 1), size(1, std::max<int64_t>(n, 1)), "transposed"}};
}

template <class E, class Gen, class Sign>
void check_pack_type(FloatType type, std::mt19937_64& rng, int64_t n, int64_t d, Gen gen, Sign sign,
                     E nan_value) {
  const int64_t nb = nb_of(d);
  for (const Layout& L : layouts(n, d)) {
    Buf<E> x(L.size);
    for (int64_t i = 0; i < x.n; ++i) x[i] = gen();
    Buf<uint8_t> out(n * nb);
    const int64_t bad = pack_signs(type, x.data(), n, d, L.s0, L.s1, out.data(), nb);
    check(bad == -1, "pack " + std::string(L.name) + " reported NaN at " + std::to_string(bad));
    bool same = true;
    for (int64_t r = 0; r < n; ++r)
      for (int64_t j = 0; j < nb * 8; ++j) {
        const bool want = j < d && sign(x[r * L.s0 + j * L.s1]) == 1;
        same &= bit(out.data() + r * nb, j) == want;
      }
    check(same, "pack " + std::string(L.name) + " n=" + std::to_string(n) + " d=" + std::to_string(d));
    if (n > 0) {  // a NaN (and a later one): the smallest flat index is reported
      const int64_t r = static_cast<int64_t>(rng() % n), j = static_cast<int64_t>(rng() % d);
      x[r * L.s0 + j * L.s1] = nan_value;
      if (r + 1 < n) x[(r + 1) * L.s0] = nan_value;
      const int64_t got = pack_signs(type, x.data(), n, d, L.s0, L.s1, out.data(), nb);
      check(got == r * d + j, "pack NaN index " + std::to_string(got) + " != " + std::to_string(r * d + j));
    }
  }
}

void check_pack(std::mt19937_64& rng, int64_t n, int64_t d) {
  check_pack_type<float>(FloatType::f32, rng, n, d, [&] { return random_float<float>(rng); },
                         [](float v) { return ref_sign(v); }, std::numeric_limits<float>::quiet_NaN());
  check_pack_type<double>(FloatType::f64, rng, n, d, [&] { return random_float<double>(rng); },
                          [](double v) { return ref_sign(v); }, std::numeric_limits<double>::quiet_NaN());
  check_pack_type<uint16_t>(FloatType::f16, rng, n, d, [&] { return random16(rng, 5); },
                            [](uint16_t v) { return ref_sign16(v, 5); }, uint16_t(0xFE01));
  check_pack_type<uint16_t>(FloatType::bf16, rng, n, d, [&] { return random16(rng, 8); },
                            [](uint16_t v) { return ref_sign16(v, 8); }, uint16_t(0x7FC1));
}

// ------------------------------------------------------------------ unpacking

template <class T>
void check_unpack_type(UnpackType type, const uint8_t* codes, int64_t n, int64_t d, int64_t ld, T pos, T neg,
                       const char* name) {
  Buf<T> out(n * d);
  unpack(codes, n, d, ld, type, out.data());
  bool same = true;
  for (int64_t r = 0; r < n; ++r)
    for (int64_t j = 0; j < d; ++j) {
      const T want = bit(codes + r * ld, j) ? pos : neg;
      same &= std::memcmp(&out[r * d + j], &want, sizeof(T)) == 0;
    }
  check(same, std::string("unpack ") + name + " n=" + std::to_string(n) + " d=" + std::to_string(d));
}

template <class T, class F>
T bits_of(F v) {
  T t;
  std::memcpy(&t, &v, sizeof(T));
  return t;
}

void check_unpack(std::mt19937_64& rng, int64_t n, int64_t d) {
  for (int64_t pad : {0, 3}) {
    const int64_t ld = nb_of(d) + pad;
    Buf<uint8_t> c = random_codes(rng, n, d, ld);
    check_unpack_type<uint32_t>(UnpackType::f32, c.data(), n, d, ld, bits_of<uint32_t>(1.0f),
                                bits_of<uint32_t>(-1.0f), "f32");
    check_unpack_type<uint64_t>(UnpackType::f64, c.data(), n, d, ld, bits_of<uint64_t>(1.0), bits_of<uint64_t>(-1.0),
                                "f64");
    check_unpack_type<uint16_t>(UnpackType::f16, c.data(), n, d, ld, 0x3C00, 0xBC00, "f16");
    check_unpack_type<uint16_t>(UnpackType::bf16, c.data(), n, d, ld, 0x3F80, 0xBF80, "bf16");
    check_unpack_type<int8_t>(UnpackType::i8, c.data(), n, d, ld, 1, -1, "i8");
    check_unpack_type<uint8_t>(UnpackType::bits, c.data(), n, d, ld, 1, 0, "bits");
  }
}

// ------------------------------------------------------------------ scores and top-k

void check_scores(std::mt19937_64& rng, int64_t n, int64_t m, int64_t d) {
  const int64_t nb = nb_of(d);
  for (int64_t pad : {0, 3}) {
    const int64_t lda = nb + pad, ldb = nb;  // one padded and one packed operand
    Buf<uint8_t> a = random_codes(rng, n, d, lda), b = random_codes(rng, m, d, ldb);
    if (m > 0 && n > 0) std::memcpy(b.data(), a.data(), nb);  // an exact match (distance 0)
    for (ScoreKind kind : {ScoreKind::dot, ScoreKind::hamming}) {
      const char* kn = kind == ScoreKind::dot ? "dot" : "hamming";
      auto ref = [&](const uint8_t* x, const uint8_t* y) {
        const int32_t h = ref_hamming(x, y, d);
        return kind == ScoreKind::dot ? static_cast<int32_t>(d) - 2 * h : h;
      };
      Buf<int32_t> o32(n * m);
      Buf<int16_t> o16(n * m);
      score_all_i32(kind, a.data(), lda, n, b.data(), ldb, m, d, o32.data());
      score_all_i16(kind, a.data(), lda, n, b.data(), ldb, m, d, o16.data());
      bool s32 = true, s16 = true;
      for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < m; ++j) {
          const int32_t want = ref(a.data() + i * lda, b.data() + j * ldb);
          s32 &= o32[i * m + j] == want;
          s16 &= o16[i * m + j] == want;
        }
      const std::string size = " n=" + std::to_string(n) + " m=" + std::to_string(m) + " d=" + std::to_string(d);
      check(s32, std::string("score_all_i32 ") + kn + size);
      check(s16, std::string("score_all_i16 ") + kn + size);
      const int64_t p = std::min(n, m);
      Buf<int32_t> op(p);
      score_pairs(kind, a.data(), lda, b.data(), ldb, p, d, op.data());
      bool sp = true;
      for (int64_t r = 0; r < p; ++r) sp &= op[r] == ref(a.data() + r * lda, b.data() + r * ldb);
      check(sp, std::string("score_pairs ") + kn + size);
    }
    if (m == 0) continue;
    for (int64_t k : {int64_t(1), m / 2 + 1, m}) {
      Buf<int32_t> sc(n * k);
      Buf<int64_t> ix(n * k);
      topk_dot(a.data(), lda, n, b.data(), ldb, m, d, k, sc.data(), ix.data());
      bool same = true;
      for (int64_t i = 0; i < n; ++i) {
        std::vector<std::pair<int32_t, int64_t>> all;
        for (int64_t j = 0; j < m; ++j) all.emplace_back(ref_hamming(a.data() + i * lda, b.data() + j * ldb, d), j);
        std::stable_sort(all.begin(), all.end(), [](const auto& x, const auto& y) { return x.first < y.first; });
        for (int64_t x = 0; x < k; ++x)
          same &= sc[i * k + x] == static_cast<int32_t>(d) - 2 * all[x].first && ix[i * k + x] == all[x].second;
      }
      check(same, "topk k=" + std::to_string(k) + " n=" + std::to_string(n) + " m=" + std::to_string(m) +
                      " d=" + std::to_string(d));
    }
  }
}

// Top-k past one item block and one query group (ops.cpp tiles queries x item
// blocks, and on AVX2 filters a nibble-split copy of each block): m beyond
// the block size and not a multiple of 8, k beyond a block, n beyond a group,
// items drawn from `distinct` codes (ties within and across blocks), packed
// and padded item strides.
void check_topk_blocks(std::mt19937_64& rng, int64_t n, int64_t m, int64_t d, int64_t distinct) {
  const int64_t nb = nb_of(d);
  for (int64_t pad : {0, 5}) {
    const int64_t ldb = nb + pad;
    Buf<uint8_t> a = random_codes(rng, n, d, nb);
    Buf<uint8_t> base = random_codes(rng, distinct, d, nb);
    Buf<uint8_t> b(m > 0 ? (m - 1) * ldb + nb : 0);
    for (int64_t j = 0; j < m; ++j)
      std::memcpy(b.data() + j * ldb, base.data() + static_cast<int64_t>(rng() % uint64_t(distinct)) * nb, nb);
    std::vector<std::vector<std::pair<int32_t, int64_t>>> want(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j < m; ++j) want[i].emplace_back(ref_hamming(a.data() + i * nb, b.data() + j * ldb, d), j);
      std::stable_sort(want[i].begin(), want[i].end(), [](const auto& x, const auto& y) { return x.first < y.first; });
    }
    for (int64_t k : {int64_t(1), int64_t(10), int64_t(1100), m}) {
      if (k > m) continue;
      Buf<int32_t> sc(n * k);
      Buf<int64_t> ix(n * k);
      topk_dot(a.data(), nb, n, b.data(), ldb, m, d, k, sc.data(), ix.data());
      bool same = true;
      for (int64_t i = 0; i < n; ++i)
        for (int64_t x = 0; x < k; ++x)
          same &= sc[i * k + x] == static_cast<int32_t>(d) - 2 * want[i][x].first && ix[i * k + x] == want[i][x].second;
      check(same, "topk blocks k=" + std::to_string(k) + " n=" + std::to_string(n) + " m=" + std::to_string(m) +
                      " d=" + std::to_string(d) + " distinct=" + std::to_string(distinct) + " ldb=" +
                      std::to_string(ldb));
    }
  }
}

// Balance (share of ones per bit) is computed in Python from unpack(bits); check the
// bits unpacking sums on a tall matrix, the path balance() uses.
void check_balance(std::mt19937_64& rng, int64_t d) {
  const int64_t n = 300, nb = nb_of(d);
  Buf<uint8_t> c = random_codes(rng, n, d, nb);
  Buf<uint8_t> bits(n * d);
  unpack(c.data(), n, d, nb, UnpackType::bits, bits.data());
  bool same = true;
  for (int64_t j = 0; j < d; ++j) {
    int64_t got = 0, want = 0;
    for (int64_t r = 0; r < n; ++r) got += bits[r * d + j], want += bit(c.data() + r * nb, j);
    same &= got == want;
  }
  check(same, "balance (bit sums) d=" + std::to_string(d));
}

// ------------------------------------------------------------------ text

std::string ref_bits(const uint8_t* row, int64_t d) {
  std::string s;
  for (int64_t j = 0; j < d; ++j) s += bit(row, j) ? '1' : '0';
  return s;
}
std::string ref_dotted(const uint8_t* row, int64_t d) {
  std::string s;
  for (int64_t k = 0; k < nb_of(d); ++k) s += (k ? "." : "") + std::to_string(row[k]);
  return s;
}

bool ref_parse_bits(const std::string& s, int64_t d, std::vector<uint8_t>& out) {
  out.assign(static_cast<size_t>(nb_of(d)), 0);
  if (static_cast<int64_t>(s.size()) != d) return false;
  for (int64_t j = 0; j < d; ++j) {
    if (s[j] != '0' && s[j] != '1') return false;
    if (s[j] == '1') out[j / 8] |= uint8_t(0x80 >> (j % 8));
  }
  return true;
}
bool ref_parse_dotted(const std::string& s, int64_t d, std::vector<uint8_t>& out) {
  const int64_t nb = nb_of(d);
  out.assign(static_cast<size_t>(nb), 0);
  std::vector<std::string> fields(1);
  for (char ch : s) {
    if (ch == '.') fields.emplace_back();
    else fields.back() += ch;
  }
  if (static_cast<int64_t>(fields.size()) != nb) return false;
  for (int64_t k = 0; k < nb; ++k) {
    const std::string& f = fields[k];
    if (f.empty() || f.size() > 3 || (f.size() > 1 && f[0] == '0')) return false;
    int v = 0;
    for (char ch : f) {
      if (ch < '0' || ch > '9') return false;
      v = v * 10 + (ch - '0');
    }
    if (v > 255) return false;
    out[k] = static_cast<uint8_t>(v);
  }
  return (out[nb - 1] & ~mask_of(d)) == 0;
}

// Rows in exact-size buffers, parsed as one batch; compares the result, the
// reported row (the lowest bad one) and the message.
using ParseFn = int64_t (*)(const char* const*, const int64_t*, int64_t, int64_t, uint8_t*, const char**);
using RefFn = bool (*)(const std::string&, int64_t, std::vector<uint8_t>&);
void check_parse(ParseFn fn, RefFn ref, const std::vector<std::string>& rows, int64_t d, const char* name) {
  const int64_t n = static_cast<int64_t>(rows.size()), nb = nb_of(d);
  std::vector<std::unique_ptr<char[]>> store;
  std::vector<const char*> ptr;
  std::vector<int64_t> len;
  for (const auto& s : rows) {
    store.emplace_back(new char[s.size()]);
    if (!s.empty()) std::memcpy(store.back().get(), s.data(), s.size());
    ptr.push_back(store.back().get());
    len.push_back(static_cast<int64_t>(s.size()));
  }
  Buf<uint8_t> out(n * nb);
  const char* err = nullptr;
  const int64_t bad = fn(ptr.data(), len.data(), n, d, out.data(), &err);
  int64_t want_bad = -1;
  std::vector<uint8_t> want;
  bool same = true;
  for (int64_t r = 0; r < n; ++r) {
    if (!ref(rows[r], d, want)) {
      want_bad = r;
      break;
    }
    same &= std::memcmp(out.data() + r * nb, want.data(), nb) == 0;
  }
  check(bad == want_bad, std::string(name) + " first bad row " + std::to_string(bad) + " != " +
                             std::to_string(want_bad) + " (d=" + std::to_string(d) + ")");
  check(bad < 0 || (err && *err), std::string(name) + " gave no error message");
  check(bad >= 0 || same, std::string(name) + " wrong bytes (d=" + std::to_string(d) + ")");
}

void check_text(std::mt19937_64& rng, int64_t n, int64_t d) {
  const int64_t nb = nb_of(d);
  for (int64_t pad : {0, 3}) {
    const int64_t ld = nb + pad;
    Buf<uint8_t> c = random_codes(rng, n, d, ld);
    Buf<char> bits(n * d);
    format_bits(c.data(), n, d, ld, bits.data());
    const int64_t w = dotted_width(d);
    Buf<char> dot(n * w);
    Buf<int64_t> lens(n);
    format_dotted(c.data(), n, d, ld, dot.data(), lens.data());
    std::vector<std::string> bit_rows, dot_rows;
    bool sb = true, sd = true;
    for (int64_t r = 0; r < n; ++r) {
      bit_rows.push_back(ref_bits(c.data() + r * ld, d));
      dot_rows.push_back(ref_dotted(c.data() + r * ld, d));
      sb &= std::string(bits.data() + r * d, d) == bit_rows.back();
      sd &= lens[r] == static_cast<int64_t>(dot_rows.back().size()) &&
            std::string(dot.data() + r * w, lens[r]) == dot_rows.back();
      for (int64_t x = lens[r]; x < w; ++x) sd &= dot[r * w + x] == 0;
    }
    check(sb, "format_bits n=" + std::to_string(n) + " d=" + std::to_string(d));
    check(sd, "format_dotted n=" + std::to_string(n) + " d=" + std::to_string(d));
    check_parse(parse_bits, ref_parse_bits, bit_rows, d, "parse_bits round trip");
    check_parse(parse_dotted, ref_parse_dotted, dot_rows, d, "parse_dotted round trip");
  }
}

std::string mutate(std::mt19937_64& rng, std::string s) {
  static const char alphabet[] = "0123456789..01 +-a\x80";
  const int edits = 1 + static_cast<int>(rng() % 3);
  for (int e = 0; e < edits; ++e) {
    const size_t pos = s.empty() ? 0 : rng() % (s.size() + 1);
    const char ch = rng() % 23 == 0 ? '\0' : alphabet[rng() % (sizeof(alphabet) - 1)];
    switch (rng() % 4) {
      case 0: s.insert(s.begin() + pos, ch); break;
      case 1: if (pos < s.size()) s.erase(pos, 1); break;
      case 2: if (pos < s.size()) s[pos] = ch; break;
      default: break;  // keep: a valid text
    }
  }
  return s;
}

void fuzz_parsers(std::mt19937_64& rng, int rounds) {
  const int64_t dims[] = {1, 7, 8, 9, 16, 31, 32, 33, 64};
  for (int it = 0; it < rounds; ++it) {
    const int64_t d = dims[rng() % (sizeof(dims) / sizeof(dims[0]))];
    const int64_t n = 1 + static_cast<int64_t>(rng() % 9);
    Buf<uint8_t> c = random_codes(rng, n, d, nb_of(d));
    std::vector<std::string> bits_rows, dot_rows;
    for (int64_t r = 0; r < n; ++r) {
      const bool keep = rng() % 3 == 0;
      std::string b = ref_bits(c.data() + r * nb_of(d), d), t = ref_dotted(c.data() + r * nb_of(d), d);
      bits_rows.push_back(keep ? b : mutate(rng, b));
      dot_rows.push_back(keep ? t : mutate(rng, t));
    }
    check_parse(parse_bits, ref_parse_bits, bits_rows, d, "fuzz parse_bits");
    check_parse(parse_dotted, ref_parse_dotted, dot_rows, d, "fuzz parse_dotted");
  }
}

// Big enough for several threads (text: 2**14 rows per thread), one bad row late.
void check_threaded_text(std::mt19937_64& rng) {
  const int64_t n = 40000, d = 9;
  Buf<uint8_t> c = random_codes(rng, n, d, 2);
  std::vector<std::string> rows;
  for (int64_t r = 0; r < n; ++r) rows.push_back(ref_dotted(c.data() + 2 * r, d));
  check_parse(parse_dotted, ref_parse_dotted, rows, d, "threaded parse_dotted");
  rows[35001] = "1.2.3";
  rows[39000] = "x";
  check_parse(parse_dotted, ref_parse_dotted, rows, d, "threaded parse_dotted with bad rows");
}

}  // namespace

int main(int argc, char** argv) {
  const int fuzz_rounds = argc > 1 ? std::atoi(argv[1]) : 20000;
  std::mt19937_64 rng(20261129);
  for (const std::string& v : supported_variants()) {
    set_variant(v);
    for (int threads : {1, 4}) {
      set_num_threads(threads);
      g_ctx = v + "/" + std::to_string(threads) + "t";
      for (int64_t d : kDims) {
        for (int64_t n : kRows) {
          check_pack(rng, n, d);
          check_unpack(rng, n, d);
          check_text(rng, n, d);
          for (int64_t m : kRows) check_scores(rng, n, m, d);
        }
        check_balance(rng, d);
      }
      check_pack(rng, 1200, 600);  // several threads
      check_scores(rng, 200, 300, 64);
      check_topk_blocks(rng, 9, 2500, 256, 3);
      check_topk_blocks(rng, 9, 2500, 256, 2500);
      check_topk_blocks(rng, 4, 1100, 250, 4);
      check_topk_blocks(rng, 70, 2100, 128, 5);
      check_topk_blocks(rng, 5, 9000, 32, 7);
      check_topk_blocks(rng, 5, 300, 1000, 2);
      check_threaded_text(rng);
      fuzz_parsers(rng, fuzz_rounds / 2);
    }
  }
  std::printf("sanitize_driver: %" PRId64 " checks, %" PRId64 " mismatches, variants:", g_checks, g_failures);
  for (const std::string& v : supported_variants()) std::printf(" %s", v.c_str());
  std::printf("\n");
  return g_failures == 0 ? 0 : 1;
}
