"""Concurrent replies decoded together: transformers' continuous batching behind `belle.generation`.

One `Batcher` per engine owns `ContinuousBatchingManager`s (transformers'
`generation/continuous_batching`, each with a paged KV cache of bounded size) whose background
thread decodes every running request in one forward pass per step; new requests join at step
boundaries and finished ones leave. Each request's new tokens reach its stream through a result
handler run on that thread; cancelling a stream cancels its request, which frees its slot.

Greedy requests go to a manager that takes the argmax of the raw logits. Sampled requests go to
a second manager, started on the first of them, whose logits processors (temperature, top-k,
top-p, built once from a generation config that makes all three exist) take their values per
request; those processors cost about a third of a small model's decoding step, which is why
greedy requests, the common case of evaluations and benchmarks, do not pass through them.
Requests neither can serve exactly as `model.generate` would (a repetition penalty, a seed,
logprobs, a minimum length below the maximum) take the engine's thread path, and so does a request
alone (`belle.generation.Engine`), until another arrives.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import weakref
from dataclasses import dataclass
from math import ceil
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from belle.generation import GenerationParams

logger = logging.getLogger(__name__)

PAGE_SIZE = 256
"""Tokens per KV-cache block."""
NO_TOP_K = 2**30
"""A top-k that keeps every token: the manager clamps it to the vocabulary (its 0 would mean 1)."""
NO_EOS = [-1]
FREE_MEMORY_SHARE = 0.3
"""The most of the free memory each of the two KV caches takes by default."""
GQA_IN_SDPA = "TRANSFORMERS_SDPA_FORCE_GQA"
"""transformers' switch for grouped-query attention inside `scaled_dot_product_attention` when a
mask is given (it repeats the key/value heads otherwise). A batched step always has a mask; on CPU,
where torch's kernel takes both, that made 8 streams of the 81M benchmark model about 10% faster.
On CUDA a mask with GQA falls back to the math kernel; the switch is process-wide, so belle sets it
only on a machine with no GPU."""


@dataclass(frozen=True)
class BatchingOptions:
    """How many replies decode together, and the KV cache they share.

    Args:
        max_running: the most requests in one decoding step; more wait for a slot.
        kv_cache_tokens: tokens of KV cache (prompt plus reply, all running requests together), for
            greedy requests and as much for sampled ones; None: `max_running` x min(context, 2048),
            at most FREE_MEMORY_SHARE of the free memory each.
    """

    max_running: int = 16
    kv_cache_tokens: int | None = None

    def cache_tokens(self, context_length: int, bytes_per_token: int, free_bytes: int) -> int:
        """The cache of each manager, in tokens: `kv_cache_tokens` if set, else `max_running` x
        min(context, 2048), but at most FREE_MEMORY_SHARE of `free_bytes` (two managers: greedy, sampling)."""
        if self.kv_cache_tokens:
            return self.kv_cache_tokens
        return min(self.max_running * min(context_length, 2048), int(free_bytes * FREE_MEMORY_SHARE) // bytes_per_token)


def free_memory_bytes(device: Any) -> int:
    """Memory free for a KV cache on `device`: the GPU's free memory, or the machine's available RAM."""
    import torch

    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def kv_bytes_per_token(model: Any) -> int:
    """Bytes of keys and values one token takes over all layers, in the model's dtype."""
    config = model.config.get_text_config()
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return 2 * config.num_hidden_layers * kv_heads * head_dim * model.dtype.itemsize


# generation_config fields that make `model.generate` shape the logits in ways the batcher does not,
# with the value that means "off".
UNBATCHED_SETTINGS: dict[str, Any] = {
    "bad_words_ids": None, "begin_suppress_tokens": None, "suppress_tokens": None, "sequence_bias": None,
    "no_repeat_ngram_size": 0, "encoder_no_repeat_ngram_size": 0, "encoder_repetition_penalty": 1.0,
    "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "exponential_decay_length_penalty": None, "forced_bos_token_id": None,
    "forced_eos_token_id": None, "min_p": None, "typical_p": 1.0, "top_h": None, "watermarking_config": None,
    "renormalize_logits": False, "min_length": 0, "guidance_scale": 1.0, "num_beams": 1,
}


