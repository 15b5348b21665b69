"""`sparsekern bench --llm`: decode and prefill speed of a Llama-shaped causal LM, dense against
pruned and sparsified copies of the same model, in one run.

The model is built from a `transformers.LlamaConfig` with random weights (no download). Every
projection but `lm_head` is pruned (2:4, or 50% unstructured) and sparsified; `lm_head` stays
dense, as it would in a served model. Each pruned variant is timed paired with the dense model
alone, round after round (see tools/timing.py for why pairs and not a shared round).

- Decode: seconds per generated token at batch 1 after a prompt, the prefill excluded: a
  stopping criterion stamps the clock as each token arrives, and the steps between the first
  and the last stamp are decode steps only. `min_new_tokens` keeps random weights from
  stopping early.
- Prefill: one forward over a long prompt (no cache). Its variants use format="auto" timed at
  batch 1 and at the prompt length, which keeps a layer dense where no packed format wins.
"""
import argparse
import copy
import statistics
import time
from dataclasses import dataclass, replace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from . import timing

HF_EXTRA = 'pip install "sparsekern[hf]"'
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
PREFILL_ROUND_SECONDS = 0.05
clock = time.perf_counter  # the decode stamps' clock (tests replace it)


@dataclass(frozen=True)
class LlamaShape:
    """The model: by default the one the LLM issue names (about 0.4B parameters)."""
    hidden: int = 2048
    intermediate: int = 5632
    layers: int = 4
    heads: int = 32
    kv_heads: int = 4
    vocab: int = 32000


@dataclass(frozen=True)
class Variant:
    """A pruned copy of the dense model: its pattern ('2:4' or a sparsity), the format sparsify
    is asked for, and the batch sizes format='auto' times."""
    name: str
    pattern: str
    format: str
    batch_sizes: Tuple[int, ...] = (1,)


# Decode runs batch 1 only, so "auto" is timed at batch 1 alone.
DECODE_VARIANTS = (Variant("2:4", "2:4", "2:4"), Variant("50%", "0.5", "auto"))
# Prefill must never lose to dense: format="auto", timed at batch 1 and at the prompt length.
PREFILL_VARIANTS = (Variant("2:4 auto", "2:4", "auto"), Variant("50% auto", "0.5", "auto"))


@dataclass(frozen=True)
class Settings:
    shape: LlamaShape = LlamaShape()
    prompt: int = 128          # decode: prompt tokens before the timed steps
    new_tokens: int = 64       # decode: tokens generated (the first one ends the prefill)
    prefill: int = 512         # prefill: prompt length of the timed forward
    rounds: int = 5            # paired rounds per variant


def require_transformers():
    try:
        import transformers
    except ImportError as e:
        raise ImportError(f"the LLM benchmark builds a transformers model: {HF_EXTRA}") from e
    return transformers


def llama(shape: LlamaShape, dtype: torch.dtype, seed: int = 0) -> nn.Module:
    """A randomly initialised LlamaForCausalLM of this shape and dtype, in eval mode."""
    transformers = require_transformers()
    config = transformers.LlamaConfig(
        hidden_size=shape.hidden, intermediate_size=shape.intermediate, num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads, vocab_size=shape.vocab,
        max_position_embeddings=4096, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).to(dtype).eval()
    model.generation_config.pad_token_id = 0  # random weights: no tokenizer, silence the warning
    return model


def sparse_copy(dense: nn.Module, variant: Variant) -> nn.Module:
    """The dense model pruned to the variant's pattern on every projection but lm_head, then
    sparsified in the variant's format."""
    import sparsekern as sk

    model = copy.deepcopy(dense)
    if variant.pattern == "2:4":
        sk.prune.nm(model, 2, 4, exclude="lm_head")
    else:
        sk.prune.magnitude(model, sparsity=float(variant.pattern), scope="layer", exclude="lm_head")
    sk.sparsify(model, format=variant.format, exclude="lm_head", batch_sizes=variant.batch_sizes,
                progress=False)
    return model


