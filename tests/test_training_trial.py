"""A new user's fine-tuning trial: common training infrastructure over SparseLinear layers
(clip_grad_norm_, EMA, lr schedulers, gradient accumulation, CPU bf16 autocast, AdamW weight
decay, activation checkpointing, DDP on gloo, a hand-written LoRA adapter, init functions)."""
import copy
import warnings

import pytest
import torch
from torch import nn
from torch.optim import swa_utils
from torch.utils.checkpoint import checkpoint

import sparsekern as sk
from sparsekern import SparseLinear

FORMATS = ["csr", "2:4", "bitmap", "dense"]


def _mask24(weight):
    groups = weight.abs().reshape(weight.shape[0], -1, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, groups.topk(2, -1).indices, True)
    return keep.reshape(weight.shape)


def _models(fmt, seed=0):
    """A 2:4-pruned MLP packed in `fmt`, its masks, and the masked dense reference (nn.Linear
    layers whose gradients are masked, as a masked dense fine-tune would do)."""
    torch.manual_seed(seed)
    mlp = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 16))
    masks = []
    with torch.no_grad():
        for layer in (mlp[0], mlp[2]):
            masks.append(_mask24(layer.weight))
            layer.weight.mul_(masks[-1])
    ref = copy.deepcopy(mlp)
    for layer, mask in zip((ref[0], ref[2]), masks):
        layer.weight.register_hook(lambda g, mask=mask: g * mask)
    sparse = sk.sparsify(mlp, format=fmt)
    assert all(isinstance(sparse[i], SparseLinear) and sparse[i].format == fmt for i in (0, 2))
    return sparse, ref, masks


def _weight(layer):
    return layer.dense_weight() if isinstance(layer, SparseLinear) else layer.weight.detach()


def _fine_tune(model, steps=4, micro_batches=2, autocast=False, adam=True):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1) if adam else \
        torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    ema = swa_utils.AveragedModel(model, multi_avg_fn=swa_utils.get_ema_multi_avg_fn(0.9))
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        for micro in range(micro_batches):  # gradient accumulation
            gen = torch.Generator().manual_seed(100 * step + micro)
            x, target = torch.randn(8, 32, generator=gen), torch.randn(8, 16, generator=gen)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                y = model(x)
            ((y.float() - target) ** 2).mean().div(micro_batches).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.5)
        opt.step()
        sched.step()
        ema.update_parameters(model)
    return ema


