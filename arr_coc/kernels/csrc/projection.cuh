// Capped-simplex projection, largest-remainder rounding and backward: device code shared by the .cu files.
//
// x_i = clip(y_i - tau, lo_i, hi_i) with tau the root of s(tau) = sum_i clip(y_i - tau, lo_i, hi_i) = B
// (Held, Wolfe & Crowder 1974; Condat 2016 surveys the sort-based and pivot-based alternatives). s is continuous,
// non-increasing and piecewise linear with slope -|F| (F: coordinates inside their bounds), so a Newton step
// tau <- tau + (s - B) / |F| is exact once the active set is right. At a kink (some y_i - tau equal to a bound) the
// slope has two sides; the warp path counts such a tie as free (one compare, clip(z) == z), the block path as clamped:
// either is a valid Newton slope there, and the bracket safeguards the step. We run it safeguarded: the bracket
// [min(y - hi), max(y - lo)] shrinks with every evaluation and a step that leaves it becomes a bisection.
//
// Layout (DESIGN.md "Kernel facts"): one warp per row, the row's values held in registers, V per lane, element k in
// lane k % 32, slot k / 32, so each slot's load is one coalesced 32-element access. All reductions are xor
// butterflies, whose results are bitwise identical on every lane (fp addition is commutative), so tau and every
// branch on it are warp-uniform: each row exits as soon as it has converged, without divergence. Rows longer than
// 32 * 32 = 1024 use a block per row that streams the row from global memory on each evaluation (the general path).
#pragma once

#include <cstdint>
#include <cfloat>
#include <cmath>
#include <type_traits>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

namespace arr_coc {

constexpr unsigned kFull = 0xffffffffu;
constexpr int kWarpsPerBlock = 4;        // rows per block on the warp path
constexpr int kBlockThreads = 256;       // threads per row on the general path
constexpr int kBlockWarps = kBlockThreads / 32;
constexpr int kMaxIters = 200;           // safety cap; Newton typically converges in 3-8 evaluations
constexpr int kWarpMaxV = 32;            // values per lane on the warp path: K <= 1024

// Modes of the warp kernel: project, project then round, or only round a given x.
enum Mode : int { kProject = 0, kProjectRound = 1, kRoundOnly = 2 };

template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

template <typename acc_t> struct Lim;
template <> struct Lim<float> {
  static __device__ __forceinline__ float eps() { return FLT_EPSILON; }
  static __device__ __forceinline__ float inf() { return INFINITY; }
};
template <> struct Lim<double> {
  static __device__ __forceinline__ double eps() { return DBL_EPSILON; }
  static __device__ __forceinline__ double inf() { return (double)INFINITY; }
};

__device__ __forceinline__ float clampv(float z, float lo, float hi) { return fminf(fmaxf(z, lo), hi); }
__device__ __forceinline__ double clampv(double z, double lo, double hi) { return fmin(fmax(z, lo), hi); }
// Division for Newton iterates only; double stays exact. b = nf is an integer in [1, 1024] (or 0, which the caller
// rejects), never denormal, so the approximate reciprocal (one MUFU.RCP, ~1 ulp) needs none of __fdividef's range
// handling: with the multiply folded into the iterate's add, the step is two instructions instead of six.
__device__ __forceinline__ float fast_div(float a, float b) {
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(b));
  return a * r;
}
__device__ __forceinline__ double fast_div(double a, double b) { return a / b; }

// ---------------------------------------------------------------------------------------------------------------------
// Reductions. Warp level: xor butterflies, so every lane ends with the same bits (op is commutative). Block level
// (general path): per-warp butterflies, then every thread combines the warp partials in the same fixed order, so the
// result is identical in every thread (block-uniform control flow). The trailing barrier lets the next reduction
// reuse the same shared scratch.

