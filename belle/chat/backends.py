"""Where a chat front end gets its replies: models loaded in this process, or an OpenAI-compatible
server (`belle serve`, vLLM, ...). Both offer `names` and `stream(model, messages, params)`, a
generator of text deltas; closing the generator (Stop, a new message) ends the generation.

A server's reply is complete only when its stream ends with `data: [DONE]`. A stream that ends
or breaks before that, or holds a line that is not a JSON chunk, raises `ReplyCut` after the
deltas that did come; a server that cannot be reached or refuses raises `BackendError`. Their
messages are one line, with the key and the secrets of the URL redacted.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Iterable, Iterator

import openai

from belle.generation import Engine, GenerationParams
from belle.llm import http_module, redact_http_logs, redact_url, scrub, url_secrets
from belle.streaming import sse_data


class BackendError(Exception):
    """The model server gave no reply; the message is one line fit to show."""


class ReplyCut(BackendError):
    """The reply stopped before its end: the deltas already yielded are all there is of it."""

    finish_reason = "cut"  # where a complete reply has "stop" or "length"


CUT_PREFIX = "[reply cut off: "


def cut_note(error: ReplyCut) -> str:
    """The line a front end shows under a cut reply."""
    return f"{CUT_PREFIX}{error}]"


class LocalBackend:
    """Engines in this process. A history too long for the context loses its oldest exchanges."""

    def __init__(self, engines: dict[str, Engine]):
        self.engines = engines
        self.names = list(engines)

    def stream(self, model: str, messages: list[dict[str, str]], params: GenerationParams) -> Iterator[str]:
        yield from self.engines[model].chat(messages, params)


class RemoteBackend:
    """An OpenAI-compatible server at `base_url` (ending in `/v1`); the key comes from `api_key_env`.
    Raises BackendError when the server's models cannot be listed."""

    def __init__(self, base_url: str, api_key_env: str = "BELLE_API_KEY", timeout_s: float = 600):
        key = os.environ.get(api_key_env) or "EMPTY"
        self.shown_url = redact_url(base_url) or ""
        self._secrets = sorted(([] if key == "EMPTY" else [key]) + url_secrets(base_url), key=len, reverse=True)
        self._http_error = http_module().HTTPError
        redact_http_logs()
        self.client = openai.OpenAI(base_url=base_url, api_key=key, timeout=timeout_s, max_retries=1)
        try:
            self.names = [model.id for model in self.client.models.list()]
        except openai.APIError as error:
            raise BackendError(f"cannot list the models of {self.shown_url}: {self._explain(error)}") from None

    def stream(self, model: str, messages: list[dict[str, str]], params: GenerationParams) -> Iterator[str]:
        try:
            with self.client.chat.completions.with_streaming_response.create(
                model=model,
                messages=messages,  # type: ignore[arg-type]
                stream=True,
                temperature=params.temperature,
                top_p=params.top_p,
                max_tokens=params.max_new_tokens,
                stop=list(params.stop) or None,
                extra_body={"top_k": params.top_k, "repetition_penalty": params.repetition_penalty},
            ) as response:  # leaving early closes the connection, which cancels the server's generation
                yield from self._deltas(response.iter_lines())
        except openai.APIError as error:
            raise BackendError(self._explain(error)) from None
        except self._http_error as error:  # the stream broke after it began
            raise ReplyCut(self._scrub(f"the connection closed before the end ({error})")) from None

    def _deltas(self, lines: Iterable[str]) -> Iterator[str]:
        """The text deltas of a chat completion stream; ReplyCut unless it ends with `[DONE]`."""
        try:
            for data in sse_data(lines):
                if data.strip() == "[DONE]":
                    return
                text = _delta(data)
                if text:
                    yield text
        except ValueError as error:
            raise ReplyCut(self._scrub(f"the server sent {error}")) from None
        except ReplyCut as error:
            raise ReplyCut(self._scrub(str(error))) from None
        raise ReplyCut("the connection closed before the end")

    def _explain(self, error: openai.APIError) -> str:
        if isinstance(error, openai.APIStatusError):
            if error.status_code in (401, 403):  # never echo the server's message: OpenAI's quotes part of the key
                return f"the server refused the key (HTTP {error.status_code})"
            return self._scrub(f"HTTP {error.status_code}: {re.sub(r'^Error code: [0-9]+ - ', '', error.message)}")
        if isinstance(error, openai.APIConnectionError):  # APITimeoutError too
            return self._scrub(f"{error.message.rstrip('.')} ({error.__cause__ or 'no reason given'})")
        return self._scrub(error.message)

    def _scrub(self, text: str) -> str:
        return " ".join(scrub(text, self._secrets).split())  # one line


def _delta(data: str) -> str:
    """The text of one chunk's delta ("" for a chunk with none, such as the finish or usage);
    ValueError for data that is not a JSON object, with a short quote of it; ReplyCut for an
    error event."""
    try:
        chunk: Any = json.loads(data)
    except ValueError:
        raise ValueError(f"a line that is not JSON: {data[:80]!r}") from None
    if not isinstance(chunk, dict):
        raise ValueError(f"a line that is not a JSON object: {data[:80]!r}")
    if chunk.get("error"):
        error = chunk["error"]
        raise ReplyCut(f"the server stopped with an error: {error.get('message') if isinstance(error, dict) else error}")
    choices = chunk.get("choices")
    delta = choices[0].get("delta") if isinstance(choices, list) and choices and isinstance(choices[0], dict) else None
    content = delta.get("content") if isinstance(delta, dict) else None
    return content if isinstance(content, str) else ""