@pytest.mark.parametrize("fmt", FORMATS)
def test_fine_tune_with_common_infrastructure_matches_masked_dense(fmt):
    sparse, ref, masks = _models(fmt)
    nnz = [sparse[0].nnz, sparse[2].nnz]
    ema, ema_ref = _fine_tune(sparse), _fine_tune(ref)
    for i, mask in zip((0, 2), masks):
        weight = _weight(sparse[i])
        assert not (weight[~mask] != 0).any(), "a pruned weight grew back"
        torch.testing.assert_close(weight, _weight(ref[i]), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(sparse[i].bias, ref[i].bias, rtol=1e-4, atol=1e-5)
        assert isinstance(ema.module[i], SparseLinear) and ema.module[i].format == fmt
        assert not (_weight(ema.module[i])[~mask] != 0).any()
    assert [sparse[0].nnz, sparse[2].nnz] == nnz
    x = torch.randn(5, 32)
    with torch.no_grad():
        torch.testing.assert_close(ema(x), ema_ref(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fmt", FORMATS)
def test_bf16_autocast_fine_tune_keeps_pattern_and_tracks_dense(fmt):
    sparse, ref, masks = _models(fmt)
    # SGD: Adam normalizes each gradient, and a near-zero one whose sign bf16 rounding flips
    # moves a weight by the full learning rate the other way.
    _fine_tune(sparse, steps=2, autocast=True, adam=False)
    _fine_tune(ref, steps=2, autocast=True, adam=False)
    for i, mask in zip((0, 2), masks):
        weight = _weight(sparse[i])
        assert weight.dtype == torch.float32  # autocast leaves the stored weights alone
        assert not (weight[~mask] != 0).any()
        # bf16 rounding differs (nn.Linear rounds its weight gradient to bf16): loose.
        torch.testing.assert_close(weight, _weight(ref[i]), rtol=0, atol=2e-3)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("use_reentrant", [True, False])
def test_activation_checkpointing_gives_the_same_gradients(fmt, use_reentrant):
    sparse, _, _ = _models(fmt)
    x = torch.randn(8, 32, requires_grad=True)
    sparse(x).square().sum().backward()
    expected = [p.grad.clone() for p in sparse.parameters()] + [x.grad.clone()]
    sparse.zero_grad(set_to_none=True)
    x.grad = None
    blocks = (sparse[:2], sparse[2:])
    h = checkpoint(blocks[0], x, use_reentrant=use_reentrant)
    checkpoint(blocks[1], h, use_reentrant=use_reentrant).square().sum().backward()
    got = [p.grad for p in sparse.parameters()] + [x.grad]
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)


@pytest.fixture(scope="module")
def gloo_group(tmp_path_factory):
    import torch.distributed as dist
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with the gloo backend is not available in this torch build")
    if dist.is_initialized():
        pytest.skip("a process group is already initialized in this process")
    store = dist.FileStore(str(tmp_path_factory.mktemp("gloo") / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("fmt", FORMATS)
def test_ddp_on_gloo_trains_values_like_a_plain_step(fmt, gloo_group):
    # CSR's uint16 col_idx and bitmap's uint32 bits made DDP's construction fail ("Invalid
    # scalar type": gloo broadcasts no unsigned 16/32-bit tensors); sk.prepare_ddp handles them.
    sparse, _, _ = _models(fmt)
    plain = copy.deepcopy(sparse)
    ddp = nn.parallel.DistributedDataParallel(sk.prepare_ddp(sparse))
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (ddp, plain)]
    for step in range(2):
        x = torch.randn(8, 32, generator=torch.Generator().manual_seed(step))
        for model, opt in zip((ddp, plain), opts):
            opt.zero_grad(set_to_none=True)
            model(x).square().mean().backward()
        for p, q in zip(sparse.parameters(), plain.parameters()):
            assert p.grad is not None
            torch.testing.assert_close(p.grad, q.grad)
        for opt in opts:
            opt.step()
    x = torch.randn(3, 32)
    with torch.no_grad():
        torch.testing.assert_close(ddp(x), plain(x))


class _LoRA(nn.Module):
    def __init__(self, base, rank=4):
        super().__init__()
        self.base = base
        self.A = nn.Parameter(torch.randn(rank, base.in_features) * 0.1)
        self.B = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x):
        return self.base(x) + x @ self.A.T @ self.B.T


@pytest.mark.parametrize("fmt", FORMATS)
def test_lora_adapter_over_a_frozen_sparse_base(fmt):
    sparse, _, _ = _models(fmt)
    base = sparse[2].requires_grad_(False)
    frozen = base.dense_weight().clone(), base.bias.clone()
    sparse[2] = _LoRA(base)
    sparse[0].requires_grad_(False)
    trainable = [p for p in sparse.parameters() if p.requires_grad]
    assert len(trainable) == 2
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = sparse(torch.randn(4, 32))
        y.float().square().mean().backward()
        opt.step()
    assert sparse[2].B.abs().sum() > 0
    assert all(p.grad is None for p in base.parameters())
    assert torch.equal(base.dense_weight(), frozen[0]) and torch.equal(base.bias, frozen[1])


@pytest.mark.parametrize("fmt", ["csr", "2:4", "bitmap"])
def test_init_fn_zero_grad_and_requires_grad_toggling(fmt):
    sparse, _, masks = _models(fmt)

    def init_fn(module):
        if isinstance(module, SparseLinear):
            nn.init.normal_(module.values, std=0.02)
            nn.init.zeros_(module.bias)

    x = torch.randn(3, 32)
    with torch.no_grad():
        before = sparse(x)  # builds the cached kernels
    sparse.apply(init_fn)
    for i, mask in zip((0, 2), masks):
        assert not (sparse[i].dense_weight()[~mask] != 0).any()
    with torch.no_grad():
        after = sparse(x)
        assert not torch.allclose(before, after)
        dense = nn.Sequential(sparse[0].to_dense(), nn.ReLU(), sparse[2].to_dense())
        torch.testing.assert_close(after, dense(x))
    opt = torch.optim.SGD(sparse.parameters(), lr=0.1)
    for step in range(4):
        sparse[0].values.requires_grad_(step % 2 == 0)
        opt.zero_grad(set_to_none=True)
        old = sparse[0].dense_weight()
        sparse(x).sum().backward()
        assert (sparse[0].values.grad is None) == (step % 2 == 1)
        opt.step()
        assert torch.equal(old, sparse[0].dense_weight()) == (step % 2 == 1)
        with torch.no_grad():
            dense = nn.Sequential(sparse[0].to_dense(), nn.ReLU(), sparse[2].to_dense())
            torch.testing.assert_close(sparse(x), dense(x))


def test_an_optimizer_built_before_sparsify_warns_when_it_steps():
    # It steps the replaced Linear's tensors, which nothing reads: the model silently stopped
    # training. One warning per optimizer; one built after sparsify says nothing.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    sk.prune.magnitude(model, sparsity=0.5)
    stale = torch.optim.SGD(model.parameters(), lr=0.1)
    sk.sparsify(model, format="csr", progress=False)
    model(torch.randn(2, 16)).sum().backward()
    with pytest.warns(UserWarning, match="build the optimizer after sparsify"):
        stale.step()
    fresh = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stale.step()  # warned once already
        fresh.step()
