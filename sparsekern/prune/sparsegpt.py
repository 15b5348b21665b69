"""SparseGPT: one-shot pruning with second-order weight reconstruction
(Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately Pruned
in One-Shot").

Per layer, with H = 2/N * X^T X from the calibration inputs X [N tokens, in], pruning
weight w_q of a row and updating the row's other weights by -w_q / [H^-1]_qq * H^-1[:, q]
keeps the layer's output as close as possible (Optimal Brain Surgeon). SparseGPT visits
the columns left to right: after column q the remaining columns' inverse Hessian is that of
H without q, which the rows of the upper Cholesky factor of H^-1 give at once (row q of U
divided by U_qq is the update direction; U_qq^2 is [H_F^-1]_qq). Masks are chosen per block
of columns by w^2 / U_qq^2 (the OBS error of removing w); the block's updates are applied
column by column and the rest of the matrix is updated once per block.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch
from torch import nn

from ._calibrate import calibrate, warn_unseen
from ._linear import out_in, stored, with_conv1d
from ._masks import apply_mask, check_fraction, mask_of, unmask, weight_param
from ._select import Selector, prunable
from .nm import check_nm, check_nm_inputs

# Dampings tried, in this order after ``damp``, when H + damp * mean(diag H) * I is not
# positive definite in floating point.
_RETRY_DAMPS = (0.1, 1.0)

# Layers receiving the same input tensor (Llama's q/k/v, gate/up) share one Hessian and one
# factorization. A switch for the tests, which compare against the per-layer path.
_SHARE_INPUTS = True


class Hessian:
    """Running 2/N * X^T X (float64) of one layer's inputs."""

    def __init__(self, name: str, module: nn.Module):
        self.name, self.sum, self.count = name, None, 0

    def add(self, x: torch.Tensor) -> None:
        x = x.to(torch.float64)
        xtx = x.T @ x
        self.sum = xtx if self.sum is None else self.sum + xtx
        self.count += x.shape[0]

    def matrix(self) -> torch.Tensor | None:
        """2/N * X^T X, or None when no input was seen."""
        return None if self.sum is None else self.sum * (2.0 / max(self.count, 1))


def _label(names: list[str]) -> str:
    return f"layer {names[0]!r}" if len(names) == 1 else f"layers {names} (one shared input)"


def _upper_inverse_factor(hessian: torch.Tensor, damp: float, names: list[str]) -> torch.Tensor:
    """U, upper triangular with U^T U = (H + damping)^-1, retrying with more damping
    (and a warning naming the layers) when H is numerically singular."""
    if not torch.isfinite(hessian).all():
        raise ValueError(f"sparsegpt: {_label(names)}: its calibration inputs give a Hessian with NaN or Inf "
                         "(NaN/Inf activations, or an overflow in a low-precision model): check the batches, "
                         "or calibrate in float32")
    mean_diag = hessian.diagonal().mean()
    for attempt, level in enumerate((damp, *[d for d in _RETRY_DAMPS if d > damp])):
        damped = hessian + level * mean_diag * torch.eye(hessian.shape[0], dtype=hessian.dtype,
                                                         device=hessian.device)
        lower, info = torch.linalg.cholesky_ex(damped)
        if info == 0:
            inverse = torch.cholesky_inverse(lower)
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            if info == 0:
                if attempt:
                    warnings.warn(f"sparsegpt: {_label(names)}: its Hessian is singular with damp={damp}; "
                                  f"pruned with damp={level} instead", stacklevel=5)
                return upper
    raise ValueError(f"sparsegpt: {_label(names)}: its Hessian stays singular even with damp={level}: "
                     "give more (or more varied) calibration batches")


