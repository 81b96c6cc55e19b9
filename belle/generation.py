"""The generation engine: one loaded model that renders prompts with its template and generates,
streamed token by token with a working stop, or in left-padded batches.

The web chat, the terminal chat, the OpenAI-compatible server and eval's answer generation all
use it. A stream runs `model.generate` in a worker thread that hands token ids to the caller
through a queue; the caller turns them into text (`belle.streaming`). Cancelling a stream (the
Stop button, a client that disconnects, a stop string that appeared) sets an event that a
stopping criterion checks after every token, so generation really ends.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Literal, Sequence

from belle.modeling import load_model, load_tokenizer, read_checkpoint_info, resolve_template, split_adapter
from belle.streaming import IncrementalDecoder, StopMatcher, cut_at_stop
from belle.templates import Template
from belle.tokenization import encode_prompt

logger = logging.getLogger(__name__)

FinishReason = Literal["stop", "length", "cancelled"]
Dtype = Literal["auto", "float32", "bfloat16", "float16"]
MAX_STOP_STRINGS = 16


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
    """

    temperature: float = 0.1
    top_p: float = 0.75
    top_k: int = 40
    repetition_penalty: float = 1.2
    max_new_tokens: int = 512
    min_new_tokens: int = 0
    stop: tuple[str, ...] = ()

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


