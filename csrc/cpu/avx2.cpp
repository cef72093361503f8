// x86-64 AVX2 variant (with POPCNT, F16C, BMI2); compiled with -mavx2 -mf16c -mpopcnt -mbmi2.
#define BINLLM_VARIANT avx2
#define BINLLM_VARIANT_GETTER avx2_kernels
#include "kernels_impl.h"
