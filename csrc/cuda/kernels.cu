// CUDA kernels for packed codes, with the bit conventions of core/bits.h.
// Plain launchers over device pointers, sizes and a stream; every launch is
// checked and its cudaError_t returned. No pybind11 and no torch here.
#include <cuda_runtime.h>

#include <cstdint>

#include "../core/bits.h"
#include "cuda_ops.h"

namespace binllm {
namespace cuda {
namespace {

struct H16 {
  uint16_t b;
};
struct B16 {
  uint16_t b;
};
// Sign classes straight from the bits, as on the CPU: 1 (x >= 0), 0 (x < 0), -1 (NaN).
__device__ __forceinline__ int cls(float v) { return sign_f32(v); }
__device__ __forceinline__ int cls(H16 v) { return sign_bits16(v.b, kHalfInf); }
__device__ __forceinline__ int cls(B16 v) { return sign_bits16(v.b, kBfloat16Inf); }

// One warp packs 32 consecutive dimensions of one row: each lane reads one
// element (coalesced), __ballot_sync gathers the 32 sign bits LSB-first, and
// __brev + byte swap turn them into 4 MSB-first bytes.
template <class T>
__global__ void pack_kernel(const T* __restrict__ x, int64_t n, int64_t d, int64_t s0, int64_t s1,
                            uint8_t* __restrict__ out, unsigned long long* first_nan) {
  const int64_t words_per_row = (d + 31) / 32;
  const int64_t warp = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  if (warp >= n * words_per_row) return;  // whole warps exit together
  const int64_t r = warp / words_per_row, w = warp % words_per_row;
  const int64_t j = w * 32 + lane;
  int c = 1;
  if (j < d) c = cls(x[r * s0 + j * s1]);
  const unsigned pos = __ballot_sync(0xFFFFFFFFu, j < d && c == 1);
  const unsigned nan = __ballot_sync(0xFFFFFFFFu, j < d && c < 0);
  if (nan && lane == 0) atomicMin(first_nan, (unsigned long long)(r * d + w * 32 + __ffs(nan) - 1));
  if (lane == 0) {
    const unsigned word = __byte_perm(__brev(pos), 0, 0x0123);
    const int64_t nb = nbytes(d), b0 = w * 4;
    uint8_t* o = out + r * nb + b0;
    for (int k = 0; k < 4 && b0 + k < nb; ++k) o[k] = (word >> (8 * k)) & 0xFF;
  }
}

template <class T>
__global__ void unpack_kernel(const uint8_t* __restrict__ codes, int64_t n, int64_t d, T pos, T neg,
                              T* __restrict__ out) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n * d) return;
  const int64_t r = i / d, j = i % d;
  out[i] = (codes[r * nbytes(d) + (j >> 3)] >> bit_in_byte(j)) & 1 ? pos : neg;
}

__device__ __forceinline__ int xor_popcount(const uint8_t* a, const uint8_t* b, int64_t nb) {
  int s = 0;
  int64_t k = 0;
  if ((reinterpret_cast<uintptr_t>(a) | reinterpret_cast<uintptr_t>(b) | nb) % 4 == 0)
    for (; k < nb; k += 4) s += __popc(*reinterpret_cast<const unsigned*>(a + k) ^ *reinterpret_cast<const unsigned*>(b + k));
  for (; k < nb; ++k) s += __popc(unsigned(a[k] ^ b[k]));
  return s;
}

__global__ void pairs_kernel(ScoreKind kind, const uint8_t* a, const uint8_t* b, int64_t n, int64_t d,
                             int32_t* out) {
  const int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= n) return;
  const int64_t nb = nbytes(d);
  out[r] = score_from_popcount(kind, d, xor_popcount(a + r * nb, b + r * nb, nb));
}

template <class T>
__global__ void all_kernel(ScoreKind kind, const uint8_t* a, int64_t n, const uint8_t* b, int64_t m, int64_t d,
                           T* out) {
  const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t i = blockIdx.y;
  if (j >= m || i >= n) return;
  const int64_t nb = nbytes(d);
  out[i * m + j] = static_cast<T>(score_from_popcount(kind, d, xor_popcount(a + i * nb, b + j * nb, nb)));
}

