"""`sparsekern demo`: train an MLP on scikit-learn's bundled digits, prune it, fine-tune,
swap in sparse kernels, and compare accuracy, bytes and measured speed with the dense model;
then show the speed on a layer size where sparsity pays (the digits MLP is small enough that
a dense call costs a few microseconds, so per-call overhead decides there).

The data and training helpers live in tools/training.py (the pruning tests train with them).
"""
from __future__ import annotations

import argparse
import copy
import math

import torch
from torch import nn

from .. import _backend, planner, prune
from ..formats import LAYER_FORMATS
from ..prune.schedule import METHODS as GRADUAL_PRUNER_METHODS
from ..sparsify import sparsify
from ..summary import summary
from .timing import time_interleaved
from .training import Digits, accuracy, batches, cross_entropy_loss, load_digits_split, make_mlp, train

METHODS = ("magnitude", "nm", "structured", "taylor", "wanda", "l0", "random")
GRADUAL_METHODS = tuple(GRADUAL_PRUNER_METHODS)
FORMATS = ("auto", *LAYER_FORMATS)
SPEED_BATCHES = (1, 64)


def prune_model(model: nn.Module, method: str, sparsity: float, data: Digits, *, gradual: bool,
                epochs: int, seed: int) -> nn.Module:
    """Prune with ``method`` and fine-tune for ``epochs`` (pruning along the cubic
    schedule during fine-tuning when ``gradual``). Returns the (possibly new) model."""
    calibration = batches(data.x_train, data.y_train)
    kwargs = {"magnitude": {}, "random": {"seed": seed}, "taylor": {"loss_fn": cross_entropy_loss,
              "batches": calibration}, "wanda": {"batches": [x for x, _ in calibration]},
              "structured": {"exclude": "4"}}  # masking the classifier's rows would drop classes
    if gradual:
        steps = epochs * math.ceil(len(data.y_train) / 64)
        # Prune over the first 3/4 of fine-tuning, recover during the rest.
        pruner = prune.GradualPruner(model, method, final_sparsity=sparsity, start_step=0,
                                     end_step=3 * steps // 4, frequency=max(1, steps // 40),
                                     **kwargs.get(method, {}))
        train(model, data.x_train, data.y_train, epochs, seed=seed, after_step=pruner.step,
              desc="prune+fine-tune")
        if method == "structured":
            # The masked neurons have the lowest norm (zero): shrinking removes exactly them.
            prune.structured(model, sparsity, shrink=True)
        return model
    if method == "l0":
        gates = prune.l0_gates(model, init_keep=0.9)
        gate_ids = {id(g) for g in gates}
        weights = [p for p in model.parameters() if id(p) not in gate_ids]
        # Gates need a larger step than weights to open or close within a few epochs.
        train(model, data.x_train, data.y_train, epochs, seed=seed, desc="L0 training",
              penalty=lambda m: 2.0 * prune.l0_penalty(m, reduction="mean"),
              param_groups=[{"params": weights}, {"params": gates, "lr": 0.1}])
        prune.l0_masks(model)
    elif method == "nm":
        prune.nm(model, 2, 4)
    elif method == "structured":
        prune.structured(model, sparsity, shrink=True)
    else:
        getattr(prune, method)(model, sparsity=sparsity, **kwargs[method])
    return train(model, data.x_train, data.y_train, epochs, seed=seed, lr=3e-4, desc="fine-tune")


def _parse(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="sparsekern demo", description="Train an MLP on scikit-learn's bundled digits, prune it, fine-tune, "
        "swap in sparse kernels, and compare accuracy, bytes and speed with the dense model.")
    parser.add_argument("--method", choices=METHODS, default="magnitude")
    parser.add_argument("--sparsity", type=float, default=None,
                        help="fraction of weights to prune (structured: of hidden neurons); "
                             "default 0.9, 0.5 for structured; ignored by nm (2:4) and l0 (learned)")
    parser.add_argument("--gradual", action="store_true",
                        help=f"prune along Zhu & Gupta's cubic schedule while fine-tuning ({', '.join(GRADUAL_METHODS)})")
    parser.add_argument("--format", choices=FORMATS, default="auto", help="format for sparsekern.sparsify")
    parser.add_argument("--epochs", type=int, default=15, help="dense training epochs (fine-tuning: the same)")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=list(SPEED_BATCHES), metavar="B",
                        help="batch sizes sparsify(format='auto') times and the speed tables show")
    parser.add_argument("--no-large", dest="large", action="store_false",
                        help="skip the second part: the 768<->3072 MLP at 90%% where sparsity pays")
    args = parser.parse_args(argv)
    if any(b < 1 for b in args.batch_sizes):
        parser.error(f"--batch-sizes {args.batch_sizes}: each must be >= 1")
    if args.epochs < 1:
        parser.error(f"--epochs = {args.epochs}, expected >= 1")
    if not -2 ** 63 <= args.seed < 2 ** 64:  # torch's generators take 64 bits (was an OverflowError traceback)
        parser.error(f"--seed = {args.seed}, expected an integer that fits in 64 bits")
    if args.hidden < 1:  # was a traceback from nn.Linear (negative) or a ZeroDivisionError (0)
        parser.error(f"--hidden = {args.hidden}, expected >= 1")
    if args.method == "nm" and args.hidden % 4:  # 2:4 groups 4 inputs; the hidden layers take --hidden
        parser.error(f"--method nm (2:4) needs --hidden to be a multiple of 4, not {args.hidden}")
    if args.sparsity is None:
        args.sparsity = 0.5 if args.method == "structured" else 0.9
    if not 0.0 <= args.sparsity < 1.0:
        parser.error(f"--sparsity = {args.sparsity}, expected a number in [0, 1)")
    if args.gradual and args.method not in GRADUAL_METHODS:
        parser.error(f"--gradual supports {', '.join(GRADUAL_METHODS)}, not --method {args.method}")
    return args


