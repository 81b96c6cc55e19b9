"""Perplexity of a causal LM on a text, in windows of at most `seqlen` tokens: that of BELLE's gptq
scripts and the GPTQ paper on wikitext2, on any text. `belle gptq eval` reports it; the gptq tests
and benchmarks measure quantization error with it.

The text is tokenized once and cut into windows (`windows`); `score_ids` sums the negative
log-likelihood of every token after the first, `perplexity` is exp of its mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence


@dataclass(frozen=True)
class Window:
    """One forward pass: the model reads `ids[begin:stop - 1]` and is scored on the targets
    `ids[first:stop]`, each predicted from the tokens before it (logits at `first - 1 .. stop - 2`)."""

    begin: int
    first: int
    stop: int


def windows(n_tokens: int, seqlen: int, stride: int | None = None) -> list[Window]:
    """The windows that score every token but the first exactly once.

    The targets 1 .. n_tokens - 1 are cut into blocks of `stride` tokens (default `seqlen`); a
    block's window reads the `seqlen` tokens that end just before its last target (fewer at the
    start of the text). So every target sees at least `seqlen - stride + 1` tokens of context,
    all the tokens before it while it lies within the first `seqlen + 1`. With `stride == seqlen`
    the windows do not overlap (but for the last, which still reads `seqlen` tokens): GPTQ's
    wikitext2 evaluation, except that it leaves out each window's first token and the text's
    tail shorter than a window. A smaller stride (the Hugging Face perplexity guide) gives every
    token more context for more forward passes.
    """
    stride = seqlen if stride is None else stride
    if not 1 <= stride <= seqlen:
        raise ValueError(f"stride must be between 1 and seqlen ({seqlen}), not {stride}")
    result = []
    for first in range(1, n_tokens, stride):
        stop = min(first + stride, n_tokens)
        result.append(Window(begin=max(0, stop - 1 - seqlen), first=first, stop=stop))
    return result


@dataclass(frozen=True)
class TextScore:
    """Negative log-likelihood of a text: `nll` nats summed over `tokens` scored tokens in `windows` passes."""

    nll: float
    tokens: int
    windows: int

    @property
    def perplexity(self) -> float:
        """exp(nll / tokens): the exponent of the mean per-token negative log-likelihood."""
        return math.exp(self.nll / self.tokens)


def score_ids(model: Any, ids: Sequence[int], *, seqlen: int = 2048, stride: int | None = None) -> TextScore:
    """Sum -log p(ids[t] | context) over t = 1 .. len(ids) - 1, window by window (see `windows`).

    Only the logits of the scored positions are computed when the model's forward takes
    `logits_to_keep` (transformers' causal LMs do), so memory stays at one window's activations.
    """
    import inspect

    import torch
    import torch.nn.functional as F

    if len(ids) < 2:
        raise ValueError(f"perplexity needs at least 2 tokens, not {len(ids)}")
    keep_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
    device = model.get_input_embeddings().weight.device
    tokens = torch.as_tensor(list(ids), dtype=torch.long, device=device)  # (n_tokens,)
    cut = windows(len(ids), seqlen, stride)
    nll = 0.0
    with torch.inference_mode():
        for window in cut:
            inputs = tokens[window.begin : window.stop - 1][None]  # (1, stop - 1 - begin)
            scored = window.stop - window.first
            if keep_logits:
                logits = model(input_ids=inputs, logits_to_keep=scored).logits[0]  # (scored, vocab)
            else:
                logits = model(input_ids=inputs).logits[0, -scored:]
            targets = tokens[window.first : window.stop]  # (scored,)
            nll += F.cross_entropy(logits.float(), targets, reduction="sum").item()
    return TextScore(nll=nll, tokens=len(ids) - 1, windows=len(cut))


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """The text's token ids as the tokenizer encodes it by default (with BOS if it adds one)."""
    return tokenizer(text, verbose=False)["input_ids"]


def perplexity(model: Any, tokenizer: Any, text: str, *, seqlen: int = 2048, stride: int | None = None) -> float:
    """Perplexity of `model` on `text`: exp of the mean negative log-likelihood of every token after
    the first, each predicted from up to `seqlen` tokens before it.

        PPL = exp( -1/(N-1) * sum_{t=1}^{N-1} log p(x_t | x_{b(t)} .. x_{t-1}) )

    where x_0 .. x_{N-1} are the text's tokens and b(t) the start of the window that scores x_t
    (`windows`: non-overlapping windows of `seqlen` tokens by default, one every `stride` tokens).
    """
    return score_ids(model, encode_text(tokenizer, text), seqlen=seqlen, stride=stride).perplexity
