"""The generation engine: one loaded model that renders prompts with its template and generates,
streamed token by token with a working stop, or in left-padded batches.

The web chat, the terminal chat, the OpenAI-compatible server and eval's answer generation all
use it. Concurrent streams decode together in the engine's batcher (`belle.batching`); a stream
alone, and one the batcher cannot decode exactly, runs `model.generate` in a worker thread. Either
hands token ids to the caller through a queue; the caller turns them into text
(`belle.streaming`). Cancelling a stream (the Stop button, a client that disconnects, a stop string
that appeared) ends its generation after the current token.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, ClassVar, Iterator, Literal, Protocol, Sequence

from belle.modeling import load_model, load_tokenizer, read_checkpoint_info, reply_end_ids, resolve_template, split_adapter
from belle.streaming import IncrementalDecoder, StopMatcher, cut_at_stop
from belle.templates import Template
from belle.tokenization import encode_prompt

if TYPE_CHECKING:
    from belle.perplexity import TextScore

logger = logging.getLogger(__name__)

FinishReason = Literal["stop", "length", "cancelled"]
Dtype = Literal["auto", "float32", "bfloat16", "float16"]
MAX_STOP_STRINGS = 16
MAX_TOP_LOGPROBS = 20
THREAD_STREAMS = 4  # batch-1 `generate` threads running at once over one engine


@dataclass(frozen=True)
class GenerationParams:
    """Decoding settings. The defaults are those of BELLE's web demo.

    Args:
        temperature: 0 decodes greedily; above 0 samples.
        top_p: nucleus sampling mass, in (0, 1].
        top_k: sample among the k most likely tokens; 0 turns it off.
        repetition_penalty: above 1 discourages repeating tokens (CTRL's penalty); 1 turns it off.
        max_new_tokens: the most tokens to generate.
        min_new_tokens: generate at least this many tokens, EOS or not (benchmarks use it).
        stop: strings that end the reply; the reply excludes them.
        seed: same seed, same reply: sampling draws from a generator of its own (exact, thread-safe).
        logprobs: None: none; 0: each generated token's log-probability; k in 1..MAX_TOP_LOGPROBS:
            also the k most likely tokens at each step.
        ignore_eos: EOS is a token like any other and the reply runs to `max_new_tokens` (vLLM's
            `ignore_eos`; benchmarks use it to time replies of a fixed length).
    """

    temperature: float = 0.1
    top_p: float = 0.75
    top_k: int = 40
    repetition_penalty: float = 1.2
    max_new_tokens: int = 512
    min_new_tokens: int = 0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: int | None = None
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        problems = _decoding_problems(self)
        if problems:
            raise ValueError("; ".join(problems))

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `model.generate`."""
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "repetition_penalty": self.repetition_penalty,
            "do_sample": self.temperature > 0,
        }
        if self.min_new_tokens:
            kwargs["min_new_tokens"] = self.min_new_tokens
        if self.temperature > 0:
            kwargs.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        return kwargs


def _decoding_problems(params: GenerationParams | SamplingOptions) -> list[str]:
    """Every out-of-range decoding setting of `params`, one sentence each; empty when all are valid."""
    problems = []
    if not 0 <= params.temperature <= 100:
        problems.append(f"temperature must be between 0 and 100, not {params.temperature}")
    if not 0 < params.top_p <= 1:
        problems.append(f"top_p must be in (0, 1], not {params.top_p}")
    if params.top_k < 0:
        problems.append(f"top_k must be 0 (off) or more, not {params.top_k}")
    if params.repetition_penalty <= 0:
        problems.append(f"repetition_penalty must be above 0, not {params.repetition_penalty}")
    if params.max_new_tokens < 1:
        problems.append(f"max_new_tokens must be at least 1, not {params.max_new_tokens}")
    min_new_tokens, stop = getattr(params, "min_new_tokens", 0), getattr(params, "stop", ())
    if not 0 <= min_new_tokens <= params.max_new_tokens:
        problems.append(f"min_new_tokens must be between 0 and max_new_tokens, not {min_new_tokens}")
    if len(stop) > MAX_STOP_STRINGS or not all(isinstance(s, str) and s for s in stop):
        problems.append(f"stop must be at most {MAX_STOP_STRINGS} non-empty strings")
    seed, logprobs = getattr(params, "seed", None), getattr(params, "logprobs", None)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        problems.append(f"seed must be an integer, not {seed!r}")
    if logprobs is not None and (isinstance(logprobs, bool) or not isinstance(logprobs, int) or not 0 <= logprobs <= MAX_TOP_LOGPROBS):
        problems.append(f"logprobs must be between 0 and {MAX_TOP_LOGPROBS}, not {logprobs!r}")
    return problems


