// sparsekern._C: checks arguments, releases the GIL, calls the kernels.
//
// Tensors arrive as raw addresses plus sizes (sparsekern/ops.py passes data_ptr()): turning
// a torch tensor into DLPack or a numpy array costs 2-4 us each here, against 0.1 us for
// data_ptr, and batch-1 layers take a few microseconds. ops.py checks dtypes, devices,
// shapes and contiguity; this module checks that the sizes agree with each other and that
// the CSR ends where it says, so that a wrong call raises instead of reading out of bounds.
//
// Each packed format is a kernel object (CsrLinear, Nm24Linear, BitmapLinear): built once per layer from its
// buffers (checked then), then run(...) per call with the activations. Dtypes and ISAs are
// small integers (their orders are those of cpu_isas() and the enums of linear_args.h), so
// a call parses no strings. The workspace is this module's, per calling thread.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "../kernels/cpu/bitmap_linear.h"
#include "../kernels/cpu/cpu_features.h"
#include "../kernels/cpu/csr_chunks.h"
#include "../kernels/cpu/csr_spmm.h"
#include "../kernels/cpu/nm24_lanes.h"
#include "../kernels/cpu/nm24_linear.h"
#include "../kernels/cpu/tile_params.h"
#include "checks.h"

namespace py = pybind11;
namespace cpu = sparsekern::cpu;
using sparsekern::bindings::address;
using sparsekern::bindings::fail;

#ifdef SPARSEKERN_WITH_CUDA
void register_cuda(py::module_& m);  // cuda_bindings.cpp
#endif

