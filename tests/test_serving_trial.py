"""Serving a sparsified model for a long time: memory stays bounded over many calls of varying
batch sizes and dtypes, and over the things an operator does at run time (reloading weights,
casting, refreshing, copying, packing fresh models, turning derived layouts off); results do
not depend on torch's thread count, inference_mode or calls from a thread pool. Each defect a
new-user trial found has its test here."""
import concurrent.futures
import copy
import ctypes
import gc
import random
import threading

import pytest
import torch
from torch import nn

import sparsekern as sk
from sparsekern import ops
from sparsekern.formats import PACKED_FORMATS

FORMATS = sorted(PACKED_FORMATS)
MB = 2 ** 20


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    pytest.skip("no VmRSS in /proc/self/status")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _mallinfo2():
    try:
        function = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):  # not glibc, or glibc before 2.33
        return None
    function.restype = _MallInfo2
    return function


_MALLINFO2 = _mallinfo2()


def heap_bytes() -> int:
    """Bytes malloc has handed out and not had back (glibc), after a garbage collection: unlike
    RSS, it drops when memory is freed, whatever malloc keeps for reuse."""
    if _MALLINFO2 is None:
        pytest.skip("needs glibc's mallinfo2")
    gc.collect()
    info = _MALLINFO2()
    return info.uordblks + info.hblkhd


def mlp(format, value_dtype=None, width=256, hidden=512, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, width))
    if format == "2:4":
        sk.prune.nm(model, n=2, m=4)
    else:
        sk.prune.magnitude(model, sparsity=0.5)
    return sk.sparsify(model, format=format, value_dtype=value_dtype)


def layers_of(model):
    return [m for m in model.modules() if isinstance(m, sk.SparseLinear)]


def derived_bytes(model):
    return sum(layer.derived_bytes for layer in layers_of(model))


def half_kept_layer(format, width=2048, out=128, seed=0):
    """A layer whose batched calls build a derived layout on non-scalar ISAs: CSR's column
    chunks (half kept, 2048 columns outgrow L1); for 2:4 with bf16 values its lanes."""
    torch.manual_seed(seed)
    linear = nn.Linear(width, out)
    if format == "2:4":
        sk.prune.nm(linear, n=2, m=4)
        return sk.SparseLinear.from_dense(linear, format=format, value_dtype=torch.bfloat16)
    with torch.no_grad():
        linear.weight[torch.rand(out, width) < 0.5] = 0
    return sk.SparseLinear.from_dense(linear, format=format)


# ---- memory over many calls --------------------------------------------------------------

@pytest.mark.parametrize("format", FORMATS)
def test_memory_stays_bounded_over_many_calls_of_any_batch_size(format):
    """Thousands of calls with batch sizes drawn from 1..300, fp32 and bf16 values and
    activations: no growth per call or per distinct batch size (RSS, derived layouts)."""
    rng = random.Random(0)
    for value_dtype in (torch.float32, torch.bfloat16):
        model = mlp(format, value_dtype, width=128, hidden=256)
        for act_dtype in (torch.float32, torch.bfloat16):
            xs = [torch.randn(b, 128, dtype=act_dtype) for b in range(1, 301)]
            with torch.no_grad():
                for x in xs:  # warm-up: every batch size once
                    model(x)
                gc.collect()
                rss, built = rss_bytes(), derived_bytes(model)
                for _ in range(600):
                    model(rng.choice(xs))
                gc.collect()
            assert derived_bytes(model) == built
            assert rss_bytes() - rss < 8 * MB, (value_dtype, act_dtype)


# ---- memory over the operator's run-time changes -----------------------------------------