@dataclass(frozen=True)
class SamplingOptions:
    """Decoding: how replies are sampled, and how long they may grow.

    The sampling flags of every verb that generates (`--temperature`, ...): the command line's side
    of `GenerationParams`, which `params()` makes. A verb whose defaults differ passes its own
    instance as the parameter's default (`SamplingOptions.of(EVAL_DECODING)`).
    """

    FLAT: ClassVar[bool] = True

    temperature: float = GenerationParams.temperature
    """Sampling temperature; 0 decodes greedily."""
    top_p: float = GenerationParams.top_p
    """Nucleus sampling mass, in (0, 1]."""
    top_k: int = GenerationParams.top_k
    """Sample among the k most likely tokens; 0 turns it off."""
    repetition_penalty: float = GenerationParams.repetition_penalty
    """Above 1 discourages repetition; 1 turns it off."""
    max_new_tokens: int = GenerationParams.max_new_tokens
    """The longest reply, in tokens."""

    @classmethod
    def of(cls, params: GenerationParams) -> SamplingOptions:
        """The options that give `params` back (its stop strings and minimum length aside)."""
        return cls(params.temperature, params.top_p, params.top_k, params.repetition_penalty, params.max_new_tokens)

    def problems(self) -> list[str]:
        """Every out-of-range setting; empty when `params()` will succeed."""
        return _decoding_problems(self)

    def params(self) -> GenerationParams:
        """These settings as `GenerationParams`. Raises `ValueError` when `problems()` is not empty."""
        return GenerationParams(self.temperature, self.top_p, self.top_k, self.repetition_penalty, self.max_new_tokens)


@dataclass(frozen=True)
class LoadOptions:
    """Loading weights: dtype, device and remote code.

    The flags of every verb that loads a model folder, turned into `load_model`'s keyword arguments.
    """

    FLAT: ClassVar[bool] = True

    dtype: Dtype = "auto"
    """Weights dtype; auto is bfloat16 on GPUs that support it, float16 on others, float32 on CPU."""
    device: str | None = None
    """cpu, cuda, cuda:N or auto; default: cuda if present."""
    trust_remote_code: bool = False
    """Run Python code shipped in the model folder."""


@dataclass(frozen=True)
class EngineOptions:
    """Engine: the template, adapter base and context length a model folder runs with.

    With `LoadOptions`, the keyword arguments of `load_engine` (and `belle.chat.engines.load_engines`)
    besides the folder: `load_engine(path, **asdict(engine), **asdict(load))`.
    """

    FLAT: ClassVar[bool] = True

    template: str | None = None
    """Prompt template; default: the one in the model's belle.json, else its chat_template."""
    base: Path | None = None
    """Base model folder for a LoRA adapter whose recorded base path is elsewhere."""
    context_length: int | None = None
    """Tokens of prompt plus reply; default: the model's max_position_embeddings."""
    batching: bool = True
    """Decode concurrent requests together (transformers' continuous batching), where the model supports it."""
    max_running: int = 16
    """With batching: the most requests decoding together; more wait for a slot."""
    kv_cache_tokens: int | None = None
    """With batching: KV-cache size in tokens, all running requests together (greedy ones; sampled ones get as much again); default: max_running x min(context, 2048), within 30% of the free memory each."""


@dataclass(frozen=True)
class Completion:
    """A finished reply. Token counts: `prompt_tokens` fed in, `completion_tokens` generated."""

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int


class PromptTooLong(ValueError):
    def __init__(self, prompt_tokens: int, context_length: int, max_new_tokens: int):
        super().__init__(
            f"the prompt ({prompt_tokens} tokens) plus the reply ({max_new_tokens} tokens reserved) "
            f"exceed the model's {context_length}-token context"
        )
        self.prompt_tokens = prompt_tokens


@dataclass(frozen=True)
class TokenLogprob:
    """One token's log-probability (natural log) under the model's raw distribution, before
    temperature, top-k/p and penalties; `top` holds the k most likely (id, text, logprob), most
    likely first. `token` is `tokenizer.decode([token_id])`."""

    token_id: int
    token: str
    logprob: float
    top: tuple[tuple[int, str, float], ...] = ()


@dataclass(frozen=True)
class Piece:
    """A stretch of a streamed reply: whole characters with stop strings held back (may be ""), and
    the generated tokens it came from (empty unless `GenerationParams.logprobs` is set)."""

    text: str
    logprobs: tuple[TokenLogprob, ...] = ()


class _CancelCriterion:
    """A stopping criterion that ends every sequence once `event` is set."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class _LogprobRecorder:
    """A logits processor that keeps `log_softmax` of the scores it is handed, (batch, vocab) float32,
    and passes them on unchanged. Placed first, it sees the model's raw distribution."""

    def __init__(self) -> None:
        self.last: Any = None

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        self.last = torch.log_softmax(scores.float(), dim=-1)
        return scores


