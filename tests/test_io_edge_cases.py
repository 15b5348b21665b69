"""sparsekern.save / load / inspect at the edges: tensors with no elements but large sizes, a
missing directory to save in, a device torch cannot use."""
import pytest
import torch
from torch import nn

import sparsekern as sk
from sparsekern.tools import cli


def with_empty_history():
    """A model whose buffer has no elements but a size far above the file's data bytes."""
    model = nn.Sequential(nn.Linear(64, 64))
    model.register_buffer("history", torch.zeros(0, 100_000))
    return model


def test_tensor_with_no_elements_but_large_sizes_round_trips(tmp_path):
    path = str(tmp_path / "m.safetensors")
    model = with_empty_history()
    sk.prune.magnitude(model, 0.5)
    sk.sparsify(model, format="csr")
    sk.save(model, path)
    loaded = sk.load(with_empty_history(), path)
    assert loaded.history.shape == (0, 100_000)
    assert torch.equal(loaded[0].dense_weight(), model[0].dense_weight())


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors is a no-op")
@pytest.mark.parametrize("fmt, stored", [("dense", {"0.weight": (0, 100_000)}),
                                         ("2:4", {"0.values": (0, 50_000), "0.meta": (0, 12_500)})])
def test_layer_with_no_outputs_round_trips_and_inspects(tmp_path, capsys, fmt, stored):
    def build():
        return nn.Sequential(nn.Linear(100_000, 0), nn.Linear(8, 8))
    path = str(tmp_path / "m.safetensors")
    model = build()
    model[0] = sk.SparseLinear.from_dense(model[0], format=fmt)
    sk.save(model, path)
    loaded = sk.load(build(), path)
    assert (loaded[0].format, loaded[0].out_features, loaded[0].in_features) == (fmt, 0, 100_000)
    assert {key: tuple(loaded.state_dict()[key].shape) for key in stored} == stored
    assert sk.inspect_file(path).header.layers["0"].in_features == 100_000
    assert cli.main(["inspect", path]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if "0 x 100000" in line)
    assert row.split()[-1] == "-"  # no dense bytes to compare with
    assert next(line for line in str(sk.summary(loaded)).splitlines() if "0 x 100000" in line).split()[-1] == "-"


def test_save_into_a_missing_directory_names_it_and_writes_nothing(tmp_path):
    model = with_empty_history()
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(FileNotFoundError, match="no directory .*missing") as error:
        sk.save(model, str(tmp_path / "missing" / "m.safetensors"))
    assert ".tmp" not in str(error.value)
    assert sorted(tmp_path.rglob("*")) == before


def unusable_devices():
    """Devices this torch cannot use, on any machine."""
    devices = ["gpu"]  # not a device type at all
    devices.append("cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}")
    if not (hasattr(torch, "xpu") and torch.xpu.is_available()):
        devices.append("xpu")
    return devices


@pytest.mark.parametrize("device", unusable_devices())
def test_load_onto_a_device_torch_cannot_use_is_a_value_error(tmp_path, device):
    path = str(tmp_path / "m.safetensors")
    saved = nn.Sequential(nn.Linear(16, 8))
    saved[0] = sk.SparseLinear.from_dense(saved[0], format="csr")
    sk.save(saved, path)
    model = nn.Sequential(nn.Linear(16, 8))
    state = {key: t.clone() for key, t in model.state_dict().items()}
    with pytest.raises(ValueError, match=f"cannot use device '{device}'"):
        sk.load(model, path, device=device)
    assert type(model[0]) is nn.Linear  # unchanged
    assert all(torch.equal(t, state[key]) for key, t in model.state_dict().items())
