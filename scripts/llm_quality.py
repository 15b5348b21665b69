"""Perplexity of a small byte-level Llama before and after one-shot pruning: dense,
magnitude, Wanda and SparseGPT at 50% and at 2:4. Offline and reproducible: the model is
trained here, on the Python standard library's own source (every machine has it), with
fixed seeds; mean and spread over 3 seeds. Prints a markdown table.

    nice python scripts/llm_quality.py                 # about 10 minutes on one core
    python scripts/llm_quality.py --steps 100 --seeds 0   # a quick look
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's sparsekern, not an installed one

import argparse
import copy
import statistics
import sysconfig
import time

import torch

import sparsekern as sk

SEQ = 128


def corpus(max_bytes: int) -> tuple[str, str, str]:
    """(train, calibration, test) text: the stdlib's top-level .py files in sorted order,
    file i going to test when i % 10 == 9, to calibration when i % 10 == 8, else to train."""
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    parts = {"train": [], "calibration": [], "test": []}
    size = 0
    for i, path in enumerate(files):
        text = path.read_text(encoding="utf-8", errors="replace")
        parts["test" if i % 10 == 9 else "calibration" if i % 10 == 8 else "train"].append(text)
        size += len(text)
        if size >= max_bytes:
            break
    return tuple("\n\n".join(parts[k]) for k in ("train", "calibration", "test"))


def build(seed: int, hidden: int, layers: int):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=256, hidden_size=hidden, intermediate_size=3 * hidden, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=SEQ,
                         tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    return LlamaForCausalLM(config)


def train(model, rows: torch.Tensor, steps: int, batch: int, seed: int, lr: float) -> None:
    g = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps, pct_start=0.1)
    model.train()
    for _ in range(steps):
        ids = rows[torch.randint(0, rows.shape[0], (batch,), generator=g)]
        loss = model(input_ids=ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()


PRUNERS = {
    ("magnitude", "50%"): lambda m, cal: sk.prune.magnitude(m, 0.5, scope="layer", exclude="lm_head"),
    ("wanda", "50%"): lambda m, cal: sk.prune.wanda(m, cal, 0.5, exclude="lm_head"),
    ("sparsegpt", "50%"): lambda m, cal: sk.prune.sparsegpt(m, cal, 0.5, exclude="lm_head"),
    ("magnitude", "2:4"): lambda m, cal: sk.prune.nm(m, 2, 4, exclude="lm_head"),
    ("wanda", "2:4"): lambda m, cal: sk.prune.wanda(m, cal, n=2, m=4, exclude="lm_head"),
    ("sparsegpt", "2:4"): lambda m, cal: sk.prune.sparsegpt(m, cal, n=2, m=4, exclude="lm_head"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--corpus-mb", type=float, default=4.0)
    parser.add_argument("--calibration", type=int, default=32, help="calibration sequences of 128 bytes")
    parser.add_argument("--test", type=int, default=128, help="test sequences of 128 bytes")
    args = parser.parse_args()
    torch.set_num_threads(1)
    train_text, calibration_text, test_text = corpus(int(args.corpus_mb * 2**20))
    rows = sk.eval.token_batches(sk.eval.byte_tokenizer, train_text, SEQ, 1)
    rows = torch.cat(rows)
    calibration = sk.eval.token_batches(sk.eval.byte_tokenizer, calibration_text, SEQ, 8,
                                        max_batches=args.calibration // 8)
    test = sk.eval.token_batches(sk.eval.byte_tokenizer, test_text, SEQ, 16, max_batches=args.test // 16)
    results = {}
    start = time.perf_counter()
    for seed in args.seeds:
        model = build(seed, args.hidden, args.layers)
        train(model, rows, args.steps, args.batch, seed, args.lr)
        results.setdefault(("dense", ""), []).append(sk.eval.perplexity(model, test))
        for key, prune in PRUNERS.items():
            pruned = prune(copy.deepcopy(model), calibration)
            results.setdefault(key, []).append(sk.eval.perplexity(pruned, test))
        print(f"seed {seed}: " + ", ".join(f"{' '.join(k).strip()} {v[-1]:.3f}" for k, v in results.items())
              + f" ({time.perf_counter() - start:.0f} s)", flush=True)
    params = sum(p.numel() for p in build(0, args.hidden, args.layers).parameters())
    print(f"\nbyte-level Llama, {args.layers} layers, hidden {args.hidden}, {params / 1e6:.2f}M parameters, "
          f"{args.steps} steps x {args.batch} x {SEQ} bytes; calibration {args.calibration} x {SEQ} bytes, "
          f"test {args.test} x {SEQ} bytes; seeds {args.seeds}; every projection but lm_head pruned\n")
    print("| method | 50% | 2:4 |\n|---|---|---|")

    def cell(values):
        if len(values) == 1:
            return f"{values[0]:.3f}"
        return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"

    print(f"| dense | {cell(results[('dense', '')])} | |")
    for method in ("magnitude", "wanda", "sparsegpt"):
        print(f"| {method} | {cell(results[(method, '50%')])} | {cell(results[(method, '2:4')])} |")


if __name__ == "__main__":
    main()