// Top-k, one block per query. Distances take d + 1 values: a shared histogram
// gives the threshold distance t (k items at distance < t are too few, <= t
// enough); a second pass keeps every item with distance < t and, in item
// order (block-wide prefix sums over chunks), the first ones at distance t.
constexpr int kThreads = 256;

__device__ int block_exclusive_scan(int v, int* smem, int* total) {
  const int t = threadIdx.x;
  smem[t] = v;
  __syncthreads();
  for (int off = 1; off < kThreads; off <<= 1) {
    const int add = t >= off ? smem[t - off] : 0;
    __syncthreads();
    smem[t] += add;
    __syncthreads();
  }
  const int incl = smem[t];
  *total = smem[kThreads - 1];
  __syncthreads();
  return incl - v;
}

__global__ void topk_kernel(const uint8_t* q, int64_t n, const uint8_t* items, int64_t m, int64_t d, int64_t k,
                            int32_t* scores, int64_t* indices, int* hist_global, int* sel_dist, int64_t* sel_idx) {
  extern __shared__ int smem[];  // kThreads ints for scans
  const int64_t qi = blockIdx.x;
  if (qi >= n) return;
  const int64_t nb = nbytes(d);
  const uint8_t* qp = q + qi * nb;
  int* hist = hist_global + qi * (d + 1);
  for (int64_t v = threadIdx.x; v <= d; v += blockDim.x) hist[v] = 0;
  __syncthreads();
  for (int64_t j = threadIdx.x; j < m; j += blockDim.x) atomicAdd(&hist[xor_popcount(qp, items + j * nb, nb)], 1);
  __syncthreads();
  __shared__ int t_sh, less_sh;
  if (threadIdx.x == 0) {
    int64_t acc = 0;
    int t = 0;
    while (acc + hist[t] < k) acc += hist[t++];
    t_sh = t;
    less_sh = static_cast<int>(acc);
  }
  __syncthreads();
  const int t = t_sh, less = less_sh;
  const int need_eq = static_cast<int>(k) - less;
  int* dist_out = sel_dist + qi * k;
  int64_t* idx_out = sel_idx + qi * k;
  int base_less = 0, base_eq = 0;
  for (int64_t j0 = 0; j0 < m; j0 += kThreads) {
    const int64_t j = j0 + threadIdx.x;
    int h = 1 << 30;
    if (j < m) h = xor_popcount(qp, items + j * nb, nb);
    int tot_less, tot_eq;
    const int pl = block_exclusive_scan(h < t ? 1 : 0, smem, &tot_less);
    const int pe = block_exclusive_scan(h == t ? 1 : 0, smem, &tot_eq);
    if (h < t) {
      dist_out[base_less + pl] = h;
      idx_out[base_less + pl] = j;
    } else if (h == t && base_eq + pe < need_eq) {
      dist_out[less + base_eq + pe] = h;
      idx_out[less + base_eq + pe] = j;
    }
    base_less += tot_less;
    base_eq += tot_eq;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    // stable insertion sort by distance (k is small); equal distances keep item order
    for (int64_t a = 1; a < k; ++a) {
      const int dv = dist_out[a];
      const int64_t iv = idx_out[a];
      int64_t b = a - 1;
      while (b >= 0 && (dist_out[b] > dv || (dist_out[b] == dv && idx_out[b] > iv))) {
        dist_out[b + 1] = dist_out[b];
        idx_out[b + 1] = idx_out[b];
        --b;
      }
      dist_out[b + 1] = dv;
      idx_out[b + 1] = iv;
    }
    for (int64_t a = 0; a < k; ++a) {
      scores[qi * k + a] = score_from_popcount<ScoreKind::dot>(d, dist_out[a]);
      indices[qi * k + a] = idx_out[a];
    }
  }
}

unsigned blocks_for(int64_t work, int threads) { return static_cast<unsigned>((work + threads - 1) / threads); }

}  // namespace

