"""Where replies come from: models loaded in this process (`LocalBackend`), or an OpenAI-compatible
server (`belle serve`, vLLM, a hosted model) through `belle.llm.LLMClient` (`RemoteBackend`). Both
are a `ChatBackend`: the chat front ends stream one reply at a time, eval answers many at once.

A server's streamed reply is complete only when its stream ends with `data: [DONE]`. A stream that
ends or breaks before that, or holds a line that is not a JSON chunk, raises `ReplyCut` after the
deltas that did come; a server that cannot be reached or refuses raises `BackendError`. Their
messages are one line, with the key and the secrets of the URL redacted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import queue
import re
import threading
from typing import Any, Coroutine, Iterable, Iterator, Protocol, Sequence, TypeVar

import openai

from belle.generation import Completion, Engine, GenerationParams, PromptTooLong
from belle.llm import LLMClient, LLMError, LLMFatalError, LLMOptions, fan_out, http_module, redact_url, scrub, url_secrets
from belle.streaming import sse_data

T = TypeVar("T")
CHAT_TIMEOUT_S = 600.0  # a server may take minutes over a long reply


class BackendError(Exception):
    """The model server gave no reply; the message is one line fit to show."""


class ReplyCut(BackendError):
    """The reply stopped before its end: the deltas already yielded are all there is of it."""

    finish_reason = "cut"  # where a complete reply has "stop" or "length"


CUT_PREFIX = "[reply cut off: "


def cut_note(error: ReplyCut) -> str:
    """The line a front end shows under a cut reply."""
    return f"{CUT_PREFIX}{error}]"


class ChatBackend(Protocol):
    """The models a front end or a job talks to, whether in this process or behind a server.

    `names`: the models offered, the first one the default. `context_length`: the most tokens
    (prompt plus reply) a model may see, where the backend knows it (None for a server).
    """

    names: list[str]
    context_length: int | None

    def stream(self, model: str, messages: list[dict[str, str]], params: GenerationParams) -> Iterator[str]:
        """The text deltas of `model`'s reply to `messages`; closing the generator ends the generation.
        Raises `PromptTooLong`, `ReplyCut` (after the deltas that came) or `BackendError`."""
        ...

    def complete(self, model: str, conversations: Sequence[list[dict[str, str]]],
                 params: GenerationParams) -> list[Completion | str]:
        """`model`'s whole reply to each conversation, in order; for one that got none, why (a
        prompt over the context, a request that failed for good). Raises `LLMFatalError` when no
        request can succeed (a refused key, an unknown model)."""
        ...

    def prompt_tokens(self, model: str, messages: list[dict[str, str]]) -> int:
        """The length of `messages` as `model`'s prompt, in tokens; 0 where the backend cannot count."""
        ...

    def close(self) -> None:
        """Let go of connections and threads (models in memory stay)."""
        ...


class LocalBackend:
    """Engines in this process, by name. A history too long for the context loses its oldest exchanges."""

    def __init__(self, engines: dict[str, Engine]):
        self.engines = engines
        self.names = list(engines)
        self.context_length = max(engine.context_length for engine in engines.values())

    def stream(self, model: str, messages: list[dict[str, str]], params: GenerationParams) -> Iterator[str]:
        stream = self.engines[model].chat(messages, params)
        try:
            yield from stream
        finally:
            stream.cancel()

    def complete(self, model: str, conversations: Sequence[list[dict[str, str]]],
                 params: GenerationParams) -> list[Completion | str]:
        """The replies in one left-padded batch; a conversation that cannot fit the context gets why."""
        engine = self.engines[model]
        outcomes: list[Completion | str] = [""] * len(conversations)
        prompts, places = [], []
        for place, messages in enumerate(conversations):
            try:
                ids, _ = engine.fit_chat(messages, params.max_new_tokens)
            except PromptTooLong as e:
                outcomes[place] = str(e)
                continue
            prompts.append(ids)
            places.append(place)
        if prompts:
            for place, completion in zip(places, engine.generate_batch(prompts, params)):
                outcomes[place] = completion
        return outcomes

    def prompt_tokens(self, model: str, messages: list[dict[str, str]]) -> int:
        return len(self.engines[model].encode_chat(messages))

    def close(self) -> None:
        for engine in self.engines.values():
            engine.close()


def chat_options(base_url: str, api_key_env: str = LLMOptions.api_key_env) -> LLMOptions:
    """The client settings of a chat front end's server: no cache (a conversation is not asked
    twice), one retry, and `CHAT_TIMEOUT_S` for each read. Each request names its model, so the
    options' model is only a placeholder."""
    return LLMOptions(model="(named per request)", base_url=base_url, api_key_env=api_key_env, cache="off",
                      max_retries=1, timeout=CHAT_TIMEOUT_S)


