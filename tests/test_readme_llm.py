"""The README's "Pruning an LLM" block, run as written: the hub download is replaced by a
tiny randomly initialized Llama with a byte-level vocabulary, and its tokenizer by bytes."""
import re
import sysconfig
from pathlib import Path

import pytest
import torch

import sparsekern as sk

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install sparsekern[hf])")
README = Path(__file__).resolve().parents[1] / "README.md"


def readme_block() -> str:
    text = README.read_text()
    section = text[text.index("## Pruning an LLM"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


class ByteTokenizer:
    """What the block uses of a Hugging Face tokenizer: encode, __call__ and decode."""

    def encode(self, text, add_special_tokens=True):
        return list(text.encode("utf-8"))

    def __call__(self, text, return_tensors=None):
        ids = torch.tensor([self.encode(text)])
        return type("Encoding", (), {"input_ids": ids})()

    def decode(self, ids):
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


def tiny_llama(name, dtype=torch.float32):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                      bos_token_id=None, eos_token_id=None, pad_token_id=0)
    return transformers.LlamaForCausalLM(config).to(dtype)


def test_readme_llm_block_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SPARSEKERN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", tiny_llama)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda name: ByteTokenizer())
    corpus = tmp_path / "my_corpus"
    corpus.mkdir()
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for name in ("json/decoder.py", "json/encoder.py"):
        (corpus / f"{Path(name).stem}.txt").write_text((stdlib / name).read_text())
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(readme_block(), "README.md", "exec"), scope)
    printed = capsys.readouterr().out
    assert re.search(r"^perplexity \d+\.\d+", printed, re.M), printed
    assert printed.count("def fibonacci(n):") == 1
    model = scope["model"]
    layers = [m for m in model.modules() if isinstance(m, sk.SparseLinear)]
    assert len(layers) == 14 and isinstance(model.lm_head, torch.nn.Linear)
    assert all(((layer.dense_weight() != 0).reshape(-1, 4).sum(1) <= 2).all() for layer in layers)  # 2:4 kept