struct SumOp {
  template <typename T> __device__ __forceinline__ T operator()(T a, T b) const { return a + b; }
};
struct MinOp {
  template <typename T> __device__ __forceinline__ T operator()(T a, T b) const { return fmin(a, b); }
};
struct MaxOp {
  template <typename T> __device__ __forceinline__ T operator()(T a, T b) const { return fmax(a, b); }
};

template <typename T, typename Op> __device__ __forceinline__ T warp_reduce(T v, Op op) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(kFull, v, o));
  return v;
}
template <typename T> __device__ __forceinline__ T warp_sum(T v) { return warp_reduce(v, SumOp()); }
template <typename T> __device__ __forceinline__ T warp_min(T v) { return warp_reduce(v, MinOp()); }
template <typename T> __device__ __forceinline__ T warp_max(T v) { return warp_reduce(v, MaxOp()); }
__device__ __forceinline__ int warp_sum_int(int v) { return __reduce_add_sync(kFull, v); }

// sm: NW elements of shared scratch; every thread of the block must call this (it has barriers).
template <typename T, int NW, typename Op>
__device__ __forceinline__ T block_reduce(T v, T* sm, Op op) {
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  v = warp_reduce(v, op);
  if (lane == 0) sm[w] = v;
  __syncthreads();
  T r = sm[0];
#pragma unroll
  for (int i = 1; i < NW; ++i) r = op(r, sm[i]);
  __syncthreads();
  return r;
}

// Shared scratch of the general path's block reductions: one slot per warp for acc_t values and for int counts.
template <typename acc_t>
struct BlockScratch {
  acc_t v[kBlockWarps];
  int n[kBlockWarps];
};

// ---------------------------------------------------------------------------------------------------------------------
// Kernel arguments. lo/hi are acc_t tensors addressed by (row, column) strides, so a scalar bound (strides 0, 0), a
// per-column bound (0, 1) and a full (R, K) bound share one code path; budgets are addressed by a row stride.

template <typename scalar_t>
struct ProjArgs {
  using acc_t = typename Acc<scalar_t>::type;
  const scalar_t* y;        // (R, K) contiguous: the point to project (or, in kRoundOnly, the point to round)
  scalar_t* x;              // (R, K) contiguous output, or nullptr in kRoundOnly
  int64_t* t;               // (R, K) int64 output of the rounding, or nullptr in kProject
  const acc_t* budget;      // row budgets for the projection
  const int64_t* budget_i;  // integer row budgets for the rounding (nullptr in kProject)
  const acc_t* lo;
  const acc_t* hi;
  int64_t b_s, bi_s, lo_rs, lo_cs, hi_rs, hi_cs;
  int64_t R;
  int K;
  int mode;
};

template <typename scalar_t>
struct BwdArgs {
  using acc_t = typename Acc<scalar_t>::type;
  const scalar_t* x;     // (R, K) saved forward output
  const scalar_t* g;     // (R, K) incoming gradient
  scalar_t* gy;          // (R, K) output
  scalar_t* gb;          // (R,) output
  const acc_t* lo;
  const acc_t* hi;
  int64_t lo_rs, lo_cs, hi_rs, hi_cs;
  int64_t R;
  int K;
};

// ---------------------------------------------------------------------------------------------------------------------
// Radix select inside one warp: the n largest of V*32 keys, ties to the lower element index (k = 32 * slot + lane),
// which is exactly the order of a stable descending sort. MSB-first, one byte per pass, with a 256-bucket histogram
// in shared memory; stops early once the bucket holding the n-th key is taken whole. Returns a bitmask over slots.

