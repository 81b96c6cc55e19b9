"""An OpenAI-compatible API server over loaded engines: `/v1/models`, `/v1/chat/completions`,
`/v1/completions` (streamed as server-sent events or whole), and `/health`.

Every bad request gets a 4xx with OpenAI's error body, unknown routes and broken bodies included. What
costs nothing is decided first: the key, then the body's size (before it is read), then a prompt's
length in characters (before it is tokenized). At most `max_concurrent` generations run at once and
`max_queue` more wait for a slot; beyond that a request gets 429 at once. A client that disconnects
ends its generation. Text from a request reaches the log only through `loggable`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import traceback
from dataclasses import dataclass
from typing import Any, AsyncIterator, Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from belle.chat.protocol import (
    APIError, ChatRequest, CompletionRequest, Reply, SamplingRequest, error_body, lone_surrogate_at, plain_messages,
)
from belle.conversation import validate_messages
from belle.generation import Engine, GenerationParams, PromptTooLong, TextStream
from belle.records import Rejection

logger = logging.getLogger(__name__)
DEFAULTS = GenerationParams()  # what a request leaves out: BELLE's web demo settings


@dataclass(frozen=True)
class ServerLimits:
    """What one server accepts.

    Args:
        max_concurrent: generations running at once.
        max_queue: requests waiting for a free slot; one more gets 429.
        max_input_tokens: the longest prompt, in tokens; default: the model's context less one.
        max_tokens: the largest `max_tokens` a request may ask for; default: no limit beyond the context.
        max_request_bytes: the largest request body, in bytes; a larger one gets 413 before it is read.
    """

    max_concurrent: int = 4
    max_queue: int = 32
    max_input_tokens: int | None = None
    max_tokens: int | None = None
    max_request_bytes: int = 4 * 1024 * 1024


class Admission:
    """A slot for each running generation and a bounded line of requests waiting for one."""

    def __init__(self, max_running: int, max_waiting: int):
        self.max_waiting = max_waiting
        self.running = 0
        self.waiting = 0
        self._slots = asyncio.Semaphore(max_running)

    async def enter(self) -> None:
        if self._slots.locked() and self.waiting >= self.max_waiting:
            raise APIError(429, "the server is busy: every generation slot is taken and the queue is full; retry later",
                           type="requests", code="rate_limit_exceeded")
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.running += 1

    def leave(self) -> None:
        self.running -= 1
        self._slots.release()


def loggable(text: str, limit: int = 300) -> str:
    """`text` from a request, made safe for one log line: every character that is not printable
    (newlines, carriage returns, ANSI escapes, line separators, lone surrogates) written as its
    Python escape (`\\n`, `\\x1b`, `\\u2028`), and cut to `limit` characters."""
    cut = text[:limit]
    if not cut.isprintable():
        cut = "".join(c if c.isprintable() else repr(c)[1:-1] for c in cut)
    return cut if len(text) <= limit else f"{cut}... ({len(text) - limit} more characters)"


def error_response(status: int, body: dict[str, Any], headers: Mapping[str, str] | None = None) -> Response:
    """An error as JSON in ASCII, so that any text echoed from a request (a lone surrogate too) encodes."""
    return Response(json.dumps(body), status_code=status, headers=headers, media_type="application/json")


def body_too_large(limit: int) -> APIError:
    return APIError(413, f"the request body is larger than this server's limit of {limit} bytes (--max-request-bytes)",
                    code="request_too_large")


def unreadable_body(error: HTTPException) -> str:
    """What was wrong with a body FastAPI could not decode (it says only "error parsing the body")."""
    cause = error.__cause__
    if isinstance(cause, UnicodeDecodeError):
        return f"the body is not valid UTF-8: byte 0x{cause.object[cause.start]:02x} at offset {cause.start}"
    if isinstance(cause, RecursionError):
        return "the body is not valid JSON: nested too deeply"
    if isinstance(cause, ValueError):  # Python's bound on integer digits; its advice is for the server
        return f"the body is not valid JSON: {str(cause).split(';')[0]}"
    return str(error.detail)


def http_error_message(error: HTTPException, request: Request, max_request_bytes: int) -> str:
    """The message of an error Starlette or FastAPI raised: no route, wrong method, a body too large or unreadable."""
    if error.status_code == 404:
        return (f"no route {request.method} {request.url.path}; "
                "this server has /v1/models, /v1/chat/completions, /v1/completions and /health")
    if error.status_code == 405:
        allowed = Headers(headers=dict(error.headers or {})).get("allow", "")
        return f"{request.method} is not allowed on {request.url.path}; use {allowed}"
    if error.status_code == 413:
        return body_too_large(max_request_bytes).message
    if error.status_code == 400:
        return unreadable_body(error)
    return str(error.detail)


class Gate:
    """ASGI middleware deciding what needs no body: the API key (on every path but /health), then the
    body's size, from `Content-Length` before a byte is read, and counted while a body without one
    (chunked) streams in. It also turns any fault into a 500 with OpenAI's body, logged on escaped lines.

    Args:
        app: the app behind it.
        api_key: the key every request but /health must send as `Authorization: Bearer KEY`; None: no key.
        max_body_bytes: the largest request body, in bytes.
    """

    def __init__(self, app: ASGIApp, api_key: str | None, max_body_bytes: int):
        self.app = app
        self.expected = f"Bearer {api_key}".encode() if api_key is not None else None
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self.refusal(scope["path"], Headers(scope=scope))
        if refusal is not None:
            await error_response(refusal.status, refusal.body(), {"connection": "close"})(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, self.bounded(receive), tracked)
        except Exception as error:  # a bug in belle; the client learns only its type
            log_fault(f"{scope['method']} {loggable(scope['path'])} failed", error)
            if not started:
                body = error_body(f"internal error: {type(error).__name__}", type="server_error")
                await error_response(500, body)(scope, receive, send)

    def refusal(self, path: str, headers: Headers) -> APIError | None:
        if self.expected is not None and path != "/health":
            if not hmac.compare_digest(headers.get("authorization", "").encode(), self.expected):
                return APIError(401, "missing or wrong API key: send `Authorization: Bearer KEY`", code="invalid_api_key")
        declared = headers.get("content-length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > self.max_body_bytes:
            return body_too_large(self.max_body_bytes)
        return None

    def bounded(self, receive: Receive) -> Receive:
        """`receive` that raises a 413 once the body passes the limit, whatever Content-Length said."""
        received = 0

        async def receive_bounded() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise HTTPException(413, headers={"connection": "close"})
            return message

        return receive_bounded


def log_fault(what: str, error: BaseException) -> None:
    """Log an unexpected error: its message escaped (it may quote a request), then where it happened."""
    frames = "".join(traceback.format_tb(error.__traceback__))
    logger.error("%s: %s: %s\nTraceback (most recent call last):\n%s",
                 what, type(error).__name__, loggable(str(error), 2000), frames.rstrip())


def prompt_char_limit(engine: Engine, max_input_tokens: int) -> int:
    """The most characters a prompt of `max_input_tokens` tokens can hold, found without tokenizing.

    No token stands for more characters than its vocabulary entry has (byte-level BPE spells each
    byte as one character, SentencePiece a space as one "▁"), so a prompt of C characters has at
    least C / longest tokens. Doubled for normalizers that compose two characters into one (NFC:
    "e" + U+0301 -> "é"). For the test model: 2047 tokens * 21 characters * 2 = 85,974 characters.
    """
    longest = max(map(len, engine.tokenizer.get_vocab()), default=1)
    return max_input_tokens * longest * 2


def create_app(engines: dict[str, Engine], limits: ServerLimits = ServerLimits(), api_key: str | None = None) -> FastAPI:
    """The FastAPI app serving `engines` by name. With `api_key`, every route but `/health` wants `Authorization: Bearer KEY`."""
    app = FastAPI(title="belle", docs_url=None, redoc_url=None)
    app.add_middleware(Gate, api_key=api_key, max_body_bytes=limits.max_request_bytes)
    admission = Admission(limits.max_concurrent, limits.max_queue)
    max_input = {name: limits.max_input_tokens or engine.context_length - 1 for name, engine in engines.items()}
    max_chars = {name: prompt_char_limit(engine, max_input[name]) for name, engine in engines.items()}

    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError) -> Response:
        return error_response(error.status, error.body())

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> Response:
        message = http_error_message(error, request, limits.max_request_bytes)
        code = "request_too_large" if error.status_code == 413 else None
        return error_response(error.status_code, error_body(message, code=code), error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> Response:
        first = error.errors()[0]
        if first["type"] == "json_invalid":
            return error_response(400, error_body(f"the body is not valid JSON: {first['ctx']['error']}"))
        where = ".".join(str(part) for part in first["loc"][1:])
        message = str(first["ctx"]["error"]) if first["type"] == "value_error" else first["msg"]
        if first["type"] == "string_unicode":
            message = "a string holds a lone surrogate (such as \\ud800), which is not valid Unicode text"
        elif not where and first["type"] in ("model_attributes_type", "dict_type"):
            message = "the body must be a JSON object, sent with Content-Type: application/json"
        return error_response(400, error_body(f"{where}: {message}" if where else message, param=where or None))

    def engine_for(body: SamplingRequest) -> Engine:
        """The engine a request names, once the request asks for nothing this server cannot do."""
        where = lone_surrogate_at(body.model_dump())
        if where is not None:
            raise APIError(400, f"{where}: holds a lone surrogate (such as \\ud800), which is not valid Unicode text", param=where)
        if body.model not in engines:
            raise APIError(404, f"model {body.model!r} does not exist; this server has: {', '.join(engines)}",
                           param="model", code="model_not_found")
        refused = body.unsupported()
        if refused:
            raise APIError(400, f"{refused[0]}: not supported by this server", param=refused[0])
        if body.model_extra:
            logger.warning("ignoring request fields this server does not use: %s", loggable(", ".join(sorted(body.model_extra))))
        return engines[body.model]

    def check_length(body: SamplingRequest, texts: list[str], param: str) -> None:
        """Refuse a prompt too long for the context by its characters alone, before it is tokenized;
        each text (a message's content) takes at least one token."""
        chars, limit, tokens = sum(map(len, texts)), max_chars[body.model], max_input[body.model]
        if chars > limit or len(texts) > tokens:
            size = f"{chars} characters" + (f" in {len(texts)} messages" if param == "messages" else "")
            raise APIError(400, f"the prompt ({size}) is longer than {tokens} tokens can hold; "
                                f"this server accepts at most {tokens} tokens", param=param, code="context_length_exceeded")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": list(engines), "running": admission.running, "waiting": admission.waiting}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "belle", "max_model_len": engine.context_length}
            for name, engine in engines.items()
        ]}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request) -> Any:
        engine = engine_for(body)
        messages = plain_messages(body.messages)
        try:
            validate_messages(messages, require_assistant=False)
        except Rejection as e:
            raise APIError(400, e.at("messages"), param="messages") from None
        if messages[-1]["role"] != "user":
            raise APIError(400, "messages: the last message must be the user's", param="messages")
        check_length(body, [m["content"] for m in messages], "messages")
        prompt_ids = await run_in_threadpool(engine.encode_chat, messages)
        return await respond(engine, body, prompt_ids, body.max_completion_tokens or body.max_tokens, request, chat=True)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Any:
        engine = engine_for(body)
        prompt = body.prompt if isinstance(body.prompt, str) else body.prompt[0]
        check_length(body, [prompt], "prompt")
        prompt_ids = await run_in_threadpool(engine.encode_text, prompt)
        return await respond(engine, body, prompt_ids, body.max_tokens, request, chat=False)

    async def respond(engine: Engine, body: SamplingRequest, prompt_ids: list[int], max_tokens: int | None, request: Request, chat: bool) -> Any:
        params = sampling_params(engine, body, prompt_ids, max_tokens, "messages" if chat else "prompt")
        await admission.enter()
        loop = asyncio.get_running_loop()
        try:
            stream = engine.stream(prompt_ids, params, on_finish=lambda: loop.call_soon_threadsafe(admission.leave))
        except BaseException:
            admission.leave()
            raise
        reply = Reply(body.model, chat)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(sse(stream, reply, include_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        text = await collect(stream, request)
        return reply.whole(text, openai_finish(stream), stream.prompt_tokens, stream.completion_tokens)

    def sampling_params(engine: Engine, body: SamplingRequest, prompt_ids: list[int], max_tokens: int | None, param: str) -> GenerationParams:
        if not prompt_ids:
            raise APIError(400, f"{param}: encodes to no tokens", param=param)
        if len(prompt_ids) > max_input[body.model]:
            raise APIError(400, f"the prompt has {len(prompt_ids)} tokens; this server accepts at most {max_input[body.model]}",
                           param=param, code="context_length_exceeded")
        if max_tokens is not None and limits.max_tokens is not None and max_tokens > limits.max_tokens:
            raise APIError(400, f"max_tokens is {max_tokens}; this server allows at most {limits.max_tokens}", param="max_tokens")
        if max_tokens is None:
            room = engine.context_length - len(prompt_ids)
            max_tokens = max(1, min(DEFAULTS.max_new_tokens, room, limits.max_tokens or room))
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        try:
            params = GenerationParams(
                temperature=DEFAULTS.temperature if body.temperature is None else body.temperature,
                top_p=DEFAULTS.top_p if body.top_p is None else body.top_p,
                top_k=DEFAULTS.top_k if body.top_k is None else body.top_k,
                repetition_penalty=DEFAULTS.repetition_penalty if body.repetition_penalty is None else body.repetition_penalty,
                max_new_tokens=max_tokens,
                min_new_tokens=min(body.min_tokens or 0, max_tokens),
                stop=tuple(stop),
            )
            engine.check_fits(prompt_ids, params)
        except PromptTooLong as e:
            raise APIError(400, str(e), param="max_tokens", code="context_length_exceeded") from None
        except ValueError as e:
            raise APIError(400, str(e)) from None
        return params

    return app


def openai_finish(stream: TextStream) -> str:
    """OpenAI knows `stop` and `length`; a cancelled generation only reaches a client that left."""
    return "length" if stream.finish_reason == "length" else "stop"


async def _deltas(stream: TextStream) -> AsyncIterator[str]:
    """The stream's text deltas, each `next` run in a worker thread so the event loop stays free."""
    async for delta in iterate_in_threadpool(iter(stream)):
        yield delta


async def collect(stream: TextStream, request: Request) -> str:
    """The whole reply; if the client goes away meanwhile, generation is cancelled."""
    parts = []
    try:
        async for delta in _deltas(stream):
            parts.append(delta)
            if await request.is_disconnected():
                break
    finally:
        stream.cancel()
    return "".join(parts)


async def sse(stream: TextStream, reply: Reply, include_usage: bool) -> AsyncIterator[str]:
    """Server-sent events: a first chunk with the role, one per text delta, one with the finish
    reason, optionally one with usage, then `[DONE]`. Leaving early (client gone) cancels."""

    def event(data: dict[str, Any]) -> str:
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

    try:
        if reply.chat:
            yield event(reply.chunk("", first=True))
        try:
            async for delta in _deltas(stream):
                yield event(reply.chunk(delta))
        except Exception as error:  # the headers are sent: report in-band, as OpenAI does
            log_fault("generation failed", error)
            yield event(error_body(f"internal error: {type(error).__name__}", type="server_error"))
            return
        yield event(reply.chunk(None, openai_finish(stream)))
        if include_usage:
            yield event(reply.usage_chunk(stream.prompt_tokens, stream.completion_tokens))
        yield "data: [DONE]\n\n"
    finally:
        stream.cancel()
