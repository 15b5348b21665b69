// sparsekern._C's CUDA entry points: check sizes, enqueue the kernels on the caller's stream.
//
// Device buffers arrive as raw addresses (sparsekern/ops_cuda.py passes data_ptr()) and the
// stream as the integer torch.cuda.current_stream().cuda_stream. Only host-side facts are
// checked here: reading row_ptr or the piece table back from the device would synchronize
// every call, so the packed buffers must have been validated when they were made or loaded
// (formats/*.validate), and the piece table built by ops_cuda.csr_pieces.
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

int64_t dtype_bytes(gpu::DType t) { return t == gpu::DType::f32 ? 4 : 2; }

void check_aligned(const char* what, uintptr_t p, int64_t bytes) {
  if (p % bytes != 0) fail(what, " must be ", bytes, "-byte aligned, got address ", p);
}

// workspace: (batch + 1) * rows zeroed 4-byte words (gpu::workspace_words), or 0; needed
// when a row is cut into more than one piece.
gpu::DenseArgs dense_args(int64_t rows, int64_t cols, uintptr_t x, const std::string& x_type, int64_t batch,
                          int64_t x_row_stride, uintptr_t bias, const std::string& bias_type, uintptr_t y,
                          uintptr_t workspace, bool needs_workspace) {
  if (rows < 0 || cols < 0 || batch < 0)
    fail("negative size: rows = ", rows, ", cols = ", cols, ", batch = ", batch);
  if (batch > 1 && x_row_stride < cols)
    fail("x row stride = ", x_row_stride, " is less than cols = ", cols);
  gpu::DenseArgs a;
  a.x_type = parse_dtype("x", x_type);
  a.bias_type = parse_dtype("bias", bias_type);
  if (bias && a.bias_type != a.x_type && a.bias_type != gpu::DType::f32)
    fail("bias dtype ", bias_type, " with ", x_type, " x: expected x's dtype or float32");
  if (batch > 0 && rows > 0 && !y) fail("y is null");
  if (batch > 0 && cols > 0 && !x) fail("x is null");
  if (needs_workspace && batch > 0 && rows > 0 && !workspace) fail("rows cut into pieces need a workspace");
  check_aligned("workspace", workspace, 4);
  a.x = reinterpret_cast<const void*>(x);
  a.batch = batch;
  a.x_row_stride = x_row_stride;
  a.bias = reinterpret_cast<const void*>(bias);
  a.y = reinterpret_cast<void*>(y);
  if (workspace) {
    a.partial = reinterpret_cast<float*>(workspace);
    a.arrivals = reinterpret_cast<unsigned*>(a.partial + batch * rows);
  }
  return a;
}

void check_launch(const char* kernel, cudaError_t status) {
  if (status != cudaSuccess)
    throw std::runtime_error(std::string(kernel) + " launch failed: " + cudaGetErrorString(status));
}

void csr_spmm_cuda(int64_t rows, int64_t cols, int64_t nnz, uintptr_t pieces, int64_t piece_count,
                   int64_t max_row_pieces, uintptr_t col_idx, const std::string& index_type, uintptr_t values,
                   const std::string& value_type, uintptr_t x, const std::string& x_type, int64_t batch,
                   int64_t x_row_stride, uintptr_t bias, const std::string& bias_type, uintptr_t y,
                   uintptr_t workspace, uintptr_t stream) {
  const gpu::DenseArgs a = dense_args(rows, cols, x, x_type, batch, x_row_stride, bias, bias_type, y, workspace,
                                      max_row_pieces > 1);
  if (nnz < 0) fail("negative size: nnz = ", nnz);
  if (nnz > rows * cols) fail("nnz = ", nnz, " exceeds rows * cols = ", rows * cols);
  if (piece_count < rows) fail("piece_count = ", piece_count, " is less than rows = ", rows, ": every row needs one");
  if (max_row_pieces < 1) fail("max_row_pieces = ", max_row_pieces, ", expected >= 1");
  gpu::CsrMatrix w;
  w.rows = rows;
  w.cols = cols;
  w.pieces = reinterpret_cast<const int64_t*>(pieces);
  w.piece_count = piece_count;
  w.col_idx = reinterpret_cast<const void*>(col_idx);
  w.values = reinterpret_cast<const void*>(values);
  w.value_type = parse_dtype("values", value_type);
  w.index_type = sparsekern::bindings::parse_index_type(index_type, cols, gpu::IndexType::u16,
                                                         gpu::IndexType::i32);
  if (rows > 0 && !pieces) fail("pieces is null");
  if (nnz > 0 && (!col_idx || !values)) fail("col_idx or values is null with nnz = ", nnz);
  // The kernel loads whole aligned chunks of nonzeros.
  check_aligned("values", values, gpu::kCsrChunk * dtype_bytes(w.value_type));
  check_aligned("col_idx", col_idx, gpu::kCsrChunk * (w.index_type == gpu::IndexType::u16 ? 2 : 4));

  py::gil_scoped_release no_gil;
  check_launch("csr_spmm", gpu::csr_spmm(w, a, reinterpret_cast<cudaStream_t>(stream)));
}

