"""GGUF files run through llama.cpp (llama-cpp-python): the engine surface of `belle.generation.Engine`,
so `belle chat`, `belle serve`, `belle eval generate` and `belle generate` take `--model FILE.gguf`.

llama.cpp evaluates the model; belle does the rest as it does for transformers models. Prompts are
rendered by belle's template and tokenized piece by piece (`encode_prompt`) with llama.cpp's own
tokenizer over the file's vocabulary (`LlamaCppTokenizer`), so the ids equal transformers' for the
same history. Sampling is done here, in numpy, from llama.cpp's logits, with transformers' semantics:
repetition penalty over the prompt and the reply so far (llama.cpp's own sampler penalizes only the
last `penalty_last_n` accepted tokens, never the prompt), then temperature, top-k, top-p; greedy at
temperature 0. Logprobs are log_softmax of the raw logits in float32.

One engine decodes one sequence at a time: a worker thread takes requests first in, first out
(streams, prompt scoring, perplexity) and feeds each stream token by token, checking its cancel flag
after every token (a prompt is evaluated `n_batch` tokens per llama.cpp call; `close()` is seen
between calls, a cancel only once the prompt is in). The KV cache keeps the last sequence, so a
prompt that starts as the previous one did (the next turn of a chat) evaluates only what is new.
The worker thread alone touches llama.cpp's context, and frees it when it stops.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import functools
import json
import logging
import queue
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from belle.cli import UsageError
from belle.generation import (
    MAX_TOP_LOGPROBS, Completion, Engine, GenerationParams, PromptTooLong, TextStream, TokenLogprob, generation_defaults,
)
from belle.hardware import usable_cpus
from belle.modeling import reply_end_ids, resolve_template
from belle.perplexity import TextScore, windows
from belle.templates import Template

logger = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
INSTALL_HINT = "pip install 'belle[gguf]'"
DEFAULT_CONTEXT = 4096
"""Tokens of context llama.cpp allocates when no `context_length` is asked for and the model was
trained on more: its KV cache is allocated up front (a 128k-token model's would take gigabytes)."""


class EngineClosed(RuntimeError):
    """The engine was closed while a request waited or ran."""


def is_gguf(path: str | Path) -> bool:
    """True for a file whose first 4 bytes are the GGUF magic."""
    try:
        with open(path, "rb") as file:
            return file.read(4) == GGUF_MAGIC
    except OSError:
        return False


def _import_llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError:
        raise UsageError(f"running a GGUF file needs llama-cpp-python: {INSTALL_HINT}") from None
    return llama_cpp


BELLE_KEYS = ("belle.template", "belle.eos_token_ids", "belle.generation_config", "tokenizer.chat_template",
              "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.padding_token_id")
"""The GGUF keys the engine reads: belle's own and the tokenizer's special ids and template."""


def read_gguf_fields(path: str | Path, keys: Sequence[str] = BELLE_KEYS) -> dict[str, Any]:
    """The values of `keys` in a GGUF file's header, those present only. llama.cpp's metadata API
    leaves out arrays, so gguf-py reads the header. A key may name `{arch}` (`{arch}.context_length`):
    the file's `general.architecture`. Raises `UsageError` without gguf-py, `ValueError` for a file
    whose header cannot be read."""
    try:
        from gguf import GGUFReader
    except ImportError:
        raise UsageError(f"reading a GGUF file needs gguf: {INSTALL_HINT}") from None
    try:
        fields = GGUFReader(path).fields
    except Exception:  # gguf-py raises what numpy and struct raise on a broken header
        raise ValueError(f"{path}: not a readable GGUF file: its header is damaged or cut short") from None
    arch = fields["general.architecture"].contents() if "general.architecture" in fields else ""
    named = {key: key.replace("{arch}", arch) for key in keys}
    return {key: fields[name].contents() for key, name in named.items() if name in fields}


class LlamaCppTokenizer:
    """The part of a Hugging Face tokenizer's API belle calls, over llama.cpp's vocabulary.

    Special-token strings in text are parsed as their tokens, as HF does for added tokens; with
    `add_special_tokens` (the default) BOS/EOS are added where the GGUF's `add_bos_token` /
    `add_eos_token` say, as the HF tokenizer it was exported from adds them. `decode` with
    `skip_special_tokens` leaves control tokens out. The special tokens are those the GGUF names.
    """

    def __init__(self, llama_cpp: Any, model: Any, metadata: dict[str, Any]):
        self._api = llama_cpp
        self._vocab = llama_cpp.llama_model_get_vocab(model)
        self._size = int(llama_cpp.llama_vocab_n_tokens(self._vocab))
        self._vocab_cache: dict[str, int] | None = None
        self.chat_template: str | None = metadata.get("tokenizer.chat_template")
        self.bos_token_id = metadata.get("tokenizer.ggml.bos_token_id")
        self.eos_token_id = metadata.get("tokenizer.ggml.eos_token_id")
        self.pad_token_id = metadata.get("tokenizer.ggml.padding_token_id")

    def _text(self, token_id: int | None) -> str | None:
        if token_id is None or not 0 <= token_id < self._size:
            return None
        return self._api.llama_vocab_get_text(self._vocab, token_id).decode("utf-8", errors="replace")

    @property
    def bos_token(self) -> str | None:
        return self._text(self.bos_token_id)

    @property
    def eos_token(self) -> str | None:
        return self._text(self.eos_token_id)

    def __len__(self) -> int:
        return self._size

    def get_vocab(self) -> dict[str, int]:
        """Each token's vocabulary entry (`Ġhello`, `▁hello`, `<s>`) -> its id."""
        if self._vocab_cache is None:
            self._vocab_cache = {self._text(i): i for i in range(self._size)}
        return dict(self._vocab_cache)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        data = text.encode("utf-8")
        room = len(data) + 8
        while True:
            buffer = (self._api.llama_token * room)()
            count = self._api.llama_tokenize(self._vocab, data, len(data), buffer, room, add_special_tokens, True)
            if count >= 0:
                return list(buffer[:count])
            room = -count

    def __call__(self, text: str | Sequence[str], add_special_tokens: bool = True, return_attention_mask: bool = True,
                 verbose: bool = True) -> dict[str, Any]:
        """`{"input_ids": ids}` for a text, or a list of id lists for a list of texts (with
        `attention_mask`, all ones, unless `return_attention_mask` is False)."""
        if isinstance(text, str):
            ids: Any = self.encode(text, add_special_tokens)
            mask: Any = [1] * len(ids)
        else:
            ids = [self.encode(item, add_special_tokens) for item in text]
            mask = [[1] * len(row) for row in ids]
        return {"input_ids": ids, "attention_mask": mask} if return_attention_mask else {"input_ids": ids}

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """The text of `ids`; an incomplete UTF-8 character at either end comes out as U+FFFD."""
        tokens = (self._api.llama_token * max(1, len(ids)))(*ids)
        room = 8 * len(ids) + 16
        while True:
            buffer = ctypes.create_string_buffer(room)
            count = self._api.llama_detokenize(self._vocab, tokens, len(ids), buffer, room, False, not skip_special_tokens)
            if count >= 0:
                return bytes(buffer[:count]).decode("utf-8", errors="replace")
            room = -count


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    """log_softmax over the last axis, in float32 (as torch computes it for the transformers engine)."""
    logits = logits.astype(np.float32, copy=False)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _token_logprob(tokenizer: LlamaCppTokenizer, token_id: int, row: np.ndarray, top: int) -> TokenLogprob:
    """`token_id`'s entry in `row` (log-probabilities, shape (vocab,)), with the `top` most likely."""
    best: tuple[tuple[int, str, float], ...] = ()
    if top:
        ids = np.argpartition(-row, top - 1)[:top]
        ids = ids[np.argsort(-row[ids], kind="stable")]
        best = tuple((int(i), tokenizer.decode([int(i)]), float(row[i])) for i in ids)
    return TokenLogprob(token_id, tokenizer.decode([token_id]), float(row[token_id]), best)


def choose_token(logits: np.ndarray, history: Sequence[int], generated: int, params: GenerationParams,
                 eos_token_ids: Sequence[int], rng: np.random.Generator) -> int:
    """The next token from raw `logits` (shape (vocab,), float32), as transformers' `generate` picks
    it: the argmax of `next_token_scores` at temperature 0, else a draw from `rng` over
    `sampling_distribution`."""
    scores = next_token_scores(logits, history, generated, params, eos_token_ids)
    if params.temperature == 0:
        return int(np.argmax(scores))
    candidates, probs = sampling_distribution(scores, params)
    return int(candidates[rng.choice(len(candidates), p=probs)])


def next_token_scores(logits: np.ndarray, history: Sequence[int], generated: int, params: GenerationParams,
                      eos_token_ids: Sequence[int]) -> np.ndarray:
    """`logits` (shape (vocab,)) with transformers' repetition penalty over `history` (prompt and
    reply so far: CTRL's, a logit divided by the penalty if positive, multiplied if negative) and
    EOS barred (-inf) while fewer than `min_new_tokens` are `generated`; float32."""
    scores = np.array(logits, dtype=np.float32)
    if params.repetition_penalty != 1 and len(history):
        seen = np.unique(np.asarray(history, dtype=np.int64))
        values = scores[seen]
        scores[seen] = np.where(values < 0, values * params.repetition_penalty, values / params.repetition_penalty)
    if generated < params.min_new_tokens and eos_token_ids and not params.ignore_eos:
        scores[list(eos_token_ids)] = -np.inf
    return scores


def sampling_distribution(scores: np.ndarray, params: GenerationParams) -> tuple[np.ndarray, np.ndarray]:
    """The tokens `scores` may be sampled as under transformers' warpers, temperature, then top-k
    (ties with the k-th kept), then top-p (the smallest tokens whose mass stays at or below
    1 - top_p dropped), and their probabilities (float64, summing to 1)."""
    if params.temperature != 1:
        scores = scores / np.float32(params.temperature)
    candidates = np.arange(scores.shape[0])
    if params.top_k and params.top_k < scores.shape[0]:
        kth = np.partition(scores, -params.top_k)[-params.top_k]
        candidates = np.flatnonzero(scores >= kth)  # ties with the k-th stay, as in TopKLogitsWarper
    kept = scores[candidates].astype(np.float64)
    if params.top_p < 1:
        order = np.argsort(kept, kind="stable")  # ascending, as TopPLogitsWarper sorts
        probs = np.exp(kept[order] - kept[order].max())
        cumulative = np.cumsum(probs / probs.sum())
        drop = cumulative <= 1 - params.top_p
        drop[-1] = False
        keep = np.sort(order[~drop])
        candidates, kept = candidates[keep], kept[keep]
    probs = np.exp(kept - kept.max())
    return candidates, probs / probs.sum()


@functools.cache
def amx_may_crash(system_info: bytes) -> bool:
    """Whether llama.cpp's weight repacking could run AMX kernels here: the library was built with AMX
    (`system_info`, llama.cpp's `llama_print_system_info()`, says `AMX_INT8 = 1`: a native build on
    such a CPU) and /proc/cpuinfo lists AMX tiles (Intel Xeon since Sapphire Rapids).

    On a Sapphire Rapids VM that reports AMX (and grants it through arch_prctl) without the hypervisor
    enabling it, llama.cpp 0.3.36's first AMX kernel died of SIGILL (`tilezero`), one thread or many:
    so belle runs such a build there without repacking. `scripts/setup.sh` builds llama.cpp for AVX2
    on x86-64, with no AMX, and keeps repacking (its interleaved q4_0/q8_0 layouts) on.
    """
    if b"AMX_INT8 = 1" not in system_info:
        return False
    try:
        return "amx_tile" in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False


def weight_repacking() -> bool:
    """Whether belle lets llama.cpp repack quantized weights on this machine (see `amx_may_crash`)."""
    return not amx_may_crash(_import_llama_cpp().llama_print_system_info())


class _Context:
    """A llama.cpp model and its context (one sequence), loaded with llama.cpp's C API, and the KV
    cache's contents; decoding runs on the engine's worker thread only.

    `past` is the sequence whose keys and values the cache holds, at positions 0 .. len(past) - 1.
    Weight repacking (llama.cpp's "extra buffer types": AMX, and the CPU's interleaved layouts) is
    used unless it could run AMX kernels on this machine (`amx_may_crash`).
    """

    def __init__(self, llama_cpp: Any, path: Path, context_length: int | None, threads: int):
        self.api = llama_cpp
        self.batch: Any = None
        self.ctx: Any = None
        self.closing = threading.Event()
        """Set by `GgufEngine.close()`: `feed` stops before its next llama.cpp call."""
        chatter = logging.getLogger("llama-cpp-python")  # llama.cpp's own log, through llama-cpp-python
        if chatter.level == logging.NOTSET:
            chatter.setLevel(logging.ERROR)
        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_default_params()
        params.use_extra_bufts = weight_repacking()
        if not params.use_extra_bufts:
            logger.info("llama.cpp was built with AMX and the CPU reports it: no weight repacking (see amx_may_crash)")
        self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not self.model:
            raise ValueError(f"{path}: llama.cpp cannot load it (its log above says why)")
        self.n_ctx_train = int(llama_cpp.llama_model_n_ctx_train(self.model))
        n_ctx = self.n_ctx = context_length or min(self.n_ctx_train, DEFAULT_CONTEXT)
        self.n_batch = min(n_ctx, 512)
        context = llama_cpp.llama_context_default_params()
        context.n_ctx, context.n_batch, context.n_ubatch = n_ctx, self.n_batch, self.n_batch
        context.n_threads = context.n_threads_batch = threads
        self.ctx = llama_cpp.llama_init_from_model(self.model, context)
        if not self.ctx:
            self.close()
            raise ValueError(f"{path}: llama.cpp cannot make a {n_ctx}-token context for it")
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self.model)))
        self.batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self.past: list[int] = []

    def close(self) -> None:
        """Free the batch, the context and the model (once)."""
        if self.batch is not None:
            self.api.llama_batch_free(self.batch)
            self.batch = None
        if self.ctx:
            self.api.llama_free(self.ctx)
            self.ctx = None
        if self.model:
            self.api.llama_model_free(self.model)
            self.model = None

    def _truncate(self, keep: int) -> int:
        """Drop the cache after the first `keep` tokens; returns how many stayed (0 if it cannot cut)."""
        memory = self.api.llama_get_memory(self.ctx)
        if keep == 0 or not self.api.llama_memory_seq_rm(memory, 0, keep, -1):
            self.api.llama_memory_clear(memory, True)
            keep = 0
        del self.past[keep:]
        return keep

    def feed(self, tokens: Sequence[int], outputs: Callable[[int], bool]) -> Iterator[tuple[int, np.ndarray]]:
        """Evaluate `tokens` after `past`, `n_batch` at a time; yields (index into `tokens`, logits of
        shape (vocab,), float32) for each index `outputs` wants, and always for the last token.
        Raises `EngineClosed` before a llama.cpp call once `closing` is set."""
        for start in range(0, len(tokens), self.n_batch):
            if self.closing.is_set():
                raise EngineClosed("the engine was closed")
            chunk = tokens[start : start + self.n_batch]
            batch = self.batch
            wanted = []
            for i, token in enumerate(chunk):
                index = start + i
                want = outputs(index) or index == len(tokens) - 1
                batch.token[i] = token
                batch.pos[i] = len(self.past) + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = want
                if want:
                    wanted.append(index)
            batch.n_tokens = len(chunk)
            code = self.api.llama_decode(self.ctx, batch)
            if code != 0:
                raise RuntimeError(f"llama.cpp could not evaluate the tokens (llama_decode returned {code})")
            self.past.extend(chunk)
            if wanted:
                rows = np.ctypeslib.as_array(self.api.llama_get_logits(self.ctx), shape=(len(wanted), self.n_vocab))
                for row, index in enumerate(wanted):
                    yield index, np.array(rows[row], dtype=np.float32)

    def prefill(self, prompt: Sequence[int]) -> np.ndarray:
        """Logits after `prompt` (shape (vocab,)), evaluating only what the cache does not hold."""
        common = 0
        for a, b in zip(self.past, prompt):
            if a != b:
                break
            common += 1
        common = self._truncate(min(common, len(prompt) - 1))  # the last token is fed again for its logits
        *_, (_, logits) = self.feed(list(prompt[common:]), lambda index: False)
        return logits

    def step(self, token: int) -> np.ndarray:
        (_, logits), = self.feed([token], lambda index: False)
        return logits

    def fresh(self, tokens: Sequence[int], outputs: Callable[[int], bool]) -> Iterator[tuple[int, np.ndarray]]:
        """`feed` from an empty cache: every position evaluated anew."""
        self._truncate(0)
        return self.feed(tokens, outputs)


