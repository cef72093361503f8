// The one place a CPU variant is chosen: the best one this CPU supports, once
// at load time, unless BINLLM_CPU_VARIANT or set_variant() forces another.
#include <atomic>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include "../core/core.h"
#include "variants.h"

namespace binllm {
namespace {

struct Entry {
  const CpuKernels* (*get)();
  bool (*supported)();
};

bool always() { return true; }
#if defined(BINLLM_X86)
bool has_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt") &&
         __builtin_cpu_supports("f16c") && __builtin_cpu_supports("bmi2");
}
bool has_avx512() {
  __builtin_cpu_init();
  return has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vpopcntdq");
}
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
  throw std::invalid_argument("unknown CPU variant '" + name + "'");
}

const CpuKernels* best() {
  const char* forced = std::getenv("BINLLM_CPU_VARIANT");
  if (forced && *forced) return find(forced);
  const CpuKernels* k = generic_kernels();
  for (const auto& e : entries())
    if (e.supported()) k = e.get();
  return k;
}

std::atomic<const CpuKernels*>& active() {
  static std::atomic<const CpuKernels*> a{best()};
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

void set_variant(const std::string& name) { active().store(find(name), std::memory_order_release); }

}  // namespace binllm
