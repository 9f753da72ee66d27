// Host launchers for the capped-simplex projection kernels (device code and algorithm notes: projection.cuh).
//
// Contract with arr_coc/kernels/dispatch.py (which reshapes and casts; the ops layer has already validated values):
//   y, grad, x:  (R, K) CUDA tensors of float32, float16, bfloat16 or float64 (made contiguous here)
//   budget:      (R,) accumulation dtype (float32, or float64 for float64 y), any row stride (0 for a scalar)
//   budget_i:    (R,) int64, any row stride; only for the rounding modes
//   lo, hi:      (R, K) accumulation dtype with arbitrary strides: (0, 0) scalar, (0, 1) per column, (K, 1) full
//   path:        0 auto, 1 force the warp path (K <= 1024), 2 force the block path (projection and backward only)
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <optional>
#include <vector>

#include "projection.cuh"

namespace arr_coc {
namespace {

// Values per lane on the warp path: every count up to 8 (K <= 256 covers the default K = 200 with V = 7 and no wasted
// slots), then 16 and 32. Returns 0 for rows too long for one warp.
int pick_v(int64_t K) {
  const int64_t need = (K + 31) / 32;
  if (need <= 8) return int(need);
  if (need <= 16) return 16;
  if (need <= 32) return 32;
  return 0;
}

void check_2d(const at::Tensor& t, const char* name, const at::Device& dev, int64_t R, int64_t K) {
  TORCH_CHECK(t.device() == dev, "arr_coc: ", name, " must be on ", dev, ", got ", t.device());
  TORCH_CHECK(t.dim() == 2 && t.size(0) == R && t.size(1) == K, name, " must have shape (", R, ", ", K, "), got ",
              t.sizes());
}

void check_rows(const at::Tensor& t, const char* name, const at::Device& dev, int64_t R) {
  TORCH_CHECK(t.device() == dev, "arr_coc: ", name, " must be on ", dev, ", got ", t.device());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == R, name, " must have shape (", R, ",), got ", t.sizes());
}

// K is an int in the kernels, whose block-path loops step k by kBlockThreads: keep k + kBlockThreads in range.
void check_k(int64_t K) {
  TORCH_CHECK(K >= 1 && K <= INT32_MAX - kBlockThreads, "arr_coc: K must be in [1, 2^31 - ", kBlockThreads,
              "], got ", K);
}

// The (row, column)-strided bounds and the row/column counts, shared by the forward and backward arguments.
template <typename Args>
void set_bounds(Args& a, const at::Tensor& lo, const at::Tensor& hi, int64_t R, int64_t K) {
  using acc_t = typename Args::acc_t;
  a.lo = lo.data_ptr<acc_t>();
  a.hi = hi.data_ptr<acc_t>();
  a.lo_rs = lo.stride(0);
  a.lo_cs = lo.stride(1);
  a.hi_rs = hi.stride(0);
  a.hi_cs = hi.stride(1);
  a.R = R;
  a.K = int(K);
}

}  // namespace

// Defined and instantiated once per dtype in projection_<dtype>.cu (projection_launch.cuh), so that ninja compiles
// the dtypes in parallel.
template <typename scalar_t>
void launch_forward(const ProjArgs<scalar_t>& a, int V, bool scalar_bounds, bool use_block, cudaStream_t st);
template <typename scalar_t>
void launch_backward(const BwdArgs<scalar_t>& a, int V, bool use_block, cudaStream_t st);

