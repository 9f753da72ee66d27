// Kernels for double inputs (see projection_launch.cuh).
#include "projection_launch.cuh"

namespace arr_coc {
ARR_COC_INSTANTIATE(double)
}  // namespace arr_coc