def _factor(hessian: torch.Tensor | None, cols: int, device: torch.device, damp: float,
            names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, dead) for a Hessian [cols, cols] (None: H = I, on ``device``): the upper Cholesky
    factor of the dampened inverse, and the inputs that were always zero. It depends on H
    alone, so layers with one input share it."""
    h = torch.eye(cols, dtype=torch.float64, device=device) if hessian is None else hessian.to(torch.float64).clone()
    # Inputs that were always zero carry no information: H[i, i] = 1 keeps H invertible,
    # and their weights do not matter for the output, so they are pruned first.
    dead = h.diagonal() == 0
    h[dead, dead] = 1.0
    return _upper_inverse_factor(h, damp, names), dead


@torch.no_grad()
def prune_matrix(weight: torch.Tensor, hessian: torch.Tensor | None, *, sparsity: float | None = None,
                 n: int | None = None, m: int | None = None, pruned: torch.Tensor | None = None,
                 block_size: int = 128, damp: float = 0.01, name: str = "layer") -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT on one weight matrix [out, in] (float64 inside). Returns (new weight,
    keep mask), both [out, in]; pruned entries of the new weight are 0. ``pruned``: entries
    already pruned (True), which stay pruned and count towards the sparsity. ``hessian``
    None (the layer saw no input) means H = I: magnitude pruning, no reconstruction.
    Unstructured: in each column block, the ``sparsity`` fraction of the block's weights
    (whole block, every row) with the lowest w^2 / U_qq^2. N:M: of every ``m``
    consecutive inputs of a row, the ``m - n`` with the lowest score go (``n`` stay, as in
    ``nm``), scored when the group is reached, on the weights updated so far."""
    u, dead = _factor(hessian, weight.shape[1], weight.device, damp, [name])
    return _sweep(weight, u, dead, sparsity=sparsity, n=n, m=m, pruned=pruned, block_size=block_size)