class _Stamps:
    """A generate() stopping criterion that never stops, only notes when each token arrived."""

    def __init__(self):
        self.times: List[float] = []

    def __call__(self, input_ids, scores, **kwargs):
        self.times.append(clock())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def decode_seconds_per_token(model: nn.Module, prompt_ids: torch.Tensor, new_tokens: int) -> float:
    """Mean seconds per decoded token at batch 1, greedy, with the KV cache; the prefill (which
    produces the first new token) is excluded."""
    from transformers import StoppingCriteriaList

    if new_tokens < 2:
        raise ValueError(f"new_tokens = {new_tokens}: at least 2 are needed to time a decode step")
    stamps = _Stamps()
    with torch.no_grad():
        model.generate(prompt_ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                       stopping_criteria=StoppingCriteriaList([stamps]))
    if len(stamps.times) != new_tokens:
        raise RuntimeError(f"generate produced {len(stamps.times)} tokens, not {new_tokens}")
    return (stamps.times[-1] - stamps.times[0]) / (new_tokens - 1)


def prefill_call(model: nn.Module, prompt_ids: torch.Tensor) -> Callable[[], object]:
    def call():
        with torch.no_grad():
            return model(prompt_ids, use_cache=False)
    return call


def paired(baseline: Callable[[], float], subject: Callable[[], float], rounds: int) -> List[float]:
    """Per round, baseline seconds / subject seconds, the two measured back to back (after one
    untimed call of each)."""
    baseline(), subject()
    ratios = []
    for _ in range(rounds):
        b = baseline()
        ratios.append(b / subject())
    return ratios


@dataclass
class Result:
    kind: str        # "decode" or "prefill"
    dtype: str
    variant: str
    ratios: List[float]
    dense_seconds: float
    formats: str     # the formats sparsify chose, e.g. "2:4+dense"

    @property
    def speedup(self) -> float:
        return statistics.median(self.ratios)


def formats_of(model: nn.Module) -> str:
    import sparsekern as sk

    return "+".join(sorted({m.format for m in model.modules() if isinstance(m, sk.SparseLinear)})) or "none"


def cases(dtypes: Sequence[str], kinds: Sequence[str] = ("decode", "prefill")) -> List[Tuple[str, str, Variant]]:
    """(kind, dtype, variant) in the order they run."""
    variants = {"decode": DECODE_VARIANTS, "prefill": PREFILL_VARIANTS}
    return [(kind, dtype, v) for dtype in dtypes for kind in kinds for v in variants[kind]]


def measure(kind: str, dtype: str, variant: Variant, settings: Settings,
            dense_models: Optional[Dict[str, nn.Module]] = None) -> Result:
    """One case: the dense model (built once per dtype and kept in dense_models, which holds one
    dtype's at a time: cases come grouped by dtype) against its pruned copy, paired round by round."""
    dense_models = {} if dense_models is None else dense_models
    if dtype not in dense_models:
        dense_models.clear()
        dense_models[dtype] = llama(settings.shape, DTYPES[dtype])
    dense = dense_models[dtype]
    if kind == "prefill":
        variant = replace(variant, batch_sizes=(1, settings.prefill))
    sparse = sparse_copy(dense, variant)
    generator = torch.Generator().manual_seed(1)
    if kind == "decode":
        ids = torch.randint(settings.shape.vocab, (1, settings.prompt), generator=generator)
        dense_call = lambda: decode_seconds_per_token(dense, ids, settings.new_tokens)  # noqa: E731
        sparse_call = lambda: decode_seconds_per_token(sparse, ids, settings.new_tokens)  # noqa: E731
        dense_seconds = []

        def dense_timed():
            dense_seconds.append(dense_call())
            return dense_seconds[-1]

        ratios = paired(dense_timed, sparse_call, settings.rounds)
        return Result(kind, dtype, variant.name, ratios, statistics.median(dense_seconds), formats_of(sparse))
    ids = torch.randint(settings.shape.vocab, (1, settings.prefill), generator=generator)
    # A short prefill (small models) is repeated within a round to last PREFILL_ROUND_SECONDS.
    times = timing.time_rounds({"dense": prefill_call(dense, ids), "sparse": prefill_call(sparse, ids)},
                               rounds=settings.rounds, round_seconds=PREFILL_ROUND_SECONDS)
    ratios = [d / s for d, s in zip(times["dense"], times["sparse"])]
    return Result(kind, dtype, variant.name, ratios, statistics.median(times["dense"]), formats_of(sparse))


