"""Speed targets from the issues: minimum speedup of sparsekern over a baseline, per case.

A target is checked where its case runs; `pytest benchmarks/ --enforce-targets` turns a miss
into a failure (CI only reports them: shared machines are too noisy to gate a merge on).
"""
# case id -> {baseline: minimum ratio baseline_time / sparsekern_time}
LAYER_TARGETS = {
    # CSR floors that hold on every x86 server CPU (the fp32 portability issue): 8x at batch 1
    # only where dense streams its weights from DRAM (a large L3 keeps 64 MB hot).
    "4096x4096-s0.9-b1-fp32-hot": {"dense": 6.0, "torch.sparse": 2.0},
    "4096x4096-s0.9-b64-fp32-hot": {"dense": 5.5, "torch.sparse": 2.0},
    "4096x4096-s0.9-b256-fp32-hot": {"dense": 4.0, "torch.sparse": 2.0},
    "4096x4096-s0.9-b1-fp32-cold": {"dense": 5.0, "torch.sparse": 2.0},
    "4096x4096-s0.9-b64-fp32-cold": {"dense": 5.0, "torch.sparse": 2.0},
    "4096x4096-s0.5-b1-fp32-hot": {"dense": 1.2},
    "3072x768-s0.9-b1-fp32-hot": {"dense": 3.0, "torch.sparse": 2.0},
    "3072x768-s0.9-b64-fp32-hot": {"dense": 3.0, "torch.sparse": 2.0},
    "768x3072-s0.9-b1-fp32-hot": {"dense": 3.0},
    "768x3072-s0.9-b64-fp32-hot": {"dense": 3.0},
    # 2:4 (magnitude 2:4 masks): batch 1 is bound by bytes (2.125 B per weight against 4: at
    # most 1.88x from DRAM), batched by arithmetic (at most 2x).
    "4096x4096-2:4-b1-fp32-hot": {"dense": 1.6},
    "4096x4096-2:4-b64-fp32-hot": {"dense": 1.5},
    "4096x4096-2:4-b256-fp32-hot": {"dense": 1.3},
    "11008x4096-2:4-b1-fp32-hot": {"dense": 1.6},
    "11008x4096-2:4-b64-fp32-hot": {"dense": 1.5},
    "11008x4096-2:4-b256-fp32-hot": {"dense": 1.3},
    "3072x768-2:4-b64-fp32-hot": {"dense": 1.3},
    "768x3072-2:4-b64-fp32-hot": {"dense": 1.3},
    # bitmap (1 bit per weight + packed values): from 50% sparsity, where CSR does not pay.
    # Against CSR: better at batch 1 from 50 to 80% sparsity, within 5% batched.
    "4096x4096-bitmap-s0.5-b1-fp32-hot": {"dense": 1.5, "csr": 1.0},
    "4096x4096-bitmap-s0.5-b64-fp32-hot": {"dense": 1.15, "csr": 0.95},
    "4096x4096-bitmap-s0.5-b256-fp32-hot": {"dense": 1.0, "csr": 0.95},
    "4096x4096-bitmap-s0.6-b1-fp32-hot": {"csr": 1.0},
    "4096x4096-bitmap-s0.7-b1-fp32-hot": {"dense": 2.4, "csr": 1.0},
    "4096x4096-bitmap-s0.7-b64-fp32-hot": {"dense": 1.8, "csr": 0.95},
    "4096x4096-bitmap-s0.7-b256-fp32-hot": {"dense": 1.5, "csr": 0.95},
    "4096x4096-bitmap-s0.8-b1-fp32-hot": {"csr": 1.0},
    "3072x768-bitmap-s0.7-b1-fp32-hot": {"dense": 1.8, "csr": 1.0},
    "3072x768-bitmap-s0.7-b64-fp32-hot": {"dense": 1.6, "csr": 0.95},
    "768x3072-bitmap-s0.7-b1-fp32-hot": {"dense": 1.8, "csr": 1.0},
    "768x3072-bitmap-s0.7-b64-fp32-hot": {"dense": 1.6, "csr": 0.95},
    # bf16 values, fp32 activations, weights from DRAM, against dense fp32.
    "11008x4096-bitmap-s0.5-b1-bf16-cold": {"dense": 2.5},
}
# bf16 end to end (bf16 activations and values, the bf16 issue), hot, against dense bf16 F.linear
# and torch.compile dense with inductor freezing ("compiled": the aim is 1.0x up to batch 64
# for 2:4 and from 70%). "best" is the faster of CSR and bitmap.
_BF16_DENSE = {
    "4096x4096-2:4": (2.0, 1.4, 1.25, 1.0), "11008x4096-2:4": (2.0, 1.4, 1.25, 1.0),
    "4096x4096-bitmap-s0.5": (1.6, 1.3, 1.2, 0), "4096x4096-best-s0.7": (2.5, 1.8, 1.5, 0),
    "4096x4096-best-s0.9": (5.0, 3.0, 2.0, 1.3),
}
_BF16_COMPILED = ("4096x4096-2:4", "11008x4096-2:4", "4096x4096-best-s0.7", "4096x4096-best-s0.9")
BF16_LAYER_TARGETS = {
    f"{case}-b{batch}-bf16": {"dense bf16": need,
                              "compiled dense bf16": 1.0 if case in _BF16_COMPILED and batch <= 64 else 0}
    for case, needs in _BF16_DENSE.items() for batch, need in zip((1, 16, 64, 256), needs)}
# A Llama-shaped bf16 MLP block (hidden 4096, intermediate 11008, SiLU(gate) * up, down) at 2:4
# against the same block dense in bf16.
BF16_MLP_TARGETS = {"llama-mlp-2:4-b1": 1.3, "llama-mlp-2:4-b64": 1.1}
# bf16 values against fp32 values, same shape and pattern, batch 1, hot.
BF16_TARGETS = {"4096x4096-s0.9-b1": 1.3, "4096x4096-2:4-b1": 1.3, "11008x4096-2:4-b1": 1.3}
# Whole 8-layer MLP (8 x Linear 768<->3072 with ReLU, the BERT-base MLP shape), sparsified vs dense torch.
MODEL_TARGETS = {"mlp8-s0.9-b1": 5.0, "mlp8-s0.9-b64": 6.0}
# format="auto" is never more than 5% slower than dense.
AUTO_MIN_RATIO = 0.95
# Per call at batch 1, fp32, hot: SparseLinear (csr) against nn.Linear holding the masked weights.
OVERHEAD_TARGETS = {"64x64-s0.95-b1-fp32-hot": 1.0, "512x512-s0.95-b1-fp32-hot": 2.0,
                    "768x768-s0.9-b1-fp32-hot": 2.0}
# LLM decode tokens/s at batch 1 (Llama-shaped, hidden 2048, MLP 5632, 4 layers, lm_head dense),
# against the dense model in the same dtype. Prefill variants (format="auto") are held to
# AUTO_MIN_RATIO. The byte ceiling with lm_head dense is about 1.5x.
LLM_TARGETS = {"decode-bf16-2:4": 1.35, "decode-bf16-50%": 1.25, "decode-fp32-2:4": 1.35}
