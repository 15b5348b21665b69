"""Shared, cached training data for the pruning tests: the digits split and one dense MLP
trained once per session (each caller gets its own deep copy)."""
import copy
import functools

import torch

from sparsekern.tools.training import accuracy, load_digits_split, make_mlp, train

SEED = 0
HIDDEN = 512
EPOCHS = 15


@functools.lru_cache(maxsize=None)
def digits():
    return load_digits_split(SEED)


@functools.lru_cache(maxsize=None)
def _dense():
    data = digits()
    model = train(make_mlp(HIDDEN, SEED), data.x_train, data.y_train, EPOCHS, seed=SEED)
    return model, accuracy(model, data.x_test, data.y_test)


def dense_model() -> torch.nn.Sequential:
    """A fresh copy of the trained 64-512-512-10 MLP."""
    return copy.deepcopy(_dense()[0])


def dense_accuracy() -> float:
    return _dense()[1]


def evaluate(model) -> float:
    """Test-set accuracy in percent."""
    data = digits()
    return accuracy(model, data.x_test, data.y_test)


def fine_tune(model, epochs: int = EPOCHS):
    data = digits()
    return train(model, data.x_train, data.y_train, epochs, lr=3e-4, seed=SEED)
