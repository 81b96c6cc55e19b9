"""Training the tiny model on the bundled corpus, so that quantization error and perplexity mean
something in the gptq tests and benchmarks. Not a training recipe: `belle train` is that."""

from __future__ import annotations

import logging
import math
from pathlib import Path

from belle.modeling import read_checkpoint_info, write_checkpoint_info
from belle.models.tiny import tiny_corpus_text, tiny_split_at

logger = logging.getLogger(__name__)


def train_tiny_model(
    model_dir: str | Path,
    *,
    steps: int = 300,
    seq_len: int = 128,
    batch_size: int = 8,
    lr: float = 3e-3,
    seed: int = 0,
) -> Path:
    """Train the tiny model in place on the first 90% of the bundled corpus, so quantization error matters.

    A plain causal-LM loop in float32 on the CPU: AdamW, linear warmup (10% of `steps`) and cosine
    decay, each step `batch_size` random windows of `seq_len` tokens. The defaults read 300 x 8 x
    128 = 307k tokens, about 24 passes over the 12.7k training tokens (15 s on 2 cores): the model
    learns its training text by heart (perplexity about 3 in 128-token windows) but not the language
    (about 5,000 on `tiny_heldout_text()`, the held-out tail). Positions past `seq_len` are never
    trained, so evaluate it with windows of at most `seq_len` tokens. Saves safetensors over the
    random weights, notes the run in `belle.json`, and returns `model_dir`.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = Path(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    text = tiny_corpus_text()[: tiny_split_at()]
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[0]  # (n_tokens,)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model.train()
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 10)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    for step in range(steps):
        starts = torch.randint(0, len(ids) - seq_len, (batch_size,), generator=generator)
        batch = torch.stack([ids[s : s + seq_len] for s in starts.tolist()])  # (batch_size, seq_len)
        loss = model(input_ids=batch, labels=batch).loss  # transformers shifts labels by one
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == steps - 1:
            logger.info("train_tiny_model step %d/%d loss %.3f", step + 1, steps, loss.item())
    model.eval()
    model.save_pretrained(model_dir, safe_serialization=True)
    info = read_checkpoint_info(model_dir)
    info.pop("belle_version", None)
    template = info.pop("template")
    trained_by = f"belle.testing.tiny_training.train_tiny_model steps={steps} seq_len={seq_len} batch_size={batch_size}"
    write_checkpoint_info(model_dir, template, **{**info, "trained_by": trained_by})
    return model_dir