class _Request:
    """One stream's place in the queue: whether decoding has begun, and whether the stream has ended."""

    def __init__(self, stream: TextStream, prompt_ids: list[int], params: GenerationParams):
        self.stream, self.prompt_ids, self.params = stream, prompt_ids, params
        self.started = False
        self.ended = False
        self.lock = threading.Lock()

    def start(self) -> bool:
        """Claim the request for decoding; False when it was cancelled while it waited."""
        with self.lock:
            if self.ended:
                return False
            self.started = True
            return True

    def cancel(self) -> None:
        """A waiting request ends at once; a running one ends after its current token (the worker
        sees the stream's cancel flag). Checked and marked under one lock, so a request the worker
        claims at that moment is either ended here and never decoded, or decoded and not ended here."""
        with self.lock:
            if self.started or self.ended:
                return
            self.ended = True
        self.stream._finish(None)

    def end(self, error: BaseException | None = None) -> None:
        with self.lock:
            if self.ended:
                return
            self.ended = True
        self.stream._finish(error)


_STOP = object()


class GgufEngine:
    """A GGUF model loaded by llama.cpp, with the surface of `belle.generation.Engine`.

    Args:
        context: the llama.cpp model and context (`context_length` tokens).
        tokenizer: `LlamaCppTokenizer` over its vocabulary.
        template: the prompt format.
        name: what clients call it.
        context_length: the most tokens, prompt plus reply.
        eos_token_ids: ids that end a reply.
        generation_config: the exported model's generation_config.json, as a dict.
    """

    batching = False
    batcher = None

    def __init__(self, context: _Context, tokenizer: LlamaCppTokenizer, template: Template, name: str, context_length: int,
                 eos_token_ids: frozenset[int], generation_config: dict[str, Any] | None = None):
        self.tokenizer = tokenizer
        self.template = template
        self.name = name
        self.context_length = context_length
        self.eos_token_ids = eos_token_ids
        self.generation_config = generation_config or {}
        self._context = context
        self._jobs: queue.Queue[Any] = queue.Queue()
        self._running: _Request | None = None
        self._closed = False
        self._lock = threading.Lock()
        self._worker = threading.Thread(target=self._work, daemon=True, name=f"belle-llamacpp-{name}")
        self._worker.start()

    # The prompt side is Engine's own: it needs only the tokenizer, the template, the context and `stream`.
    encode_chat = Engine.encode_chat
    encode_text = Engine.encode_text
    fit_chat = Engine.fit_chat
    fits = Engine.fits
    check_fits = Engine.check_fits
    chat = Engine.chat

    @property
    def vocab_size(self) -> int:
        """Rows of the output layer: the logits of one position have this many entries."""
        return self._context.n_vocab

    @property
    def default_params(self) -> GenerationParams:
        """What transformers' `generate()` does with the exported generation_config.json (`generation_defaults`)."""
        return generation_defaults(self.generation_config)

    def close(self) -> None:
        """Cancel what runs and waits, stop the worker and wait for it to free llama.cpp's model and
        context (a running llama.cpp call finishes first: at most `n_batch` tokens). Called from the
        worker itself (an `on_finish` callback), it returns at once and the worker frees them as it stops."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._context.closing.set()
        self._drop_waiting()
        running = self._running
        if running is not None:
            running.stream.cancel()
        self._jobs.put(_STOP)
        if threading.current_thread() is not self._worker:
            self._worker.join()

    def _submit(self, job: Any) -> None:
        with self._lock:
            if self._closed:
                raise EngineClosed(f"the engine {self.name!r} is closed")
            self._jobs.put(job)

    def _work(self) -> None:
        """Run jobs in order until `_STOP`, then free the context. A job that fails past its own
        error handling (an `on_finish` callback that raises) is logged; the next one runs."""
        try:
            while (job := self._jobs.get()) is not _STOP:
                try:
                    self._run(job)
                except Exception:
                    logger.exception("%s: a request failed outside its stream", self.name)
        finally:
            self._context.close()

    def _run(self, job: Any) -> None:
        if isinstance(job, _Request):
            self._decode(job)
            return
        function, future = job
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(function())
            except BaseException as error:  # raised again in the caller
                future.set_exception(error)

    def _drop_waiting(self) -> None:
        """End every queued request (as cancelled) and cancel every queued call."""
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            if isinstance(job, _Request):
                job.end()
            elif job is not _STOP:
                job[1].cancel()

    def _call(self, function: Callable[[], Any]) -> Any:
        """Run `function` on the worker thread, in its turn; return its result or raise its error."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._submit((function, future))
        try:
            return future.result()
        except concurrent.futures.CancelledError:  # `close()` dropped it from the queue
            raise EngineClosed(f"the engine {self.name!r} was closed") from None

    def stream(self, prompt_ids: list[int], params: GenerationParams, on_finish: Callable[[], None] | None = None,
               *, more_coming: bool = False) -> TextStream:
        """Queue a reply to `prompt_ids`; iterate the result for text deltas. `more_coming` does not
        matter here: requests decode one after another."""
        if not prompt_ids:
            raise ValueError("the prompt has no tokens")
        self.check_fits(prompt_ids, params)
        stream = TextStream(self, prompt_ids, params, on_finish)  # type: ignore[arg-type]
        request = _Request(stream, list(prompt_ids), params)
        stream._on_cancel = request.cancel
        self._submit(request)
        return stream

    def _decode(self, request: _Request) -> None:
        if not request.start():
            return
        self._running = request
        stream, params = request.stream, request.params
        error = None
        try:
            rng = np.random.default_rng(None if params.seed is None else params.seed % 2**64)  # numpy takes no negative seed
            ends = () if params.ignore_eos else tuple(sorted(self.eos_token_ids))
            history = list(request.prompt_ids)
            logits = self._context.prefill(request.prompt_ids)
            for generated in range(params.max_new_tokens):
                token = choose_token(logits, history, generated, params, ends, rng)
                logprob = None
                if params.logprobs is not None:
                    logprob = _token_logprob(self.tokenizer, token, _log_softmax(logits), params.logprobs)
                stream._push(token, logprob)
                history.append(token)
                if stream._cancelled.is_set() or self._closed or token in ends or generated + 1 == params.max_new_tokens:
                    break
                logits = self._context.step(token)
        except EngineClosed:  # the stream ends as cancelled
            pass
        except BaseException as failure:  # handed to the stream's reader, which raises it
            error = failure
        finally:
            self._running = None
            request.end(error)

    def generate(self, prompt_ids: list[int], params: GenerationParams) -> Completion:
        """The whole reply, cut at EOS and at stop strings."""
        stream = self.stream(prompt_ids, replace(params, logprobs=None))
        text = stream.text()
        return Completion(text, stream.finish_reason or "length", stream.prompt_tokens, stream.completion_tokens)

    def generate_batch(self, prompts: Sequence[list[int]], params: GenerationParams) -> list[Completion]:
        """Replies to several prompts, decoded one after another (each as it would be alone)."""
        for ids in prompts:
            self.check_fits(ids, params)
        return [self.generate(ids, params) for ids in prompts]

    def generate_all(self, prompts: Sequence[list[int]], params: GenerationParams, window: int) -> Iterator[tuple[int, Completion]]:
        """(index into `prompts`, reply) for every prompt, in order; `window` is accepted for
        `Engine`'s sake (llama.cpp decodes one sequence at a time)."""
        if window < 1:
            raise ValueError(f"window must be at least 1, not {window}")
        for index, ids in enumerate(prompts):
            yield index, self.generate(ids, params)

    def prompt_logprobs(self, prompts: Sequence[list[int]], top: int = 0, logits_bytes: int = 2**30) -> list[list[TokenLogprob | None]]:
        """Each prompt token's log-probability given the tokens before it (OpenAI's `echo` with
        `logprobs`), with the `top` most likely at each position; entry 0 of each prompt is None.
        Each prompt is evaluated anew, `n_batch` tokens per llama.cpp call (`logits_bytes` is
        `Engine`'s batching bound, not needed here)."""
        if not 0 <= top <= MAX_TOP_LOGPROBS:
            raise ValueError(f"top must be between 0 and {MAX_TOP_LOGPROBS}, not {top}")
        for ids in prompts:
            if len(ids) > self.context_length:
                raise PromptTooLong(len(ids), self.context_length, 0)

        def score() -> list[list[TokenLogprob | None]]:
            results: list[list[TokenLogprob | None]] = []
            for ids in prompts:
                entries: list[TokenLogprob | None] = [None] if ids else []
                for index, logits in self._context.fresh(ids, lambda index: index < len(ids) - 1):
                    if index < len(ids) - 1:
                        entries.append(_token_logprob(self.tokenizer, ids[index + 1], _log_softmax(logits), top))
                results.append(entries)
            return results

        return self._call(score)

    def score_text(self, ids: list[int], seqlen: int, stride: int | None = None) -> TextScore:
        """Negative log-likelihood of `ids` in `belle.perplexity.windows`, as `score_ids` computes it
        for a transformers model (log_softmax of llama.cpp's logits in float32)."""
        if len(ids) < 2:
            raise ValueError(f"perplexity needs at least 2 tokens, not {len(ids)}")
        if seqlen > self.context_length:
            raise ValueError(f"seqlen {seqlen} is longer than the engine's {self.context_length}-token context")
        cut = windows(len(ids), seqlen, stride)

        def score() -> TextScore:
            nll = 0.0
            for window in cut:
                inputs = ids[window.begin : window.stop - 1]
                first = window.first - 1 - window.begin  # index in `inputs` of the first scored position
                for index, logits in self._context.fresh(inputs, lambda index: index >= first):
                    if index >= first:
                        nll -= float(_log_softmax(logits)[ids[window.begin + index + 1]])
            return TextScore(nll=nll, tokens=len(ids) - 1, windows=len(cut))

        return self._call(score)


