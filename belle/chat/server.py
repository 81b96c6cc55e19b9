"""An OpenAI-compatible API server over loaded engines: `/v1/models` (and `/v1/models/{id}`),
`/v1/chat/completions`, `/v1/completions` (streamed as server-sent events or whole), and `/health`.

Every bad request gets a 4xx with OpenAI's error body, unknown routes and broken bodies included. What
costs nothing is decided first: the key, then the body's size (before it is read), then a prompt's
length in characters (before it is tokenized). A request's choices (prompts x `n`) each take one of
`max_concurrent` slots, all at once; the engine decodes the running ones together when it batches.
`max_queue` more requests wait; beyond that a request gets 429 at once. A client that disconnects
ends its generation. Text from a request reaches the log only through `loggable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
import traceback
from collections import deque
from dataclasses import dataclass, replace
from typing import Any, AsyncIterator, Mapping, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from belle.chat.protocol import (
    APIError, ChatRequest, CompletionRequest, LegacyLogprobs, Reply, SamplingRequest, chat_logprobs, error_body,
    lone_surrogate_at, plain_messages, refusal,
)
from belle.conversation import validate_messages
from belle.generation import Engine, GenerationParams, Piece, PromptTooLong, TextStream, TokenLogprob
from belle.records import Rejection

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerLimits:
    """What one server accepts.

    Args:
        max_concurrent: choices decoding at once; a request takes one slot per choice (prompts x n)
            and is refused with 400 if it has more choices than this.
        max_queue: requests waiting for free slots; one more gets 429.
        max_input_tokens: the longest prompt, in tokens; default: the model's context less one.
        max_tokens: the largest `max_tokens` a request may ask for; default: no limit beyond the context.
        max_request_bytes: the largest request body, in bytes; a larger one gets 413 before it is read.
    """

    max_concurrent: int = 32
    max_queue: int = 32
    max_input_tokens: int | None = None
    max_tokens: int | None = None
    max_request_bytes: int = 4 * 1024 * 1024


class Admission:
    """Slots for the choices decoding at once, and a bounded line of requests waiting for theirs.

    A request takes all its slots at once or waits, first come first served, so two large requests
    can never each hold part of what the other needs. `running` counts slots taken, `waiting` requests in line.
    """

    def __init__(self, max_running: int, max_waiting: int):
        self.max_running = max_running
        self.max_waiting = max_waiting
        self.running = 0
        self._line: deque[tuple[int, asyncio.Future[None]]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._line)

    async def enter(self, slots: int = 1) -> None:
        if not self._line and self.running + slots <= self.max_running:
            self.running += slots
            return
        if len(self._line) >= self.max_waiting:
            raise APIError(429, "the server is busy: every generation slot is taken and the queue is full; retry later",
                           type="requests", code="rate_limit_exceeded")
        entry = (slots, asyncio.get_running_loop().create_future())
        self._line.append(entry)
        try:
            await entry[1]
        except BaseException:  # cancelled while waiting, or just after its slots were granted
            if entry in self._line:
                self._line.remove(entry)
                self._admit()
            elif entry[1].done() and not entry[1].cancelled():
                self.leave(slots)
            raise

    def leave(self, slots: int = 1) -> None:
        self.running -= slots
        self._admit()

    def _admit(self) -> None:
        while self._line and self.running + self._line[0][0] <= self.max_running:
            slots, granted = self._line.popleft()
            if not granted.done():
                self.running += slots
                granted.set_result(None)


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
                "this server has /v1/models, /v1/models/{id}, /v1/chat/completions, /v1/completions and /health")
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



def vocabulary_size(engine: Engine) -> int:
    """How many token ids a prompt may use: those both the tokenizer and the model's output layer know."""
    return min(len(engine.tokenizer), engine.vocab_size)


