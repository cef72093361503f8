// x86-64 AVX-512 variant (F, BW, VL, VPOPCNTDQ) on top of the AVX2 paths.
#define BINLLM_VARIANT avx512
#define BINLLM_VARIANT_GETTER avx512_kernels
#include "kernels_impl.h"
