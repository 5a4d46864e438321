// m3embed's element-wise, layer-norm and head kernels, unchanged, compiled as C++ over
// cuda_emulation.h.
#include "cuda_emulation.h"

#include "m3/backend/cuda/cuda_kernels.cu"
