// Python bindings of the CUDA launchers in projection.cu. The argument contract is documented there and is called only
// from arr_coc/kernels/dispatch.py, behind the torch.library ops of arr_coc/kernels/ops.py.
#include <torch/extension.h>

#include <optional>
#include <vector>

namespace arr_coc {
std::vector<at::Tensor> forward_cuda(const at::Tensor& y, const at::Tensor& budget,
                                     const std::optional<at::Tensor>& budget_i, const at::Tensor& lo,
                                     const at::Tensor& hi, int64_t mode, int64_t path);
std::vector<at::Tensor> backward_cuda(const at::Tensor& x, const at::Tensor& lo, const at::Tensor& hi,
                                      const at::Tensor& grad, int64_t path);
}  // namespace arr_coc

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "ARR-COC capped-simplex projection, fused largest-remainder rounding and backward (CUDA)";
  m.def("forward", &arr_coc::forward_cuda, "projection (mode 0), projection + rounding (1) or rounding only (2)",
        pybind11::arg("y"), pybind11::arg("budget"), pybind11::arg("budget_i"), pybind11::arg("lo"),
        pybind11::arg("hi"), pybind11::arg("mode"), pybind11::arg("path") = 0);
  m.def("backward", &arr_coc::backward_cuda, "VJP of the projection from its output", pybind11::arg("x"),
        pybind11::arg("lo"), pybind11::arg("hi"), pybind11::arg("grad"), pybind11::arg("path") = 0);
}
