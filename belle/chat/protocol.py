"""The OpenAI wire format: request bodies as pydantic models, and the JSON the server sends back.

Beyond OpenAI's fields, requests may carry `top_k`, `repetition_penalty`, `min_tokens` and
`ignore_eos`, as vLLM accepts them. Fields that would change the result but are not supported (penalties,
`logit_bias`, tools, a JSON `response_format`, `suffix`, `best_of`) are refused with a 400 naming
the field, never ignored.

Log-probabilities come in OpenAI's two shapes: the legacy object of `/v1/completions`
(`tokens`, `token_logprobs`, `top_logprobs` as `{token: logprob}`, `text_offset`) and the
`content` list of `/v1/chat/completions` (`{token, logprob, bytes, top_logprobs}`).
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator

from belle.generation import MAX_TOP_LOGPROBS, TokenLogprob

MAX_COUNT = 2**31 - 1  # the largest token count or k a request may name; JSON integers are unbounded
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes 64 bits; seed + j (sample j of n) must fit too
_SURROGATE = re.compile("[\ud800-\udfff]")
PROMPT_SHAPES = "a string, a list of strings, a list of token ids, or a list of lists of token ids"
REASONS = {
    "response_format": "only {\"type\": \"text\"} is; JSON output needs constrained decoding, and no maintained "
                       "library for it is among belle's dependencies (ask for JSON in the prompt instead)",
    "best_of": "ask for n samples instead",
}


class APIError(Exception):
    """An error the client caused (or a server fault), sent as OpenAI's `{"error": {...}}` body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None, type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def refusal(field: str) -> APIError:
    """The 400 for a field set to something this server cannot honour."""
    reason = REASONS.get(field)
    return APIError(400, f"{field}: not supported by this server" + (f"; {reason}" if reason else ""), param=field)


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingRequest(BaseModel):
    """Fields shared by `/v1/chat/completions` and `/v1/completions`. A field left out (None) takes
    the model's own default (`Engine.default_params`, from its generation_config)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    model: str
    max_tokens: int | None = Field(None, ge=1, le=MAX_COUNT)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0, le=MAX_COUNT)
    repetition_penalty: float | None = Field(None, gt=0)
    min_tokens: int | None = Field(None, ge=0, le=MAX_COUNT)
    ignore_eos: bool = False
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=MAX_COUNT)
    seed: int | None = Field(None, ge=-MAX_SEED - 1, le=MAX_SEED - MAX_COUNT)
    presence_penalty: float = 0
    frequency_penalty: float = 0
    logit_bias: dict[str, float] | None = None

    def unsupported(self) -> list[str]:
        """Fields set to something this server cannot honour."""
        refused = []
        if self.presence_penalty or self.frequency_penalty:
            refused.append("presence_penalty" if self.presence_penalty else "frequency_penalty")
        if self.logit_bias:
            refused.append("logit_bias")
        return refused


class ContentPart(BaseModel):
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart]


class ChatRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_COUNT)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: list[Any] | None = None
    response_format: dict[str, Any] | None = None

    def unsupported(self) -> list[str]:
        refused = super().unsupported()
        if self.tools:
            refused.append("tools")
        if self.response_format and self.response_format.get("type") != "text":
            refused.append("response_format")
        return refused

    def logprobs_wanted(self) -> int | None:
        """`GenerationParams.logprobs`: None for none, else how many most likely tokens to list per position."""
        if self.top_logprobs is not None and not self.logprobs:
            raise APIError(400, "top_logprobs: needs \"logprobs\": true", param="top_logprobs")
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(SamplingRequest):
    prompt: Any
    """One of PROMPT_SHAPES; `prompts()` gives them as a list."""
    max_tokens: int | None = Field(None, ge=0, le=MAX_COUNT)
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(None, le=MAX_COUNT)

    @field_validator("prompt")
    @classmethod
    def _prompt_shape(cls, prompt: Any) -> Any:
        """A prompt of PROMPT_SHAPES, none of its texts or token lists empty."""
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError("must not be empty")
            return prompt
        if not isinstance(prompt, list):
            raise ValueError(f"must be {PROMPT_SHAPES}, not {_kind(prompt)}")
        if not prompt or prompt == [""]:
            raise ValueError("must not be empty")
        kinds = {_kind(item) for item in prompt}
        if kinds == {"a string"}:
            empty = next((i for i, item in enumerate(prompt) if not item), None)
            if empty is not None:
                raise ValueError(f"item {empty} is an empty string")
            return prompt
        if kinds == {"an integer"}:
            return prompt
        if kinds == {"a list"}:
            for i, ids in enumerate(prompt):
                if not ids:
                    raise ValueError(f"item {i} is an empty list of token ids")
                bad = next((k for k, token in enumerate(ids) if _kind(token) != "an integer"), None)
                if bad is not None:
                    raise ValueError(f"item {i}, position {bad} is {_kind(ids[bad])}, not a token id; "
                                     f"a prompt is {PROMPT_SHAPES}")
            return prompt
        if len(kinds) == 1:
            raise ValueError(f"item 0 is {_kind(prompt[0])}; a prompt is {PROMPT_SHAPES}")
        first = next(i for i, item in enumerate(prompt) if _kind(item) != _kind(prompt[0]))
        raise ValueError(f"item {first} is {_kind(prompt[first])} after {_kind(prompt[0])}; a prompt is {PROMPT_SHAPES}, not a mix")

    def prompts(self) -> list[str | list[int]]:
        """Each prompt: a text, or a list of token ids."""
        if isinstance(self.prompt, str) or (self.prompt and isinstance(self.prompt[0], int)):
            return [self.prompt]
        return list(self.prompt)

    def prompt_param(self, i: int) -> str:
        """Where prompt i sits in the body, dotted as in `param`: `prompt`, or `prompt.i` in a list."""
        return "prompt" if isinstance(self.prompt, str) or isinstance(self.prompt[0], int) else f"prompt.{i}"

    def unsupported(self) -> list[str]:
        refused = super().unsupported()
        if self.suffix:
            refused.append("suffix")
        if self.best_of not in (None, 1) and self.best_of != self.n:
            refused.append("best_of")
        return refused

    def logprobs_wanted(self) -> int | None:
        """`GenerationParams.logprobs`: None for none, else how many most likely tokens to list per position."""
        return self.logprobs


def _kind(value: Any) -> str:
    """What a JSON value is, in words."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number with a fraction"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    return "an object"