def _sweep(weight: torch.Tensor, u: torch.Tensor, dead: torch.Tensor, *, sparsity: float | None, n: int | None,
           m: int | None, pruned: torch.Tensor | None, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The column sweep of ``prune_matrix`` with the factor U and dead inputs of ``_factor``."""
    rows, cols = weight.shape
    w = weight.detach().to(torch.float64).clone()
    pruned = torch.zeros_like(w, dtype=torch.bool) if pruned is None else pruned.to(torch.bool).clone()
    w[:, dead] = 0.0
    w[pruned] = 0.0

    if sparsity is None:
        # Groups of m must not straddle two blocks: each is scored whole, where it starts.
        block_size = max(m, block_size - block_size % m)
    keep = torch.ones_like(w, dtype=torch.bool)
    for start in range(0, cols, block_size):
        end = min(start + block_size, cols)
        block, u_block = w[:, start:end].clone(), u[start:end, start:end]
        errors = torch.zeros_like(block)
        drop = pruned[:, start:end].clone()
        if sparsity is not None:
            score = block.square() / u_block.diagonal().square()[None, :]
            score[drop] = -torch.inf  # already pruned: dropped first, and counted
            count = round(sparsity * score.numel())
            if count:
                lowest = torch.topk(score.flatten(), count, largest=False).indices
                flat = drop.flatten()
                flat[lowest] = True
                drop = flat.view_as(drop)
        for j in range(end - start):
            if sparsity is None and j % m == 0:
                group = block[:, j:j + m].square() / u_block.diagonal()[j:j + m].square()[None, :]
                group[drop[:, j:j + m]] = -torch.inf
                lowest = torch.topk(group, m - n, dim=1, largest=False).indices
                drop[:, j:j + m].scatter_(1, lowest, True)
            column = block[:, j]
            error = torch.where(drop[:, j], column, torch.zeros_like(column)) / u_block[j, j]
            # Row j of U / U_jj is the OBS update of the columns not yet visited.
            block[:, j:] -= error[:, None] * u_block[j, j:][None, :]
            block[:, j][drop[:, j]] = 0.0
            errors[:, j] = error
        w[:, start:end] = block
        w[:, end:] -= errors @ u[start:end, end:]
        keep[:, start:end] = ~drop
    return w * keep, keep


def _check_args(sparsity, n, m, block_size, damp) -> None:
    if (sparsity is None) == (n is None and m is None) or (n is None) != (m is None):
        raise ValueError(f"give sparsity, or n and m (got sparsity={sparsity!r}, n={n!r}, m={m!r})")
    if sparsity is None:
        check_nm(n, m)
    else:
        check_fraction(sparsity)
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size = {block_size!r}, expected a positive integer")
    if isinstance(damp, bool) or not isinstance(damp, (int, float)) or not damp > 0:
        raise ValueError(f"damp = {damp!r}, expected a positive number (a fraction of H's mean diagonal)")


def sparsegpt(model: nn.Module, batches: Iterable, sparsity: float | None = None, *, n: int | None = None,
              m: int | None = None, block_size: int = 128, damp: float = 0.01, include: Selector = None,
              exclude: Selector = None, sequential: bool | None = None, blocks: str | None = None,
              prune_tied: bool = False) -> nn.Module:
    """One-shot SparseGPT pruning (Frantar & Alistarh 2023) with weight reconstruction.

    sparsity: fraction in [0, 1) pruned in every layer (chosen per column block), or
    n, m: N:M along the input dimension, keeping ``n`` of every ``m`` (2, 4 for 2:4).
    block_size: columns per mask-selection and lazy-update block (128 as in the paper); with
        n and m, rounded down to a multiple of m (at least m).
    damp: H + damp * mean(diag H) * I is inverted; when it is numerically singular,
        0.1 then 1.0 are tried with a warning naming the layer. NaN/Inf in H: ValueError.
    batches: calibration batches, as ``wanda`` takes them.
    sequential: prune block by block, each block calibrated on the outputs of the blocks
        before it as already pruned (None: when the model has a stack of blocks, see
        ``blocks``). Layers outside the stack (lm_head) are calibrated last.
    blocks: qualified name of the block stack ("model.layers"); default: found (the
        nn.ModuleList of at least 2 same-class modules with the most parameters).
    Prunes every nn.Linear and transformers Conv1D (GPT-2) by default; tied weights are
    skipped unless ``prune_tied``. The updated weights are written and each pruned layer
    is finalized (masks baked in, no ``weight_orig``/``weight_mask``): the reconstruction
    is kept. Layers that receive the same input tensor in every calibration batch (a Llama
    block's q/k/v projections, and gate/up) share one Hessian and its factorization, with
    the same result as one per layer. Returns ``model``."""
    _check_args(sparsity, n, m, block_size, damp)
    modules = prunable(model, include, exclude, with_conv1d(model, (nn.Linear,)), prune_tied)
    if sparsity is None:  # every layer's shape checked before any is pruned
        check_nm_inputs(modules, m)

    def prune_group(group):
        unseen = []
        # Layers given one Hessian object received the same inputs (the calibration shares
        # it, e.g. q/k/v): one factorization for all of them.
        sharing = {}
        for name, module, hessian in group:
            sharing.setdefault(id(hessian), (hessian, []))[1].append((name, module))
        for hessian, layers in sharing.values():
            matrix = hessian.matrix()
            if matrix is None:
                unseen.extend(name for name, _ in layers)
            first = out_in(layers[0][1], weight_param(layers[0][1]).detach())
            u, dead = _factor(matrix, first.shape[1], first.device, damp, [name for name, _ in layers])
            hessian.sum = matrix = None  # free it now: a 1B model's layers add up
            for name, module in layers:
                weight = out_in(module, weight_param(module).detach())
                new, keep = _sweep(weight, u, dead, sparsity=sparsity, n=n, m=m,
                                   pruned=out_in(module, mask_of(module)) == 0, block_size=block_size)
                with torch.no_grad():
                    weight_param(module).copy_(stored(module, new).to(weight.dtype))
                apply_mask(module, stored(module, keep), name)
                unmask(module)  # finalize: the reconstructed weights are the result
        warn_unseen("sparsegpt", unseen, "pruned by magnitude, without reconstruction")

    calibrate(model, batches, modules, Hessian, prune_group, sequential=sequential, blocks=blocks,
              desc="sparsegpt", share=_SHARE_INPUTS)
    return model
