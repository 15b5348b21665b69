"""sparsegpt against an independent float64 Optimal Brain Surgeon: one weight at a time, the
inverse Hessian of the weights not yet visited recomputed with torch.linalg.inv each time
(no Cholesky factor, no blocks of lazy updates)."""
import re

import pytest
import torch
from torch import nn

from sparsekern import prune
from sparsekern.prune.sparsegpt import prune_matrix


def hessian(x, damp=0.01):
    h = 2.0 / x.shape[0] * x.T.double() @ x.double()
    return h + damp * h.diagonal().mean() * torch.eye(h.shape[0], dtype=torch.float64)


def naive_obs(w, h, *, sparsity=None, n=None, m=None, block_size=None):
    """Columns left to right. F = the columns not yet visited. The inverse of H[F, F] gives
    the OBS error w_q^2 / [H_F^-1]_qq of dropping column q = F[0] and the update of the
    others, -w_q / [H_F^-1]_qq * H_F^-1[:, q]. Masks: unstructured, the lowest errors over
    each block of columns (scored when the block is reached); N:M, the m - n lowest of each
    group of m in a row (scored when the group is reached)."""
    w = w.double().clone()
    rows, cols = w.shape
    block_size = block_size or cols
    inverses = [torch.linalg.inv(h[q:, q:]) for q in range(cols)]  # H_F^-1 for F = q..cols-1
    d2 = torch.tensor([inverses[q][0, 0] for q in range(cols)], dtype=torch.float64)
    drop = torch.zeros(rows, cols, dtype=torch.bool)
    for q in range(cols):
        if sparsity is not None and q % block_size == 0:
            end = min(q + block_size, cols)
            score = (w[:, q:end].square() / d2[q:end]).flatten()
            lowest = torch.argsort(score)[:round(sparsity * score.numel())]
            block = drop[:, q:end].clone().view(-1)
            block[lowest] = True
            drop[:, q:end] = block.view(rows, end - q)
        if sparsity is None and q % m == 0:
            for r in range(rows):
                score = w[r, q:q + m].square() / d2[q:q + m]
                drop[r, q + torch.argsort(score)[:m - n]] = True
        for r in range(rows):
            if drop[r, q]:
                w[r, q:] -= w[r, q] / inverses[q][0, 0] * inverses[q][0, :]
                w[r, q] = 0.0
    return w, ~drop


def correlated_inputs(tokens, features, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(features, features, generator=g, dtype=torch.float64)
    return torch.randn(tokens, features, generator=g, dtype=torch.float64) @ mix


@pytest.mark.parametrize("kind", ["unstructured", "2:4", "unstructured-blocks", "1:4-blocks"])
def test_prune_matrix_matches_naive_obs(kind):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(4, 8, generator=g, dtype=torch.float64)
    h = hessian(correlated_inputs(32, 8))
    args = {"unstructured": dict(sparsity=0.5), "2:4": dict(n=2, m=4),
            "unstructured-blocks": dict(sparsity=0.25, block_size=4), "1:4-blocks": dict(n=1, m=4, block_size=4)}[kind]
    block_size = args.pop("block_size", 8)
    expected, expected_keep = naive_obs(w, h, block_size=block_size, **args)
    # prune_matrix adds the damping itself: give it the undamped H
    undamped = 2.0 / 32 * correlated_inputs(32, 8).T @ correlated_inputs(32, 8)
    got, keep = prune_matrix(w, undamped, block_size=block_size, damp=0.01, **args)
    assert torch.equal(keep, expected_keep)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


def mlp(features=8, hidden=16, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, 4))


def test_model_level_weights_are_the_reference_and_finalized():
    model = mlp()
    x = correlated_inputs(64, 8).float()
    first = model[0].weight.detach().double().clone()
    prune.sparsegpt(model, [x[:32], x[32:]], 0.5, block_size=8)
    # H of the first layer comes from x itself: compare with the naive OBS there
    expected, keep = naive_obs(first, hessian(x.double()), sparsity=0.5, block_size=8)
    torch.testing.assert_close(model[0].weight.detach().double(), expected, rtol=1e-4, atol=1e-5)
    assert not hasattr(model[0], "weight_mask") and not hasattr(model[1], "weight_orig")  # finalized
    assert isinstance(model[0].weight, nn.Parameter)


def test_sparsity_is_exact_and_nm_pattern_holds():
    model = mlp()
    x = correlated_inputs(64, 8).float()
    prune.sparsegpt(model, [x], 0.75, block_size=4)
    assert prune.layer_sparsity(model) == {"0": 0.75, "2": 0.75}
    model = mlp()
    prune.sparsegpt(model, [x], n=2, m=4)
    for layer in (model[0], model[2]):
        assert ((layer.weight != 0).reshape(-1, 4).sum(1) == 2).all()


@pytest.mark.parametrize("n, m, block_size, features", [(2, 4, 6, 32), (2, 4, 10, 32), (2, 4, 3, 64), (1, 3, 128, 384)])
def test_nm_pattern_holds_for_any_block_size(n, m, block_size, features):
    # A block that ends inside a group of m used to cut the group short (or crash): the block
    # is rounded down to a multiple of m, so the result is that block size's.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(features, 8))
    x = correlated_inputs(64, features).float()
    prune.sparsegpt(model, [x], n=n, m=m, block_size=block_size)
    assert ((model[0].weight != 0).reshape(8, -1, m).sum(-1) == n).all()
    torch.manual_seed(0)
    rounded = nn.Sequential(nn.Linear(features, 8))
    prune.sparsegpt(rounded, [x], n=n, m=m, block_size=max(m, block_size - block_size % m))
    assert torch.equal(model[0].weight, rounded[0].weight)