// Returns {x, t}: x undefined in round-only mode, t undefined in projection mode.
std::vector<at::Tensor> forward_cuda(const at::Tensor& y_in, const at::Tensor& budget,
                                     const std::optional<at::Tensor>& budget_i, const at::Tensor& lo,
                                     const at::Tensor& hi, int64_t mode, int64_t path) {
  TORCH_CHECK(y_in.is_cuda() && y_in.dim() == 2, "arr_coc: y must be a 2-D CUDA tensor, got ", y_in.sizes());
  TORCH_CHECK(mode >= kProject && mode <= kRoundOnly, "arr_coc: bad mode ", mode);
  TORCH_CHECK(path >= 0 && path <= 2, "arr_coc: bad path ", path);
  const c10::cuda::CUDAGuard guard(y_in.device());
  const at::Tensor y = y_in.contiguous();
  const int64_t R = y.size(0), K = y.size(1);
  check_k(K);
  const auto acc = y.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  check_rows(budget, "budget", y.device(), R);
  check_2d(lo, "lo", y.device(), R, K);
  check_2d(hi, "hi", y.device(), R, K);
  TORCH_CHECK(budget.scalar_type() == acc && lo.scalar_type() == acc && hi.scalar_type() == acc,
              "arr_coc: budget, lo and hi must be ", acc, " for y of dtype ", y.scalar_type());
  const bool rounding = mode != kProject;
  at::Tensor bi;
  if (rounding) {
    TORCH_CHECK(budget_i.has_value(), "arr_coc: the rounding modes need an int64 budget");
    bi = *budget_i;
    check_rows(bi, "budget_i", y.device(), R);
    TORCH_CHECK(bi.scalar_type() == at::kLong, "arr_coc: budget_i must be int64");
  }
  const int V = pick_v(K);
  const bool use_block = path == 2 || (path == 0 && V == 0);
  TORCH_CHECK(!(path == 1 && V == 0), "arr_coc: the warp path handles K <= 1024, got K=", K);
  TORCH_CHECK(!(use_block && rounding), "arr_coc: rounding in the kernel needs K <= 1024 (the warp path), got K=", K);
  at::Tensor x = mode == kRoundOnly ? at::Tensor() : at::empty_like(y);
  at::Tensor t = rounding ? at::empty({R, K}, y.options().dtype(at::kLong)) : at::Tensor();
  if (R == 0) return {x, t};
  const bool scalar_bounds = lo.stride(0) == 0 && lo.stride(1) == 0 && hi.stride(0) == 0 && hi.stride(1) == 0;
  cudaStream_t st = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "arr_coc_projection_forward", [&] {
    using acc_t = typename Acc<scalar_t>::type;
    ProjArgs<scalar_t> a;
    a.y = y.data_ptr<scalar_t>();
    a.x = x.defined() ? x.data_ptr<scalar_t>() : nullptr;
    a.t = t.defined() ? t.data_ptr<int64_t>() : nullptr;
    a.budget = budget.data_ptr<acc_t>();
    a.budget_i = rounding ? bi.data_ptr<int64_t>() : nullptr;
    a.b_s = budget.stride(0);
    a.bi_s = rounding ? bi.stride(0) : 0;
    set_bounds(a, lo, hi, R, K);
    a.mode = int(mode);
    launch_forward<scalar_t>(a, V, scalar_bounds, use_block, st);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {x, t};
}

// Returns {g_y (R, K), g_budget (R,)} in x's dtype.
std::vector<at::Tensor> backward_cuda(const at::Tensor& x_in, const at::Tensor& lo, const at::Tensor& hi,
                                      const at::Tensor& g_in, int64_t path) {
  TORCH_CHECK(x_in.is_cuda() && x_in.dim() == 2, "arr_coc: x must be a 2-D CUDA tensor, got ", x_in.sizes());
  TORCH_CHECK(path >= 0 && path <= 2, "arr_coc: bad path ", path);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const int64_t R = x.size(0), K = x.size(1);
  check_k(K);
  check_2d(g_in, "grad", x.device(), R, K);
  TORCH_CHECK(g_in.scalar_type() == x.scalar_type(), "arr_coc: grad must have x's dtype");
  const at::Tensor g = g_in.contiguous();
  check_2d(lo, "lo", x.device(), R, K);
  check_2d(hi, "hi", x.device(), R, K);
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(lo.scalar_type() == acc && hi.scalar_type() == acc, "arr_coc: lo and hi must be ", acc);
  at::Tensor gy = at::empty_like(g);
  at::Tensor gb = at::empty({R}, g.options());
  if (R == 0) return {gy, gb};
  const int V = pick_v(K);
  TORCH_CHECK(!(path == 1 && V == 0), "arr_coc: the warp path handles K <= 1024, got K=", K);
  const bool use_block = path == 2 || (path == 0 && V == 0);
  cudaStream_t st = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "arr_coc_projection_backward", [&] {
    BwdArgs<scalar_t> a;
    a.x = x.data_ptr<scalar_t>();
    a.g = g.data_ptr<scalar_t>();
    a.gy = gy.data_ptr<scalar_t>();
    a.gb = gb.data_ptr<scalar_t>();
    set_bounds(a, lo, hi, R, K);
    launch_backward<scalar_t>(a, V, use_block, st);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {gy, gb};
}

}  // namespace arr_coc