class _CancelCriterion:
    """A stopping criterion that ends every sequence once `event` is set."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


_END = object()


class TextStream:
    """Text deltas of one reply, generated in a worker thread while the caller iterates.

    Iterating yields strings that are whole characters with stop strings held back; afterwards
    `finish_reason` and `completion_tokens` are set. `cancel()` (from any thread) ends generation
    after the current token; leaving the iteration early (`break`, `close()`, an exception)
    cancels too. `on_finish`, if given, is called in the worker thread once generation has ended.
    """

    def __init__(self, engine: Engine, prompt_ids: list[int], params: GenerationParams, on_finish: Callable[[], None] | None = None):
        self.prompt_tokens = len(prompt_ids)
        self.completion_tokens = 0
        self.finish_reason: FinishReason | None = None
        self._engine = engine
        self._params = params
        self._tokens: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._cancelled = threading.Event()
        self._prompt_seen = False
        self._on_finish = on_finish
        self._thread = threading.Thread(target=self._generate, args=(prompt_ids,), daemon=True, name="belle-generate")
        self._thread.start()

    def cancel(self) -> None:
        self._cancelled.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the worker thread; True once generation has ended."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _generate(self, prompt_ids: list[int]) -> None:
        import torch
        from transformers import StoppingCriteriaList

        engine = self._engine
        try:
            with torch.inference_mode():
                engine.model.generate(
                    input_ids=torch.tensor([prompt_ids], device=engine.model.device),
                    attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long, device=engine.model.device),
                    streamer=self,
                    stopping_criteria=StoppingCriteriaList([_CancelCriterion(self._cancelled)]),
                    eos_token_id=list(engine.eos_token_ids),
                    pad_token_id=engine.tokenizer.pad_token_id,
                    **self._params.generate_kwargs(),
                )
        except BaseException as error:  # handed to the caller, which raises it
            self._tokens.put(error)
        finally:
            self._tokens.put(_END)
            if self._on_finish is not None:
                self._on_finish()

    def put(self, value: Any) -> None:
        """Streamer protocol: `generate` passes the prompt first, then each new token, shape (1,)."""
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self._tokens.put(int(value.reshape(-1)[0]))

    def end(self) -> None:
        pass

    def __iter__(self) -> Iterator[str]:
        decoder = IncrementalDecoder(self._engine.tokenizer)
        stops = StopMatcher(self._params.stop)
        try:
            while (item := self._tokens.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                self.completion_tokens += 1
                if item in self._engine.eos_token_ids:
                    self.finish_reason = "stop"
                    continue
                text, stopped = stops.push(decoder.push(item))
                if text:
                    yield text
                if stopped:
                    self.finish_reason = "stop"
                    return
            text, stopped = stops.push(decoder.flush())
            if not stopped:
                text += stops.flush()
            if text:
                yield text
            if self.finish_reason is None:
                self.finish_reason = "stop" if stopped else "cancelled" if self._cancelled.is_set() else "length"
        finally:
            if self.finish_reason is None:
                self.finish_reason = "cancelled"
            self.cancel()

    def text(self) -> str:
        """Iterate to the end and return the whole reply."""
        return "".join(self)


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

    def stream(self, prompt_ids: list[int], params: GenerationParams, on_finish: Callable[[], None] | None = None) -> TextStream:
        """Start generating a reply to `prompt_ids`; iterate the result for text deltas."""
        self.check_fits(prompt_ids, params)
        return TextStream(self, prompt_ids, params, on_finish)

    def chat(self, messages: list[dict[str, str]], params: GenerationParams) -> TextStream:
        """Stream a reply to a history, leaving out the oldest exchanges if it is too long."""
        ids, dropped = self.fit_chat(messages, params.max_new_tokens)
        if dropped:
            logger.info("left out the %d oldest exchange(s) to fit the %d-token context", dropped, self.context_length)
        return self.stream(ids, params)

    def generate_batch(self, prompts: Sequence[list[int]], params: GenerationParams) -> list[Completion]:
        """Replies to several prompts in one left-padded batch, cut at EOS and at stop strings."""
        import torch

        for ids in prompts:
            self.check_fits(ids, params)
        width = max(len(ids) for ids in prompts)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in prompts], device=self.model.device)
        attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts], device=self.model.device)
        kwargs = params.generate_kwargs()
        if params.stop:
            kwargs.update(stop_strings=list(params.stop), tokenizer=self.tokenizer)
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=input_ids, attention_mask=attention_mask, eos_token_id=list(self.eos_token_ids), pad_token_id=pad, **kwargs
            )
        return [self._completion(row[width:].tolist(), len(ids), params) for row, ids in zip(output, prompts)]

    def generate(self, prompt_ids: list[int], params: GenerationParams) -> Completion:
        return self.generate_batch([prompt_ids], params)[0]

    def _completion(self, generated: list[int], prompt_tokens: int, params: GenerationParams) -> Completion:
        ended = next((i for i, token in enumerate(generated) if token in self.eos_token_ids), None)
        if ended is not None:
            tokens, count = generated[:ended], ended + 1
        else:
            count = len(generated)
            while count and generated[count - 1] == self.tokenizer.pad_token_id:  # rows that stopped early
                count -= 1
            tokens = generated[:count]
        text, hit = cut_at_stop(self.tokenizer.decode(tokens, skip_special_tokens=True), params.stop)
        return Completion(text, "stop" if ended is not None or hit else "length", prompt_tokens, count)


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
) -> Engine:
    """Load a full model folder, a GPTQ folder, or a LoRA adapter folder (on `base`, or on the base
    its `adapter_config.json` names).

    The template is `template` if given, else the one in the folder's `belle.json` (the adapter's,
    then the base's), else the tokenizer's own `chat_template`.
    """
    path = Path(path)
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
    limit = context_length or getattr(model.config, "max_position_embeddings", None) or tokenizer.model_max_length
    return Engine(
        model=model,
        tokenizer=tokenizer,
        template=resolved,
        name=name or path.name,
        context_length=int(limit),
        eos_token_ids=_eos_token_ids(model, tokenizer, resolved),
    )


def _eos_token_ids(model: Any, tokenizer: Any, template: Template) -> frozenset[int]:
    """EOS, the generation config's end ids, and the template's turn-end token if it is one token."""
    ids = {tokenizer.eos_token_id}
    configured = model.generation_config.eos_token_id
    ids.update(configured if isinstance(configured, list) else [configured])
    end = template.assistant_end.replace("{eos}", tokenizer.eos_token or "").strip()
    if end:
        end_ids = tokenizer(end, add_special_tokens=False)["input_ids"]
        if len(end_ids) == 1:
            ids.add(end_ids[0])
    ids.discard(None)
    return frozenset(ids)