def load_gguf_engine(path: str | Path, *, name: str | None = None, template: str | None = None,
                     context_length: int | None = None, threads: int | None = None) -> GgufEngine:
    """Load a GGUF file on the CPU with llama.cpp.

    The template is `template` if given, else the file's `belle.template`, else its embedded
    `tokenizer.chat_template` (belle's `model` template). The context is `context_length`, else the
    model's training context up to `DEFAULT_CONTEXT` tokens; `threads` defaults to the CPUs this
    process may use (`belle.hardware.usable_cpus`).
    Raises `UsageError` without llama-cpp-python, `ValueError` for a file it cannot load.
    """
    llama_cpp = _import_llama_cpp()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if not is_gguf(path):
        raise ValueError(f"{path}: not a GGUF file (it does not start with the GGUF magic bytes)")
    metadata = read_gguf_fields(path)
    threads = threads or usable_cpus()
    context = _Context(llama_cpp, path, context_length, threads)
    try:
        tokenizer = LlamaCppTokenizer(llama_cpp, context.model, metadata)
        resolved = resolve_template(path, tokenizer, template or metadata.get("belle.template"))
        eos_token_ids = _eos_ids(llama_cpp, context.model, tokenizer, resolved, metadata)
        engine = GgufEngine(context, tokenizer, resolved, name or path.stem, context.n_ctx, eos_token_ids,
                            _generation_config(path, metadata))
    except BaseException:
        context.close()
        raise
    if context.n_ctx < context.n_ctx_train and not context_length:
        logger.info("%s: a %d-token context of the model's %d (--context-length asks for more)", path.name,
                    context.n_ctx, context.n_ctx_train)
    logger.info("%s: llama.cpp, %d-token context, %d threads, template %s", path.name, context.n_ctx, threads, resolved.name)
    return engine


def _eos_ids(llama_cpp: Any, model: Any, tokenizer: LlamaCppTokenizer, template: Template, metadata: dict[str, Any]) -> frozenset[int]:
    """`belle.eos_token_ids` when the file has it; else `belle.modeling.reply_end_ids` with llama.cpp's
    EOS and EOT as the configured ends (llama.cpp says -1 for one the vocabulary lacks)."""
    if "belle.eos_token_ids" in metadata:
        return frozenset(int(i) for i in metadata["belle.eos_token_ids"])
    vocab = llama_cpp.llama_model_get_vocab(model)
    configured = [int(llama_cpp.llama_vocab_eos(vocab)), int(llama_cpp.llama_vocab_eot(vocab))]
    return frozenset(i for i in reply_end_ids(tokenizer, template, configured) if i >= 0)


def _generation_config(path: Path, metadata: dict[str, Any]) -> dict[str, Any]:
    text = metadata.get("belle.generation_config") or "{}"
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: belle.generation_config is not valid JSON: {error}") from None
    return config if isinstance(config, dict) else {}
