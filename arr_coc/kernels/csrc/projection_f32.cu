// Kernels for float inputs (see projection_launch.cuh).
#include "projection_launch.cuh"

namespace arr_coc {
ARR_COC_INSTANTIATE(float)
}  // namespace arr_coc
