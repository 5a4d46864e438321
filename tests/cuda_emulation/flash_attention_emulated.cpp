// m3embed's tensor-core attention kernel, unchanged, compiled as C++ over cuda_emulation.h.
#include "cuda_emulation.h"

#include "m3/backend/cuda/flash_attention.cu"
