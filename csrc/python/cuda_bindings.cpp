// sparsekern._C's CUDA entry points: check sizes, enqueue the kernels on the caller's stream.
//
// Device buffers arrive as raw addresses (sparsekern/ops_cuda.py passes data_ptr()) and the
// stream as the integer torch.cuda.current_stream().cuda_stream. Only host-side facts are
// checked here: reading row_ptr back from the device would synchronize every call, so the
// packed buffers must have been validated when they were made or loaded (formats/*.validate).
// Kernels run on the device that is current for the calling thread (ops_cuda.py makes it x's).
#include <cuda_runtime_api.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "../kernels/cuda/csr_spmm.h"
#include "../kernels/cuda/nm24_linear.h"
#include "checks.h"

namespace py = pybind11;
namespace gpu = sparsekern::gpu;
using sparsekern::bindings::fail;

namespace {

gpu::DType parse_dtype(const char* what, const std::string& name) {
  if (name == "float32") return gpu::DType::f32;
  if (name == "float16") return gpu::DType::f16;
  if (name == "bfloat16") return gpu::DType::bf16;
  fail(what, " dtype '", name, "', expected float32, float16 or bfloat16");
}

gpu::DenseArgs dense_args(int64_t rows, int64_t cols, uintptr_t x, const std::string& x_type,
                          const std::string& value_type, int64_t batch, int64_t x_row_stride,
                          uintptr_t bias, uintptr_t y) {
  if (rows < 0 || cols < 0 || batch < 0)
    fail("negative size: rows = ", rows, ", cols = ", cols, ", batch = ", batch);
  if (batch > 1 && x_row_stride < cols)
    fail("x row stride = ", x_row_stride, " is less than cols = ", cols);
  gpu::DenseArgs a;
  a.x_type = parse_dtype("x", x_type);
  const gpu::DType values = parse_dtype("values", value_type);
  if (!gpu::supports_types(a.x_type, values))
    fail("no CUDA kernel for ", x_type, " activations with ", value_type,
         " values: values must be in x's dtype, or x float32");
  if (batch > 0 && rows > 0 && !y) fail("y is null");
  if (batch > 0 && cols > 0 && !x) fail("x is null");
  a.x = reinterpret_cast<const void*>(x);
  a.batch = batch;
  a.x_row_stride = x_row_stride;
  a.bias = reinterpret_cast<const void*>(bias);
  a.y = reinterpret_cast<void*>(y);
  return a;
}

void check_launch(const char* kernel, cudaError_t status) {
  if (status != cudaSuccess)
    throw std::runtime_error(std::string(kernel) + " launch failed: " + cudaGetErrorString(status));
}

void csr_spmm_cuda(int64_t rows, int64_t cols, int64_t nnz, uintptr_t row_ptr, uintptr_t col_idx,
                   const std::string& index_type, uintptr_t values, const std::string& value_type,
                   uintptr_t x, const std::string& x_type, int64_t batch, int64_t x_row_stride,
                   uintptr_t bias, uintptr_t y, uintptr_t stream) {
  const gpu::DenseArgs a = dense_args(rows, cols, x, x_type, value_type, batch, x_row_stride, bias, y);
  if (nnz < 0) fail("negative size: nnz = ", nnz);
  if (nnz > rows * cols) fail("nnz = ", nnz, " exceeds rows * cols = ", rows * cols);
  gpu::CsrMatrix w;
  w.rows = rows;
  w.cols = cols;
  w.nnz = nnz;
  w.row_ptr = reinterpret_cast<const int64_t*>(row_ptr);
  w.col_idx = reinterpret_cast<const void*>(col_idx);
  w.values = reinterpret_cast<const void*>(values);
  w.value_type = parse_dtype("values", value_type);
  w.index_type = sparsekern::bindings::parse_index_type(index_type, cols, gpu::IndexType::u16,
                                                         gpu::IndexType::i32);
  if (rows > 0 && !row_ptr) fail("row_ptr is null");
  if (nnz > 0 && (!col_idx || !values)) fail("col_idx or values is null with nnz = ", nnz);

  py::gil_scoped_release no_gil;
  check_launch("csr_spmm", gpu::csr_spmm(w, a, reinterpret_cast<cudaStream_t>(stream)));
}

void nm24_linear_cuda(int64_t rows, int64_t cols, uintptr_t values, const std::string& value_type,
                      uintptr_t meta, uintptr_t x, const std::string& x_type, int64_t batch,
                      int64_t x_row_stride, uintptr_t bias, uintptr_t y, uintptr_t stream) {
  const gpu::DenseArgs a = dense_args(rows, cols, x, x_type, value_type, batch, x_row_stride, bias, y);
  if (cols % 4 != 0) fail("2:4 needs cols % 4 == 0, got cols = ", cols);
  gpu::Nm24Matrix w;
  w.rows = rows;
  w.cols = cols;
  w.values = reinterpret_cast<const void*>(values);
  w.value_type = parse_dtype("values", value_type);
  w.meta = reinterpret_cast<const uint8_t*>(meta);
  if (rows > 0 && cols > 0 && (!values || !meta)) fail("values or meta is null");

  py::gil_scoped_release no_gil;
  check_launch("nm24_linear", gpu::nm24_linear(w, a, reinterpret_cast<cudaStream_t>(stream)));
}

}  // namespace

void register_cuda(py::module_& m) {
  m.def("cuda_supports_types",
        [](const std::string& x_type, const std::string& value_type) {
          return gpu::supports_types(parse_dtype("x", x_type), parse_dtype("values", value_type));
        },
        "Whether the CUDA kernels take activations of x_type with values of value_type.");
  m.def("csr_spmm_cuda", &csr_spmm_cuda,
        "Enqueues y[batch, rows] = x[batch, cols] @ W.T + bias for CSR W on a CUDA stream, by raw "
        "device addresses; x, bias and y share x_type.",
        py::arg("rows"), py::arg("cols"), py::arg("nnz"), py::arg("row_ptr"), py::arg("col_idx"),
        py::arg("index_type"), py::arg("values"), py::arg("value_type"), py::arg("x"), py::arg("x_type"),
        py::arg("batch"), py::arg("x_row_stride"), py::arg("bias"), py::arg("y"), py::arg("stream"));
  m.def("nm24_linear_cuda", &nm24_linear_cuda,
        "Enqueues y[batch, rows] = x[batch, cols] @ W.T + bias for 2:4 W (values, meta) on a CUDA "
        "stream, by raw device addresses; x, bias and y share x_type.",
        py::arg("rows"), py::arg("cols"), py::arg("values"), py::arg("value_type"), py::arg("meta"),
        py::arg("x"), py::arg("x_type"), py::arg("batch"), py::arg("x_row_stride"), py::arg("bias"),
        py::arg("y"), py::arg("stream"));
}
