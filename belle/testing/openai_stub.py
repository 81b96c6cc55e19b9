"""A scripted OpenAI-compatible HTTP server on 127.0.0.1, for tests and benchmarks (stdlib only).

It answers POST /v1/chat/completions and /v1/completions (streamed as server-sent events when
the request says `"stream": true`) and GET /v1/models with valid OpenAI JSON, so the real `openai`
client can talk to it. A test scripts what it says:

    with serve_stub(["第一个回答", "第二个回答"], faults=[Fault(429, retry_after=0), Fault(hang=2)]) as stub:
        ...  # point a client at stub.url; the first two requests fail, then the replies come in order

Token counts are deterministic: prompt tokens = characters of the prompt (all message contents),
completion tokens = characters of the reply. Every request is recorded (body, path and headers) in
`Stub.requests`. Run it alone for a benchmark:

    python -m belle.testing.openai_stub --port 8123 --latency 0.2 --reply 好的
"""

from __future__ import annotations

import argparse
import itertools
import json
import signal
import socket
import sys
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator, Sequence, Union


@dataclass(frozen=True)
class Fault:
    """One scripted failure, served in place of a reply.

    Args:
        status: HTTP status of the error answer (with an OpenAI error body).
        retry_after: seconds sent in a `Retry-After` header, or a string sent as it is ("nan",
            "soon"); none: no header.
        hang: seconds to wait before answering (longer than the client's timeout: a timeout).
        malformed: answer 200 with `body`, by default text that is not JSON; give `body` as JSON
            without `choices` for the other kind of broken reply. In a stream: one event whose
            data is `body` (by default not JSON), then `[DONE]`.
        body: the answer's body instead of the default one.
        drip: seconds between bytes: answer 200 with `body` (by default a valid reply "drip")
            one byte at a time, each read well within any read timeout.
        length_header: False: send no Content-Length (nor, in a stream, chunked encoding); the
            body ends when the connection closes.
        cut: in a stream, send `body` (by default nothing) as deltas, then close the connection
            without the end of the stream: no `data: [DONE]`, nor the last chunk of chunked encoding.

    A huge reply needs no fault: answer `StubReply("x" * 10_000_000)`.
    """

    status: int = 500
    retry_after: float | str | None = None
    hang: float = 0.0
    malformed: bool = False
    body: str | None = None
    drip: float = 0.0
    length_header: bool = True
    cut: bool = False


@dataclass(frozen=True)
class StubReply:
    text: str
    finish_reason: str = "stop"


Answer = Union[str, StubReply, Fault]
# Gets the request's JSON body plus "_path" ("/v1/chat/completions") and "_headers" (lower-case names).
Responder = Callable[[dict], Answer]


def _as_responder(responder: Responder | Sequence[Answer] | str) -> Responder:
    """A string always answers itself; a list answers in order and then repeats its last item."""
    if isinstance(responder, (str, StubReply, Fault)):
        return lambda request: responder
    if callable(responder):
        return responder
    items = list(responder)
    if not items:
        raise ValueError("the responder list is empty")
    position = itertools.count()  # next() on a count is atomic under the GIL
    return lambda request: items[min(next(position), len(items) - 1)]


def _prompt_chars(body: dict) -> int:
    if "messages" in body:
        return sum(len(m.get("content") or "") for m in body["messages"] if isinstance(m.get("content", ""), str))
    prompt = body.get("prompt", "")
    return len(prompt) if isinstance(prompt, str) else sum(len(p) for p in prompt if isinstance(p, str))


def _error_body(status: int, message: str) -> str:
    kind = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
            429: "rate_limit_error"}.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": str(status)}})


