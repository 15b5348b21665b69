// sparsekern._C: checks arguments, releases the GIL, calls the kernels.
//
// Tensors arrive as raw addresses plus sizes (sparsekern/ops.py passes data_ptr()): turning
// a torch tensor into DLPack or a numpy array costs 2-4 us each here, against 0.1 us for
// data_ptr, and batch-1 layers take tens of microseconds. ops.py checks dtypes, devices,
// shapes and contiguity; this module checks that the sizes agree with each other and that
// the CSR ends where it says, so that a wrong call raises instead of reading out of bounds.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "../kernels/cpu/csr_spmm.h"
#include "../kernels/cpu/nm24_linear.h"
#include "checks.h"

namespace py = pybind11;
namespace cpu = sparsekern::cpu;
using sparsekern::bindings::address;
using sparsekern::bindings::fail;

#ifdef SPARSEKERN_WITH_CUDA
void register_cuda(py::module_& m);  // cuda_bindings.cpp
#endif

namespace {

cpu::Isa parse_isa(const std::string& name) {
  if (name == "scalar") return cpu::Isa::scalar;
  if (name == "avx2") return cpu::Isa::avx2;
  if (name == "avx512") return cpu::Isa::avx512;
  fail("unknown CPU ISA '", name, "', expected one of: scalar, avx2, avx512");
}

const char* isa_name(cpu::Isa isa) {
  switch (isa) {
    case cpu::Isa::avx2: return "avx2";
    case cpu::Isa::avx512: return "avx512";
    default: return "scalar";
  }
}

cpu::Isa runnable_isa(const std::string& name) {
  const cpu::Isa isa = parse_isa(name);
  if (!cpu::cpu_supports(isa)) fail("this CPU cannot run the ", name, " kernels");
  return isa;
}

cpu::ValueType parse_value_type(const std::string& name) {
  if (name == "float32") return cpu::ValueType::f32;
  if (name == "bfloat16") return cpu::ValueType::bf16;
  fail("values dtype '", name, "', expected float32 or bfloat16");
}

// The activations, bias, output and workspace of a CPU product, checked against each other.
cpu::DenseArgs dense_args(int64_t rows, int64_t cols, uintptr_t x, int64_t batch, int64_t x_row_stride,
                          uintptr_t bias, uintptr_t y, uintptr_t workspace, int64_t workspace_floats,
                          int64_t workspace_needed, int num_threads) {
  if (rows < 0 || cols < 0 || batch < 0)
    fail("negative size: rows = ", rows, ", cols = ", cols, ", batch = ", batch);
  if (num_threads < 1) fail("num_threads = ", num_threads, ", expected >= 1");
  if (batch > 1 && x_row_stride < cols)
    fail("x row stride = ", x_row_stride, " is less than cols = ", cols);
  if (batch > 0 && rows > 0 && !y) fail("y is null");
  if (batch > 0 && cols > 0 && !x) fail("x is null");
  if (workspace_floats < workspace_needed)
    fail("workspace has ", workspace_floats, " floats, needs ", workspace_needed);
  if (workspace_needed > 0 && (workspace % 64 != 0)) fail("workspace must be 64-byte aligned");
  cpu::DenseArgs a;
  a.x = address<float>(x);
  a.batch = batch;
  a.x_row_stride = x_row_stride;
  a.bias = bias ? address<float>(bias) : nullptr;
  a.y = reinterpret_cast<float*>(y);
  a.workspace = reinterpret_cast<float*>(workspace);
  a.num_threads = num_threads;
  return a;
}

void csr_spmm_cpu(const std::string& isa_name_arg, int64_t rows, int64_t cols, int64_t nnz,
                  uintptr_t row_ptr, uintptr_t col_idx, const std::string& index_type,
                  uintptr_t values, const std::string& value_type, uintptr_t x, int64_t batch,
                  int64_t x_row_stride, uintptr_t bias, uintptr_t y, uintptr_t workspace,
                  int64_t workspace_floats, int num_threads) {
  const cpu::Isa isa = runnable_isa(isa_name_arg);
  const cpu::DenseArgs a = dense_args(rows, cols, x, batch, x_row_stride, bias, y, workspace, workspace_floats,
                                      cpu::csr_spmm_workspace_floats(isa, batch, cols), num_threads);
  if (nnz < 0) fail("negative size: nnz = ", nnz);
  cpu::CsrMatrix w;
  w.rows = rows;
  w.cols = cols;
  w.row_ptr = address<int64_t>(row_ptr);
  w.col_idx = address<void>(col_idx);
  w.values = address<void>(values);
  w.index_type = sparsekern::bindings::parse_index_type(index_type, cols, cpu::IndexType::u16,
                                                         cpu::IndexType::i32);
  w.value_type = parse_value_type(value_type);
  if (!row_ptr) fail("row_ptr is null");
  if (w.row_ptr[0] != 0 || w.row_ptr[rows] != nnz)
    fail("row_ptr must run from 0 to nnz = ", nnz, ", got ", w.row_ptr[0], " .. ", w.row_ptr[rows]);
  if (nnz > 0 && (!col_idx || !values)) fail("col_idx or values is null with nnz = ", nnz);

  py::gil_scoped_release no_gil;
  cpu::csr_spmm_f32(isa, w, a);
}

void nm24_linear_cpu(const std::string& isa_name_arg, int64_t rows, int64_t cols, uintptr_t values,
                     const std::string& value_type, uintptr_t meta, uintptr_t x, int64_t batch,
                     int64_t x_row_stride, uintptr_t bias, uintptr_t y, uintptr_t workspace,
                     int64_t workspace_floats, int num_threads) {
  const cpu::Isa isa = runnable_isa(isa_name_arg);
  const cpu::DenseArgs a = dense_args(rows, cols, x, batch, x_row_stride, bias, y, workspace, workspace_floats,
                                      cpu::nm24_linear_workspace_floats(isa, batch, num_threads), num_threads);
  if (cols % 4 != 0) fail("2:4 needs cols % 4 == 0, got cols = ", cols);
  cpu::Nm24Matrix w;
  w.rows = rows;
  w.cols = cols;
  w.values = address<void>(values);
  w.meta = address<uint8_t>(meta);
  w.value_type = parse_value_type(value_type);
  if (rows > 0 && cols > 0 && (!values || !meta)) fail("values or meta is null");

  py::gil_scoped_release no_gil;
  cpu::nm24_linear_f32(isa, w, a);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "sparsekern compiled kernels (internal: use sparsekern.ops / SparseLinear)";
  m.def("cpu_supports", [](const std::string& isa) { return cpu::cpu_supports(parse_isa(isa)); },
        "Whether this CPU can run the named ISA variant (scalar, avx2, avx512).");
  m.def("best_cpu_isa", [] { return std::string(isa_name(cpu::best_cpu_isa())); },
        "The fastest ISA variant this CPU supports.");
  m.def("csr_spmm_workspace_floats",
        [](const std::string& isa, int64_t batch, int64_t cols) {
          return cpu::csr_spmm_workspace_floats(parse_isa(isa), batch, cols);
        },
        "Floats of 64-byte-aligned workspace csr_spmm_cpu needs.");
  m.def("csr_spmm_cpu", &csr_spmm_cpu,
        "y[batch, rows] = x[batch, cols] @ W.T + bias for CSR W, by raw addresses.",
        py::arg("isa"), py::arg("rows"), py::arg("cols"), py::arg("nnz"), py::arg("row_ptr"),
        py::arg("col_idx"), py::arg("index_type"), py::arg("values"), py::arg("value_type"),
        py::arg("x"), py::arg("batch"), py::arg("x_row_stride"), py::arg("bias"), py::arg("y"),
        py::arg("workspace"), py::arg("workspace_floats"), py::arg("num_threads"));
  m.def("nm24_linear_workspace_floats",
        [](const std::string& isa, int64_t batch, int num_threads) {
          return cpu::nm24_linear_workspace_floats(parse_isa(isa), batch, num_threads);
        },
        "Floats of 64-byte-aligned workspace nm24_linear_cpu needs.");
  m.def("nm24_linear_cpu", &nm24_linear_cpu,
        "y[batch, rows] = x[batch, cols] @ W.T + bias for 2:4 W (values, meta), by raw addresses.",
        py::arg("isa"), py::arg("rows"), py::arg("cols"), py::arg("values"), py::arg("value_type"),
        py::arg("meta"), py::arg("x"), py::arg("batch"), py::arg("x_row_stride"), py::arg("bias"),
        py::arg("y"), py::arg("workspace"), py::arg("workspace_floats"), py::arg("num_threads"));
#ifdef SPARSEKERN_WITH_CUDA
  m.attr("with_cuda") = true;
  register_cuda(m);
#else
  m.attr("with_cuda") = false;
#endif
}