@pytest.mark.parametrize("format", FORMATS)
def test_reloading_casting_refreshing_copying_give_memory_back(format):
    """load_state_dict, .to(dtype), refresh, deepcopy + del and packing fresh models, each a
    few hundred times between calls: the kernels and layouts they replace are freed."""
    model = nn.Sequential(half_kept_layer(format), nn.ReLU(), half_kept_layer(format, width=128, out=2048))
    x = torch.randn(32, 2048, dtype=torch.bfloat16)
    state = copy.deepcopy(model.state_dict())

    def reload():
        model.load_state_dict(state)

    def cast():
        model.float()
        with torch.no_grad():
            model(x)
        model.bfloat16()

    def autocast():
        model.float()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            model(x.float())
        model.bfloat16()

    def deepcopy():
        twin = copy.deepcopy(model)
        with torch.no_grad():
            twin(x)
        twin(x)  # the op path's kernel too
        del twin

    def fresh():
        packed = mlp(format, width=64, hidden=128)
        with torch.no_grad():
            packed(torch.randn(16, 64))
        del packed

    model.bfloat16()
    for step, times in ((reload, 150), (cast, 60), (autocast, 60), (lambda: sk.refresh(model), 150),
                        (deepcopy, 60), (fresh, 40)):
        def once():
            step()
            with torch.no_grad():
                model(x)

        for _ in range(5):
            once()
        heap, rss = heap_bytes(), rss_bytes()
        for _ in range(times):
            once()
        assert heap_bytes() - heap < 2 * MB, step
        assert rss_bytes() - rss < 16 * MB, step


def test_a_cast_drops_the_autocast_copy_it_made_useless():
    # A float32 layer called under bf16 autocast keeps a bf16 copy of its values (and that
    # kernel's layouts); after model.bfloat16() no call reads it again, and it stayed in memory
    # (and in derived_bytes) for good.
    layer = half_kept_layer("csr")
    x = torch.randn(32, 2048)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        layer(x)
    assert layer.derived_bytes > 2 * layer.nnz  # at least the bf16 copy
    layer.bfloat16()
    with torch.no_grad():
        layer(x.bfloat16())
    after_cast = layer.derived_bytes
    sk.refresh(layer)
    with torch.no_grad():
        layer(x.bfloat16())
    assert after_cast == layer.derived_bytes  # what a layer built as bf16 holds
    assert layer._autocast_handle is None


def test_a_reload_drops_the_stale_autocast_kernel_and_the_buffers_it_held():
    # The autocast kernel holds the tensors it read; after a reload with another nnz a plain
    # call's rebuild must let them go, not keep the old weights alive beside the new ones.
    layer = half_kept_layer("csr", out=512)
    other = half_kept_layer("csr", out=512, seed=1)
    x = torch.randn(16, 2048)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        layer(x)
    heap = heap_bytes()
    layer.load_state_dict(other.state_dict())
    with torch.no_grad():
        layer(x)
    held = layer.derived_bytes
    sk.refresh(layer)
    with torch.no_grad():
        layer(x)
    assert layer.derived_bytes == held
    assert layer._autocast_handle is None
    del other
    assert heap_bytes() - heap < 1 * MB


@pytest.mark.parametrize("format", ["csr", "2:4"])
def test_derived_bytes_counts_the_op_paths_kernel_and_turning_layouts_off_frees_it(format):
    # A call with gradients enabled (a warm-up without no_grad, a training step) goes through
    # torch's dispatcher, whose kernel builds its own layouts; the server then calls under
    # no_grad. Those layouts were missing from derived_bytes and summary, and
    # set_derived_layouts(False) never dropped them, since the op path was not called again.
    if sk.cpu_isa() == "scalar":
        pytest.skip("the scalar kernels build no derived layouts")
    layer = half_kept_layer(format)
    model = nn.Sequential(layer)
    x = torch.randn(32, 2048, dtype=layer.values.dtype)
    heap = heap_bytes()
    model(x)  # op path
    with torch.no_grad():
        model(x)  # the layer's own kernel
    op_bytes = int(ops._op_kernels[layer.values][1].derived_bytes())
    assert op_bytes > 0
    assert layer.derived_bytes > op_bytes
    assert sk.summary(model).derived_bytes == layer.derived_bytes
    held = heap_bytes() - heap
    assert held > 0.8 * layer.derived_bytes
    previous = sk.set_derived_layouts(False)
    try:
        with torch.no_grad():
            model(x)
        assert layer.derived_bytes == 0
        assert heap_bytes() - heap < 0.2 * held
    finally:
        sk.set_derived_layouts(previous)


