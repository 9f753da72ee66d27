// Kernels for c10::BFloat16 inputs (see projection_launch.cuh).
#include "projection_launch.cuh"

namespace arr_coc {
ARR_COC_INSTANTIATE(c10::BFloat16)
}  // namespace arr_coc
