// The one place a CPU variant is chosen: the best one this CPU supports, once
// at load time, unless BINLLM_CPU_VARIANT or set_variant() forces another.
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(BINLLM_X86)
#if defined(_MSC_VER)
#include <immintrin.h>
#include <intrin.h>
#else
#include <cpuid.h>
#endif
#endif

#include "../core/core.h"
#include "../core/kernel_table.h"

namespace binllm {
namespace {

struct Entry {
  const CpuKernels* (*get)();
  bool (*supported)();
};

bool always() { return true; }
#if defined(BINLLM_X86)
// CPU features read from CPUID and XGETBV directly, not through
// __builtin_cpu_supports: that needs the compiler's runtime (libgcc /
// compiler-rt) to have initialised its feature table, which a clang- or
// zig-built module does not always get, and it does not check that the OS
// saves the wide registers. FAISS and simdjson detect the same way.
struct CpuFeatures {
  bool avx2 = false, avx512 = false;
};

void cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4]) {
#if defined(_MSC_VER)
  int v[4];
  __cpuidex(v, static_cast<int>(leaf), static_cast<int>(sub));
  for (int i = 0; i < 4; ++i) r[i] = static_cast<uint32_t>(v[i]);
#else
  __cpuid_count(leaf, sub, r[0], r[1], r[2], r[3]);
#endif
}

uint64_t xgetbv0() {
#if defined(_MSC_VER)
  return _xgetbv(0);
#else
  uint32_t lo, hi;
  __asm__ volatile(".byte 0x0f, 0x01, 0xd0" : "=a"(lo), "=d"(hi) : "c"(0));  // xgetbv
  return (uint64_t(hi) << 32) | lo;
#endif
}

CpuFeatures detect() {
  CpuFeatures f;
  uint32_t r[4];
  cpuid(0, 0, r);
  const uint32_t max_leaf = r[0];
  if (max_leaf < 7) return f;
  cpuid(1, 0, r);
  const uint32_t ecx1 = r[2];
  const bool osxsave = ecx1 >> 27 & 1, avx = ecx1 >> 28 & 1, f16c = ecx1 >> 29 & 1, fma = ecx1 >> 12 & 1,
             popcnt = ecx1 >> 23 & 1;
  if (!osxsave || !avx) return f;  // no AVX, or the OS does not save the YMM registers
  const uint64_t xcr0 = xgetbv0();
  const bool ymm_state = (xcr0 & 0x6) == 0x6;      // SSE + AVX state
  const bool zmm_state = (xcr0 & 0xE6) == 0xE6;    // + opmask, ZMM_Hi256, Hi16_ZMM
  cpuid(7, 0, r);
  const uint32_t ebx7 = r[1], ecx7 = r[2];
  const bool avx2 = ebx7 >> 5 & 1, bmi2 = ebx7 >> 8 & 1, avx512f = ebx7 >> 16 & 1, avx512bw = ebx7 >> 30 & 1,
             avx512vl = ebx7 >> 31 & 1, vpopcntdq = ecx7 >> 14 & 1;
  f.avx2 = ymm_state && avx2 && fma && f16c && popcnt && bmi2;
  f.avx512 = f.avx2 && zmm_state && avx512f && avx512bw && avx512vl && vpopcntdq;
  return f;
}

const CpuFeatures& features() {
  static const CpuFeatures f = detect();
  return f;
}

bool has_avx2() { return features().avx2; }
bool has_avx512() { return features().avx512; }
#endif

const std::vector<Entry>& entries() {
  static const std::vector<Entry> e = {
      {generic_kernels, always},
#if defined(BINLLM_X86)
      {avx2_kernels, has_avx2},
      {avx512_kernels, has_avx512},
#endif
  };
  return e;
}

const CpuKernels* find(const std::string& name) {
  for (const auto& e : entries())
    if (name == e.get()->name) {
      if (!e.supported()) throw std::invalid_argument("CPU variant '" + name + "' is not supported by this CPU");
      return e.get();
    }
  std::string known;
  for (const auto& e : entries()) known += (known.empty() ? "" : ", ") + std::string(e.get()->name);
  throw std::invalid_argument("unknown CPU variant '" + name + "' (known: " + known + ")");
}

const CpuKernels* best_supported() {
  const CpuKernels* k = generic_kernels();
  for (const auto& e : entries())
    if (e.supported()) k = e.get();
  return k;
}

std::string& env_problem() {
  static std::string p;
  return p;
}

// The variant at load: BINLLM_CPU_VARIANT if it names a supported variant
// exactly; otherwise the best supported one, and the problem is recorded
// (binllm warns about it at import and build_info() lists it).
const CpuKernels* initial() {
  const char* forced = std::getenv("BINLLM_CPU_VARIANT");
  if (!forced || !*forced) return best_supported();
  try {
    return find(forced);
  } catch (const std::invalid_argument& e) {
    const CpuKernels* k = best_supported();
    env_problem() = std::string("BINLLM_CPU_VARIANT='") + forced + "' ignored (" + e.what() + "); using '" +
                    k->name + "'";
    return k;
  }
}

std::atomic<const CpuKernels*>& active() {
  static std::atomic<const CpuKernels*> a{initial()};
  return a;
}

}  // namespace

const CpuKernels& kernels() { return *active().load(std::memory_order_acquire); }

std::vector<std::string> compiled_variants() {
  std::vector<std::string> v;
  for (const auto& e : entries()) v.emplace_back(e.get()->name);
  return v;
}

std::vector<std::string> supported_variants() {
  std::vector<std::string> v;
  for (const auto& e : entries())
    if (e.supported()) v.emplace_back(e.get()->name);
  return v;
}

std::string current_variant() { return kernels().name; }

std::string variant_problem() {
  active();  // the problem is found while the initial variant is chosen
  return env_problem();
}

void set_variant(const std::string& name) { active().store(find(name), std::memory_order_release); }

}  // namespace binllm
