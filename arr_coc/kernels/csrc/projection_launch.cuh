// Kernel launchers, instantiated for one dtype per translation unit (projection_<dtype>.cu) so builds run in parallel.
#pragma once

#include <c10/util/Exception.h>

#include "projection.cuh"

namespace arr_coc {

// gridDim.x is at most 2^31 - 1 (gridDim.y/z are not used: they cap at 65,535). A silent unsigned wrap would skip
// rows, so refuse instead.
inline dim3 grid_1d(int64_t blocks) {
  TORCH_CHECK(blocks >= 1 && blocks <= INT32_MAX, "arr_coc: ", blocks, " blocks exceed the grid limit of 2^31 - 1");
  return dim3(unsigned(blocks));
}
inline dim3 warp_grid(int64_t R) { return grid_1d((R + kWarpsPerBlock - 1) / kWarpsPerBlock); }

// The warp kernels treat every slot but the last as full when V <= 8 (full_slot in projection.cuh).
inline void check_v(int V, int K) {
  TORCH_CHECK(V > 8 ? 32 * V >= K : V == (K + 31) / 32, "arr_coc: ", V, " values per lane do not fit K = ", K,
              " (V <= 8 must be ceil(K / 32))");
}

template <typename scalar_t, bool S>
void launch_forward_warp(const ProjArgs<scalar_t>& a, int V, cudaStream_t st) {
  check_v(V, a.K);
  const dim3 grid = warp_grid(a.R), block(kWarpsPerBlock * 32);
  switch (V) {
#define ARR_COC_CASE(v) \
  case v: projection_warp_kernel<scalar_t, v, S><<<grid, block, 0, st>>>(a); break;
    ARR_COC_CASE(1) ARR_COC_CASE(2) ARR_COC_CASE(3) ARR_COC_CASE(4) ARR_COC_CASE(5) ARR_COC_CASE(6) ARR_COC_CASE(7)
    ARR_COC_CASE(8) ARR_COC_CASE(16) ARR_COC_CASE(32)
#undef ARR_COC_CASE
    default: TORCH_CHECK(false, "arr_coc: no warp kernel for ", V, " values per lane");
  }
}

template <typename scalar_t>
void launch_forward(const ProjArgs<scalar_t>& a, int V, bool scalar_bounds, bool use_block, cudaStream_t st) {
  if (use_block) {
    projection_block_kernel<scalar_t><<<grid_1d(a.R), dim3(kBlockThreads), 0, st>>>(a);
  } else if (scalar_bounds) {
    launch_forward_warp<scalar_t, true>(a, V, st);
  } else {
    launch_forward_warp<scalar_t, false>(a, V, st);
  }
}

template <typename scalar_t>
void launch_backward(const BwdArgs<scalar_t>& a, int V, bool use_block, cudaStream_t st) {
  if (use_block) {
    backward_block_kernel<scalar_t><<<grid_1d(a.R), dim3(kBlockThreads), 0, st>>>(a);
    return;
  }
  check_v(V, a.K);
  const dim3 grid = warp_grid(a.R), block(kWarpsPerBlock * 32);
  switch (V) {
#define ARR_COC_CASE(v) \
  case v: backward_warp_kernel<scalar_t, v><<<grid, block, 0, st>>>(a); break;
    ARR_COC_CASE(1) ARR_COC_CASE(2) ARR_COC_CASE(3) ARR_COC_CASE(4) ARR_COC_CASE(5) ARR_COC_CASE(6) ARR_COC_CASE(7)
    ARR_COC_CASE(8) ARR_COC_CASE(16) ARR_COC_CASE(32)
#undef ARR_COC_CASE
    default: TORCH_CHECK(false, "arr_coc: no backward warp kernel for ", V, " values per lane");
  }
}

#define ARR_COC_INSTANTIATE(T)                                                                                \
  template void launch_forward<T>(const ProjArgs<T>&, int, bool, bool, cudaStream_t);                        \
  template void launch_backward<T>(const BwdArgs<T>&, int, bool, cudaStream_t);

}  // namespace arr_coc
