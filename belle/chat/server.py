"""An OpenAI-compatible API server over loaded engines: `/v1/models`, `/v1/chat/completions`,
`/v1/completions` (streamed as server-sent events or whole), and `/health`.

Every bad request gets a 4xx with OpenAI's error body. At most `max_concurrent` generations run at
once and `max_queue` more wait for a slot; beyond that a request gets 429 at once. A client that
disconnects ends its generation.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from dataclasses import dataclass
from typing import Any, AsyncIterator

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from belle.chat.protocol import APIError, ChatRequest, CompletionRequest, Reply, SamplingRequest, error_body, plain_messages
from belle.conversation import Rejection, validate_messages
from belle.generation import Engine, GenerationParams, PromptTooLong, TextStream

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
    """

    max_concurrent: int = 4
    max_queue: int = 32
    max_input_tokens: int | None = None
    max_tokens: int | None = None


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


def create_app(engines: dict[str, Engine], limits: ServerLimits = ServerLimits(), api_key: str | None = None) -> FastAPI:
    """The FastAPI app serving `engines` by name. With `api_key`, every `/v1` route wants `Authorization: Bearer KEY`."""
    app = FastAPI(title="belle", docs_url=None, redoc_url=None)
    admission = Admission(limits.max_concurrent, limits.max_queue)

    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0]
        if first["type"] == "json_invalid":
            return JSONResponse(error_body(f"the body is not valid JSON: {first['ctx']['error']}"), status_code=400)
        where = ".".join(str(part) for part in first["loc"][1:])
        return JSONResponse(error_body(f"{where}: {first['msg']}" if where else first["msg"], param=where or None), status_code=400)

    @app.exception_handler(Exception)
    async def server_fault(request: Request, error: Exception) -> JSONResponse:
        logger.exception("request failed")
        return JSONResponse(error_body(f"internal error: {type(error).__name__}", type="server_error"), status_code=500)

    async def authorized(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
            raise APIError(401, "missing or wrong API key: send `Authorization: Bearer KEY`", code="invalid_api_key")

    def engine_for(body: SamplingRequest) -> Engine:
        """The engine a request names, once the request asks for nothing this server cannot do."""
        if body.model not in engines:
            raise APIError(404, f"model {body.model!r} does not exist; this server has: {', '.join(engines)}",
                           param="model", code="model_not_found")
        refused = body.unsupported()
        if refused:
            raise APIError(400, f"{refused[0]}: not supported by this server", param=refused[0])
        if body.model_extra:
            logger.warning("ignoring request fields this server does not use: %s", ", ".join(sorted(body.model_extra)))
        return engines[body.model]

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": list(engines), "running": admission.running, "waiting": admission.waiting}

    @app.get("/v1/models", dependencies=[Depends(authorized)])
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "belle", "max_model_len": engine.context_length}
            for name, engine in engines.items()
        ]}

    @app.post("/v1/chat/completions", dependencies=[Depends(authorized)])
    async def chat_completions(body: ChatRequest, request: Request) -> Any:
        engine = engine_for(body)
        messages = plain_messages(body.messages)
        try:
            validate_messages(messages, require_assistant=False)
        except Rejection as e:
            raise APIError(400, e.at("messages"), param="messages") from None
        if messages[-1]["role"] != "user":
            raise APIError(400, "messages: the last message must be the user's", param="messages")
        prompt_ids = await run_in_threadpool(engine.encode_chat, messages)
        return await respond(engine, body, prompt_ids, body.max_completion_tokens or body.max_tokens, request, chat=True)

    @app.post("/v1/completions", dependencies=[Depends(authorized)])
    async def completions(body: CompletionRequest, request: Request) -> Any:
        engine = engine_for(body)
        prompt = body.prompt if isinstance(body.prompt, str) else body.prompt[0] if body.prompt else ""
        prompt_ids = await run_in_threadpool(engine.encode_text, prompt)
        return await respond(engine, body, prompt_ids, body.max_tokens, request, chat=False)

    async def respond(engine: Engine, body: SamplingRequest, prompt_ids: list[int], max_tokens: int | None, request: Request, chat: bool) -> Any:
        params = sampling_params(engine, body, prompt_ids, max_tokens)
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

    def sampling_params(engine: Engine, body: SamplingRequest, prompt_ids: list[int], max_tokens: int | None) -> GenerationParams:
        max_input = limits.max_input_tokens or engine.context_length - 1
        if len(prompt_ids) > max_input:
            raise APIError(400, f"the prompt has {len(prompt_ids)} tokens; this server accepts at most {max_input}",
                           param="messages", code="context_length_exceeded")
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
            logger.exception("generation failed")
            yield event(error_body(f"internal error: {type(error).__name__}", type="server_error"))
            return
        yield event(reply.chunk(None, openai_finish(stream)))
        if include_usage:
            yield event(reply.usage_chunk(stream.prompt_tokens, stream.completion_tokens))
        yield "data: [DONE]\n\n"
    finally:
        stream.cancel()