template <int V, typename KeyT>
__device__ __forceinline__ unsigned warp_select_top(const KeyT (&u)[V], int n, unsigned* hist, int lane) {
  if (n <= 0) return 0u;
  KeyT prefix = 0, mask = 0;
  int remaining = n;
#pragma unroll 1
  for (int shift = int(sizeof(KeyT)) * 8 - 8; shift >= 0; shift -= 8) {
#pragma unroll
    for (int i = 0; i < 8; ++i) hist[lane * 8 + i] = 0u;
    __syncwarp();
#pragma unroll
    for (int j = 0; j < V; ++j)
      if ((u[j] & mask) == prefix) atomicAdd(&hist[unsigned(u[j] >> shift) & 255u], 1u);
    __syncwarp();
    // Lane l owns digits [8l, 8l + 8). Counts above a digit are suffix sums over higher digits (descending order).
    unsigned c[8];
    unsigned local = 0;
#pragma unroll
    for (int i = 0; i < 8; ++i) { c[i] = hist[lane * 8 + i]; local += c[i]; }
    unsigned incl = local;  // sum over lanes >= lane
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const unsigned v = __shfl_down_sync(kFull, incl, o);
      if (lane + o < 32) incl += v;
    }
    const unsigned above = incl - local;
    const unsigned rem_u = unsigned(remaining);
    const unsigned owner_bits = __ballot_sync(kFull, above < rem_u && rem_u <= incl);
    const int owner = __ffs(owner_bits) - 1;
    int digit = 0;
    unsigned gt = 0, cnt = 0;
    {
      unsigned cum = above;
      bool found = false;
#pragma unroll
      for (int i = 7; i >= 0; --i) {
        if (!found && cum + c[i] >= rem_u) { found = true; digit = lane * 8 + i; gt = cum; cnt = c[i]; }
        cum += c[i];
      }
    }
    digit = __shfl_sync(kFull, digit, owner);
    gt = __shfl_sync(kFull, gt, owner);
    cnt = __shfl_sync(kFull, cnt, owner);
    __syncwarp();  // every lane has read hist before the next pass clears it
    remaining -= int(gt);
    prefix |= KeyT(digit) << shift;
    mask |= KeyT(255) << shift;
    if (int(cnt) == remaining) break;  // the whole bucket is selected: no need to resolve it further
  }
  unsigned sel = 0u;
  int before = 0;
  const unsigned lt = (1u << lane) - 1u;
#pragma unroll
  for (int j = 0; j < V; ++j) {
    const KeyT top = u[j] & mask;
    const bool eq = top == prefix;
    const unsigned bal = __ballot_sync(kFull, eq);
    const int rank = before + __popc(bal & lt);
    before += __popc(bal);
    if (top > prefix || (eq && rank < remaining)) sel |= 1u << j;
  }
  return sel;
}

// Keys for largest-remainder rounding: larger key = picked first. rem is in [0, 1]; non-negative IEEE bit patterns
// are ordered like the values. Ineligible entries get key 0, below every eligible one, as in the reference, which
// sorts them last with keys -1 (up) and 2 (down). The sign bit is cleared first: rem can be -0.0 (x = -0.0 with
// f = +0.0, and fmax/fmin do not order signed zeros), which compares equal to 0 in the reference's sort but whose
// bit pattern would otherwise rank above every positive remainder.
__device__ __forceinline__ uint32_t rem_bits(float rem) { return __float_as_uint(rem) & 0x7FFFFFFFu; }
__device__ __forceinline__ uint64_t rem_bits(double rem) {
  return uint64_t(__double_as_longlong(rem)) & 0x7FFFFFFFFFFFFFFFull;
}
__device__ __forceinline__ uint32_t up_key(float rem, bool ok) { return ok ? rem_bits(rem) + 1u : 0u; }
__device__ __forceinline__ uint32_t down_key(float rem, bool ok) { return ok ? 0x3F800001u - rem_bits(rem) : 0u; }
__device__ __forceinline__ uint64_t up_key(double rem, bool ok) { return ok ? rem_bits(rem) + 1ull : 0ull; }
__device__ __forceinline__ uint64_t down_key(double rem, bool ok) {
  return ok ? 0x3FF0000000000001ull - rem_bits(rem) : 0ull;
}

