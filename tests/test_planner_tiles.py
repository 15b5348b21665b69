"""Pack-time tile tuning (planner.choose_tiles) on fake timings: nothing here is timed. A
challenger is kept only when it wins every round by TUNE_MARGIN at every tuned batch size and
a recheck agrees; choices persist beside the format choices; SPARSEKERN_TUNE=0 turns it off."""
import json
import pickle

import pytest
import torch
from torch import nn

import sparsekern as sk
from sparsekern import planner
from sparsekern.summary import LayerRow

from conftest import reference_linear


@pytest.fixture
def tuning(monkeypatch, tmp_path):
    """Tuning on, with a fresh in-process and on-disk cache."""
    monkeypatch.setenv(planner.TUNE_ENV, "1")
    monkeypatch.setenv(planner.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(planner, "_tile_cache", {})
    monkeypatch.setattr(planner, "_tile_disk_loaded", False)
    monkeypatch.setattr(planner, "TUNE_BUDGET_S", 1e9)  # a busy machine must not skip tuning here
    return tmp_path


def fake_ratios(monkeypatch, measurements):
    """planner's paired_ratios returns the next list of per-round ratios (default time /
    candidate time); `calls` counts them. Candidates are timed in tile_candidates' order, each
    at every tuned batch size, then the best one once more per batch size (the recheck)."""
    calls = []
    it = iter(measurements)

    def paired_ratios(baseline, subject, rounds=9, round_seconds=0.003):
        baseline()
        subject()  # the calls must run
        calls.append(rounds)
        return list(next(it))
    monkeypatch.setattr(planner.timing, "paired_ratios", paired_ratios)
    return calls


def layer_2_4(seed=0, in_features=64, out_features=24):
    torch.manual_seed(seed)
    linear = nn.Linear(in_features, out_features)
    keep = torch.zeros(out_features, in_features // 4, 4, dtype=torch.bool)
    keep[..., 1:3] = True
    return linear, keep.reshape(out_features, in_features)


def names_2_4(batch=64):
    """The 2:4 candidates timed at `batch`, in order."""
    default = sk._backend._C.tile_params().as_dict()
    return [name for name, tiles in planner.tile_candidates("2:4", default).items()
            if planner._tiles_matter("2:4", default, tiles, batch)]


def test_the_register_path_is_timed_only_where_it_runs(tuning, monkeypatch):
    names = names_2_4()  # blocks: timed at batch 4 and 64; registers: at batch 4 only
    assert "2:4 registers to batch 8" not in names and "2:4 registers to batch 8" in names_2_4(4)
    calls = fake_ratios(monkeypatch, [[0.9] * 5] * (2 * len(names)) + [[1.3] * 5, [1.25] * 5])
    linear, mask = layer_2_4()
    layer = sk.SparseLinear.from_dense(linear, mask=mask, format="2:4", batch_sizes=(1, 4, 64))
    assert len(calls) == 2 * len(names) + 2
    assert layer.tile_choice["nm24_register_batch_max"] == 8
    assert "registers to batch 8" in layer.tuning_note and "at batch 4" in layer.tuning_note
    x = torch.randn(4, 64)
    with torch.no_grad():
        torch.testing.assert_close(layer(x).double(), reference_linear(x, linear.weight * mask, linear.bias),
                                   rtol=1e-5, atol=1e-5)


def test_a_clear_winner_is_kept_used_and_shown(tuning, monkeypatch):
    names = names_2_4()
    win = names.index("2:4 rows x2")
    fake_ratios(monkeypatch, [[1.2] * 5 if i == win else [0.9] * 5 for i in range(len(names))] + [[1.15] * 5])
    linear, mask = layer_2_4()
    layer = sk.SparseLinear.from_dense(linear, mask=mask, format="2:4", batch_sizes=(1, 64))
    default_rows = sk._backend._C.tile_params().nm24_block_rows
    assert layer.tile_choice["nm24_block_rows"] == 2 * default_rows
    assert "2:4 rows x2" in layer.tuning_note and "1.15x" in layer.tuning_note
    assert "2:4 rows x2" in str(sk.summary(nn.Sequential(layer)))
    x = torch.randn(64, 64)
    with torch.no_grad():
        y = layer(x)
    assert layer._handle.kernel.tiles.nm24_block_rows == 2 * default_rows
    torch.testing.assert_close(y.double(), reference_linear(x, linear.weight * mask, linear.bias), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("winner_rounds, recheck", [
    ([1.2, 1.2, 1.04, 1.2, 1.2], [1.2] * 5),  # one round under the margin
    ([1.2] * 5, [1.2, 1.01, 1.2, 1.2, 1.2]),  # the recheck disagrees
])
def test_no_clear_win_keeps_the_defaults(tuning, monkeypatch, winner_rounds, recheck):
    names = names_2_4()
    fake_ratios(monkeypatch, [winner_rounds] + [[0.95] * 5] * (len(names) - 1) + [recheck])
    linear, mask = layer_2_4()
    layer = sk.SparseLinear.from_dense(linear, mask=mask, format="2:4", batch_sizes=(64,))
    assert layer.tile_choice is None and layer.tuning_note.startswith("default tiles")
    with torch.no_grad():
        layer(torch.randn(8, 64))
    assert layer._handle.kernel.tiles.as_dict() == sk._backend._C.tile_params().as_dict()


def test_every_tuned_batch_size_must_win(tuning, monkeypatch):
    names = names_2_4()
    # batch 64 and 256 (two buckets): the first candidate wins at 64 only.
    fake_ratios(monkeypatch, [[1.3] * 5, [0.97] * 5] + [[0.9] * 5] * (2 * (len(names) - 1)))
    linear, mask = layer_2_4()
    layer = sk.SparseLinear.from_dense(linear, mask=mask, format="2:4", batch_sizes=(64, 256))
    assert layer.tile_choice is None


def test_choices_persist_on_disk_and_are_reused(tuning, monkeypatch):
    names = names_2_4()
    calls = fake_ratios(monkeypatch, [[1.3] * 5] + [[0.9] * 5] * (len(names) - 1) + [[1.3] * 5])
    linear, mask = layer_2_4()
    first = sk.SparseLinear.from_dense(linear, mask=mask, format="2:4", batch_sizes=(64,))
    timed = len(calls)
    stored = json.loads((tuning / "tile_choices.json").read_text())
    assert len(stored) == 1
    key = json.loads(next(iter(stored)))
    assert planner.cpu_model() in key and 24 in key and 64 in key
    # Another process: an empty in-process cache reads the file; nothing is timed again.
    monkeypatch.setattr(planner, "_tile_cache", {})
    monkeypatch.setattr(planner, "_tile_disk_loaded", False)
    second = sk.SparseLinear.from_dense(linear, mask=mask, format="2:4", batch_sizes=(64,))
    assert len(calls) == timed and second.tile_choice == first.tile_choice


def test_a_saved_tile_choice_that_is_no_candidate_is_measured_again(tuning, monkeypatch):
    # An entry edited or damaged by hand ({"bogus": 3}) failed on the layer's first call.
    names = names_2_4()
    fake_ratios(monkeypatch, ([[1.3] * 5] + [[0.9] * 5] * (len(names) - 1) + [[1.3] * 5]) * 2)
    linear, mask = layer_2_4()
    first = sk.SparseLinear.from_dense(linear, mask=mask, format="2:4", batch_sizes=(64,))
    path = tuning / "tile_choices.json"
    path.write_text(json.dumps({key: [{"bogus": 3}, "edited"] for key in json.loads(path.read_text())}))
    monkeypatch.setattr(planner, "_tile_cache", {})
    monkeypatch.setattr(planner, "_tile_disk_loaded", False)
    second = sk.SparseLinear.from_dense(linear, mask=mask, format="2:4", batch_sizes=(64,))
    assert second.tile_choice == first.tile_choice and second.tuning_note != "edited"
    with torch.no_grad():
        second(torch.randn(64, 64))


def test_off_switch_and_untiled_batches_time_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv(planner.CACHE_ENV, str(tmp_path))
    calls = fake_ratios(monkeypatch, [])
    linear, mask = layer_2_4()
    for env, batches in (("0", (1, 64)), ("1", (1, 2))):  # off; on, but no batch reads tiles
        monkeypatch.setenv(planner.TUNE_ENV, env)
        layer = sk.SparseLinear.from_dense(linear, mask=mask, format="2:4", batch_sizes=batches)
        assert layer.tile_choice is None and layer.tuning_note == ""
    assert calls == [] and not (tmp_path / "tile_choices.json").exists()


def test_layers_too_slow_for_the_budget_keep_the_defaults(tuning, monkeypatch):
    monkeypatch.setattr(planner, "TUNE_BUDGET_S", 0.0)
    calls = fake_ratios(monkeypatch, [])
    linear, mask = layer_2_4()
    layer = sk.SparseLinear.from_dense(linear, mask=mask, format="2:4", batch_sizes=(64,))
    assert layer.tile_choice is None and "not tuned" in layer.tuning_note and calls == []


def test_sparsify_tunes_bitmap_layers(tuning, monkeypatch):
    names = list(planner.tile_candidates("bitmap", sk._backend._C.tile_params().as_dict()))
    fake_ratios(monkeypatch, [[0.99] * 5] * len(names))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32))
    sk.prune.magnitude(model, sparsity=0.6, scope="layer")
    sk.sparsify(model, format="bitmap", batch_sizes=(64,))
    assert model[0].tile_choice is None and "default tiles" in model[0].tuning_note
    assert "default tiles" in str(sk.summary(model))


def test_layers_and_rows_from_before_tuning_still_load():
    linear, mask = layer_2_4()
    layer = sk.SparseLinear.from_dense(linear, mask=mask, format="2:4")
    del layer.tile_choice, layer.tuning_note  # as pickled before these existed
    old = pickle.loads(pickle.dumps(layer))
    x = torch.randn(5, 64)
    with torch.no_grad():
        torch.testing.assert_close(old(x).double(), reference_linear(x, linear.weight * mask, linear.bias),
                                   rtol=1e-5, atol=1e-5)
    assert "2:4" in str(sk.summary(nn.Sequential(old)))
    row = LayerRow("a", "csr", 2, 3, 0.5, 10, 24, "note")  # the 8 fields of an old row
    assert row.tuning == "" and pickle.loads(pickle.dumps(row)) == row


@pytest.mark.parametrize("isa, tuned", [("avx512bf16", False), ("avx512", True)])
def test_a_bf16_layer_is_tuned_in_bf16_where_its_calls_read_tiles(tuning, monkeypatch, planner_on, isa, tuned):
    """A bf16 model's layer is tuned with bf16 activations; where the ISA has native bf16
    kernels for its format (they read no tiles), nothing is timed."""
    planner_on(isa)
    calls = fake_ratios(monkeypatch, [[0.9] * 5] * 8)
    dtypes = []
    run_kernel = sk.ops.run_kernel

    def recording(format, kernel, x, *args):
        dtypes.append(x.dtype)
        return run_kernel(format, kernel, x, *args)
    monkeypatch.setattr(sk.ops, "run_kernel", recording)
    torch.manual_seed(0)
    linear = nn.Linear(256, 64).to(torch.bfloat16)
    mask = torch.rand(64, 256) < 0.5
    layer = sk.SparseLinear.from_dense(linear, mask=mask, format="bitmap", batch_sizes=(1, 64))
    assert layer.tile_choice is None
    if tuned:
        assert len(calls) == 2 and set(dtypes) == {torch.bfloat16}  # two candidates at batch 64
        assert layer.tuning_note.startswith("default tiles")
    else:
        assert calls == [] and dtypes == [] and layer.tuning_note == ""