class Stub:
    """A running stub server; use `serve_stub` rather than building one.

    Attributes:
        url: the endpoint root, "http://127.0.0.1:PORT/v1".
        requests: every request received, in arrival order (JSON body + "_path" + "_headers").
        max_in_flight: the most requests the server was handling at one moment.
    """

    def __init__(self, responder: Responder | Sequence[Answer] | str, *, latency: float = 0.0,
                 faults: Sequence[Fault] | None = None, host: str = "127.0.0.1", port: int = 0,
                 model: str = "stub-model") -> None:
        self.latency = latency
        self.model = model
        self.requests: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._responder = _as_responder(responder)
        self._faults = deque(faults or ())
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._ids = itertools.count(1)
        self._server = _Server((host, port), _Handler)
        self._server.stub = self
        self.url = f"http://{host}:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="openai-stub", daemon=True)
        self._thread.start()

    @property
    def calls(self) -> int:
        """Requests received so far."""
        with self._lock:
            return len(self.requests)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        with self._lock:  # idle keep-alive connections would keep their threads waiting
            for conn in list(self._connections):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _receive(self, request: dict) -> Answer:
        with self._lock:
            self.requests.append(request)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            fault = self._faults.popleft() if self._faults else None
        return fault if fault is not None else self._responder(request)

    def _done(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _stream_events(self, request: dict, answer: StubReply) -> Iterator[str]:
        """The server-sent events of a streamed `answer`: one chunk per character, the finish reason, `[DONE]`."""
        chat = request["_path"].endswith("/chat/completions")
        reply_id = f"{'chatcmpl' if chat else 'cmpl'}-stub-{next(self._ids)}"

        def chunk(text: str | None, finish_reason: str | None) -> str:
            choice: dict[str, Any] = {"index": 0, "finish_reason": finish_reason, "logprobs": None}
            if chat:
                choice["delta"] = {} if text is None else {"role": "assistant", "content": text}
            else:
                choice["text"] = text or ""
            return "data: " + json.dumps({
                "id": reply_id, "object": "chat.completion.chunk" if chat else "text_completion",
                "created": int(time.time()), "model": request.get("model", self.model), "choices": [choice],
            }, ensure_ascii=False) + "\n\n"

        for character in answer.text:
            yield chunk(character, None)
        yield chunk(None, answer.finish_reason)
        yield "data: [DONE]\n\n"

    def _reply_json(self, request: dict, answer: StubReply) -> str:
        chat = request["_path"].endswith("/chat/completions")
        choice: dict[str, Any] = {"index": 0, "finish_reason": answer.finish_reason, "logprobs": None}
        if chat:
            choice["message"] = {"role": "assistant", "content": answer.text}
        else:
            choice["text"] = answer.text
        prompt, completion = _prompt_chars(request), len(answer.text)
        return json.dumps({
            "id": f"{'chatcmpl' if chat else 'cmpl'}-stub-{next(self._ids)}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": request.get("model", self.model),
            "choices": [choice],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
        }, ensure_ascii=False)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the default backlog of 5 drops SYNs when 32 clients connect at once
    stub: Stub

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that hung up is no error of the stub
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real endpoints
    disable_nagle_algorithm = True  # headers and body go out in two writes; Nagle would delay the second
    timeout = 300  # an idle keep-alive connection ends after this many seconds
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.stub._lock:
            self.server.stub._connections.add(self.connection)

    def finish(self) -> None:
        with self.server.stub._lock:
            self.server.stub._connections.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: tests and benchmarks print what matters

    def _send(self, status: int, body: str, retry_after: float | str | None = None, *, drip: float = 0.0,
              length_header: bool = True) -> None:
        data = body.encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            if length_header:
                self.send_header("Content-Length", str(len(data)))
            else:
                self.send_header("Connection", "close")
                self.close_connection = True
            if retry_after is not None:
                self.send_header("Retry-After", retry_after if isinstance(retry_after, str) else f"{retry_after:g}")
            self.end_headers()
            if drip:
                for i in range(len(data)):
                    self.wfile.write(data[i:i + 1])
                    self.wfile.flush()
                    time.sleep(drip)
            else:
                self.wfile.write(data)
        except OSError:  # the client gave up (a timeout): nothing to answer
            self.close_connection = True

    def _send_stream(self, events: Iterator[str], *, cut: bool = False, chunked: bool = True) -> None:
        """Stream `events` as server-sent events, in chunked encoding or until the connection
        closes; `cut`: close the connection after them, without the last chunk."""
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding" if chunked else "Connection", "chunked" if chunked else "close")
            self.end_headers()
            for event in events:
                data = event.encode("utf-8")
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n" if chunked else data)
                self.wfile.flush()
            if cut or not chunked:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
            else:
                self.wfile.write(b"0\r\n\r\n")
        except OSError:  # the client went away (Stop)
            self.close_connection = True

    def do_GET(self) -> None:
        stub = self.server.stub
        if self.path.rstrip("/").endswith("/models"):
            self._send(200, json.dumps({"object": "list", "data": [
                {"id": stub.model, "object": "model", "created": 0, "owned_by": "belle-stub"}]}))
        else:
            self._send(404, _error_body(404, f"no route GET {self.path}"))

    def do_POST(self) -> None:
        stub = self.server.stub
        path = self.path.split("?", 1)[0].rstrip("/")
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if not path.endswith(("/chat/completions", "/completions")):
            self._send(404, _error_body(404, f"no route POST {self.path}"))
            return
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except ValueError as error:
            self._send(400, _error_body(400, f"the request body is not a JSON object: {error}"))
            return
        request = {**body, "_path": path, "_headers": {k.lower(): v for k, v in self.headers.items()}}
        answer = stub._receive(request)
        try:
            time.sleep(stub.latency)
            if isinstance(answer, Fault):
                self._send_fault(request, answer)
            else:
                reply = answer if isinstance(answer, StubReply) else StubReply(str(answer))
                if body.get("stream"):
                    self._send_stream(stub._stream_events(request, reply))
                else:
                    self._send(200, stub._reply_json(request, reply))
        finally:
            stub._done()


    def _send_fault(self, request: dict, fault: Fault) -> None:
        time.sleep(fault.hang)
        stub, streamed = self.server.stub, bool(request.get("stream"))
        if streamed and fault.cut:
            events = list(stub._stream_events(request, StubReply(fault.body or "")))[:len(fault.body or "")]
            self._send_stream(iter(events), cut=True, chunked=fault.length_header)
        elif streamed and fault.malformed:
            garbage = "this is not JSON" if fault.body is None else fault.body
            self._send_stream(iter([f"data: {garbage}\n\n", "data: [DONE]\n\n"]))
        elif fault.malformed or fault.drip:
            text = fault.body if fault.body is not None else (
                "this is not JSON" if fault.malformed else stub._reply_json(request, StubReply("drip")))
            self._send(200, text, drip=fault.drip, length_header=fault.length_header)
        else:
            body_text = _error_body(fault.status, "scripted fault") if fault.body is None else fault.body
            self._send(fault.status, body_text, fault.retry_after, length_header=fault.length_header)


@contextmanager
def serve_stub(responder: Responder | Sequence[Answer] | str, *, latency: float = 0.0,
               faults: Sequence[Fault] | None = None) -> Iterator[Stub]:
    """Run a stub server on a free port of 127.0.0.1 for the `with` block.

    Args:
        responder: what it answers: a string (always), a list (in order, the last repeats), or a
            function of the request JSON returning a string, a `StubReply` or a `Fault`.
        latency: seconds to wait before every answer.
        faults: served first, in order, one per incoming request, before the responder answers.
    """
    stub = Stub(responder, latency=latency, faults=faults)
    try:
        yield stub
    finally:
        stub.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a scripted OpenAI-compatible server in the foreground.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: a free port (printed)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before every answer")
    parser.add_argument("--reply", default="好的。", help="the text of every reply")
    args = parser.parse_args(argv)
    stub = Stub(args.reply, latency=args.latency, host=args.host, port=args.port)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(stub.url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        stub.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