class _GumbelNoise:
    """A logits processor that adds Gumbel noise drawn from generators of its own, one per row, each
    seeded with `seed`: argmax(logits/T + Gumbel) is an exact sample of softmax(logits/T) over the
    tokens that top-k/p kept, and greedy decoding on these scores samples without touching torch's
    global random state (which concurrent streams share)."""

    def __init__(self, seed: int, rows: int, device: Any):
        import torch

        self.generators = [torch.Generator(device=device).manual_seed(seed) for _ in range(rows)]

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        vocab = scores.shape[-1]
        exponential = torch.stack(
            [torch.empty(vocab, device=scores.device, dtype=torch.float32).exponential_(generator=g) for g in self.generators]
        )
        return scores.float() - torch.log(exponential)


def _decoding(params: GenerationParams, rows: int, device: Any) -> tuple[dict[str, Any], list[Any], _LogprobRecorder | None]:
    """`model.generate` keyword arguments, the logits processors to pass it, and the logprob recorder
    among them (None unless `params.logprobs` is set).

    With logprobs or a seed, the repetition penalty moves from generate's own processors (which run
    before custom ones) to ours, after the recorder; with a seed and sampling, generate decodes
    greedily over our temperature, top-k, top-p and Gumbel-noise processors.
    """
    from transformers import RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    kwargs = params.generate_kwargs()
    seeded = params.seed is not None and params.temperature > 0
    if params.logprobs is None and not seeded:
        return kwargs, [], None
    recorder = _LogprobRecorder() if params.logprobs is not None else None
    processors: list[Any] = [recorder] if recorder else []
    if params.repetition_penalty != 1:
        processors.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
        kwargs["repetition_penalty"] = 1.0
    if seeded:
        for key in ("temperature", "top_p", "top_k"):
            kwargs.pop(key, None)
        kwargs["do_sample"] = False
        if params.temperature != 1:
            processors.append(TemperatureLogitsWarper(params.temperature))
        if params.top_k:
            processors.append(TopKLogitsWarper(params.top_k))
        if params.top_p < 1:
            processors.append(TopPLogitsWarper(params.top_p))
        processors.append(_GumbelNoise(params.seed, rows, device))
    return kwargs, processors, recorder


def _token_logprob(tokenizer: Any, token_id: int, row: Any, top: int) -> TokenLogprob:
    """`token_id`'s entry in `row` (log-probabilities, shape (vocab,)), with the `top` most likely."""
    best: tuple[tuple[int, str, float], ...] = ()
    if top:
        values, ids = row.topk(top)
        best = tuple((i, tokenizer.decode([i]), v) for i, v in zip(ids.tolist(), values.tolist()))
    return TokenLogprob(token_id, tokenizer.decode([token_id]), float(row[token_id]), best)


_END = object()


class _Assembler:
    """Turns one reply's queued tokens into `Piece`s: whole characters, stop strings held back,
    each piece with the logprobs of the tokens it came from; keeps the stream's counts and finish reason."""

    def __init__(self, stream: TextStream):
        self.stream = stream
        self.decoder = IncrementalDecoder(stream._engine.tokenizer)
        self.stops = StopMatcher(stream._params.stop)
        self.pending: list[TokenLogprob] = []

    def add(self, item: Any) -> tuple[Piece | None, bool]:
        """One queued item (a `(token_id, logprob)` pair, or an error, which is raised) -> (the
        piece to hand on, if any; whether a stop string ended the reply)."""
        if isinstance(item, BaseException):
            raise item
        stream = self.stream
        token_id, logprob = item
        stream.completion_tokens += 1
        if logprob is not None:  # EOS too: OpenAI's and vLLM's logprobs list the end token
            self.pending.append(logprob)
        if token_id in stream._engine.eos_token_ids and not stream._params.ignore_eos:
            stream.finish_reason = "stop"
            return None, False
        text, stopped = self.stops.push(self.decoder.push(token_id))
        piece = None
        if text or (stopped and self.pending):
            piece, self.pending = Piece(text, tuple(self.pending)), []
        if stopped:
            stream.finish_reason = "stop"
        return piece, stopped

    def end(self) -> Piece | None:
        """After the last token: the text held back, and the finish reason if none is set yet."""
        stream = self.stream
        text, stopped = self.stops.push(self.decoder.flush())
        if not stopped:
            text += self.stops.flush()
        if stream.finish_reason is None:
            stream.finish_reason = "stop" if stopped else "cancelled" if stream._cancelled.is_set() else "length"
        return Piece(text, tuple(self.pending)) if text or self.pending else None