def test_existing_masks_stay_pruned():
    model = mlp()
    prune.magnitude(model, 0.5, scope="layer")
    before = [(layer.weight_mask == 0).clone() for layer in (model[0], model[2])]
    prune.sparsegpt(model, [correlated_inputs(64, 8).float()], n=2, m=4)
    for layer, zero in zip((model[0], model[2]), before):
        assert (layer.weight[zero] == 0).all()


def test_reconstruction_beats_magnitude():
    # Input features of different scales (as LLM activations, with their outlier features):
    # |w| alone misjudges which weights matter.
    g = torch.Generator().manual_seed(2)
    x = torch.randn(256, 32, generator=g) * torch.logspace(0, 1, 32)
    torch.manual_seed(3)
    layer = nn.Linear(32, 24)
    dense = layer(x).detach()
    errors = {}
    for method in ("magnitude", "sparsegpt"):
        copy = nn.Linear(32, 24)
        copy.load_state_dict(layer.state_dict())
        if method == "magnitude":
            prune.magnitude(copy, 0.5, scope="layer")
        else:
            prune.sparsegpt(copy, [x], 0.5)
        errors[method] = (copy(x).detach() - dense).norm().item()
    assert errors["sparsegpt"] < 0.7 * errors["magnitude"], errors


def test_singular_hessian_is_damped_more_with_a_warning():
    model = nn.Sequential(nn.Linear(2, 2))
    x = torch.tensor([[1.0, 1.0], [0.0, 0.0]])  # two identical inputs: H = [[1, 1], [1, 1]], singular
    with pytest.warns(UserWarning, match=re.escape("sparsegpt: layer '0': its Hessian is singular with "
                                                   "damp=1e-20; pruned with damp=0.1 instead")):
        prune.sparsegpt(model, [x], 0.5, damp=1e-20)
    assert torch.isfinite(model[0].weight).all() and int((model[0].weight == 0).sum()) == 2


def test_non_finite_inputs_are_a_clear_error():
    x = correlated_inputs(16, 8).float()
    x[3, 2] = float("nan")
    with pytest.raises(ValueError, match=re.escape("sparsegpt: layer '0': its calibration inputs give a Hessian "
                                                   "with NaN or Inf")):
        prune.sparsegpt(mlp(), [x], 0.5)


def test_dead_inputs_are_pruned_first():
    model = nn.Sequential(nn.Linear(8, 4))
    x = correlated_inputs(32, 8).float()
    x[:, :4] = 0  # inputs 0..3 never fire
    prune.sparsegpt(model, [x], 0.5, block_size=8)
    assert (model[0].weight[:, :4] == 0).all() and (model[0].weight[:, 4:] != 0).all()


def test_a_layer_no_input_reaches_falls_back_to_magnitude_with_a_warning():
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            return self.used(x)

    model = Unused()
    expected = model.unused.weight.detach().clone()
    expected[expected.abs() <= expected.abs().flatten().kthvalue(8).values] = 0
    with pytest.warns(UserWarning, match=re.escape("sparsegpt: no input reached ['unused']")):
        prune.sparsegpt(model, [torch.randn(8, 4)], 0.5)
    assert torch.equal(model.unused.weight.detach(), expected)


@pytest.mark.parametrize("kwargs, message", [
    (dict(), "give sparsity, or n and m"),
    (dict(sparsity=0.5, n=2, m=4), "give sparsity, or n and m"),
    (dict(n=2), "give sparsity, or n and m"),
    (dict(sparsity=1.5), "sparsity = 1.5, expected a number in [0, 1)"),
    (dict(n=3, m=2), "n = 3, m = 2: expected integers with 1 <= n <= m"),
    (dict(n=2, m=3), "0: in_features = 8 is not a multiple of m = 3"),
    (dict(sparsity=0.5, block_size=0), "block_size = 0, expected a positive integer"),
    (dict(sparsity=0.5, damp=-1), "damp = -1, expected a positive number"),
    (dict(sparsity=0.5, sequential="yes"), "sequential = 'yes': expected True, False or None"),
    (dict(sparsity=0.5, sequential=True), "sequential=True, but Sequential has no stack of blocks"),
    (dict(sparsity=0.5, blocks="nothing"), "blocks = 'nothing': Sequential has no such module"),
])
def test_bad_arguments_are_clear_errors(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=re.escape(message)):
        prune.sparsegpt(mlp(), [torch.randn(4, 8)], **kwargs)


def test_no_batches_is_a_clear_error():
    with pytest.raises(ValueError, match="batches is empty: sparsegpt needs at least one calibration batch"):
        prune.sparsegpt(mlp(), [], 0.5)


@pytest.mark.parametrize("method", ["sparsegpt", "wanda"])
def test_batches_without_rows_are_a_clear_error(method):
    # Every input unseen: sparsegpt took all of them for dead inputs and pruned every weight.
    model = mlp()
    before = model[0].weight.detach().clone()
    with pytest.raises(ValueError, match=re.escape("calibration batch 1 holds a tensor shaped (0, 8), with no elements")):
        getattr(prune, method)(model, [torch.randn(4, 8), torch.randn(0, 8)], 0.5)
    assert torch.equal(model[0].weight, before)
