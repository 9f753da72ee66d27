// Kernels for c10::Half inputs (see projection_launch.cuh).
#include "projection_launch.cuh"

namespace arr_coc {
ARR_COC_INSTANTIATE(c10::Half)
}  // namespace arr_coc