// Largest-remainder selection of D entries up (D > 0) or -D entries down (D < 0); rem_t is float or double.
template <int V, typename rem_t>
__device__ __forceinline__ void select_rounding(const rem_t (&rem)[V], const bool (&can_up)[V],
                                                const bool (&can_down)[V], int64_t D, int K, unsigned* hist, int lane,
                                                unsigned& up, unsigned& down) {
  using KeyT = typename std::conditional<sizeof(rem_t) == 4, uint32_t, uint64_t>::type;
  KeyT u[V];
  up = down = 0u;
  if (D > 0) {
#pragma unroll
    for (int j = 0; j < V; ++j) u[j] = up_key(rem[j], can_up[j]);
    up = warp_select_top<V, KeyT>(u, int(D < K ? D : K), hist, lane);
  } else if (D < 0) {
#pragma unroll
    for (int j = 0; j < V; ++j) u[j] = down_key(rem[j], can_down[j]);
    down = warp_select_top<V, KeyT>(u, int(-D < K ? -D : K), hist, lane);
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// The safeguarded Newton iteration on tau, shared by both paths. Every argument is uniform over the threads of a row
// (warp or block), so every branch is too.

// The tolerance on s(tau) - B and the first tau, from the bracket [tl, th], sum(y) and sum|lo| of the row.
template <typename acc_t>
__device__ __forceinline__ void newton_start(acc_t B, acc_t tl, acc_t th, acc_t sy, acc_t slo, int K, acc_t& tol,
                                             acc_t& tau) {
  // At the root sum|x| <= |B| + 2 sum|lo|; float sums of it are exact to a few eps of that.
  tol = acc_t(8) * Lim<acc_t>::eps() * (fabs(B) + acc_t(2) * slo);
  // Start from the all-free root (exact when no bound binds), clamped into the bracket.
  tau = fmin(fmax((sy - B) / acc_t(K), tl), th);
}

// After evaluating s = s(tau) and nf = |F(tau)| (iteration it): returns true when converged, else shrinks the bracket
// and moves tau (a Newton step, or a bisection where Newton would leave the bracket). r gets s - B.
template <typename acc_t>
__device__ __forceinline__ bool newton_step(acc_t s, int nf, acc_t B, acc_t tol, int it, acc_t& tau, acc_t& tl,
                                            acc_t& th, acc_t& r) {
  r = s - B;
  if (fabs(r) <= tol || it >= kMaxIters) return true;
  if (r > 0) tl = tau; else th = tau;
  // A bracket at float resolution pins the root: tau cannot be represented any closer.
  if (th - tl <= acc_t(2) * Lim<acc_t>::eps() * fmax(fabs(tl), fabs(th))) return true;
  // An iterate needs no correctly rounded division (the bracket safeguards it and newton_finish is exact): the fast
  // float division (two instructions, ~2 ulp) saves the ~12 of IEEE division with its slow-path check.
  const acc_t tn = tau + fast_div(r, acc_t(nf));
  tau = (nf > 0 && tn > tl && tn < th) ? tn : acc_t(0.5) * (tl + th);
  return false;
}

// Called when newton_step accepted |s - B| <= tol on a row with a negative lo. The tolerance's scale |B| + 2 sum|lo|
// bounds sum|x| at the root, but a negative lo far from binding (lo = -1e6 with values near 0) makes it far larger than
// the row's own values, and a wrong active set could pass. sn is this evaluation's sum of min(x, 0), so |B| + 2|sn| is
// the scale of the sum just computed. Returns true (and tightens tol) when r fails that; the caller then steps on.
template <typename acc_t>
__device__ __forceinline__ bool newton_tighten(acc_t sn, acc_t B, acc_t r, acc_t& tol) {
  const acc_t t = acc_t(8) * Lim<acc_t>::eps() * (fabs(B) + acc_t(2) * fabs(sn));
  if (fabs(r) <= t) return false;
  tol = t;
  return true;
}

// Exact final step on the active set of the last evaluation, kept inside the bracket.
template <typename acc_t>
__device__ __forceinline__ acc_t newton_finish(acc_t tau, acc_t r, int nf, acc_t tl, acc_t th) {
  return nf > 0 ? fmin(fmax(tau + r / acc_t(nf), tl), th) : tau;
}

// ---------------------------------------------------------------------------------------------------------------------
// Warp path: one row per warp, V values per lane in registers.

// Whether slot j of a V-slot row is full (every lane holds an element) whatever K is: true for every slot but the last
// when V <= 8, because the launcher picks V = ceil(K / 32) there (checked on the host); never for V = 16, 32.
template <int V> __device__ __forceinline__ constexpr bool full_slot(int j) { return V <= 8 && j < V - 1; }

template <typename scalar_t, int V, bool kScalarBounds>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
projection_warp_kernel(const ProjArgs<scalar_t> a) {
  using acc_t = typename Acc<scalar_t>::type;
  __shared__ unsigned s_hist[kWarpsPerBlock][256];
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  const int64_t row = int64_t(blockIdx.x) * kWarpsPerBlock + w;
  if (row >= a.R) return;  // whole warp leaves together
  const int K = a.K;
  const scalar_t* yr = a.y + row * K;

  // Registers: the row, and the bounds (one pair for scalar bounds, V pairs otherwise). For V <= 8 the launcher
  // guarantees V == ceil(K / 32) (pick_v), so every slot but the last is full: `full_slot` is a compile-time fact, the
  // masks below fold away for those slots, and only the last slot pays for its padding lanes.
  acc_t y[V], lo[V], hi[V];
  bool valid[V];
  const acc_t lo0 = a.lo[kScalarBounds ? 0 : row * a.lo_rs];
  const acc_t hi0 = a.hi[kScalarBounds ? 0 : row * a.hi_rs];
#pragma unroll
  for (int j = 0; j < V; ++j) {
    const int k = j * 32 + lane;
    valid[j] = full_slot<V>(j) || k < K;
    y[j] = valid[j] ? static_cast<acc_t>(yr[k]) : acc_t(0);
    if (kScalarBounds) {
      lo[j] = lo0;
      hi[j] = hi0;
    } else {
      // Padding gets lo = hi = 0: it then contributes 0 to s and is never free.
      lo[j] = valid[j] ? a.lo[row * a.lo_rs + k * a.lo_cs] : acc_t(0);
      hi[j] = valid[j] ? a.hi[row * a.hi_rs + k * a.hi_cs] : acc_t(0);
    }
  }
  acc_t tau = 0;
  if (a.mode != kRoundOnly) {
    const acc_t B = a.budget[row * a.b_s];
    // Bracket, mean shift and the tolerance scale in one pass.
    acc_t tl = Lim<acc_t>::inf(), th = -Lim<acc_t>::inf(), sy = 0, slo = 0;
#pragma unroll
    for (int j = 0; j < V; ++j)
      if (valid[j]) {
        tl = fmin(tl, y[j] - hi[j]);
        th = fmax(th, y[j] - lo[j]);
        sy += y[j];
        if (!kScalarBounds) slo += fabs(lo[j]);
      }
    tl = warp_min(tl);
    th = warp_max(th);
    sy = warp_sum(sy);
    // sum|lo| sets only the tolerance's scale: K·|lo| for a scalar bound, without a fifth reduction.
    slo = kScalarBounds ? acc_t(K) * fabs(lo0) : warp_sum(slo);
    bool neg = kScalarBounds && lo0 < acc_t(0);  // some lo < 0: acceptance is re-checked (newton_tighten)
    if (!kScalarBounds) {
      bool any = false;
#pragma unroll
      for (int j = 0; j < V; ++j) any |= valid[j] && lo[j] < acc_t(0);
      neg = __any_sync(kFull, any);
    }
    acc_t tol;
    newton_start(B, tl, th, sy, slo, K, tol, tau);
    acc_t r = 0, s = 0;
    int nf = 0, it = 0;
#pragma unroll 1
    for (;;) {
#pragma unroll 1
      for (;; ++it) {
        s = -acc_t(0);  // x + (-0) == x for every x, so the first add folds away (0 + x does not: -0 + 0 = +0)
        float f = 0;  // |F| counted in float (exact up to 2^24): FSET.BF + FADD per slot, not a compare chain
#pragma unroll
        for (int j = 0; j < V; ++j) {
          if (V <= 8 || j * 32 < K) {  // warp-uniform: slots wholly past the row (V = 16, 32 only) are skipped
            const acc_t z = y[j] - tau;
            acc_t c = clampv(z, lo[j], hi[j]);
            float fr = c == z ? 1.f : 0.f;  // free: inside [lo, hi], a tie with a bound included (see the top)
            if (!valid[j]) { c = acc_t(0); fr = 0.f; }  // padding lanes; folds away for full slots
            s += c;
            f += fr;
          }
        }
        s = warp_sum(s);
        nf = warp_sum_int(int(f));
        if (newton_step(s, nf, B, tol, it, tau, tl, th, r)) break;
      }
      // Outside the hot loop: a row with a negative lo that stopped on the tolerance is re-checked (newton_tighten).
      if (!neg || fabs(r) > tol) break;  // no negative lo, or stopped by the bracket or the iteration cap
      acc_t sn = 0;
#pragma unroll
      for (int j = 0; j < V; ++j)
        if (valid[j]) sn += fmin(clampv(y[j] - tau, lo[j], hi[j]), acc_t(0));
      if (!newton_tighten(warp_sum(sn), B, r, tol) || newton_step(s, nf, B, tol, it, tau, tl, th, r)) break;
      ++it;
    }
    tau = newton_finish(tau, r, nf, tl, th);
  }

  // Output x (in the input dtype) and, for rounding, the stored value read back exactly.
  acc_t xo[V];
#pragma unroll
  for (int j = 0; j < V; ++j) {
    if (a.mode == kRoundOnly) {
      xo[j] = y[j];
    } else {
      const scalar_t xs = static_cast<scalar_t>(clampv(y[j] - tau, lo[j], hi[j]));
      if (valid[j]) a.x[row * K + j * 32 + lane] = xs;
      xo[j] = static_cast<acc_t>(xs);
    }
  }
  if (a.mode == kProject) return;

  // Largest-remainder rounding, bit-compatible with reference.round_largest_remainder on the same x:
  // f = clamp(floor(x), lo, hi), rem = clamp(x - f, 0, 1), D = B - sum(f).
  acc_t f[V];
  double fsum = 0.0;
  bool inexact = false;
#pragma unroll
  for (int j = 0; j < V; ++j) {
    const acc_t fl = floor(xo[j]);
    f[j] = valid[j] ? clampv(fl, lo[j], hi[j]) : acc_t(0);
    fsum += double(f[j]);
    // x - floor(x) is exact in float except for x in (-1, 0); those rows take the double-precision keys.
    inexact |= valid[j] && f[j] == fl && xo[j] < acc_t(0) && xo[j] > acc_t(-1);
  }
  fsum = warp_sum(fsum);  // integers: exact in double
  const int64_t D = a.budget_i[row * a.bi_s] - int64_t(fsum);
  bool can_up[V], can_down[V];
#pragma unroll
  for (int j = 0; j < V; ++j) {
    can_up[j] = valid[j] && f[j] < hi[j];
    can_down[j] = valid[j] && f[j] > lo[j];
  }
  unsigned up = 0u, down = 0u;
  unsigned* hist = s_hist[w];
  if (sizeof(acc_t) == 4 && !__any_sync(kFull, inexact)) {
    float rem[V];
#pragma unroll
    for (int j = 0; j < V; ++j) rem[j] = fminf(fmaxf(float(xo[j]) - float(f[j]), 0.f), 1.f);
    select_rounding<V, float>(rem, can_up, can_down, D, K, hist, lane, up, down);
  } else {
    double rem[V];
#pragma unroll
    for (int j = 0; j < V; ++j) rem[j] = fmin(fmax(double(xo[j]) - double(f[j]), 0.0), 1.0);
    select_rounding<V, double>(rem, can_up, can_down, D, K, hist, lane, up, down);
  }
#pragma unroll
  for (int j = 0; j < V; ++j)
    if (valid[j])
      a.t[row * K + j * 32 + lane] = int64_t(f[j]) + int64_t((up >> j) & 1u) - int64_t((down >> j) & 1u);
}

// ---------------------------------------------------------------------------------------------------------------------
// General path: one block per row, streaming the row from global memory (L1/L2) on every evaluation. Any K.

template <typename scalar_t>
__global__ void __launch_bounds__(kBlockThreads) projection_block_kernel(const ProjArgs<scalar_t> a) {
  using acc_t = typename Acc<scalar_t>::type;
  __shared__ BlockScratch<acc_t> sm;
  const int64_t row = blockIdx.x;
  const int K = a.K;
  const scalar_t* yr = a.y + row * K;
  const acc_t* lor = a.lo + row * a.lo_rs;
  const acc_t* hir = a.hi + row * a.hi_rs;
  const acc_t B = a.budget[row * a.b_s];
  acc_t tl = Lim<acc_t>::inf(), th = -Lim<acc_t>::inf(), sy = 0, slo = 0;
  int nneg = 0;
  for (int k = threadIdx.x; k < K; k += kBlockThreads) {
    const acc_t yk = static_cast<acc_t>(yr[k]), l = lor[k * a.lo_cs], h = hir[k * a.hi_cs];
    tl = fmin(tl, yk - h);
    th = fmax(th, yk - l);
    sy += yk;
    slo += fabs(l);
    nneg += int(l < acc_t(0));
  }
  tl = block_reduce<acc_t, kBlockWarps>(tl, sm.v, MinOp());
  th = block_reduce<acc_t, kBlockWarps>(th, sm.v, MaxOp());
  sy = block_reduce<acc_t, kBlockWarps>(sy, sm.v, SumOp());
  slo = block_reduce<acc_t, kBlockWarps>(slo, sm.v, SumOp());
  // Some lo < 0: acceptance is re-checked (newton_tighten), as on the warp path.
  const bool neg = block_reduce<int, kBlockWarps>(nneg, sm.n, SumOp()) > 0;
  acc_t tol, tau;
  newton_start(B, tl, th, sy, slo, K, tol, tau);
  acc_t r = 0, s = 0;
  int nf = 0, it = 0;
  for (;;) {
    for (;; ++it) {
      s = 0;
      int f = 0;
      for (int k = threadIdx.x; k < K; k += kBlockThreads) {
        const acc_t z = static_cast<acc_t>(yr[k]) - tau, l = lor[k * a.lo_cs], h = hir[k * a.hi_cs];
        s += clampv(z, l, h);
        f += int(z > l && z < h);
      }
      s = block_reduce<acc_t, kBlockWarps>(s, sm.v, SumOp());
      nf = block_reduce<int, kBlockWarps>(f, sm.n, SumOp());
      if (newton_step(s, nf, B, tol, it, tau, tl, th, r)) break;
    }
    if (!neg || fabs(r) > tol) break;
    acc_t sn = 0;
    for (int k = threadIdx.x; k < K; k += kBlockThreads)
      sn += fmin(clampv(static_cast<acc_t>(yr[k]) - tau, lor[k * a.lo_cs], hir[k * a.hi_cs]), acc_t(0));
    sn = block_reduce<acc_t, kBlockWarps>(sn, sm.v, SumOp());
    if (!newton_tighten(sn, B, r, tol) || newton_step(s, nf, B, tol, it, tau, tl, th, r)) break;
    ++it;
  }
  tau = newton_finish(tau, r, nf, tl, th);
  for (int k = threadIdx.x; k < K; k += kBlockThreads) {
    const acc_t xk = clampv(static_cast<acc_t>(yr[k]) - tau, lor[k * a.lo_cs], hir[k * a.hi_cs]);
    a.x[row * K + k] = static_cast<scalar_t>(xk);
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// Backward: g_y = m * (g - sum_F g / |F|), g_B = sum_F g / |F| (0 when F is empty), m read off the saved x.

template <typename scalar_t, int V>
__global__ void __launch_bounds__(kWarpsPerBlock * 32) backward_warp_kernel(const BwdArgs<scalar_t> a) {
  using acc_t = typename Acc<scalar_t>::type;
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  const int64_t row = int64_t(blockIdx.x) * kWarpsPerBlock + w;
  if (row >= a.R) return;
  const int K = a.K;
  acc_t g[V];
  bool m[V];
  acc_t sg = 0;
  int n = 0;
#pragma unroll
  for (int j = 0; j < V; ++j) {
    const int k = j * 32 + lane;
    m[j] = false;
    g[j] = 0;
    if (full_slot<V>(j) || k < K) {
      const acc_t xk = static_cast<acc_t>(a.x[row * K + k]);
      g[j] = static_cast<acc_t>(a.g[row * K + k]);
      m[j] = xk > a.lo[row * a.lo_rs + k * a.lo_cs] && xk < a.hi[row * a.hi_rs + k * a.hi_cs];
      sg += m[j] ? g[j] : acc_t(0);
      n += int(m[j]);
    }
  }
  sg = warp_sum(sg);
  n = warp_sum_int(n);
  const acc_t mean = n > 0 ? sg / acc_t(n) : acc_t(0);
#pragma unroll
  for (int j = 0; j < V; ++j) {
    const int k = j * 32 + lane;
    if (full_slot<V>(j) || k < K) a.gy[row * K + k] = static_cast<scalar_t>(m[j] ? g[j] - mean : acc_t(0));
  }
  if (lane == 0) a.gb[row] = static_cast<scalar_t>(mean);
}

template <typename scalar_t>
__global__ void __launch_bounds__(kBlockThreads) backward_block_kernel(const BwdArgs<scalar_t> a) {
  using acc_t = typename Acc<scalar_t>::type;
  __shared__ BlockScratch<acc_t> sm;
  const int64_t row = blockIdx.x;
  const int K = a.K;
  auto free_at = [&](int k) {
    const acc_t xk = static_cast<acc_t>(a.x[row * K + k]);
    return xk > a.lo[row * a.lo_rs + k * a.lo_cs] && xk < a.hi[row * a.hi_rs + k * a.hi_cs];
  };
  acc_t sg = 0;
  int n = 0;
  for (int k = threadIdx.x; k < K; k += kBlockThreads)
    if (free_at(k)) { sg += static_cast<acc_t>(a.g[row * K + k]); ++n; }
  sg = block_reduce<acc_t, kBlockWarps>(sg, sm.v, SumOp());
  n = block_reduce<int, kBlockWarps>(n, sm.n, SumOp());
  const acc_t mean = n > 0 ? sg / acc_t(n) : acc_t(0);
  for (int k = threadIdx.x; k < K; k += kBlockThreads)
    a.gy[row * K + k] = static_cast<scalar_t>(free_at(k) ? static_cast<acc_t>(a.g[row * K + k]) - mean : acc_t(0));
  if (threadIdx.x == 0) a.gb[row] = static_cast<scalar_t>(mean);
}

}  // namespace arr_coc
