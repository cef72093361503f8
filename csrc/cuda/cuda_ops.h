// Launchers of the CUDA kernels (kernels.cu). Pointers are device pointers;
// codes are contiguous rows of nbytes(d) bytes; outputs are preallocated by
// the caller on the same device. Each returns the launch's cudaError_t.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "../core/bits.h"

namespace binllm {
namespace cuda {

// dtype: f32, f16 or bf16 (f64 gives cudaErrorInvalidValue); strides in
// elements. *first_nan (device, preset to ULLONG_MAX) receives the smallest
// flat index of a NaN.
cudaError_t pack_signs(FloatType dtype, const void* x, int64_t n, int64_t d, int64_t s0, int64_t s1, uint8_t* out,
                       unsigned long long* first_nan, cudaStream_t stream);
// out_type: any but f64 (cudaErrorInvalidValue).
cudaError_t unpack(const uint8_t* codes, int64_t n, int64_t d, UnpackType out_type, void* out, cudaStream_t stream);
cudaError_t score_pairs(ScoreKind kind, const uint8_t* a, const uint8_t* b, int64_t n, int64_t d, int32_t* out,
                        cudaStream_t stream);
// out16: int16 output (the caller checked d <= 32767), else int32.
cudaError_t score_all(ScoreKind kind, const uint8_t* a, int64_t n, const uint8_t* b, int64_t m, int64_t d, bool out16,
                      void* out, cudaStream_t stream);
int64_t topk_workspace_bytes(int64_t n, int64_t d, int64_t k);
cudaError_t topk(const uint8_t* q, int64_t n, const uint8_t* items, int64_t m, int64_t d, int64_t k, int32_t* scores,
                 int64_t* indices, void* workspace, cudaStream_t stream);
const char* error_string(cudaError_t e);

}  // namespace cuda
}  // namespace binllm