def plain_messages(messages: list[ChatMessage]) -> list[dict[str, str]]:
    """Messages as `{"role", "content": str}`: text parts joined, `developer` read as `system`."""
    out = []
    for i, message in enumerate(messages):
        content = message.content
        if not isinstance(content, str):
            if any(part.type != "text" or part.text is None for part in content):
                raise APIError(400, f"messages[{i}]: only text content is supported", param=f"messages.{i}.content")
            content = "".join(part.text for part in content)
        out.append({"role": "system" if message.role == "developer" else message.role, "content": content})
    return out


def lone_surrogate_at(value: Any, where: str = "") -> str | None:
    """The dotted path (`messages.0.content`) of the first string, or dict key, in `value` holding a
    lone surrogate (JSON's `"\\ud800"`): text no tokenizer, log or UTF-8 reply can carry. None if there is none."""
    if isinstance(value, str):
        return where if _SURROGATE.search(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            if _SURROGATE.search(str(key)):
                return where or "body"
            if (found := lone_surrogate_at(item, f"{where}.{key}" if where else str(key))) is not None:
                return found
    if isinstance(value, list):
        for i, item in enumerate(value):
            if (found := lone_surrogate_at(item, f"{where}.{i}" if where else str(i))) is not None:
                return found
    return None


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}


def chat_logprobs(entries: Sequence[TokenLogprob]) -> list[dict[str, Any]]:
    """`choices[i].logprobs.content` of a chat reply: one `{token, logprob, bytes, top_logprobs}` per token."""

    def one(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}

    return [one(e.token, e.logprob) | {"top_logprobs": [one(text, lp) for _, text, lp in e.top]} for e in entries]


class LegacyLogprobs:
    """`choices[i].logprobs` of `/v1/completions`: `tokens`, `token_logprobs`, `top_logprobs` (one
    `{token: logprob}` per position, the most likely first, then the chosen token if it is not among
    them; a token text that two ids share keeps the likelier) and `text_offset`, each token's offset in characters into the choice's text (the sum of
    the token texts before it). `take()` returns what was added since the last call: a stream chunk's part."""

    def __init__(self) -> None:
        self.offset = 0
        self._parts: dict[str, list[Any]] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}

    def add(self, token: str, logprob: float | None, top: Sequence[tuple[int, str, float]] | None) -> None:
        """One position; `logprob` and `top` None for a prompt's first token, which nothing precedes."""
        best: dict[str, float] | None = None
        if top is not None:
            best = {}
            for _, text, lp in top:
                best.setdefault(text, lp)
            best.setdefault(token, logprob)  # the chosen token is always listed, as OpenAI and vLLM do (k + 1 at most)
        for key, value in zip(self._parts, (token, logprob, best, self.offset)):
            self._parts[key].append(value)
        self.offset += len(token)

    def add_prompt(self, tokens: Sequence[str], entries: Sequence[TokenLogprob | None]) -> None:
        """A prompt's positions: `tokens` its token texts, `entries` from `Engine.prompt_logprobs`."""
        for token, entry in zip(tokens, entries):
            if entry is None:
                self.add(token, None, None)
            else:
                self.add(token, entry.logprob, entry.top)

    def add_generated(self, entries: Sequence[TokenLogprob]) -> None:
        for entry in entries:
            self.add(entry.token, entry.logprob, entry.top)

    def take(self) -> dict[str, list[Any]]:
        taken = self._parts
        self._parts = {key: [] for key in taken}
        return taken


class Reply:
    """Builds the response objects of one request: the whole reply, or its stream chunks. A choice is
    made by `choice()`; `index` is OpenAI's: prompt i, sample j of n -> i * n + j."""

    def __init__(self, model: str, chat: bool):
        self.model = model
        self.chat = chat
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())

    def _object(self, kind: str, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": choices, **extra}

    def choice(self, index: int, text: str | None, finish_reason: str | None = None, logprobs: Any = None,
               first: bool = False, whole: bool = False) -> dict[str, Any]:
        """One choice. `logprobs`: a chat reply's `content` list, or the legacy object (`LegacyLogprobs.take()`).
        Chat: `message` when `whole`, else a stream `delta` (with the role when `first`)."""
        if self.chat and logprobs is not None:
            logprobs = {"content": logprobs}
        choice: dict[str, Any] = {"index": index, "logprobs": logprobs, "finish_reason": finish_reason}
        if not self.chat:
            choice["text"] = text or ""
        elif whole:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["delta"] = ({"role": "assistant"} if first else {}) | ({"content": text} if text is not None else {})
        return choice

    def whole(self, choices: list[dict[str, Any]], prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        kind = "chat.completion" if self.chat else "text_completion"
        return self._object(kind, sorted(choices, key=lambda c: c["index"]), usage=usage(prompt_tokens, completion_tokens))

    def chunk(self, choice: dict[str, Any]) -> dict[str, Any]:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return self._object(kind, [choice])

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return self._object(kind, [], usage=usage(prompt_tokens, completion_tokens))