class TextStream:
    """Text deltas of one reply, generated in the background while the caller iterates.

    Iterating yields strings that are whole characters with stop strings held back (`pieces()`
    yields the same stream with each piece's token log-probabilities); afterwards `finish_reason`
    and `completion_tokens` are set. `cancel()` (from any thread) ends generation after the
    current token; leaving the iteration early (`break`, `close()`, an exception) cancels too.
    `on_finish`, if given, is called once generation has ended (in the thread that generated, or,
    for a batched stream that is cancelled, in the thread that cancelled it).

    Tokens come either from a worker thread running `model.generate` (this class is its
    streamer), or from the engine's batcher, which calls `_push` and `_finish`.
    """

    def __init__(self, engine: Engine, prompt_ids: list[int], params: GenerationParams, on_finish: Callable[[], None] | None = None):
        self.prompt_tokens = len(prompt_ids)
        self.completion_tokens = 0
        self.finish_reason: FinishReason | None = None
        self._engine = engine
        self._params = params
        self._tokens: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._cancelled = threading.Event()
        self._done = threading.Event()
        self._prompt_seen = False
        self._on_finish = on_finish
        self._on_cancel: Callable[[], None] | None = None
        self._wakeup: Callable[[], None] | None = None
        self._recorder: _LogprobRecorder | None = None
        self._handoff: threading.Event | None = None
        """The engine's lone stream (`Engine._claim_alone`) has one: set, it moves into the batcher."""

    def _start_thread(self, prompt_ids: list[int]) -> None:
        threading.Thread(target=self._generate, args=(prompt_ids,), daemon=True, name="belle-generate").start()

    def cancel(self) -> None:
        self._cancelled.set()
        if self._on_cancel is not None:
            self._on_cancel()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for generation to end; True once it has."""
        return self._done.wait(timeout)

    def _generate(self, prompt_ids: list[int]) -> None:
        import torch
        from transformers import LogitsProcessorList, StoppingCriteriaList

        engine = self._engine
        alone = self._handoff is not None
        moved = False
        try:
            kwargs, processors, self._recorder = _decoding(self._params, 1, engine.model.device)
            criteria = [_CancelCriterion(event) for event in (self._cancelled, self._handoff) if event is not None]
            with nullcontext() if alone else engine.thread_slots, torch.inference_mode():  # a lone stream holds its slot
                output = engine.model.generate(
                    input_ids=torch.tensor([prompt_ids], device=engine.model.device),
                    attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long, device=engine.model.device),
                    streamer=self,
                    stopping_criteria=StoppingCriteriaList(criteria),
                    logits_processor=LogitsProcessorList(processors),
                    eos_token_id=[] if self._params.ignore_eos else list(engine.eos_token_ids),
                    pad_token_id=engine.tokenizer.pad_token_id,
                    **kwargs,
                )
            moved = alone and self._move_to_batcher(prompt_ids, output[0, len(prompt_ids) :].tolist())
        except BaseException as error:  # handed to the caller, which raises it
            self._tokens.put(error)
        finally:
            if alone:
                engine._release_alone(self)
            if not moved:
                self._finish()

    def _move_to_batcher(self, prompt_ids: list[int], generated: list[int]) -> bool:
        """After a lone stream's `generate` stopped for `_handoff`: decode the rest of the reply in
        the batcher, from the prompt and the tokens so far. False when the reply had ended anyway."""
        params = self._params
        if not self._handoff.is_set() or self._cancelled.is_set() or len(generated) >= params.max_new_tokens:
            return False
        if generated and not params.ignore_eos and generated[-1] in self._engine.eos_token_ids:
            return False
        rest = replace(params, max_new_tokens=params.max_new_tokens - len(generated))
        self._on_cancel = self._engine.batcher.submit(prompt_ids + generated, rest, self._push, self._finish)
        if self._cancelled.is_set():  # cancelled before `_on_cancel` was there to call
            self._on_cancel()
        return True

    def _push(self, token_id: int, logprob: TokenLogprob | None = None) -> None:
        self._tokens.put((token_id, logprob))
        self._wake()

    def _finish(self, error: BaseException | None = None) -> None:
        if error is not None:
            self._tokens.put(error)
        self._tokens.put(_END)
        self._wake()
        self._done.set()
        if self._on_finish is not None:
            self._on_finish()

    def _wake(self) -> None:
        """Tell an `apieces()` consumer that a token is queued; its loop gone, the stream is cancelled."""
        wakeup = self._wakeup
        if wakeup is not None:
            try:
                wakeup()
            except RuntimeError:  # the event loop has closed: nobody reads this stream any more
                self.cancel()

    def put(self, value: Any) -> None:
        """Streamer protocol: `generate` passes the prompt first, then each new token, shape (1,)."""
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        token_id = int(value.reshape(-1)[0])
        logprob = None
        if self._recorder is not None and self._params.logprobs is not None:
            logprob = _token_logprob(self._engine.tokenizer, token_id, self._recorder.last[0], self._params.logprobs)
        self._push(token_id, logprob)

    def end(self) -> None:
        pass

    def pieces(self) -> Iterator[Piece]:
        """The reply as `Piece`s: the same text as iterating, with each piece's token logprobs."""
        assembler = _Assembler(self)
        try:
            while (item := self._tokens.get()) is not _END:
                piece, stopped = assembler.add(item)
                if piece is not None:
                    yield piece
                if stopped:
                    return
            if (piece := assembler.end()) is not None:
                yield piece
        finally:
            self._settle()

    async def apieces(self) -> AsyncIterator[Piece]:
        """`pieces()` for an event loop: it waits for tokens on the loop, with no thread of its own,
        so a token reaches the caller with one hop from the thread that decoded it."""
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        self._wakeup = lambda: loop.call_soon_threadsafe(ready.set)
        assembler = _Assembler(self)
        try:
            while True:
                try:
                    item = self._tokens.get_nowait()
                except queue.Empty:
                    ready.clear()
                    if self._tokens.empty():  # a token queued meanwhile has set `ready` again
                        await ready.wait()
                    continue
                if item is _END:
                    break
                piece, stopped = assembler.add(item)
                if piece is not None:
                    yield piece
                if stopped:
                    return
            if (piece := assembler.end()) is not None:
                yield piece
        finally:
            self._wakeup = None
            self._settle()

    def _settle(self) -> None:
        if self.finish_reason is None:
            self.finish_reason = "cancelled"
        self.cancel()

    def __iter__(self) -> Iterator[str]:
        pieces = self.pieces()
        try:
            for piece in pieces:
                if piece.text:
                    yield piece.text
        finally:
            pieces.close()

    def text(self) -> str:
        """Iterate to the end and return the whole reply."""
        return "".join(self)


