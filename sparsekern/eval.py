"""Evaluating language models before and after pruning: perplexity, and the token batches
that both calibration (``sparsekern.prune.wanda`` / ``sparsegpt``) and evaluation take.

    batches = sk.eval.token_batches(tokenizer, texts, seq_len=512, batch_size=4)
    print(sk.eval.perplexity(model, batches))
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
from torch import nn
from torch.nn import functional as F


def byte_tokenizer(text: str) -> list[int]:
    """Token ids 0..255: the text's UTF-8 bytes (a vocabulary of 256, nothing to download)."""
    return list(text.encode("utf-8"))


def _ids_of(tokenizer, text: str) -> list[int]:
    """Token ids of ``text``: a Hugging Face tokenizer (``encode``, no special tokens added
    in the middle of the stream) or any callable returning ids (or a mapping with
    ``input_ids``)."""
    if hasattr(tokenizer, "encode"):
        try:
            ids = tokenizer.encode(text, add_special_tokens=False)
        except TypeError:  # an encode without that keyword
            ids = tokenizer.encode(text)
    elif callable(tokenizer):
        ids = tokenizer(text)
    else:
        raise TypeError(f"tokenizer is a {type(tokenizer).__name__}: expected a callable text -> ids, "
                        "or a Hugging Face tokenizer")
    if isinstance(ids, Mapping):
        ids = ids["input_ids"]
    if isinstance(ids, torch.Tensor):
        ids = ids.flatten().tolist()
    return list(ids)


def token_batches(tokenizer, texts: str | Iterable[str], seq_len: int, batch_size: int = 1, *,
                  max_batches: int | None = None, separator: str = "\n\n") -> list[torch.Tensor]:
    """The texts tokenized, concatenated (joined by ``separator``) and cut into rows of
    ``seq_len`` tokens, grouped ``batch_size`` rows to a batch: a list of int64 tensors
    [batch_size, seq_len], the last partial row and batch dropped. ``tokenizer``: a
    Hugging Face tokenizer, or a callable text -> token ids (``byte_tokenizer``).
    ``max_batches`` keeps the first ones. Raises ValueError when the texts make no batch."""
    for value, name in ((seq_len, "seq_len"), (batch_size, "batch_size")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} = {value!r}, expected a positive integer")
    if max_batches is not None and (isinstance(max_batches, bool) or not isinstance(max_batches, int)
                                    or max_batches < 1):
        raise ValueError(f"max_batches = {max_batches!r}, expected a positive integer or None")
    if isinstance(texts, str):
        texts = [texts]
    ids = _ids_of(tokenizer, separator.join(texts))
    per_batch = seq_len * batch_size
    count = len(ids) // per_batch
    if max_batches is not None:
        count = min(count, max_batches)
    if count == 0:
        raise ValueError(f"the texts give {len(ids)} tokens, fewer than one batch of {batch_size} x {seq_len} = "
                         f"{per_batch}: give more text, or a smaller seq_len or batch_size")
    flat = torch.tensor(ids[:count * per_batch], dtype=torch.int64)
    return list(flat.view(count, batch_size, seq_len).unbind(0))


def _logits(output) -> torch.Tensor:
    """Logits from what a model returns: a tensor, a Hugging Face output (``.logits``),
    a mapping with "logits", or a tuple whose first item is the logits."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, Mapping):
        logits = output.get("logits")
    if logits is None and isinstance(output, (tuple, list)) and output:
        logits = output[0]
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"the model returned a {type(output).__name__}: expected logits [batch, seq, vocab], "
                        "or an output with .logits")
    return logits


@torch.no_grad()
def perplexity(model: nn.Module, token_batches: Iterable) -> float:
    """exp of the mean next-token negative log-likelihood over every predicted token of
    every batch (token-weighted: batches of any length count by their tokens).

    token_batches: int tensors [batch, seq] of token ids (``token_batches``), or mappings
        with "input_ids" (and "attention_mask": tokens with mask 0 are not scored).
    The model takes the ids (``model(ids)``, or ``model(input_ids=..., attention_mask=...)``
    for mappings) and returns logits [batch, seq, vocab] or an output with ``.logits``
    (any Hugging Face causal LM). It runs in eval mode, under no_grad; its mode is
    restored after, module by module (a model with frozen parts in eval mode keeps them so)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    total_nll, total_tokens = 0.0, 0
    try:
        for batch in token_batches:
            if isinstance(batch, Mapping):
                ids, mask = batch["input_ids"], batch.get("attention_mask")
                logits = _logits(model(**batch))
            elif isinstance(batch, torch.Tensor):
                ids, mask = batch, None
                logits = _logits(model(batch))
            else:
                raise TypeError(f"a batch of type {type(batch).__name__}: expected a tensor of token ids "
                                "[batch, seq] or a mapping with input_ids")
            if ids.ndim != 2 or ids.shape[1] < 2:
                raise ValueError(f"token ids shaped {tuple(ids.shape)}: expected [batch, seq] with seq >= 2 "
                                 "(the first token of a row is never predicted)")
            if logits.shape[:2] != ids.shape:
                raise ValueError(f"logits shaped {tuple(logits.shape)} for ids {tuple(ids.shape)}: expected "
                                 "[batch, seq, vocab]")
            logits = logits if logits.dtype == torch.float64 else logits.float()  # bf16 logits lose digits
            nll = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten().to(logits.device),
                                  reduction="none")
            if mask is not None:
                keep = (mask[:, 1:] != 0).flatten().to(nll.device)
                nll = nll[keep]
            total_nll += nll.double().sum().item()
            total_tokens += nll.numel()
    finally:
        for module, training in modes:  # not model.train(), which sets every module alike
            module.training = training
    if total_tokens == 0:
        raise ValueError("token_batches gave no token to score")
    return math.exp(total_nll / total_tokens)
