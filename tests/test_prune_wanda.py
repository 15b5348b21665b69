"""Wanda against magnitude on a small transformer whose input features differ widely in scale."""
import copy

import pytest
import torch
from torch import nn

from sparsekern import prune


def transformer_and_data(seed):
    torch.manual_seed(seed)
    layer = nn.TransformerEncoderLayer(64, 4, 256, dropout=0.0, batch_first=True, norm_first=True).eval()
    # log-normal feature scales: a few features are ~20x typical, as in LLM activations
    scales = torch.exp(torch.randn(64) * 1.5)
    generator = torch.Generator().manual_seed(seed + 100)

    def data(n):
        return torch.randn(n, 16, 64, generator=generator) * scales

    return layer, [data(8) for _ in range(4)], data(32)


@pytest.mark.parametrize("seed", [0, 1])
def test_wanda_keeps_outputs_closer_to_dense_than_magnitude(seed):
    layer, calibration, held_out = transformer_and_data(seed)
    with torch.no_grad():
        reference = layer(held_out)

    def relative_error(model):
        with torch.no_grad():
            return ((model(held_out) - reference).norm() / reference.norm()).item()

    # MultiheadAttention calls out_proj functionally: no inputs, so |W| with a warning
    with pytest.warns(UserWarning, match="self_attn.out_proj"):
        wanda = prune.wanda(copy.deepcopy(layer), calibration, 0.5)
    magnitude = prune.magnitude(copy.deepcopy(layer), 0.5, scope="layer")
    assert prune.layer_sparsity(wanda) == prune.layer_sparsity(magnitude) == \
        {"self_attn.out_proj": 0.5, "linear1": 0.5, "linear2": 0.5}
    wanda_error, magnitude_error = relative_error(wanda), relative_error(magnitude)
    print(f"\nwanda 50%: relative output error {wanda_error:.4f} vs magnitude {magnitude_error:.4f}")
    assert wanda_error < 0.9 * magnitude_error

    wanda_24 = prune.wanda(copy.deepcopy(layer), calibration, n=2, m=4, exclude="self_attn.*")
    magnitude_24 = prune.nm(copy.deepcopy(layer), 2, 4, exclude="self_attn.*")
    assert relative_error(wanda_24) < relative_error(magnitude_24)
