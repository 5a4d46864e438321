// m3embed's attention kernel, unchanged, compiled as C++ over cuda_emulation.h.
#include "cuda_emulation.h"

#include "m3/backend/cuda/cuda_attention.cu"