def generation_defaults(config: Any) -> GenerationParams:
    """What transformers' `generate()` does with no arguments under `config` (a `GenerationConfig`, or
    the dict of a generation_config.json): greedy unless it samples; its temperature, top_p, top_k
    (50, generate's own default, when unset), repetition_penalty; 512 new tokens."""
    get = config.get if isinstance(config, dict) else lambda key: getattr(config, key, None)
    sample = bool(get("do_sample"))
    temperature, top_k = get("temperature"), get("top_k")
    return GenerationParams(
        temperature=float(temperature if temperature is not None else 1.0) if sample else 0.0,
        top_p=float(get("top_p") or 1.0),
        top_k=int(top_k if top_k is not None else 50),
        repetition_penalty=float(get("repetition_penalty") or 1.0),
        max_new_tokens=512,
    )


@dataclass
class Engine:
    """A loaded model with its tokenizer and template.

    Args:
        model: a transformers causal LM, in eval mode.
        tokenizer: its tokenizer, with a pad token distinct from EOS.
        template: the prompt format it was trained with.
        name: what clients call it (`/v1/models`, the web chat's picker).
        context_length: the most tokens, prompt plus reply, the model may see.
        eos_token_ids: ids that end a reply: EOS, the generation config's, and the template's end token.
    """

    model: Any
    tokenizer: Any
    template: Template
    name: str
    context_length: int
    eos_token_ids: frozenset[int] = frozenset()
    batcher: Any = None
    """The continuous-batching decoder (`belle.batching.Batcher`) when concurrent streams decode together."""
    thread_slots: threading.BoundedSemaphore = field(default_factory=lambda: threading.BoundedSemaphore(THREAD_STREAMS))
    """Streams the batcher does not take run as batch-1 `generate` threads, this many at a time; more wait."""
    _alone: TextStream | None = field(default=None, init=False, repr=False)
    _alone_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @property
    def batching(self) -> bool:
        """True when concurrent streams decode together (transformers' continuous batching)."""
        return self.batcher is not None

    @property
    def vocab_size(self) -> int:
        """Rows of the output layer: the logits of one position have this many entries."""
        output = self.model.get_output_embeddings()
        return int((output if output is not None else self.model.get_input_embeddings()).weight.shape[0])

    def score_text(self, ids: list[int], seqlen: int, stride: int | None = None) -> TextScore:
        """Negative log-likelihood of `ids` in windows of `seqlen` tokens (`belle.perplexity.score_ids`)."""
        from belle.perplexity import score_ids

        return score_ids(self.model, ids, seqlen=seqlen, stride=stride)

    @property
    def default_params(self) -> GenerationParams:
        """What `model.generate()` does with no arguments (`generation_defaults` of the model's generation_config)."""
        return generation_defaults(self.model.generation_config)

    def close(self) -> None:
        """Stop the batcher, if any; streams still running end as cancelled."""
        if self.batcher is not None:
            with self._alone_lock:
                alone = self._alone
            if alone is not None:
                alone.cancel()
            self.batcher.close()

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """Prompt ids of a history that ends in a user turn."""
        return encode_prompt(messages, self.tokenizer, self.template)

    def encode_text(self, text: str) -> list[int]:
        """Prompt ids of raw text, as the tokenizer encodes it by default (with BOS if it adds one)."""
        return self.tokenizer(text)["input_ids"]

    def fit_chat(self, messages: list[dict[str, str]], max_new_tokens: int, drop_oldest: bool = True) -> tuple[list[int], int]:
        """Encode a history so that it and `max_new_tokens` fit the context.

        With `drop_oldest`, the oldest user-assistant exchanges are left out (the system message
        and the last user turn always stay) until the prompt fits. Returns (ids, exchanges left
        out); raises `PromptTooLong` if even the shortest history does not fit.
        """
        system = messages[:1] if messages and messages[0]["role"] == "system" else []
        turns = messages[len(system) :]
        dropped = 0
        while True:
            ids = self.encode_chat(system + turns)
            if self.fits(len(ids), max_new_tokens):
                return ids, dropped
            if not drop_oldest or len(turns) <= 2:
                raise PromptTooLong(len(ids), self.context_length, max_new_tokens)
            turns, dropped = turns[2:], dropped + 1

    def fits(self, prompt_tokens: int, max_new_tokens: int) -> bool:
        return prompt_tokens + max_new_tokens <= self.context_length

    def check_fits(self, prompt_ids: list[int], params: GenerationParams) -> None:
        if not self.fits(len(prompt_ids), params.max_new_tokens):
            raise PromptTooLong(len(prompt_ids), self.context_length, params.max_new_tokens)

    def stream(self, prompt_ids: list[int], params: GenerationParams, on_finish: Callable[[], None] | None = None,
               *, more_coming: bool = False) -> TextStream:
        """Start generating a reply to `prompt_ids`; iterate the result for text deltas.
        `more_coming`: other streams are about to start with this one (a batch, `n` choices), so it
        should not start alone on `generate` (`_claim_alone`)."""
        self.check_fits(prompt_ids, params)
        stream = TextStream(self, prompt_ids, params, on_finish)
        if self.batcher is None or not self.batcher.accepts(params, len(prompt_ids)):
            stream._start_thread(prompt_ids)
        elif self._claim_alone(stream, more_coming):
            try:
                stream._start_thread(prompt_ids)
            except BaseException:
                self._release_alone(stream)
                raise
        else:
            stream._on_cancel = self.batcher.submit(prompt_ids, params, stream._push, stream._finish)
        return stream

    def _claim_alone(self, stream: TextStream, more_coming: bool) -> bool:
        """Whether `stream` runs alone on a `generate` thread: when nothing is batched, no other
        stream runs alone, a thread slot is free and no other stream comes with it. `generate`
        decodes one reply faster than a batch of one (on CPU about a tenth), so a lone chat stays
        there until a request for the batcher arrives: that moves it into the batcher after its
        next token. The lone stream holds a thread slot until `_release_alone`."""
        with self._alone_lock:
            alone = self._alone
            if alone is None and not more_coming and self.batcher.idle and self.thread_slots.acquire(blocking=False):
                stream._handoff = threading.Event()
                self._alone = stream
                return True
        if alone is not None:
            alone._handoff.set()
        return False

    def _release_alone(self, stream: TextStream) -> None:
        with self._alone_lock:
            if self._alone is stream:
                self._alone = None
                self.thread_slots.release()

    def chat(self, messages: list[dict[str, str]], params: GenerationParams) -> TextStream:
        """Stream a reply to a history, leaving out the oldest exchanges if it is too long."""
        ids, dropped = self.fit_chat(messages, params.max_new_tokens)
        if dropped:
            logger.info("left out the %d oldest exchange(s) to fit the %d-token context", dropped, self.context_length)
        return self.stream(ids, params)

    def generate_batch(self, prompts: Sequence[list[int]], params: GenerationParams) -> list[Completion]:
        """Replies to several prompts, cut at EOS and at stop strings: through the batcher when it
        takes `params`, else in one left-padded batch. With a seed each row samples as it would alone."""
        import torch
        from transformers import LogitsProcessorList

        if self.batcher is not None and all(self.batcher.accepts(params, len(ids)) for ids in prompts):
            replies = dict(self.generate_all(prompts, params, window=len(prompts)))
            return [replies[index] for index in range(len(prompts))]

        for ids in prompts:
            self.check_fits(ids, params)
        width = max(len(ids) for ids in prompts)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in prompts], device=self.model.device)
        attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts], device=self.model.device)
        kwargs, processors, _ = _decoding(replace(params, logprobs=None), len(prompts), self.model.device)
        if params.stop:
            kwargs.update(stop_strings=list(params.stop), tokenizer=self.tokenizer)
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=input_ids, attention_mask=attention_mask, pad_token_id=pad,
                eos_token_id=[] if params.ignore_eos else list(self.eos_token_ids),
                logits_processor=LogitsProcessorList(processors), **kwargs,
            )
        return [self._completion(row[width:].tolist(), len(ids), params) for row, ids in zip(output, prompts)]

    def generate(self, prompt_ids: list[int], params: GenerationParams) -> Completion:
        return self.generate_batch([prompt_ids], params)[0]

    def generate_all(self, prompts: Sequence[list[int]], params: GenerationParams, window: int) -> Iterator[tuple[int, Completion]]:
        """(index into `prompts`, reply) for every prompt, as each is done. Through the batcher,
        `window` replies decode at once and a finished reply's place goes to the next prompt at once;
        otherwise `generate_batch` answers `window` prompts at a time, in order. Closing the
        iterator early cancels the replies in flight."""
        if window < 1:
            raise ValueError(f"window must be at least 1, not {window}")
        if self.batcher is None or not all(self.batcher.accepts(params, len(ids)) for ids in prompts):
            for first in range(0, len(prompts), window):
                yield from enumerate(self.generate_batch(prompts[first : first + window], params), first)
            return
        finished: queue.SimpleQueue[tuple[int, str | BaseException]] = queue.SimpleQueue()
        running: dict[int, TextStream] = {}
        upcoming = iter(range(len(prompts)))

        def start(index: int) -> None:
            stream = running[index] = self.stream(prompts[index], params, more_coming=len(prompts) > 1)

            def read() -> None:  # a reader per reply, so that a stop string ends its decoding at once
                try:
                    finished.put((index, stream.text()))
                except BaseException as error:  # raised again in the caller
                    finished.put((index, error))

            threading.Thread(target=read, daemon=True, name="belle-read").start()

        try:
            for index in itertools.islice(upcoming, window):
                start(index)
            while running:
                index, text = finished.get()
                stream = running.pop(index)
                if isinstance(text, BaseException):
                    raise text
                for after in itertools.islice(upcoming, 1):
                    start(after)
                yield index, Completion(text, stream.finish_reason or "length", stream.prompt_tokens, stream.completion_tokens)
        finally:
            for stream in running.values():
                stream.cancel()

    def prompt_logprobs(self, prompts: Sequence[list[int]], top: int = 0, logits_bytes: int = 2**30) -> list[list[TokenLogprob | None]]:
        """Each prompt token's log-probability given the tokens before it (OpenAI's `echo` with
        `logprobs`), with the `top` most likely at each position.

        Prompts are sorted by length and run in right-padded batches whose float32 logits (tokens,
        padding included, x vocabulary) take at most `logits_bytes` (one prompt at least), one
        forward pass each; log_softmax is taken in float32. Returns,
        per prompt, one entry per token; entry 0 is None (nothing precedes it).
        """
        import torch

        if not 0 <= top <= MAX_TOP_LOGPROBS:
            raise ValueError(f"top must be between 0 and {MAX_TOP_LOGPROBS}, not {top}")
        for ids in prompts:
            if len(ids) > self.context_length:
                raise PromptTooLong(len(ids), self.context_length, 0)
        results: list[list[TokenLogprob | None]] = [[] for _ in prompts]
        order = sorted((i for i, ids in enumerate(prompts) if ids), key=lambda i: len(prompts[i]), reverse=True)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        device = self.model.device
        batch_tokens = logits_bytes // (4 * self.model.config.get_text_config().vocab_size)
        while order:
            width = len(prompts[order[0]])
            count = max(1, batch_tokens // width)
            rows, order = order[:count], order[count:]
            input_ids = torch.tensor([prompts[i] + [pad] * (width - len(prompts[i])) for i in rows], device=device)
            mask = torch.tensor([[1] * len(prompts[i]) + [0] * (width - len(prompts[i])) for i in rows], device=device)
            with torch.inference_mode():
                logits = self.model(input_ids=input_ids, attention_mask=mask).logits  # (rows, width, vocab)
                for row, i in enumerate(rows):
                    ids = prompts[i]
                    logprobs = torch.log_softmax(logits[row, : len(ids) - 1].float(), dim=-1)  # (len - 1, vocab)
                    results[i] = [None] + [
                        _token_logprob(self.tokenizer, token, logprobs[j], top) for j, token in enumerate(ids[1:])
                    ]
        return results

    def _completion(self, generated: list[int], prompt_tokens: int, params: GenerationParams) -> Completion:
        ends = () if params.ignore_eos else self.eos_token_ids
        ended = next((i for i, token in enumerate(generated) if token in ends), None)
        if ended is not None:
            tokens, count = generated[:ended], ended + 1
        else:
            count = len(generated)
            while count and generated[count - 1] == self.tokenizer.pad_token_id:  # rows that stopped early
                count -= 1
            tokens = generated[:count]
        text, hit = cut_at_stop(self.tokenizer.decode(tokens, skip_special_tokens=True), params.stop)
        return Completion(text, "stop" if ended is not None or hit else "length", prompt_tokens, count)


class ChatEngine(Protocol):
    """What the front ends (chat, serve, eval generate, generate) use of an engine: `Engine` for
    transformers models, `belle.llamacpp.GgufEngine` for GGUF files run by llama.cpp."""

    name: str
    tokenizer: Any
    template: Template
    context_length: int
    eos_token_ids: frozenset[int]

    @property
    def batching(self) -> bool: ...
    @property
    def default_params(self) -> GenerationParams: ...
    @property
    def vocab_size(self) -> int: ...
    def close(self) -> None: ...
    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]: ...
    def encode_text(self, text: str) -> list[int]: ...
    def fit_chat(self, messages: list[dict[str, str]], max_new_tokens: int, drop_oldest: bool = True) -> tuple[list[int], int]: ...
    def fits(self, prompt_tokens: int, max_new_tokens: int) -> bool: ...
    def check_fits(self, prompt_ids: list[int], params: GenerationParams) -> None: ...
    def stream(self, prompt_ids: list[int], params: GenerationParams, on_finish: Callable[[], None] | None = None,
               *, more_coming: bool = False) -> TextStream: ...
    def chat(self, messages: list[dict[str, str]], params: GenerationParams) -> TextStream: ...
    def generate(self, prompt_ids: list[int], params: GenerationParams) -> Completion: ...
    def generate_batch(self, prompts: Sequence[list[int]], params: GenerationParams) -> list[Completion]: ...
    def generate_all(self, prompts: Sequence[list[int]], params: GenerationParams, window: int) -> Iterator[tuple[int, Completion]]: ...
    def prompt_logprobs(self, prompts: Sequence[list[int]], top: int = 0, logits_bytes: int = 2**30) -> list[list[TokenLogprob | None]]: ...
    def score_text(self, ids: list[int], seqlen: int, stride: int | None = None) -> TextScore: ...