void nm24_linear_cuda(int64_t rows, int64_t cols, uintptr_t values, const std::string& value_type,
                      uintptr_t meta, int64_t pieces_per_row, uintptr_t x, const std::string& x_type,
                      int64_t batch, int64_t x_row_stride, uintptr_t bias, const std::string& bias_type,
                      uintptr_t y, uintptr_t workspace, uintptr_t stream) {
  const gpu::DenseArgs a = dense_args(rows, cols, x, x_type, batch, x_row_stride, bias, bias_type, y, workspace,
                                      pieces_per_row > 1);
  if (cols % 4 != 0) fail("2:4 needs cols % 4 == 0, got cols = ", cols);
  if (pieces_per_row < 1) fail("pieces_per_row = ", pieces_per_row, ", expected >= 1");
  gpu::Nm24Matrix w;
  w.rows = rows;
  w.cols = cols;
  w.values = reinterpret_cast<const void*>(values);
  w.value_type = parse_dtype("values", value_type);
  w.meta = reinterpret_cast<const uint8_t*>(meta);
  w.pieces_per_row = pieces_per_row;
  if (rows > 0 && cols > 0 && (!values || !meta)) fail("values or meta is null");

  py::gil_scoped_release no_gil;
  check_launch("nm24_linear", gpu::nm24_linear(w, a, reinterpret_cast<cudaStream_t>(stream)));
}

}  // namespace

void register_cuda(py::module_& m) {
  m.attr("cuda_csr_chunk") = gpu::kCsrChunk;
  m.def("cuda_workspace_words", &gpu::workspace_words, py::arg("batch"), py::arg("rows"),
        "Zeroed 4-byte words a CUDA product needs when a row is cut into several pieces.");
  m.def("csr_spmm_cuda", &csr_spmm_cuda,
        "Enqueues y[batch, rows] = x[batch, cols] @ W.T + bias for CSR W on a CUDA stream, by raw "
        "device addresses; W's rows cut into pieces by sparsekern.ops_cuda.csr_pieces. y is in x_type, "
        "bias in x_type or float32.",
        py::arg("rows"), py::arg("cols"), py::arg("nnz"), py::arg("pieces"), py::arg("piece_count"),
        py::arg("max_row_pieces"), py::arg("col_idx"), py::arg("index_type"), py::arg("values"),
        py::arg("value_type"), py::arg("x"), py::arg("x_type"), py::arg("batch"), py::arg("x_row_stride"),
        py::arg("bias"), py::arg("bias_type"), py::arg("y"), py::arg("workspace"), py::arg("stream"));
  m.def("nm24_linear_cuda", &nm24_linear_cuda,
        "Enqueues y[batch, rows] = x[batch, cols] @ W.T + bias for 2:4 W (values, meta) on a CUDA "
        "stream, by raw device addresses, each row cut into pieces_per_row pieces. y is in x_type, "
        "bias in x_type or float32.",
        py::arg("rows"), py::arg("cols"), py::arg("values"), py::arg("value_type"), py::arg("meta"),
        py::arg("pieces_per_row"), py::arg("x"), py::arg("x_type"), py::arg("batch"), py::arg("x_row_stride"),
        py::arg("bias"), py::arg("bias_type"), py::arg("y"), py::arg("workspace"), py::arg("stream"));
}
