"""Peak memory of pruning a >= 1B-parameter Llama (random init from a LlamaConfig, fp32, no
download) with sequential calibration: one subprocess per method, peak RSS from
resource.getrusage (ru_maxrss). Prints a markdown table.

    python scripts/llm_prune_memory.py                  # every method (59 minutes on 2 busy cores in README's run)
    python scripts/llm_prune_memory.py --method model   # one
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's sparsekern, not an installed one

import argparse
import json
import resource
import subprocess
import time

METHODS = {
    "model": "the model alone (built, one calibration forward)",
    "wanda-finalize": "wanda 50%, sequential, finalize=True",
    "sparsegpt-2:4": "sparsegpt 2:4, sequential",
}


def run(method: str, batches: int, tokens: int) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    import sparsekern as sk

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                         num_key_value_heads=4, vocab_size=32000)
    model = LlamaForCausalLM(config).eval()
    params = sum(p.numel() for p in model.parameters())
    data = [torch.randint(0, config.vocab_size, (1, tokens)) for _ in range(batches)]
    start = time.perf_counter()
    if method == "model":
        with torch.no_grad():
            model(data[0])
    elif method == "wanda-finalize":
        sk.prune.wanda(model, data, 0.5, finalize=True, exclude="lm_head")
    elif method == "sparsegpt-2:4":
        sk.prune.sparsegpt(model, data, n=2, m=4, exclude="lm_head")
    else:
        raise ValueError(method)
    seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"method": method, "params": params, "peak_gib": peak_kib / 2**20, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", choices=list(METHODS))
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run(args.method, args.batches, args.tokens)))
        return
    rows = []
    for method in [args.method] if args.method else list(METHODS):
        out = subprocess.run([sys.executable, __file__, "--child", "--method", method, "--batches",
                              str(args.batches), "--tokens", str(args.tokens)],
                             check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(rows[-1], file=sys.stderr, flush=True)
    print(f"Llama {rows[0]['params'] / 1e9:.2f}B parameters, fp32 ({rows[0]['params'] * 4 / 2**30:.1f} GiB of "
          f"weights), {args.batches} calibration batches x {args.tokens} tokens\n")
    print("| run | peak RSS | time |\n|---|---|---|")
    for row in rows:
        print(f"| {METHODS[row['method']]} | {row['peak_gib']:.1f} GiB | {row['seconds']:.0f} s |")


if __name__ == "__main__":
    main()
