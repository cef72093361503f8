// binllm._cuda_ext: pybind11 over the CUDA launchers. Takes raw device
// pointers, sizes, the device index and the stream handle from the Python
// dispatch layer (binllm/_cuda_backend.py), so no libtorch is linked. The
// enum values of core/bits.h are exported as dicts (FLOAT_TYPES, UNPACK_TYPES,
// SCORE_KINDS) so Python never hard-codes them; incoming values are checked.
#include <cuda_runtime.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "../cuda/cuda_ops.h"

namespace py = pybind11;
namespace bc = binllm::cuda;

namespace {

template <class T>
T* ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string("CUDA error in ") + what + ": " + bc::error_string(e));
}

struct DeviceGuard {
  int prev = 0;
  explicit DeviceGuard(int dev) {
    check(cudaGetDevice(&prev), "cudaGetDevice");
    check(cudaSetDevice(dev), "cudaSetDevice");
  }
  ~DeviceGuard() { cudaSetDevice(prev); }
};

cudaStream_t stream_of(uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

using binllm::FloatType;
using binllm::ScoreKind;
using binllm::UnpackType;

FloatType float_type(int v) {
  if (v < 0 || v > static_cast<int>(FloatType::bf16)) throw py::value_error("dtype: unknown FloatType " + std::to_string(v));
  return static_cast<FloatType>(v);
}
UnpackType unpack_type(int v) {
  if (v < 0 || v > static_cast<int>(UnpackType::bits)) throw py::value_error("out_type: unknown UnpackType " + std::to_string(v));
  return static_cast<UnpackType>(v);
}
ScoreKind score_kind(int v) {
  if (v != static_cast<int>(ScoreKind::dot) && v != static_cast<int>(ScoreKind::hamming))
    throw py::value_error("kind: unknown ScoreKind " + std::to_string(v));
  return static_cast<ScoreKind>(v);
}

}  // namespace

PYBIND11_MODULE(_cuda_ext, m) {
  m.doc() = "binllm CUDA kernels over device pointers (see binllm/_cuda_backend.py)";
  py::dict float_types, unpack_types, score_kinds;
  float_types["float32"] = static_cast<int>(FloatType::f32);
  float_types["float64"] = static_cast<int>(FloatType::f64);
  float_types["float16"] = static_cast<int>(FloatType::f16);
  float_types["bfloat16"] = static_cast<int>(FloatType::bf16);
  unpack_types["float32"] = static_cast<int>(UnpackType::f32);
  unpack_types["float64"] = static_cast<int>(UnpackType::f64);
  unpack_types["float16"] = static_cast<int>(UnpackType::f16);
  unpack_types["bfloat16"] = static_cast<int>(UnpackType::bf16);
  unpack_types["int8"] = static_cast<int>(UnpackType::i8);
  unpack_types["bits"] = static_cast<int>(UnpackType::bits);
  score_kinds["dot"] = static_cast<int>(ScoreKind::dot);
  score_kinds["hamming"] = static_cast<int>(ScoreKind::hamming);
  m.attr("FLOAT_TYPES") = float_types;
  m.attr("UNPACK_TYPES") = unpack_types;
  m.attr("SCORE_KINDS") = score_kinds;

  m.def("pack_signs", [](int dev, uintptr_t stream, int dtype_v, uintptr_t x, int64_t n, int64_t d, int64_t s0,
                         int64_t s1, uintptr_t out, uintptr_t first_nan) {
    const FloatType dtype = float_type(dtype_v);
    py::gil_scoped_release nogil;
    DeviceGuard g(dev);
    check(bc::pack_signs(dtype, ptr<const void>(x), n, d, s0, s1, ptr<uint8_t>(out),
                         ptr<unsigned long long>(first_nan), stream_of(stream)), "pack_signs");
  });
  m.def("unpack", [](int dev, uintptr_t stream, uintptr_t codes, int64_t n, int64_t d, int out_type_v, uintptr_t out) {
    const UnpackType out_type = unpack_type(out_type_v);
    py::gil_scoped_release nogil;
    DeviceGuard g(dev);
    check(bc::unpack(ptr<const uint8_t>(codes), n, d, out_type, ptr<void>(out), stream_of(stream)), "unpack");
  });
  m.def("score_pairs", [](int dev, uintptr_t stream, int kind_v, uintptr_t a, uintptr_t b, int64_t n, int64_t d,
                          uintptr_t out) {
    const ScoreKind kind = score_kind(kind_v);
    py::gil_scoped_release nogil;
    DeviceGuard g(dev);
    check(bc::score_pairs(kind, ptr<const uint8_t>(a), ptr<const uint8_t>(b), n, d, ptr<int32_t>(out),
                          stream_of(stream)), "score_pairs");
  });
  m.def("score_all", [](int dev, uintptr_t stream, int kind_v, uintptr_t a, int64_t n, uintptr_t b, int64_t mm,
                        int64_t d, bool out16, uintptr_t out) {
    const ScoreKind kind = score_kind(kind_v);
    py::gil_scoped_release nogil;
    DeviceGuard g(dev);
    check(bc::score_all(kind, ptr<const uint8_t>(a), n, ptr<const uint8_t>(b), mm, d, out16, ptr<void>(out),
                        stream_of(stream)), "score_all");
  });
  m.def("topk_workspace_bytes", &bc::topk_workspace_bytes);
  m.def("topk", [](int dev, uintptr_t stream, uintptr_t q, int64_t n, uintptr_t items, int64_t mm, int64_t d, int64_t k,
                   uintptr_t scores, uintptr_t indices, uintptr_t workspace) {
    py::gil_scoped_release nogil;
    DeviceGuard g(dev);
    check(bc::topk(ptr<const uint8_t>(q), n, ptr<const uint8_t>(items), mm, d, k, ptr<int32_t>(scores),
                   ptr<int64_t>(indices), ptr<void>(workspace), stream_of(stream)), "topk");
  });
  m.def("build_info", []() {
    int rt = 0;
    cudaRuntimeGetVersion(&rt);
    py::dict info;
    info["cuda_runtime"] = rt;
#ifdef BINLLM_CUDA_ARCHS
    info["architectures"] = BINLLM_CUDA_ARCHS;
#endif
    return info;
  });
}