def _speed(dense: nn.Module, sparse: nn.Module, in_features: int,
           batch_sizes=SPEED_BATCHES) -> dict[int, tuple[float, float]]:
    """{batch: (dense seconds, sparse seconds)} per forward, medians of interleaved rounds."""
    result = {}
    with torch.no_grad():
        for batch in batch_sizes:
            x = torch.randn(batch, in_features)
            times = time_interleaved({"dense": lambda: dense(x), "sparse": lambda: sparse(x)}, rounds=9,
                                     round_seconds=0.02)
            result[batch] = (times["dense"], times["sparse"])
    return result


def _print_speed(speed: dict[int, tuple[float, float]]) -> None:
    print("forward time, torch.no_grad(), median of 9 interleaved rounds")
    print(f"{'batch':>5}{'dense':>12}{'sparsified':>12}{'speedup':>9}")
    for batch, (dense_time, sparse_time) in speed.items():
        print(f"{batch:>5}{dense_time * 1e6:>10.1f}us{sparse_time * 1e6:>10.1f}us{dense_time / sparse_time:>8.2f}x")


def machine_line() -> str:
    features = ", ".join(name for name, present in _backend.cpu_features().items() if present)
    return (f"{planner.cpu_model()}, {torch.get_num_threads()} threads, sparsekern ISA {_backend.cpu_isa()} "
            f"(CPU features: {features})")


def large_mlp_part(batch_sizes, seed: int) -> None:
    """Where sparsity pays: BERT-base's MLP (768 -> 3072 -> 768), magnitude-pruned to 90% per
    layer (random weights: speed does not depend on what they learned), sparsify(auto)."""
    torch.manual_seed(seed)
    dense = nn.Sequential(nn.Linear(768, 3072), nn.ReLU(), nn.Linear(3072, 768)).eval()
    pruned = copy.deepcopy(dense)
    prune.magnitude(pruned, sparsity=0.9, scope="layer")
    prune.finalize(pruned)
    sparse = sparsify(copy.deepcopy(pruned), format="auto", batch_sizes=batch_sizes, progress=False)
    print("\nwhere sparsity pays: MLP 768-3072-768 (BERT-base's), 90% per layer, format auto\n")
    print(summary(sparse))
    print()
    _print_speed(_speed(pruned, sparse, 768, batch_sizes))


def _param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    data = load_digits_split(args.seed)
    dense = train(make_mlp(args.hidden, args.seed), data.x_train, data.y_train, args.epochs, seed=args.seed,
                  desc="dense training")
    dense_accuracy = accuracy(dense, data.x_test, data.y_test)

    label = "2:4" if args.method == "nm" else "learned" if args.method == "l0" else f"{args.sparsity:.0%}"
    try:
        pruned = prune_model(copy.deepcopy(dense), args.method, args.sparsity, data, gradual=args.gradual,
                             epochs=args.epochs, seed=args.seed)
    except ValueError as error:  # e.g. --sparsity 0.995 past the 0.99 cap of each layer under a global scope
        raise SystemExit(f"sparsekern demo: --method {args.method} --sparsity {args.sparsity}: {error}") from None
    pruned_accuracy = accuracy(pruned, data.x_test, data.y_test)
    layers = prune.layer_sparsity(pruned)
    shapes = {name: tuple(m.weight.shape) for name, m in pruned.named_modules() if isinstance(m, nn.Linear)}

    try:
        sparse = sparsify(copy.deepcopy(pruned), format=args.format, batch_sizes=args.batch_sizes)
    except ValueError as error:
        raise SystemExit(f"sparsekern demo: --format {args.format}: {error}") from None
    sparse_accuracy = accuracy(sparse, data.x_test, data.y_test)
    speed = _speed(dense, sparse, data.x_train.shape[1], args.batch_sizes)

    mode = "gradual (cubic schedule)" if args.gradual else "L0 gates" if args.method == "l0" else "one-shot"
    print(f"\nsparsekern demo on {machine_line()}")
    print(f"digits MLP 64-{args.hidden}-{args.hidden}-10, method {args.method} ({label}, {mode}), format "
          f"{args.format} timed at batch sizes {', '.join(map(str, args.batch_sizes))}, seed {args.seed}\n")
    print(f"{'model':<34}{'test accuracy':>14}{'parameters':>12}")
    print(f"{'dense':<34}{dense_accuracy:>13.2f}%{_param_count(dense):>12,}")
    print(f"{'pruned + fine-tuned':<34}{pruned_accuracy:>13.2f}%{_param_count(pruned):>12,}")
    print(f"{'sparsified (' + args.format + ')':<34}{sparse_accuracy:>13.2f}%")
    print(f"\n{'layer':<8}{'shape':>12}{'sparsity':>10}")
    for name, value in layers.items():
        print(f"{name:<8}{'x'.join(map(str, shapes[name])):>12}{value:>10.1%}")
    print(f"{'total':<8}{'':>12}{prune.global_sparsity(pruned):>10.1%}\n")
    print(summary(sparse))
    print()
    _print_speed(speed)
    if args.large:
        large_mlp_part(args.batch_sizes, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