namespace {

cpu::Isa isa_by_name(const std::string& name) {
  cpu::Isa isa;
  if (!cpu::parse_isa(name, &isa)) {
    std::string names;
    for (cpu::Isa known : cpu::kAllIsas) names += std::string(names.empty() ? "" : ", ") + cpu::isa_name(known);
    fail("unknown CPU ISA '", name, "', expected one of: ", names);
  }
  return isa;
}

cpu::Isa runnable_isa(int index) {
  if (index < 0 || index >= cpu::kIsaCount) fail("ISA index ", index, " is out of range [0, ", cpu::kIsaCount, ")");
  const cpu::Isa isa = cpu::kAllIsas[index];
  if (!cpu::cpu_supports(isa)) fail("this CPU cannot run the ", cpu::isa_name(isa), " kernels");
  return isa;
}

template <typename Enum>
Enum enum_arg(const char* what, int value, int count) {
  if (value < 0 || value >= count) fail(what, " = ", value, ", expected 0 .. ", count - 1);
  return Enum(value);
}

// A 64-byte-aligned scratch buffer per calling thread, grown on demand and kept: the batched
// kernels need up to batch x in_features floats, and allocating that per call costs more
// than a small layer's product.
float* thread_workspace(int64_t floats) {
  struct Buffer {
    std::unique_ptr<float, decltype(&std::free)> data{nullptr, &std::free};
    int64_t floats = 0;
  };
  thread_local Buffer buffer;
  if (floats > buffer.floats) {
    const int64_t rounded = (floats + 4095) / 4096 * 4096;
    buffer.data.reset(static_cast<float*>(std::aligned_alloc(64, size_t(rounded) * sizeof(float))));
    if (!buffer.data) throw std::bad_alloc();
    buffer.floats = rounded;
  }
  return buffer.data.get();
}

// The activations, bias and output of one call, checked against each other.
cpu::DenseArgs dense_args(int64_t rows, int64_t cols, uintptr_t x, int act_type, int64_t batch,
                          int64_t x_row_stride, uintptr_t bias, uintptr_t y, int num_threads) {
  if (batch < 0) fail("negative size: batch = ", batch);
  if (num_threads < 1) fail("num_threads = ", num_threads, ", expected >= 1");
  if (batch > 1 && x_row_stride < cols) fail("x row stride = ", x_row_stride, " is less than cols = ", cols);
  if (batch > 0 && rows > 0 && !y) fail("y is null");
  if (batch > 0 && cols > 0 && !x) fail("x is null");
  cpu::DenseArgs a;
  a.x = address<void>(x);
  a.act_type = enum_arg<cpu::ActType>("activation type", act_type, 2);
  a.batch = batch;
  a.x_row_stride = x_row_stride;
  a.bias = bias ? address<float>(bias) : nullptr;
  a.y = reinterpret_cast<void*>(y);
  a.num_threads = num_threads;
  return a;
}

// A row-start array ([rows + 1] int64: CSR's row_ptr, bitmap's offsets) must begin at 0 and end
// at the number of stored values: the kernels read values up to its last entry.
void check_row_starts(const char* name, const int64_t* starts, int64_t rows, int64_t nnz) {
  if (!starts) fail(name, " is null");
  if (starts[0] != 0 || starts[rows] != nnz)
    fail(name, " must run from 0 to nnz = ", nnz, ", got ", starts[0], " .. ", starts[rows]);
}

void check_shape(int64_t rows, int64_t cols) {
  if (rows < 0 || cols < 0) fail("negative size: rows = ", rows, ", cols = ", cols);
}

// Output elements from which run() releases the GIL.
constexpr int64_t kReleaseGilFrom = 4096;

// The layout a family's kernels may read beside its canonical buffers, for the families that
// have one: its type, whether a call wants it, how it is built and how a matrix points at it.
template <typename Family>
struct DerivedLayout;  // none

template <>
struct DerivedLayout<cpu::Nm24Family> {  // 2:4's rows-in-lanes copy, nm24_lanes.h
  using Layout = cpu::Nm24Lanes;
  static bool wanted(cpu::Isa isa, const cpu::Nm24Matrix& w, cpu::ActType act, int64_t batch) {
    return cpu::Nm24Family::wants_lanes(isa, w, act, batch);
  }
  static Layout build(const cpu::Nm24Matrix& w) { return cpu::build_nm24_lanes(w); }
  static void attach(cpu::Nm24Matrix& w, const Layout& l) { w.lanes = &l; }
  static int64_t bytes(const Layout& l) { return int64_t(l.pairs.size() * 4 + l.nibbles.size()); }
};

template <>
struct DerivedLayout<cpu::CsrFamily> {  // CSR's column-chunked copy, csr_chunks.h
  using Layout = cpu::CsrChunks;
  static bool wanted(cpu::Isa isa, const cpu::CsrMatrix& w, cpu::ActType act, int64_t batch) {
    return cpu::CsrFamily::wants_chunks(isa, w, act, batch);
  }
  static Layout build(const cpu::CsrMatrix& w) { return cpu::build_csr_chunks(w); }
  static void attach(cpu::CsrMatrix& w, const Layout& l) { w.chunks = &l; }
  static int64_t bytes(const Layout& l) {
    return int64_t(l.starts.size() * sizeof(int64_t) + l.columns.size() + l.value_words.size() * 4);
  }
};

// A kernel object's derived layout, built on the first call that wants it and shared by the
// object's copies. Only objects that live across calls build one (keep_layouts(): a layer's
// cached kernel and the op path's, which their owners replace whenever a buffer is replaced
// or changed in place: SparseLinear._handle_key, ops._op_kernel); an object made for one call
// would pay the copy on every call.
template <typename Family, typename = void>
struct DerivedLayouts {
  void keep() {}
  void attach(cpu::Isa, typename Family::Matrix&, cpu::ActType, int64_t) const {}
  int64_t bytes() const { return 0; }
};

template <typename Family>
struct DerivedLayouts<Family, std::void_t<typename DerivedLayout<Family>::Layout>> {
  using Derived = DerivedLayout<Family>;
  struct Lazy {
    std::once_flag once;
    typename Derived::Layout layout;
    std::atomic<bool> built{false};
  };
  std::shared_ptr<Lazy> lazy;
  void keep() {
    if (!lazy) lazy = std::make_shared<Lazy>();
  }
  void attach(cpu::Isa isa, typename Family::Matrix& w, cpu::ActType act, int64_t batch) const {
    if (!lazy || !Derived::wanted(isa, w, act, batch)) return;
    std::call_once(lazy->once, [&] {
      lazy->layout = Derived::build(w);
      lazy->built = true;
    });
    Derived::attach(w, lazy->layout);
  }
  // Memory the layout holds once built (0 before).
  int64_t bytes() const { return lazy && lazy->built ? Derived::bytes(lazy->layout) : 0; }
};

// One packed weight and its family's kernels.
template <typename Family>
struct LinearKernel {
  typename Family::Matrix w;
  // This CPU's tiles unless the planner's tuner picked others for this layer (planner.py).
  cpu::TileParams tiles = cpu::tile_params();
  DerivedLayouts<Family> derived;

