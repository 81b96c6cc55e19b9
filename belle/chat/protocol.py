"""The OpenAI wire format: request bodies as pydantic models, and the JSON the server sends back.

Beyond OpenAI's fields, requests may carry `top_k`, `repetition_penalty` and `min_tokens`, as
vLLM accepts them. Fields that would change the result but are not supported (`n` above 1,
`logprobs`, penalties, tools) are refused with a 400 naming the field, never ignored.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_COUNT = 2**31 - 1  # the largest token count or k a request may name; JSON integers are unbounded
_SURROGATE = re.compile("[\ud800-\udfff]")


class APIError(Exception):
    """An error the client caused (or a server fault), sent as OpenAI's `{"error": {...}}` body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None, type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingRequest(BaseModel):
    """Fields shared by `/v1/chat/completions` and `/v1/completions`."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    model: str
    max_tokens: int | None = Field(None, ge=1, le=MAX_COUNT)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0, le=MAX_COUNT)
    repetition_penalty: float | None = Field(None, gt=0)
    min_tokens: int | None = Field(None, ge=0, le=MAX_COUNT)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, le=MAX_COUNT)
    presence_penalty: float = 0
    frequency_penalty: float = 0
    logprobs: bool | int | None = None
    logit_bias: dict[str, float] | None = None

    def unsupported(self) -> list[str]:
        """Fields set to something this server cannot honour."""
        refused = []
        if self.n != 1:
            refused.append("n")
        if self.presence_penalty or self.frequency_penalty:
            refused.append("presence_penalty" if self.presence_penalty else "frequency_penalty")
        if self.logprobs:
            refused.append("logprobs")
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
    tools: list[Any] | None = None
    response_format: dict[str, Any] | None = None

    def unsupported(self) -> list[str]:
        refused = super().unsupported()
        if self.tools:
            refused.append("tools")
        if self.response_format and self.response_format.get("type") != "text":
            refused.append("response_format")
        return refused


class CompletionRequest(SamplingRequest):
    prompt: str | list[str]
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(None, le=MAX_COUNT)

    @field_validator("prompt")
    @classmethod
    def _not_empty(cls, prompt: str | list[str]) -> str | list[str]:
        if prompt in ("", [], [""]):
            raise ValueError("must not be empty")
        return prompt

    def unsupported(self) -> list[str]:
        refused = super().unsupported()
        if self.echo:
            refused.append("echo")
        if self.suffix:
            refused.append("suffix")
        if self.best_of not in (None, 1):
            refused.append("best_of")
        if isinstance(self.prompt, list) and len(self.prompt) != 1:
            refused.append("prompt")
        return refused


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


class Reply:
    """Builds the response objects of one request: the whole reply, or its stream chunks."""

    def __init__(self, model: str, chat: bool):
        self.model = model
        self.chat = chat
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())

    def _object(self, kind: str, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": choices, **extra}

    def _choice(self, text: str | None, finish_reason: str | None, first: bool = False, whole: bool = False) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": finish_reason}
        if not self.chat:
            choice["text"] = text or ""
        elif whole:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["delta"] = ({"role": "assistant"} if first else {}) | ({"content": text} if text is not None else {})
        return choice

    def whole(self, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        kind = "chat.completion" if self.chat else "text_completion"
        return self._object(kind, [self._choice(text, finish_reason, whole=True)], usage=usage(prompt_tokens, completion_tokens))

    def chunk(self, text: str | None, finish_reason: str | None = None, first: bool = False) -> dict[str, Any]:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return self._object(kind, [self._choice(text, finish_reason, first=first)])

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return self._object(kind, [], usage=usage(prompt_tokens, completion_tokens))
