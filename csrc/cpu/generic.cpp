// Portable variant: plain C++, whatever the target's baseline instructions.
#define BINLLM_VARIANT generic
#define BINLLM_VARIANT_GETTER generic_kernels
#include "kernels_impl.h"