cudaError_t pack_signs(FloatType dtype, const void* x, int64_t n, int64_t d, int64_t s0, int64_t s1, uint8_t* out,
                       unsigned long long* first_nan, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const int64_t warps = n * ((d + 31) / 32);
  const unsigned blocks = blocks_for(warps * 32, 256);
  switch (dtype) {
    case FloatType::f32:
      pack_kernel<<<blocks, 256, 0, stream>>>(static_cast<const float*>(x), n, d, s0, s1, out, first_nan);
      break;
    case FloatType::f16:
      pack_kernel<<<blocks, 256, 0, stream>>>(static_cast<const H16*>(x), n, d, s0, s1, out, first_nan);
      break;
    case FloatType::bf16:
      pack_kernel<<<blocks, 256, 0, stream>>>(static_cast<const B16*>(x), n, d, s0, s1, out, first_nan);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

cudaError_t unpack(const uint8_t* codes, int64_t n, int64_t d, UnpackType out_type, void* out, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const unsigned blocks = blocks_for(n * d, 256);
  const UnpackValues pm = unpack_values(out_type);  // the same +-1 bit patterns as the CPU
  switch (out_type) {
    case UnpackType::f32:
      unpack_kernel<<<blocks, 256, 0, stream>>>(codes, n, d, uint32_t(pm.pos), uint32_t(pm.neg), static_cast<uint32_t*>(out));
      break;
    case UnpackType::f16:
    case UnpackType::bf16:
      unpack_kernel<<<blocks, 256, 0, stream>>>(codes, n, d, uint16_t(pm.pos), uint16_t(pm.neg), static_cast<uint16_t*>(out));
      break;
    case UnpackType::i8:
    case UnpackType::bits:
      unpack_kernel<<<blocks, 256, 0, stream>>>(codes, n, d, uint8_t(pm.pos), uint8_t(pm.neg), static_cast<uint8_t*>(out));
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

cudaError_t score_pairs(ScoreKind kind, const uint8_t* a, const uint8_t* b, int64_t n, int64_t d, int32_t* out,
                        cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  pairs_kernel<<<blocks_for(n, 256), 256, 0, stream>>>(kind, a, b, n, d, out);
  return cudaGetLastError();
}

cudaError_t score_all(ScoreKind kind, const uint8_t* a, int64_t n, const uint8_t* b, int64_t m, int64_t d, bool out16,
                      void* out, cudaStream_t stream) {
  if (n == 0 || m == 0) return cudaSuccess;
  for (int64_t i0 = 0; i0 < n; i0 += 65535) {  // grid.y is limited to 65535
    const dim3 grid(blocks_for(m, 256), static_cast<unsigned>(n - i0 < 65535 ? n - i0 : 65535));
    const uint8_t* ai = a + i0 * nbytes(d);
    if (out16)
      all_kernel<<<grid, 256, 0, stream>>>(kind, ai, n - i0, b, m, d,
                                           static_cast<int16_t*>(out) + i0 * m);
    else
      all_kernel<<<grid, 256, 0, stream>>>(kind, ai, n - i0, b, m, d,
                                           static_cast<int32_t*>(out) + i0 * m);
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

int64_t topk_workspace_bytes(int64_t n, int64_t d, int64_t k) {
  return n * (d + 1) * int64_t(sizeof(int)) + n * k * int64_t(sizeof(int)) + n * k * int64_t(sizeof(int64_t));
}

cudaError_t topk(const uint8_t* q, int64_t n, const uint8_t* items, int64_t m, int64_t d, int64_t k, int32_t* scores,
                 int64_t* indices, void* workspace, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  int64_t* sel_idx = static_cast<int64_t*>(workspace);
  int* sel_dist = reinterpret_cast<int*>(sel_idx + n * k);
  int* hist = sel_dist + n * k;
  for (int64_t q0 = 0; q0 < n; q0 += 2147483647LL) {
    const int64_t nn = n - q0 < 2147483647LL ? n - q0 : 2147483647LL;
    topk_kernel<<<static_cast<unsigned>(nn), kThreads, kThreads * sizeof(int), stream>>>(
        q + q0 * nbytes(d), nn, items, m, d, k, scores + q0 * k, indices + q0 * k, hist + q0 * (d + 1),
        sel_dist + q0 * k, sel_idx + q0 * k);
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

const char* error_string(cudaError_t e) { return cudaGetErrorString(e); }

}  // namespace cuda
}  // namespace binllm