def unbatched_settings(generation_config: Any) -> list[str]:
    """The fields of a model's generation config that `model.generate` applies and the batcher would not."""
    return [name for name, off in UNBATCHED_SETTINGS.items()
            if getattr(generation_config, name, None) not in (None, off)]


class _ForwardGuard:
    """Forward hooks on the model that keep a forward passing `is_causal` (continuous batching passes
    False: its own mask) from running beside any other forward of the model.

    transformers 5.25 applies a forward's `is_causal` by setting it on the shared model config for
    the duration of the call (`merge_with_config_defaults`), so a `model.generate` step on another
    thread meanwhile attends without a causal mask and decodes garbage. Plain forwards still run
    together; a waiting exclusive forward goes first, so decoding steps are not starved.
    """

    def __init__(self, model: Any):
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._waiting = 0
        self._local = threading.local()
        self._handles = [
            model.register_forward_pre_hook(self._enter, with_kwargs=True),
            model.register_forward_hook(self._leave, with_kwargs=True, always_call=True),
        ]

    def _enter(self, module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        exclusive = kwargs.get("is_causal") is not None
        with self._cond:
            if exclusive:
                self._waiting += 1
                self._cond.wait_for(lambda: not self._exclusive and self._shared == 0)
                self._waiting -= 1
                self._exclusive = True
            else:
                self._cond.wait_for(lambda: not self._exclusive and not self._waiting)
                self._shared += 1
        self._local.__dict__.setdefault("stack", []).append(exclusive)

    def _leave(self, module: Any, args: Any, kwargs: dict[str, Any], output: Any) -> None:
        exclusive = self._local.stack.pop()
        with self._cond:
            if exclusive:
                self._exclusive = False
            else:
                self._shared -= 1
            self._cond.notify_all()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


class _Inline:
    """Stands in for the event loop that transformers' output router posts a result handler to:
    the handler runs at once, on the decoding thread (it only queues token ids), which spares each
    token a hop through another thread."""

    @staticmethod
    def call_soon_threadsafe(callback: Callable[..., Any], *args: Any) -> None:
        callback(*args)


class _Request:
    """One request's delivery state: its manager, tokens handed on so far, and whether it has ended."""

    def __init__(self, manager: Any, push: Callable[[int], None], finish: Callable[[BaseException | None], None]):
        self.manager, self.push, self.finish = manager, push, finish
        self.sent = 0
        self.ended = False
        self.lock = threading.Lock()

    def end(self, error: BaseException | None = None) -> None:
        with self.lock:
            if self.ended:
                return
            self.ended = True
        self.finish(error)


_OPEN: weakref.WeakSet[Batcher] = weakref.WeakSet()


def open_batchers() -> list[Batcher]:
    """Every batcher not closed yet. Each holds its model, its KV caches and two threads (idle, each
    wakes 10 times a second) until `close()`: a process that loads engines and drops them (a test
    session) closes them here."""
    return list(_OPEN)


class Batcher:
    """Continuous batching for one model. `submit` starts a request; `close` stops the managers.

    Each of the two managers (greedy, sampling) has a KV cache of `kv_cache_tokens`. Raises
    `ValueError` at construction when the model cannot batch exactly as `model.generate` decodes:
    eager attention (it would be switched to paged eager for `model.generate` too), generation
    settings the batcher does not apply, or no room for a cache.
    """

    def __init__(self, model: Any, eos_token_ids: frozenset[int], pad_token_id: int | None, context_length: int,
                 options: BatchingOptions = BatchingOptions()):
        attention = model.config._attn_implementation
        if attention == "eager":
            raise ValueError("eager attention (continuous batching would switch the model to paged eager attention)")
        unbatched = unbatched_settings(model.generation_config)
        if unbatched:
            raise ValueError(f"the model's generation_config sets {', '.join(unbatched)}, which batched decoding does not apply")
        self.model = model
        self.pad_token_id = pad_token_id
        self.max_running = options.max_running
        per_token = kv_bytes_per_token(model)
        self.kv_cache_tokens = options.cache_tokens(context_length, per_token, free_memory_bytes(model.device))
        if self.kv_cache_tokens < PAGE_SIZE:
            raise ValueError(f"no room for a KV cache: {self.kv_cache_tokens} tokens fit the free memory")
        self.eos_token_ids = sorted(eos_token_ids)
        self.memory_bytes = 2 * ceil(self.kv_cache_tokens / PAGE_SIZE) * PAGE_SIZE * per_token
        self._ids = itertools.count()
        self._requests: dict[str, _Request] = {}
        self._lock = threading.Lock()
        # A PeftModel hands `generate` and continuous batching to the model it wraps: guard that one.
        self._guard = _ForwardGuard(getattr(model.init_continuous_batching, "__self__", model))
        self._managers: dict[bool, Any] = {}  # sampling? -> ContinuousBatchingManager
        try:
            for sampling in (False, True):
                self._managers[sampling] = self._start_manager(sampling)
        except BaseException:
            self.close()
            raise
        _OPEN.add(self)

    def _start_manager(self, sampling: bool) -> Any:
        """A started manager: greedy (argmax of the raw logits), or sampling with per-request
        temperature, top-k and top-p."""
        from transformers import ContinuousBatchingConfig, GenerationConfig

        decoding = (dict(do_sample=True, temperature=0.7, top_k=50, top_p=0.9)  # per request; these make the processors exist
                    if sampling else dict(do_sample=False))
        config = GenerationConfig(**decoding, eos_token_id=self.eos_token_ids or NO_EOS, pad_token_id=self.pad_token_id,
                                  max_new_tokens=512)
        blocks = ceil(self.kv_cache_tokens / PAGE_SIZE)
        batching = ContinuousBatchingConfig(
            per_request_processors=sampling, auto_switch_to_flash=False, page_size=PAGE_SIZE, num_blocks=blocks,
            allow_block_sharing=False,  # with it, a prompt after a cancelled request of the same prefix decoded garbage
            max_batch_tokens=min(1024, blocks * PAGE_SIZE), max_requests_per_batch=self.max_running,
        )
        manager = self.model.init_continuous_batching(generation_config=config, continuous_batching_config=batching)
        # Started from a daemon thread, the manager's loop thread is a daemon too (threads inherit it),
        # so an engine never closed does not hold the interpreter open at exit.
        starter = threading.Thread(target=manager.start, daemon=True)
        starter.start()
        starter.join()
        return manager

    def accepts(self, params: GenerationParams, prompt_tokens: int) -> bool:
        """Whether the batcher decodes `params` exactly as `model.generate` would, in a cache that
        holds it, with its managers running."""
        return (
            params.repetition_penalty == 1 and (params.seed is None or params.temperature == 0)
            and params.logprobs is None and params.min_new_tokens == 0
            and prompt_tokens + params.max_new_tokens <= self.kv_cache_tokens
            and all(manager.is_running() for manager in self._managers.values())
        )

    @property
    def idle(self) -> bool:
        """No request is decoding or waiting."""
        with self._lock:
            return not self._requests

    def submit(self, prompt_ids: list[int], params: GenerationParams, push: Callable[[int], None],
               finish: Callable[[BaseException | None], None]) -> Callable[[], None]:
        """Start decoding `prompt_ids`: `push(token_id)` for each new token (EOS included), then
        `finish(None)`, or `finish(error)`; both are called on the decoding thread.
        Returns the function that cancels the request (then `finish(None)` is called at once)."""
        request_id = f"belle-{next(self._ids)}"
        sampled = params.temperature > 0
        manager = self._managers[sampled]
        request = _Request(manager, push, finish)
        with self._lock:
            self._requests[request_id] = request
        router = manager.output_router
        with router._lock:
            router.result_handlers[request_id] = (lambda output: self._deliver(request_id, request, output), _Inline)
        while not router.output_queue.empty():  # every request here has a handler: these are the last outputs
            router.output_queue.get_nowait()     # of cancelled ones, which came after their handler went
        sampling: dict[str, Any] = (
            {"temperature": float(params.temperature), "top_k": params.top_k or NO_TOP_K, "top_p": float(params.top_p)}
            if sampled else {}
        )
        eos = NO_EOS if params.ignore_eos else (self.eos_token_ids or NO_EOS)
        try:
            added = manager.add_request(list(prompt_ids), request_id=request_id, max_new_tokens=params.max_new_tokens,
                                        streaming=True, eos_token_id=eos, **sampling)
        except BaseException:
            self._forget(request_id)
            raise
        if added is None:
            self._forget(request_id)
            request.end(RuntimeError("the batcher is not accepting requests (it has stopped)"))
        return lambda: self._cancel(request_id)

    def _deliver(self, request_id: str, request: _Request, output: Any) -> None:
        """Hand a request's new tokens on; runs on the decoding thread, so nothing may escape it."""
        if request.ended:
            return
        try:
            new = output.generated_tokens[request.sent :]
            request.sent += len(new)
            for token_id in new:
                request.push(int(token_id))
            if output.error is not None:
                self._forget(request_id)
                request.end(RuntimeError(f"batched decoding failed: {output.error}"))
            elif output.is_finished():
                self._forget(request_id)
                request.end()
        except Exception:  # a reader that went away; the others decode on
            logger.exception("handing on the tokens of %s failed; cancelling it", request_id)
            request.manager.cancel_request(request_id)
            self._forget(request_id)

    def _forget(self, request_id: str) -> None:
        with self._lock:
            request = self._requests.pop(request_id, None)
        if request is not None:
            router = request.manager.output_router
            with router._lock:
                router.result_handlers.pop(request_id, None)

    def _cancel(self, request_id: str) -> None:
        with self._lock:
            request = self._requests.get(request_id)
        if request is None:
            return
        request.manager.cancel_request(request_id)
        self._forget(request_id)  # a cancelled request gets no last output: its handler goes here
        request.end()

    def run(self, prompt_ids: list[int], params: GenerationParams, timeout: float = 120) -> list[int]:
        """Decode one request to the end and return its tokens (the load-time probe)."""
        tokens: list[int] = []
        errors: list[BaseException] = []
        done = threading.Event()

        def finish(error: BaseException | None) -> None:
            if error is not None:
                errors.append(error)
            done.set()

        cancel = self.submit(prompt_ids, params, tokens.append, finish)
        if not done.wait(timeout):
            cancel()
            raise TimeoutError(f"no reply within {timeout:.0f} s")
        if errors:
            raise errors[0]
        return tokens

    def close(self) -> None:
        """Stop the managers; requests still running end (their streams as cancelled)."""
        with self._lock:
            running = list(self._requests)
        for request_id in running:
            self._cancel(request_id)
        for manager in self._managers.values():
            manager.stop(block=True, timeout=10)
        self._guard.remove()
        _OPEN.discard(self)


def start_batcher(model: Any, tokenizer: Any, eos_token_ids: frozenset[int], context_length: int,
                  options: BatchingOptions = BatchingOptions()) -> Batcher | None:
    """A batcher for `model`, probed at load: greedy on a short prompt, 8 tokens, against
    `model.generate`. None (and one log line saying why) when it cannot start or differs."""
    import torch

    from belle.generation import GenerationParams

    if model.device.type == "cpu" and not torch.cuda.is_available():
        os.environ.setdefault(GQA_IN_SDPA, "1")  # process-wide, hence only with no GPU; a user's own setting stands
    chatter = logging.getLogger("ContinuousBatchingLogger")  # transformers' own: INFO lines on stderr, beside the chat
    if chatter.level == logging.NOTSET:
        chatter.setLevel(logging.WARNING)
    try:
        batcher = Batcher(model, eos_token_ids, tokenizer.pad_token_id, context_length, options)
    except Exception as error:  # any failure only means the thread path serves every request
        logger.info("batched decoding is off: %s", error)
        return None
    params = GenerationParams(temperature=0, top_p=1.0, top_k=0, repetition_penalty=1.0, max_new_tokens=8, ignore_eos=True)
    prompt = tokenizer("Hello, 你好")["input_ids"][:16] or [0]
    try:
        batched = batcher.run(prompt, params)
        with torch.inference_mode():
            expected = model.generate(
                input_ids=torch.tensor([prompt], device=model.device), attention_mask=torch.ones(1, len(prompt), dtype=torch.long, device=model.device),
                do_sample=False, max_new_tokens=8, eos_token_id=[], pad_token_id=tokenizer.pad_token_id,
            )[0, len(prompt) :].tolist()
        if batched != expected:
            raise ValueError(f"its greedy tokens {batched} differ from model.generate's {expected}")
    except Exception as error:
        batcher.close()
        logger.info("batched decoding is off: the probe failed: %s", error)
        return None
    logger.info(
        "batched decoding: up to %d requests together, two KV caches (greedy, sampling) of %d tokens each, %.0f MiB in all",
        options.max_running, batcher.kv_cache_tokens, batcher.memory_bytes / 2**20,
    )
    return batcher