def run(settings: Settings, dtypes: Sequence[str], kinds: Sequence[str] = ("decode", "prefill"),
        progress: Optional[bool] = None) -> List[Result]:
    from tqdm.auto import tqdm

    dense_models: Dict[str, nn.Module] = {}
    results = []
    todo = cases(dtypes, kinds)
    bar = tqdm(todo, desc="bench --llm", unit="case", disable=None if progress is None else not progress)
    for kind, dtype, variant in bar:
        bar.set_postfix_str(f"{kind} {dtype} {variant.name}", refresh=False)
        results.append(measure(kind, dtype, variant, settings, dense_models))
    return results


def report(results: List[Result], settings: Settings) -> str:
    s = settings.shape
    lines = [f"Llama-shaped model (random init): hidden {s.hidden}, MLP {s.intermediate}, {s.layers} layers, "
             f"{s.heads} heads / {s.kv_heads} KV heads, vocab {s.vocab}; lm_head dense; "
             f"{torch.get_num_threads()} threads",
             f"decode: batch 1, {settings.prompt}-token prompt, {settings.new_tokens} new tokens (prefill excluded); "
             f"prefill: {settings.prefill} tokens; speedup = dense time / sparse time, median of "
             f"{settings.rounds} paired rounds"]
    rows = [("kind", "dtype", "variant", "speedup", "rounds", "dense", "formats")]
    for r in results:
        unit = "ms/token" if r.kind == "decode" else "ms"
        rows.append((r.kind, r.dtype, r.variant, f"{r.speedup:.2f}x",
                     f"{min(r.ratios):.2f}-{max(r.ratios):.2f}", f"{r.dense_seconds * 1e3:.1f} {unit}", r.formats))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def _parse(argv: List[str]) -> Tuple[Settings, List[str], List[str]]:
    d, shape = Settings(), LlamaShape()
    p = argparse.ArgumentParser(prog="sparsekern bench --llm", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--llm", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["bf16", "fp32"],
                   help="model dtypes (default bf16 fp32)")
    p.add_argument("--kinds", nargs="+", choices=["decode", "prefill"], default=["decode", "prefill"],
                   help="what to time (default decode prefill)")
    for name, default in vars(shape).items():
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=default, metavar="N",
                       help=f"model {name.replace('_', ' ')} (default {default})")
    p.add_argument("--prompt", type=int, default=d.prompt, metavar="N",
                   help=f"decode prompt tokens (default {d.prompt})")
    p.add_argument("--new-tokens", type=int, default=d.new_tokens, metavar="N",
                   help=f"decode: tokens generated (default {d.new_tokens})")
    p.add_argument("--prefill", type=int, default=d.prefill, metavar="N",
                   help=f"prefill prompt tokens (default {d.prefill})")
    p.add_argument("--rounds", type=int, default=d.rounds, metavar="N",
                   help=f"paired rounds per case (default {d.rounds})")
    args = p.parse_args(argv)
    for name in [*vars(shape), "prompt", "prefill", "rounds"]:
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, not {getattr(args, name)}")
    if args.new_tokens < 2:
        p.error(f"--new-tokens must be >= 2 (the first token ends the prefill), not {args.new_tokens}")
    if args.hidden % args.heads:
        p.error(f"--hidden {args.hidden} is not a multiple of --heads {args.heads}")
    if args.heads % args.kv_heads:
        p.error(f"--heads {args.heads} is not a multiple of --kv-heads {args.kv_heads}")
    if args.hidden % 4 or args.intermediate % 4:
        p.error("--hidden and --intermediate must be multiples of 4 (2:4 needs whole groups of 4 inputs)")
    if (args.hidden // args.heads) % 2:  # rotary embeddings turn pairs of each head's dimensions
        p.error(f"--hidden / --heads = {args.hidden // args.heads} must be even (Llama's rotary embeddings "
                "rotate pairs of dimensions)")
    try:
        require_transformers()
    except ImportError as e:
        p.error(str(e))
    shape = LlamaShape(**{name: getattr(args, name) for name in vars(shape)})
    settings = Settings(shape, args.prompt, args.new_tokens, args.prefill, args.rounds)
    return settings, list(dict.fromkeys(args.dtypes)), list(dict.fromkeys(args.kinds))


def main(argv: List[str]) -> int:
    settings, dtypes, kinds = _parse(argv)
    print(report(run(settings, dtypes, kinds), settings))
    return 0
