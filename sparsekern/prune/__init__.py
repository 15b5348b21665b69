"""Pruning methods that produce masks for sparsekern's sparse kernels.

Every method modifies the model in place and returns it. By default it prunes every
nn.Linear; ``include=`` / ``exclude=`` take a glob on qualified module names
("encoder.*"), a list of globs, or a predicate ``f(name, module)``, and some methods
take ``types=(nn.Linear, nn.Conv2d)``. magnitude, random, nm, wanda and sparsegpt also
prune transformers' Conv1D (GPT-2), whose weight is stored transposed; the others
prune nn.Linear (and ``types``) only and name any Conv1D they leave in a warning.
A module whose weight is tied to another parameter (``tied_weights``; GPT-2's lm_head
shares the token embedding) is skipped with a warning unless ``prune_tied=True``, and
linear-like modules a method does not prune are named in a warning.

Masks use torch.nn.utils.prune's reparametrization: a pruned module has
``weight_orig`` (Parameter, zero where pruned), ``weight_mask`` (0/1 buffer in the
weight's dtype) and ``weight = weight_orig * weight_mask``. New masks are ANDed with
existing ones (also ones made by torch.nn.utils.prune), so nothing is ever revived, and
they stay enforced through any torch.optim optimizer's steps. ``finalize`` bakes them in.
"""
from ._masks import global_sparsity, layer_sparsity
from ._select import tied_weights
from .finalize import finalize
from .l0 import BETA, GAMMA, ZETA, HardConcreteGate, l0_gates, l0_masks, l0_penalty
from .l1 import l1_penalty, threshold
from .magnitude import magnitude, random
from .nm import nm
from .schedule import GradualPruner, cubic_sparsity
from .sparsegpt import sparsegpt
from .sensitivity import SensitivityTable, allocate, sensitivity
from .structured import structured
from .taylor import taylor, taylor_scores
from .wanda import wanda, wanda_scores

__all__ = [
    "magnitude", "random", "nm", "structured", "taylor", "taylor_scores", "wanda", "wanda_scores", "sparsegpt",
    "sensitivity", "SensitivityTable", "allocate", "l1_penalty", "threshold",
    "l0_gates", "l0_penalty", "l0_masks", "HardConcreteGate", "GAMMA", "ZETA", "BETA",
    "GradualPruner", "cubic_sparsity", "finalize", "layer_sparsity", "global_sparsity", "tied_weights",
]