def test_turning_layouts_off_mid_run_gives_the_memory_back():
    model = nn.Sequential(half_kept_layer("csr"), nn.ReLU(), half_kept_layer("csr", width=128, out=2048))
    x = torch.randn(64, 2048)
    heap = heap_bytes()
    with torch.no_grad():
        model(x)
    built = derived_bytes(model)
    assert built > 0 or sk.cpu_isa() == "scalar"
    assert f"{built:,} bytes" in str(sk.summary(model)) or built == 0
    previous = sk.set_derived_layouts(False)
    try:
        with torch.no_grad():
            y = model(x)
        assert derived_bytes(model) == 0
        assert "in memory besides" not in str(sk.summary(model))
        assert heap_bytes() - heap < 1 * MB
    finally:
        sk.set_derived_layouts(previous)
    with torch.no_grad():
        torch.testing.assert_close(model(x), y, rtol=1e-4, atol=1e-4)
    assert derived_bytes(model) == built


# ---- threads ------------------------------------------------------------------------------

@pytest.mark.parametrize("format", FORMATS)
def test_thread_count_inference_mode_and_a_thread_pool_give_the_single_threaded_results(format):
    threads = torch.get_num_threads()
    batches = [1, 2, 3, 5, 17, 64, 130, 300]
    try:
        for value_dtype, act_dtype in ((None, torch.float32), (torch.bfloat16, torch.bfloat16),
                                       (torch.bfloat16, torch.float32)):
            model = mlp(format, value_dtype, width=256, hidden=320)
            xs = {b: torch.randn(b, 256, dtype=act_dtype) for b in batches}
            torch.set_num_threads(1)
            with torch.no_grad():
                expected = {b: model(xs[b]) for b in batches}
            for count in (2, 1, 2):
                torch.set_num_threads(count)
                for b in batches:
                    with torch.no_grad():
                        assert torch.equal(model(xs[b]), expected[b]), (count, b)
                    with torch.inference_mode():
                        assert torch.equal(model(xs[b]), expected[b]), (count, b)
                    assert torch.equal(model(xs[b]).detach(), expected[b]), (count, b)

            def call(b):
                with torch.no_grad():
                    return b, model(xs[b])

            order = [random.Random(i).choice(batches) for i in range(120)]
            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                for b, y in pool.map(call, order):
                    assert torch.equal(y, expected[b]), b
    finally:
        torch.set_num_threads(threads)


def test_summary_and_layout_switches_while_a_pool_serves():
    """An operator reading sk.summary and flipping set_derived_layouts while threads serve:
    every result stays right, nothing raises."""
    model = nn.Sequential(half_kept_layer("csr", out=256), nn.ReLU(), half_kept_layer("csr", width=256, out=64))
    batches = [1, 8, 64]
    xs = {b: torch.randn(b, 2048) for b in batches}
    with torch.no_grad():
        expected = {b: model(xs[b]) for b in batches}
    stop = threading.Event()
    errors = []

    def operator():
        flag = False
        try:
            while not stop.wait(0.002):
                sk.set_derived_layouts(flag)
                flag = not flag
                str(sk.summary(model))
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    def call(b):
        with torch.no_grad():
            return b, model(xs[b])

    previous = sk.set_derived_layouts(True)
    watcher = threading.Thread(target=operator)
    watcher.start()
    try:
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            for b, y in pool.map(call, [random.Random(i).choice(batches) for i in range(300)]):
                torch.testing.assert_close(y, expected[b], rtol=1e-4, atol=1e-4)
    finally:
        stop.set()
        watcher.join()
        sk.set_derived_layouts(previous)
    assert not errors
