"""Block-by-block calibration (wanda, sparsegpt): block i is calibrated on the outputs of
blocks 0..i-1 as already pruned, with the keyword arguments the model passed to its blocks."""
import copy
import re

import pytest
import torch
from torch import nn

from sparsekern import prune
from sparsekern.prune._calibrate import find_blocks
from sparsekern.prune.sparsegpt import prune_matrix


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x, scale=None):
        return x + torch.relu(self.fc(x)) * scale


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Linear(8, 8)
        self.blocks = nn.ModuleList([Block(), Block(), Block()])
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        h = self.embed(x)
        for block in self.blocks:
            h = block(h, scale=2.0)  # a keyword argument the blocks need
        return self.head(h)


def data():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(16, 8, generator=g) * torch.logspace(0, 1, 8) for _ in range(2)]


def inputs_of(model, module, batches):
    seen = []
    handle = module.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    with torch.no_grad():
        for batch in batches:
            model(batch)
    handle.remove()
    return torch.cat(seen).double()


def hessian(x):
    return 2.0 / x.shape[0] * x.T @ x


def test_finds_the_stack_and_refuses_bad_names():
    assert find_blocks(Toy())[0] == "blocks"
    assert find_blocks(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))) is None
    with pytest.raises(ValueError, match=re.escape("blocks = 'head' is a Linear of 0 children")):
        find_blocks(Toy(), "head")


def test_sparsegpt_calibrates_each_block_on_the_pruned_blocks_before_it():
    dense, model = Toy(), Toy()
    prune.sparsegpt(model, data(), 0.5, block_size=8)
    # block 2's inputs: the dense embedding, then blocks 0 and 1 as pruned
    expected_model = copy.deepcopy(dense)
    for i in (0, 1):
        expected_model.blocks[i].load_state_dict(model.blocks[i].state_dict())
    x = inputs_of(expected_model, expected_model.blocks[2].fc, data())
    expected, _ = prune_matrix(dense.blocks[2].fc.weight, hessian(x), sparsity=0.5, block_size=8)
    torch.testing.assert_close(model.blocks[2].fc.weight.detach().double(), expected, rtol=1e-4, atol=1e-5)
    # the head (outside the stack) is calibrated last, on the pruned stack
    expected_model.blocks[2].load_state_dict(model.blocks[2].state_dict())
    x = inputs_of(expected_model, expected_model.head, data())
    expected, _ = prune_matrix(dense.head.weight, hessian(x), sparsity=0.5, block_size=8)
    torch.testing.assert_close(model.head.weight.detach().double(), expected, rtol=1e-4, atol=1e-5)
    # sequential=False: every layer calibrated on the dense model, which differs here
    one_pass = prune.sparsegpt(Toy(), data(), 0.5, block_size=8, sequential=False)
    x = inputs_of(dense, dense.blocks[2].fc, data())
    expected, _ = prune_matrix(dense.blocks[2].fc.weight, hessian(x), sparsity=0.5, block_size=8)
    torch.testing.assert_close(one_pass.blocks[2].fc.weight.detach().double(), expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(one_pass.blocks[2].fc.weight, model.blocks[2].fc.weight)


def test_wanda_sequential_matches_scores_on_the_pruned_prefix_and_finalize_drops_the_masks():
    model = prune.wanda(Toy(), data(), 0.5, finalize=True)
    assert not any(hasattr(m, "weight_mask") for m in model.modules())
    expected_model = Toy()
    prune.wanda(expected_model, data(), 0.5, include="blocks.0.*", sequential=False)
    prune.wanda(expected_model, data(), 0.5, include="blocks.1.*", sequential=False)
    prune.wanda(expected_model, data(), 0.5, include="blocks.2.*", sequential=False)
    for i in range(3):
        assert torch.equal(model.blocks[i].fc.weight, expected_model.blocks[i].fc.weight)


def test_sequential_wanda_keeps_masks_by_default():
    model = prune.wanda(Toy(), data(), n=2, m=4)
    assert all(hasattr(m, "weight_mask") for m in (model.embed, model.blocks[1].fc, model.head))


def test_a_model_that_never_calls_its_stack_is_a_clear_error():
    class Skips(Toy):
        def forward(self, x):
            return self.head(self.embed(x))

    with pytest.raises(ValueError, match="the model returned without calling its first block"):
        prune.wanda(Skips(), data(), 0.5)
    prune.wanda(Skips(), data(), 0.5, sequential=False, exclude="blocks.*")
