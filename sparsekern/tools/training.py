"""Training helpers for the digits demo and the pruning tests: scikit-learn's bundled digits
split, a small MLP, a training loop with progress, accuracy."""
from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm


class Digits(NamedTuple):
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_digits_split(seed: int = 0) -> Digits:
    """sklearn's 1797 8x8 digits (bundled, no download), standardized with the training
    statistics, split 60 / 15 / 25 % into train / validation / test with ``seed``."""
    from sklearn.datasets import load_digits  # imported here: scikit-learn is needed only for the demo data

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test, n_val = round(0.25 * len(y)), round(0.15 * len(y))
    test, val, train = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
    mean, std = x[train].mean(0), x[train].std(0).clamp_min(1e-3)
    x = (x - mean) / std
    return Digits(x[train], y[train], x[val], y[val], x[test], y[test])


def make_mlp(hidden: int = 512, seed: int = 0) -> nn.Sequential:
    """64 -> hidden -> hidden -> 10 with ReLU, initialized from ``seed``."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, 10))


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float = 1e-3, seed: int = 0,
          batch_size: int = 64, penalty: Callable[[nn.Module], torch.Tensor] | None = None,
          after_step: Callable[[], object] | None = None, param_groups: list | None = None,
          desc: str = "train") -> nn.Module:
    """Adam on cross-entropy (+ ``penalty(model)``), shuffled mini-batches from ``seed``.
    ``after_step`` runs after every optimizer step (e.g. ``GradualPruner.step``)."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # stochastic layers and L0 gate noise
    optimizer = torch.optim.Adam(param_groups or model.parameters(), lr=lr)
    model.train()
    threads = torch.get_num_threads()
    # At this size OpenMP synchronization costs more than a second thread gains, and on
    # a shared, loaded machine it makes training many times slower.
    torch.set_num_threads(1)
    try:
        for _ in tqdm(range(epochs), desc=desc, unit="epoch", disable=None, leave=False):
            for idx in torch.randperm(len(y), generator=generator).split(batch_size):
                loss = F.cross_entropy(model(x[idx]), y[idx])
                if penalty is not None:
                    loss = loss + penalty(model)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                if after_step is not None:
                    after_step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy in percent, in eval mode."""
    model.eval()
    return 100.0 * (model(x).argmax(-1) == y).float().mean().item()


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int = 128) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(zip(x.split(batch_size), y.split(batch_size)))


def cross_entropy_loss(model: nn.Module, batch) -> torch.Tensor:
    """``loss_fn(model, batch)`` for ``prune.taylor`` on (x, y) batches."""
    x, y = batch
    return F.cross_entropy(model(x), y)