def load_engine(
    path: str | Path,
    *,
    base: str | Path | None = None,
    template: str | None = None,
    name: str | None = None,
    dtype: str = "auto",
    device: str | None = None,
    context_length: int | None = None,
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    batching: bool = True,
    max_running: int = 16,
    kv_cache_tokens: int | None = None,
) -> ChatEngine:
    """Load a full model folder, a GPTQ folder, or a LoRA adapter folder (on `base`, or on the base
    its `adapter_config.json` names); or a GGUF file, run on the CPU by llama.cpp
    (`belle.llamacpp.load_gguf_engine`: `base`, a `device` other than cpu and a `dtype` other than
    auto are refused with ValueError; the batching settings do not apply).

    The template is `template` if given, else the one in the folder's `belle.json` (the adapter's,
    then the base's), else the tokenizer's own `chat_template`. With `batching`, concurrent
    requests decode together (`belle.batching`) when a probe at load shows the model batches
    exactly; `Engine.close()` stops that.
    """
    path = Path(path)
    from belle.llamacpp import is_gguf

    if is_gguf(path):
        from belle.llamacpp import load_gguf_engine

        if base is not None:
            raise ValueError(f"{path}: a base model applies to LoRA adapter folders, not to a GGUF file")
        refused = [f"{what} {value}" for what, value, ok in (("device", device, device in (None, "cpu")),
                                                              ("dtype", dtype, dtype == "auto")) if not ok]
        if refused:
            raise ValueError(f"{path}: a GGUF file runs on the CPU through llama.cpp, in the types it was exported "
                             f"with; leave out {' and '.join(refused)}")
        return load_gguf_engine(path, name=name, template=template, context_length=context_length)
    model_dir, adapter = split_adapter(path, base)
    if not (model_dir / "config.json").is_file():
        if adapter is not None:
            raise FileNotFoundError(f"{path}: its base model {model_dir} is not a model folder; pass the base model's folder")
        raise FileNotFoundError(f"{path}: not a model folder (no config.json) nor a LoRA adapter (no adapter_config.json)")
    tokenizer_dir = path if (path / "tokenizer_config.json").is_file() else model_dir
    tokenizer = load_tokenizer(tokenizer_dir, trust_remote_code=trust_remote_code)
    resolved = resolve_template(model_dir, tokenizer, template or read_checkpoint_info(path).get("template"))
    model = load_model(
        model_dir, dtype=dtype, device=device, attn_implementation=attn_implementation,
        adapter=adapter, tokenizer=tokenizer, trust_remote_code=trust_remote_code,
    )
    model.eval()
    limit = int(context_length or getattr(model.config, "max_position_embeddings", None) or tokenizer.model_max_length)
    eos_token_ids = reply_end_ids(tokenizer, resolved, model.generation_config.eos_token_id)
    batcher = None
    if batching:
        from belle.batching import BatchingOptions, start_batcher

        batcher = start_batcher(model, tokenizer, eos_token_ids, limit, BatchingOptions(max_running, kv_cache_tokens))
    return Engine(
        model=model,
        tokenizer=tokenizer,
        template=resolved,
        name=name or path.name,
        context_length=limit,
        eos_token_ids=eos_token_ids,
        batcher=batcher,
    )