  // y[batch, rows] = x[batch, cols] @ W.T + bias with the ISA of index `isa`.
  void run(int isa_index, uintptr_t x, int act_type, int64_t batch, int64_t x_row_stride, uintptr_t bias,
           uintptr_t y, int num_threads) const {
    const cpu::Isa isa = runnable_isa(isa_index);
    cpu::DenseArgs a = dense_args(w.rows, w.cols, x, act_type, batch, x_row_stride, bias, y, num_threads);
    if (batch == 0 || w.rows == 0) return;
    a.tiles = tiles;
    typename Family::Matrix m = w;
    derived.attach(isa, m, a.act_type, batch);
    a.workspace = thread_workspace(cpu::workspace_floats(isa, m, batch, a.act_type, num_threads));
    // Other Python threads may run meanwhile, unless the product is too small to repay
    // giving up and taking back the GIL.
    std::optional<py::gil_scoped_release> no_gil;
    if (w.rows * batch >= kReleaseGilFrom) no_gil.emplace();
    cpu::linear(isa, m, a);
  }
};

using CsrLinear = LinearKernel<cpu::CsrFamily>;
using Nm24Linear = LinearKernel<cpu::Nm24Family>;
using BitmapLinear = LinearKernel<cpu::BitmapFamily>;

CsrLinear make_csr(int64_t rows, int64_t cols, int64_t nnz, uintptr_t row_ptr, uintptr_t col_idx, int index_type,
                   uintptr_t values, int value_type) {
  check_shape(rows, cols);
  if (nnz < 0) fail("negative size: nnz = ", nnz);
  CsrLinear k;
  k.w.rows = rows;
  k.w.cols = cols;
  k.w.row_ptr = address<int64_t>(row_ptr);
  k.w.col_idx = address<void>(col_idx);
  k.w.values = address<void>(values);
  k.w.index_type = enum_arg<cpu::IndexType>("index type", index_type, 2);
  k.w.value_type = enum_arg<cpu::ValueType>("value type", value_type, 2);
  if (k.w.index_type == cpu::IndexType::u16 && cols > 65536)
    fail("uint16 column indices need cols <= 65536, got cols = ", cols);
  check_row_starts("row_ptr", k.w.row_ptr, rows, nnz);
  if (nnz > 0 && (!col_idx || !values)) fail("col_idx or values is null with nnz = ", nnz);
  return k;
}

Nm24Linear make_nm24(int64_t rows, int64_t cols, uintptr_t values, int value_type, uintptr_t meta) {
  check_shape(rows, cols);
  if (cols % 4 != 0) fail("2:4 needs cols % 4 == 0, got cols = ", cols);
  Nm24Linear k;
  k.w.rows = rows;
  k.w.cols = cols;
  k.w.values = address<void>(values);
  k.w.value_type = enum_arg<cpu::ValueType>("value type", value_type, 2);
  k.w.meta = address<uint8_t>(meta);
  if (rows > 0 && cols > 0 && (!values || !meta)) fail("values or meta is null");
  return k;
}

// nnz is the values' length and words_len the bits' length as the caller allocated them: the
// offsets must fit them, since the kernels read values up to offsets[rows] and expand loads
// trust it. That the offsets match the popcounts is sparsekern.formats.bitmap.validate's check.
BitmapLinear make_bitmap(int64_t rows, int64_t cols, int64_t nnz, uintptr_t bits, int64_t words_len,
                         uintptr_t offsets, uintptr_t values, int value_type) {
  check_shape(rows, cols);
  if (nnz < 0) fail("negative size: nnz = ", nnz);
  // The batched path keeps offsets col * 64 into its tiles as int32.
  if (cols > (int64_t(1) << 25)) fail("bitmap kernels take cols <= 2^25, got cols = ", cols);
  if (words_len != rows * cpu::bitmap_words(cols))
    fail("bits has ", words_len, " words, expected rows * ceil(cols / 32) = ", rows * cpu::bitmap_words(cols));
  BitmapLinear k;
  k.w.rows = rows;
  k.w.cols = cols;
  k.w.bits = address<uint32_t>(bits);
  k.w.offsets = address<int64_t>(offsets);
  k.w.values = address<void>(values);
  k.w.value_type = enum_arg<cpu::ValueType>("value type", value_type, 2);
  check_row_starts("offsets", k.w.offsets, rows, nnz);
  if (words_len > 0 && !bits) fail("bits is null");
  if (nnz > 0 && !values) fail("values is null with nnz = ", nnz);
  return k;
}

template <typename Kernel>
void bind_kernel(py::module_& m, const char* name, const char* doc) {
  py::class_<Kernel>(m, name, doc)
      .def("run", &Kernel::run, "y = x @ W.T + bias, by raw addresses (x and y of the activation type).",
           py::arg("isa"), py::arg("x"), py::arg("act_type"), py::arg("batch"), py::arg("x_row_stride"),
           py::arg("bias"), py::arg("y"), py::arg("num_threads"))
      .def_readwrite("tiles", &Kernel::tiles, "The cache tiles this weight's calls use (TileParams).")
      .def("keep_layouts", [](Kernel& k) { k.derived.keep(); },
           "Let this object build and keep layouts derived from its buffers for the calls that gain from them "
           "(for objects that live across calls; the buffers must not change in place meanwhile).")
      .def("derived_bytes", [](const Kernel& k) { return k.derived.bytes(); },
           "Bytes of memory the layouts derived so far hold, beside the buffers (0 when none is built).");
}

py::dict cache_dict(const cpu::CacheSizes& c) {
  py::dict d;
  d["L1d"] = c.l1d;
  d["L2"] = c.l2;
  d["L3"] = c.l3;
  return d;
}

void bind_tiles(py::module_& m) {
  py::class_<cpu::TileParams>(m, "TileParams", "Cache tile sizes of the CPU kernels (tile_params.h).")
      .def(py::init<>())
      .def_readwrite("nm24_block_rows", &cpu::TileParams::nm24_block_rows)
      .def_readwrite("nm24_block_cols", &cpu::TileParams::nm24_block_cols)
      .def_readwrite("pack_col_block", &cpu::TileParams::pack_col_block)
      .def_readwrite("bitmap_decode_cols", &cpu::TileParams::bitmap_decode_cols)
      .def_readwrite("nm24_register_batch_max", &cpu::TileParams::nm24_register_batch_max)
      .def_readwrite("bitmap_chunk_bytes", &cpu::TileParams::bitmap_chunk_bytes)
      .def("as_dict", [](const cpu::TileParams& t) {
        py::dict d;
        d["nm24_block_rows"] = t.nm24_block_rows;
        d["nm24_block_cols"] = t.nm24_block_cols;
        d["pack_col_block"] = t.pack_col_block;
        d["bitmap_decode_cols"] = t.bitmap_decode_cols;
        d["nm24_register_batch_max"] = t.nm24_register_batch_max;
        d["bitmap_chunk_bytes"] = t.bitmap_chunk_bytes;
        return d;
      });
  m.def("cpu_caches", [] { return cache_dict(cpu::cpu_caches()); },
        "Bytes of this CPU's L1d, L2 (per core) and L3 (cpu0's share): /sys, else CPUID; 0 if unknown.");
  m.def("tile_params", [] { return cpu::tile_params(); }, "The tiles derived from this CPU's caches.");
  m.def("tile_params_for", [](int64_t l1d, int64_t l2, int64_t l3) { return cpu::tile_params_for({l1d, l2, l3}); },
        "The tiles a CPU with these cache sizes (bytes) gets.", py::arg("l1d"), py::arg("l2"), py::arg("l3") = 0);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "sparsekern compiled kernels (internal: use sparsekern.ops / SparseLinear)";
  m.def("cpu_isas", [] {
        std::vector<std::string> names;
        for (cpu::Isa isa : cpu::kAllIsas) names.emplace_back(cpu::isa_name(isa));
        return names;
      },
      "The CPU ISA variants in the order of the ISA table (an ISA's index is its position).");
  m.def("cpu_supports", [](const std::string& isa) { return cpu::cpu_supports(isa_by_name(isa)); },
        "Whether this CPU can run the named ISA variant.");
  m.def("cpu_has", [](const std::string& feature) { return cpu::cpu_has(feature); },
        "Whether this CPU has a named feature (avx512f, avx512_bf16, amx_tile, ...).");
  m.def("best_cpu_isa", [] { return std::string(cpu::isa_name(cpu::best_cpu_isa())); },
        "The fastest ISA variant this CPU supports.");
  bind_tiles(m);
  bind_kernel<CsrLinear>(m, "CsrLinear", "A CSR weight's kernels (sparsekern.formats.csr).");
  m.def("csr_linear", &make_csr, "Checks a CSR weight's buffers and returns its kernel object.",
        py::arg("rows"), py::arg("cols"), py::arg("nnz"), py::arg("row_ptr"), py::arg("col_idx"),
        py::arg("index_type"), py::arg("values"), py::arg("value_type"));
  bind_kernel<Nm24Linear>(m, "Nm24Linear", "A 2:4 weight's kernels (sparsekern.formats.nm).");
  m.def("nm24_linear", &make_nm24, "Checks a 2:4 weight's buffers and returns its kernel object.",
        py::arg("rows"), py::arg("cols"), py::arg("values"), py::arg("value_type"), py::arg("meta"));
  bind_kernel<BitmapLinear>(m, "BitmapLinear", "A bitmap weight's kernels (sparsekern.formats.bitmap).");
  m.def("bitmap_linear", &make_bitmap, "Checks a bitmap weight's buffers and returns its kernel object.",
        py::arg("rows"), py::arg("cols"), py::arg("nnz"), py::arg("bits"), py::arg("words_len"), py::arg("offsets"),
        py::arg("values"), py::arg("value_type"));
#ifdef SPARSEKERN_WITH_CUDA
  m.attr("with_cuda") = true;
  register_cuda(m);
#else
  m.attr("with_cuda") = false;
#endif
}