@dataclass
class Job:
    """What one request asks the engine for. `prompts`: token ids, one list per prompt; `params`: one
    per prompt, None when nothing is generated (`echo` with `max_tokens` 0); `echo`: the text each
    choice starts with, one per prompt, or None; `logprobs`: as `GenerationParams.logprobs`."""

    prompts: list[list[int]]
    params: list[GenerationParams] | None
    n: int
    echo: list[str] | None
    logprobs: int | None

    @property
    def choices(self) -> int:
        return len(self.prompts) * self.n


def create_app(engines: dict[str, Engine], limits: ServerLimits = ServerLimits(), api_key: str | None = None,
               cors_origins: Sequence[str] = ()) -> FastAPI:
    """The FastAPI app serving `engines` by name. With `api_key`, every route but `/health` wants
    `Authorization: Bearer KEY`. With `cors_origins`, browsers on those origins may call it (a
    preflight needs no key; the request itself does)."""
    app = FastAPI(title="belle", docs_url=None, redoc_url=None)
    app.add_middleware(Gate, api_key=api_key, max_body_bytes=limits.max_request_bytes)
    if cors_origins:  # added last, so outermost: it answers preflights before the key is checked
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"], allow_headers=["*"])
    admission = Admission(limits.max_concurrent, limits.max_queue)
    started = int(time.time())
    max_input = {name: limits.max_input_tokens or engine.context_length - 1 for name, engine in engines.items()}
    max_chars = {name: prompt_char_limit(engine, max_input[name]) for name, engine in engines.items()}
    vocabulary = {name: vocabulary_size(engine) for name, engine in engines.items()}

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
            raise model_not_found(body.model)
        refused = body.unsupported()
        if refused:
            raise refusal(refused[0])
        if body.model_extra:
            logger.warning("ignoring request fields this server does not use: %s", loggable(", ".join(sorted(body.model_extra))))
        return engines[body.model]

    def model_not_found(name: str) -> APIError:
        return APIError(404, f"model {name!r} does not exist; this server has: {', '.join(engines)}",
                        param="model", code="model_not_found")

    def check_choices(body: SamplingRequest, prompts: int) -> None:
        choices = prompts * body.n
        if choices > limits.max_concurrent:
            asked = f"{prompts} prompts x n={body.n}" if prompts > 1 else f"n={body.n}"
            raise APIError(400, f"{asked} asks for {choices} choices; this server decodes at most {limits.max_concurrent} "
                                "at once (--max-concurrent), so a request may ask for at most that many",
                           param="n" if prompts == 1 else "prompt")

    def check_length(body: SamplingRequest, texts: list[str], param: str) -> None:
        """Refuse a prompt too long for the context by its characters alone, before it is tokenized;
        each text (a message's content) takes at least one token."""
        chars, limit, tokens = sum(map(len, texts)), max_chars[body.model], max_input[body.model]
        if chars > limit or len(texts) > tokens:
            size = f"{chars} characters" + (f" in {len(texts)} messages" if param == "messages" else "")
            raise APIError(400, f"the prompt ({size}) is longer than {tokens} tokens can hold; "
                                f"this server accepts at most {tokens} tokens", param=param, code="context_length_exceeded")

    def check_tokens(body: SamplingRequest, ids: list[int], param: str) -> None:
        """A prompt's token count against the limit, and each id against the vocabulary."""
        if not ids:
            raise APIError(400, f"{param}: encodes to no tokens", param=param)
        if len(ids) > max_input[body.model]:
            raise APIError(400, f"the prompt has {len(ids)} tokens; this server accepts at most {max_input[body.model]}",
                           param=param, code="context_length_exceeded")
        size = vocabulary[body.model]
        bad = next((k for k, token in enumerate(ids) if not 0 <= token < size), None)
        if bad is not None:
            raise APIError(400, f"{param}.{bad}: token id {ids[bad]} is not in the vocabulary (ids 0 to {size - 1})",
                           param=f"{param}.{bad}")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": list(engines), "running": admission.running, "waiting": admission.waiting}

    def model_card(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": started, "owned_by": "belle", "max_model_len": engines[name].context_length}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(name) for name in engines]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str) -> dict[str, Any]:
        if name not in engines:
            raise model_not_found(name)
        return model_card(name)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request) -> Any:
        engine = engine_for(body)
        check_choices(body, 1)
        logprobs = body.logprobs_wanted()
        messages = plain_messages(body.messages)
        try:
            validate_messages(messages, require_assistant=False)
        except Rejection as e:
            raise APIError(400, e.at("messages"), param="messages") from None
        if messages[-1]["role"] != "user":
            raise APIError(400, "messages: the last message must be the user's", param="messages")
        check_length(body, [m["content"] for m in messages], "messages")
        prompt_ids = await run_in_threadpool(engine.encode_chat, messages)
        check_tokens(body, prompt_ids, "messages")
        params = sampling_params(engine, body, prompt_ids, body.max_completion_tokens or body.max_tokens, logprobs)
        return await respond(engine, body, Job([prompt_ids], [params], body.n, None, logprobs), request, chat=True)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Any:
        engine = engine_for(body)
        prompts = body.prompts()
        check_choices(body, len(prompts))
        if body.max_tokens == 0 and not body.echo:
            raise APIError(400, "max_tokens: 0 asks for no reply; it is allowed only with echo, to score the prompt",
                           param="max_tokens")
        for i, prompt in enumerate(prompts):
            if isinstance(prompt, str):
                check_length(body, [prompt], body.prompt_param(i))
            else:
                check_tokens(body, prompt, body.prompt_param(i))
        ids = await run_in_threadpool(lambda: [p if isinstance(p, list) else engine.encode_text(p) for p in prompts])
        for i, prompt_ids in enumerate(ids):
            check_tokens(body, prompt_ids, body.prompt_param(i))
        logprobs = body.logprobs_wanted()
        params = None
        if body.max_tokens != 0:
            params = [sampling_params(engine, body, prompt_ids, body.max_tokens, logprobs) for prompt_ids in ids]
        echo = None
        if body.echo:
            echo = [p if isinstance(p, str) else engine.tokenizer.decode(p) for p in prompts]
        return await respond(engine, body, Job(ids, params, body.n, echo, logprobs), request, chat=False)

    async def respond(engine: Engine, body: SamplingRequest, job: Job, request: Request, chat: bool) -> Any:
        """Take the job's slots, score the prompts if `echo` asks for their logprobs, start one
        stream per choice, and answer whole or streamed."""
        await admission.enter(job.choices)
        loop = asyncio.get_running_loop()

        def leave() -> None:  # called by the thread that generated
            with contextlib.suppress(RuntimeError):  # the loop has closed: the server is shutting down
                loop.call_soon_threadsafe(admission.leave)

        streams: list[TextStream] = []
        try:
            scored = None
            if job.echo is not None and job.logprobs is not None:
                scored = await run_in_threadpool(engine.prompt_logprobs, job.prompts, job.logprobs)
            for ids, params in zip(job.prompts, job.params or []):
                for j in range(job.n):
                    seeded = replace(params, seed=None if body.seed is None else body.seed + j)
                    streams.append(engine.stream(ids, seeded, on_finish=leave, more_coming=job.choices > 1))
        except BaseException:
            for stream in streams:
                stream.cancel()
            admission.leave(job.choices - len(streams))
            raise
        if not streams:
            admission.leave(job.choices)
        answer = Answer(engine, Reply(body.model, chat), job, streams, scored)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(sse(answer, include_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await collect(answer, request)

    def sampling_params(engine: Engine, body: SamplingRequest, prompt_ids: list[int], max_tokens: int | None,
                        logprobs: int | None) -> GenerationParams:
        """The request's decoding settings; what it leaves out comes from the model (`Engine.default_params`)."""
        if max_tokens is not None and limits.max_tokens is not None and max_tokens > limits.max_tokens:
            raise APIError(400, f"max_tokens is {max_tokens}; this server allows at most {limits.max_tokens}", param="max_tokens")
        defaults = engine.default_params
        if max_tokens is None:
            room = engine.context_length - len(prompt_ids)
            max_tokens = max(1, min(defaults.max_new_tokens, room, limits.max_tokens or room))
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        chosen = {"temperature": body.temperature, "top_p": body.top_p, "top_k": body.top_k,
                  "repetition_penalty": body.repetition_penalty}
        try:
            params = replace(
                defaults, **{key: value for key, value in chosen.items() if value is not None},
                max_new_tokens=max_tokens, min_new_tokens=min(body.min_tokens or 0, max_tokens),
                stop=tuple(stop), seed=body.seed, logprobs=logprobs, ignore_eos=body.ignore_eos,
            )
            engine.check_fits(prompt_ids, params)
        except PromptTooLong as e:
            raise APIError(400, str(e), param="max_tokens", code="context_length_exceeded") from None
        except ValueError as e:
            raise APIError(400, str(e)) from None
        return params

    return app


def openai_finish(stream: TextStream | None) -> str:
    """OpenAI knows `stop` and `length`; a cancelled generation only reaches a client that left.
    A choice that generates nothing (`echo` with `max_tokens` 0) ends by length."""
    return "stop" if stream is not None and stream.finish_reason != "length" else "length"


_DONE = object()


class Answer:
    """The choices of one request as they come: `events()` merges the streams of every choice
    (each pumped by a task of its own into one queue) and turns pieces into choice objects.

    Args:
        engine: the engine the streams run on (its tokenizer names the echoed prompt tokens).
        reply: builds the response objects.
        job: what was asked.
        streams: one per choice, in index order (prompt i, sample j -> i * n + j); empty when nothing is generated.
        scored: `Engine.prompt_logprobs` of the job's prompts, when `echo` asked for logprobs.
    """

    def __init__(self, engine: Engine, reply: Reply, job: Job, streams: list[TextStream], scored: list[list[TokenLogprob | None]] | None):
        self.engine, self.reply, self.job, self.streams, self.scored = engine, reply, job, streams, scored
        self.legacy = [LegacyLogprobs() for _ in range(job.choices)] if job.logprobs is not None and not reply.chat else []

    @property
    def prompt_tokens(self) -> int:
        return sum(map(len, self.job.prompts))

    @property
    def completion_tokens(self) -> int:
        return sum(stream.completion_tokens for stream in self.streams)

    def cancel(self) -> None:
        for stream in self.streams:
            stream.cancel()

    def opening(self, index: int) -> dict[str, Any] | None:
        """The first chunk of a choice: the role (chat), or the echoed prompt with its logprobs."""
        if self.reply.chat:
            return self.reply.choice(index, "", first=True)
        if self.job.echo is None:
            return None
        prompt = index // self.job.n
        logprobs = None
        if self.legacy:
            ids = self.job.prompts[prompt]
            tokens = [self.engine.tokenizer.decode([token]) for token in ids]
            self.legacy[index].add_prompt(tokens, self.scored[prompt] if self.scored else [None] * len(ids))
            logprobs = self.legacy[index].take()
        return self.reply.choice(index, self.job.echo[prompt], logprobs=logprobs)

    def piece(self, index: int, piece: Piece) -> dict[str, Any]:
        logprobs = None
        if self.job.logprobs is not None:
            if self.reply.chat:
                logprobs = chat_logprobs(piece.logprobs)
            else:
                self.legacy[index].add_generated(piece.logprobs)
                logprobs = self.legacy[index].take()
        return self.reply.choice(index, piece.text, logprobs=logprobs)

    def ending(self, index: int) -> dict[str, Any]:
        stream = self.streams[index] if self.streams else None
        return self.reply.choice(index, None, openai_finish(stream))

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Choice objects: each choice's opening (if any), its pieces, and its ending; the choices
        interleaved as their tokens come. A stream's error is raised here. Leaving early cancels every stream."""
        try:
            for index in range(self.job.choices):
                if (opening := self.opening(index)) is not None:
                    yield opening
            if not self.streams:
                for index in range(self.job.choices):
                    yield self.ending(index)
                return
            queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
            pumps = [asyncio.create_task(_pump(stream, index, queue)) for index, stream in enumerate(self.streams)]
            try:
                left = len(self.streams)
                while left:
                    index, item = await queue.get()
                    if isinstance(item, BaseException):
                        raise item
                    if item is _DONE:
                        left -= 1
                        yield self.ending(index)
                    else:
                        yield self.piece(index, item)
            finally:
                for pump in pumps:
                    pump.cancel()
        finally:
            self.cancel()


async def _pump(stream: TextStream, index: int, queue: asyncio.Queue[tuple[int, Any]]) -> None:
    """Hand a stream's pieces, then `_DONE` (or its error), to the queue `Answer.events` reads."""
    try:
        async for piece in stream.apieces():
            queue.put_nowait((index, piece))
    except Exception as error:
        queue.put_nowait((index, error))
    else:
        queue.put_nowait((index, _DONE))


def merge(whole: dict[str, Any] | None, part: dict[str, Any], chat: bool) -> dict[str, Any]:
    """A choice with a later part of it added: text, logprobs and the finish reason."""
    if whole is None:
        whole = {"index": part["index"], "text": "", "logprobs": None, "finish_reason": None}
    delta = part.get("delta", {}).get("content") if chat else part["text"]
    whole["text"] += delta or ""
    whole["finish_reason"] = part["finish_reason"] or whole["finish_reason"]
    logprobs = part["logprobs"]
    if logprobs is not None:
        if whole["logprobs"] is None:
            whole["logprobs"] = {key: [] for key in logprobs}
        for key, values in logprobs.items():
            whole["logprobs"][key].extend(values)
    return whole


async def collect(answer: Answer, request: Request) -> dict[str, Any]:
    """The whole reply; if the client goes away meanwhile, generation is cancelled."""
    choices: dict[int, dict[str, Any]] = {}
    try:
        async for part in answer.events():
            choices[part["index"]] = merge(choices.get(part["index"]), part, answer.reply.chat)
            if await request.is_disconnected():
                break
    finally:
        answer.cancel()
    built = [answer.reply.choice(c["index"], c["text"], c["finish_reason"], c["logprobs"] and _unwrap(c["logprobs"], answer.reply.chat),
                                 whole=True) for c in choices.values()]
    return answer.reply.whole(built, answer.prompt_tokens, answer.completion_tokens)


def _unwrap(logprobs: dict[str, Any], chat: bool) -> Any:
    """A chat choice's logprobs are built as `{"content": [...]}`; `Reply.choice` wraps them again."""
    return logprobs["content"] if chat else logprobs


async def sse(answer: Answer, include_usage: bool) -> AsyncIterator[str]:
    """Server-sent events: per choice a first chunk (chat: the role; completions with echo: the
    prompt), one per piece of text, one with the finish reason; optionally one with usage, then
    `[DONE]`. Leaving early (client gone) cancels."""

    def event(data: dict[str, Any]) -> str:
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

    try:
        try:
            async for part in answer.events():
                yield event(answer.reply.chunk(part))
        except Exception as error:  # the headers are sent: report in-band, as OpenAI does
            log_fault("generation failed", error)
            yield event(error_body(f"internal error: {type(error).__name__}", type="server_error"))
            return
        if include_usage:
            yield event(answer.reply.usage_chunk(answer.prompt_tokens, answer.completion_tokens))
        yield "data: [DONE]\n\n"
    finally:
        answer.cancel()
