"""An lm-evaluation-harness `LM` over a belle engine (`belle.generation.ChatEngine`): how `belle eval
bench` runs a GGUF file (`belle.llamacpp.GgufEngine`), and the same adapter runs a transformers
`Engine` (an independent check of its tokenization against lm-eval's `HFLM`).

Requests are tokenized as `HFLM` tokenizes them (lm-eval's `TemplateLM._encode_pair`: context and
continuation encoded together, split at the context's length; trailing spaces of the context moved to
the continuation; an empty context becomes the BOS token, else EOS). A loglikelihood is the sum of
the continuation tokens' log-probabilities (natural log, log_softmax of the model's float32 logits)
from `engine.prompt_logprobs`, and is_greedy says each of them was the top-1 token. A sequence longer
than the engine's context keeps its last `context_length` tokens (HFLM keeps one more as the final
target only; the scores differ only for sequences that long).
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from belle.generation import MAX_STOP_STRINGS, ChatEngine, GenerationParams
from belle.templates import render_text, to_jinja

logger = logging.getLogger(__name__)

DEFAULT_MAX_GEN_TOKS = 256
"""Tokens `generate_until` may generate when a task sets no `max_gen_toks` (HFLM's default)."""


class EngineLM(TemplateLM):
    """lm-eval's `LM` API (loglikelihood, loglikelihood_rolling, generate_until, chat templating)
    over a belle engine.

    Args:
        engine: a loaded `ChatEngine` (`load_engine`'s result: transformers `Engine` or `GgufEngine`).
        batch_size: prompts handed to the engine per call (`prompt_logprobs`, `generate_batch`).
        max_gen_toks: the reply length for tasks that set none.
    """

    def __init__(self, engine: ChatEngine, batch_size: int = 8, max_gen_toks: int = DEFAULT_MAX_GEN_TOKS):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.batch_size = batch_size
        self.max_gen_toks = max_gen_toks

    @property
    def max_length(self) -> int:
        return self.engine.context_length

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        """The token an empty context becomes: BOS, else EOS (as HFLM)."""
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    @property
    def tokenizer_name(self) -> str:
        """The engine's name and template: lm-eval's cache key for chat-templated requests."""
        return f"{self.engine.name}-{self.engine.template.name}".replace("/", "__")

    def close(self) -> None:
        self.engine.close()

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        """The tokenizer's ids of `string`; by default with its special tokens (BOS where it adds one)
        unless the text already starts with the prefix token's text, as HFLM decides."""
        if add_special_tokens is None:
            prefix = self.tokenizer.decode([self.prefix_token_id]) if self.prefix_token_id is not None else ""
            add_special_tokens = not (prefix and string.startswith(prefix))
        return list(self.tokenizer.encode(string, add_special_tokens=add_special_tokens))

    def _loglikelihood_tokens(self, requests: list[tuple[tuple[str, str], list[int], list[int]]],
                              disable_tqdm: bool = False, **kwargs: Any) -> list[tuple[float, bool]]:
        """(sum of the continuation's log-probabilities, all its tokens top-1) per `(key, context ids,
        continuation ids)`, scored `batch_size` sequences per `prompt_logprobs` call."""
        results: list[tuple[float, bool]] = []
        limit = self.engine.context_length
        for first in tqdm(range(0, len(requests), self.batch_size), disable=disable_tqdm, desc="loglikelihood"):
            chunk = requests[first : first + self.batch_size]
            sequences = []
            for (context, continuation), context_ids, continuation_ids in chunk:
                if not continuation_ids:
                    raise ValueError(f"the continuation {continuation!r} has no tokens of its own after {context[-40:]!r}")
                if len(continuation_ids) >= limit:
                    raise ValueError(f"a continuation of {len(continuation_ids)} tokens does not fit the engine's "
                                     f"{limit}-token context with a token before it")
                sequences.append((context_ids + continuation_ids)[-limit:])
            scored = self.engine.prompt_logprobs(sequences, top=1)
            for (key, _, continuation_ids), entries in zip(chunk, scored):
                tail = entries[len(entries) - len(continuation_ids):]
                answer = (sum(entry.logprob for entry in tail), all(entry.top[0][0] == entry.token_id for entry in tail))
                self.cache_hook.add_partial("loglikelihood", key, answer)
                results.append(answer)
        return results

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Each text's whole log-likelihood (perplexity tasks), in lm-eval's disjoint rolling windows
        of at most `context_length` tokens, the first conditioned on the prefix token."""
        results = []
        for request in tqdm(requests, disable=disable_tqdm, desc="loglikelihood_rolling"):
            (text,) = request.args
            windows = [make_disjoint_window(window) for window in get_rolling_token_windows(
                token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                max_seq_len=self.engine.context_length - 1, context_len=1)]
            scores = self._loglikelihood_tokens([((text, ""), context, continuation) for context, continuation in windows],
                                                disable_tqdm=True)
            total = sum(score for score, _ in scores)
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
            results.append(total)
        return results

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """A reply per `(context, gen_kwargs)` request, greedy unless the task samples, cut at the
        task's `until` strings and EOS, at most `max_gen_toks` tokens; the context keeps its last
        `context_length - max_gen_toks` tokens. Requests with the same settings go `batch_size` at a time."""
        results: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(repr(sorted(request.args[1].items())), []).append(index)
        eos = self.tokenizer.decode([self.eot_token_id]) if self.eot_token_id is not None else None
        progress = tqdm(total=len(requests), disable=disable_tqdm, desc="generate_until")
        for indices in groups.values():
            settings = normalize_gen_kwargs(requests[indices[0]].args[1], self.max_gen_toks)
            until = handle_stop_sequences(settings.pop("until", None), eos=eos)
            params = self._params(settings, until)
            room = self.engine.context_length - params.max_new_tokens
            if room < 1:
                raise ValueError(f"max_gen_toks {params.max_new_tokens} leaves no room for a prompt in the engine's "
                                 f"{self.engine.context_length}-token context")
            for first in range(0, len(indices), self.batch_size):
                chunk = indices[first : first + self.batch_size]
                prompts = [self.tok_encode(requests[i].args[0])[-room:] for i in chunk]
                for index, completion in zip(chunk, self.engine.generate_batch(prompts, params)):
                    text = completion.text
                    for stop in until:
                        text = text.split(stop)[0] if stop else text
                    self.cache_hook.add_partial("generate_until", requests[index].args, text)
                    results[index] = text
                progress.update(len(chunk))
        progress.close()
        return [text or "" for text in results]

    @staticmethod
    def _params(settings: dict[str, Any], until: Sequence[str]) -> GenerationParams:
        """lm-eval's normalized generation kwargs as belle's `GenerationParams` (no repetition penalty:
        the model's raw distribution, as HFLM decodes)."""
        temperature = float(settings.get("temperature") or 0.0) if settings.get("do_sample") else 0.0
        stop = tuple(s for s in until if s)
        if len(stop) > MAX_STOP_STRINGS:
            logger.info("%d stop strings; the engine stops at the first %d, the rest cut the reply afterwards",
                        len(stop), MAX_STOP_STRINGS)
        return GenerationParams(temperature=temperature, top_p=float(settings.get("top_p") or 1.0),
                                top_k=int(settings.get("top_k") or 0), repetition_penalty=1.0,
                                max_new_tokens=int(settings["max_gen_toks"]), stop=stop[:MAX_STOP_STRINGS],
                                seed=settings.get("seed"))

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The few-shot history as the engine's template renders it, ending in the reply header; with
        `add_generation_prompt` False the last (assistant) message is left open to be continued."""
        bos, eos = self.tokenizer.bos_token or "", self.tokenizer.eos_token or ""
        if not add_generation_prompt and chat_history and chat_history[-1]["role"] == "assistant":
            return render_text(self.engine.template, chat_history[:-1], True, bos, eos) + chat_history[-1]["content"]
        return render_text(self.engine.template, chat_history, add_generation_prompt, bos, eos)

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        """The engine's template as Jinja (recorded in lm-eval's results), or None when not applied."""
        return to_jinja(self.engine.template) if chat_template else None