def sampling_request(params: GenerationParams, openai_api: bool = False) -> dict[str, Any]:
    """`params` as a request's sampling fields: temperature, top_p, max_tokens, stop, and top_k and
    repetition_penalty (which vLLM and `belle serve` honour) unless the endpoint is OpenAI's own
    API, which refuses fields it does not know."""
    request: dict[str, Any] = {"temperature": params.temperature, "top_p": params.top_p,
                               "max_tokens": params.max_new_tokens}
    if not openai_api:
        request.update(top_k=params.top_k, repetition_penalty=params.repetition_penalty)
    if params.stop:
        request["stop"] = list(params.stop)
    return request


class RemoteBackend:
    """An OpenAI-compatible server, through `LLMClient` (retries, the reply cache and the key from
    `options.api_key_env`): one for streams, and one per model that `complete` asks (the cache
    keys on the options' model), each made at its first request. `names`: the models to offer;
    default: all the server lists (`BackendError` when it cannot be listed, or when there is no key
    for a server that is not local). The clients live on an event loop in a thread of its own, so
    any thread may call the backend."""

    def __init__(self, options: LLMOptions, names: Sequence[str] | None = None):
        self.options = options
        self.context_length = None
        self.shown_url = redact_url(options.base_url) or ""
        key = os.environ.get(options.api_key_env) if options.api_key_env else None
        self._secrets = sorted(([key] if key else []) + url_secrets(options.base_url), key=len, reverse=True)
        self._http_error = http_module().HTTPError
        self._openai_api = not options.base_url  # OpenAI's own API refuses parameters it does not know
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="belle-remote-backend")
        self._thread.start()
        self._clients: dict[str, LLMClient] = {}
        if names is not None:
            self.names = list(names)
            return
        try:
            self.names = self._run(self._client(options.model).models())
        except openai.APIError as error:
            self.close()
            raise BackendError(f"cannot list the models of {self.shown_url}: {self._explain(error)}") from None
        except (BackendError, LLMFatalError) as error:
            self.close()
            raise BackendError(self._scrub(str(error))) from None

    def _client(self, model: str) -> LLMClient:
        if model not in self._clients:
            try:
                self._clients[model] = LLMClient(dataclasses.replace(self.options, model=model))
            except ValueError as error:  # invalid options; LLMFatalError (no key for a remote server) goes on
                raise BackendError(self._scrub(str(error))) from None
        return self._clients[model]

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def stream(self, model: str, messages: list[dict[str, str]], params: GenerationParams) -> Iterator[str]:
        client = self._client(self.options.model)  # a stream names its model and skips the cache
        lines: queue.SimpleQueue[Any] = queue.SimpleQueue()
        end = object()

        async def pump() -> None:
            try:
                async for line in client.stream(messages, model=model, **sampling_request(params, self._openai_api)):
                    lines.put(line)
            except Exception as error:
                lines.put(error)
            lines.put(end)

        def received() -> Iterator[str]:
            while (line := lines.get()) is not end:
                if isinstance(line, Exception):
                    raise line
                yield line

        pumping = asyncio.run_coroutine_threadsafe(pump(), self._loop)
        try:
            yield from self._deltas(received())
        except openai.APIError as error:
            raise BackendError(self._explain(error)) from None
        except self._http_error as error:  # the stream broke after it began
            raise ReplyCut(self._scrub(f"the connection closed before the end ({error})")) from None
        finally:
            pumping.cancel()  # leaving early closes the connection, which cancels the server's generation

    def complete(self, model: str, conversations: Sequence[list[dict[str, str]]],
                 params: GenerationParams) -> list[Completion | str]:
        """The replies, `options.concurrency` requests at a time, through `belle.llm.fan_out`."""
        client = self._client(model)
        request = sampling_request(params, self._openai_api)
        outcomes: list[Completion | str] = [""] * len(conversations)

        def settle(place: int, outcome: Any) -> None:
            outcomes[place] = str(outcome) if isinstance(outcome, LLMError) else Completion(
                outcome.text, outcome.finish_reason, outcome.prompt_tokens, outcome.completion_tokens)

        self._run(fan_out(range(len(conversations)), lambda place: client.chat(conversations[place], **request),
                          settle, concurrency=self.options.concurrency))
        return outcomes

    def prompt_tokens(self, model: str, messages: list[dict[str, str]]) -> int:
        return 0

    def close(self) -> None:
        async def close_all() -> None:
            for client in self._clients.values():
                await client.aclose()

        if self._loop.is_closed():
            return
        self._run(close_all())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

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
