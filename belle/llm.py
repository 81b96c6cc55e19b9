"""The one client for OpenAI-compatible endpoints (OpenAI, vLLM, `belle serve`, ...): data
generation and evaluation both talk to models through it.

Design. Every request first looks in a SQLite cache keyed by a hash of the whole request (API,
endpoint, model, prompt, sampling parameters and a `variant` number, never the key), so a re-run
makes no call for what it already has. A miss goes to the endpoint through `openai.AsyncOpenAI`
with its own retries off: this module retries 429, 5xx, timeouts, connection errors and malformed
replies itself, with exponential backoff and full jitter (or the server's `Retry-After`, when it is
a finite number of seconds ahead), so that it can count every fault. `timeout` bounds a whole
attempt, from connecting to the last byte, so a server that drips its reply cannot hold a request
open; a reply over `max_reply_bytes` is refused as it arrives. A semaphore bounds the HTTP
attempts in flight (it is released while an attempt backs off) and an optional pacer spaces attempt
starts to a requests-per-minute limit. A valid reply is written to the cache at once (autocommit,
WAL), so a killed run loses at most the replies in flight. `Usage` keeps the totals: requests,
cache hits, calls, retries, faults by kind, tokens and the cost estimate. The API key is only
handed to the HTTP client: it is never logged, raised, cached or counted; nor is a password or
secret query value of the base URL (`redact_url`: errors, logs, including httpx's request lines,
and the cache's `request` column).

`fan_out` is the loop of every resumable job over many requests (self-instruct, dialogues, remote
answers, scoring, pairwise judging): it keeps a bounded number in flight and hands each finished
one to the job, which writes its output line and journal entry; a fatal error stops it.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import importlib
import ipaddress
import json
import logging
import math
import os
import random
import re
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, Literal, TypeVar
from urllib.parse import parse_qsl, unquote, unquote_plus, urlencode, urlsplit, urlunsplit

import openai

from belle.records import DataError

logger = logging.getLogger(__name__)

OPENAI_BASE_URL = "https://api.openai.com/v1"
BACKOFF_BASE = 0.5  # seconds: the first retry waits up to this, the k-th up to base * 2**k
BACKOFF_CAP = 30.0  # seconds: no backoff is longer
RETRY_AFTER_CAP = 60.0  # seconds: the longest `Retry-After` obeyed; a longer one waits this long
# openai's own `with_streaming_response` sets this request header to get a response whose body is not read yet
_STREAM_BODY_HEADER = "X-Stainless-Raw-Response"
T = TypeVar("T")  # a unit of work of `fan_out`
R = TypeVar("R")  # what `fan_out`'s `ask` returns for one unit
_END = object()


@dataclass
class LLMOptions:
    """Where and how to call an OpenAI-compatible endpoint; on the command line, one flag per field."""

    model: str
    """model name the endpoint serves."""
    base_url: str | None = None
    """endpoint root ending in /v1; default: OpenAI's."""
    api_key_env: str = "OPENAI_API_KEY"
    """name of the environment variable holding the key."""
    api: Literal["chat", "completion"] = "chat"
    """chat (/v1/chat/completions) or completion (/v1/completions)."""
    concurrency: int = 8
    """requests in flight at once."""
    rpm: float | None = None
    """at most this many requests started per minute (none: no limit)."""
    max_retries: int = 5
    """retries of one request on 429, 5xx, timeouts, connection errors, malformed replies."""
    timeout: float = 120.0
    """seconds for one attempt, from connecting to the last byte of the reply."""
    cache: str = "default"
    """SQLite file of earlier replies; `off` to disable; default $XDG_CACHE_HOME/belle/llm.sqlite (~/.cache/...)."""
    price_input: float | None = None
    """USD per million prompt tokens, for the cost estimate."""
    price_output: float | None = None
    """USD per million completion tokens."""
    max_reply_bytes: int = 8_000_000
    """the largest reply body accepted; a larger one is a fault (retried, never cached)."""

    def problems(self) -> list[str]:
        """Every invalid setting, each with how to fix it; empty when the options are usable."""
        found = []
        if not self.model:
            found.append("model: name the model the endpoint serves (--model)")
        if self.api not in ("chat", "completion"):
            found.append(f"api: {self.api!r} is neither 'chat' nor 'completion'")
        if self.concurrency < 1:
            found.append(f"concurrency: {self.concurrency} must be at least 1")
        if self.rpm is not None and self.rpm <= 0:
            found.append(f"rpm: {self.rpm} must be above 0 (leave it unset for no limit)")
        if self.max_retries < 0:
            found.append(f"max_retries: {self.max_retries} must be 0 or more")
        if not self.timeout > 0:  # NaN too
            found.append(f"timeout: {self.timeout} must be above 0 seconds")
        if self.max_reply_bytes < 1:
            found.append(f"max_reply_bytes: {self.max_reply_bytes} must be at least 1")
        for name in ("price_input", "price_output"):
            if (getattr(self, name) or 0) < 0:
                found.append(f"{name}: {getattr(self, name)} must be 0 or more (USD per million tokens)")
        return found


def cost_usd(prompt_tokens: int, completion_tokens: int, price_input: float | None,
             price_output: float | None) -> float | None:
    """USD for the tokens at prices in USD per million; None unless both prices are known (half a
    price would read as a total)."""
    if price_input is None or price_output is None:
        return None
    return (prompt_tokens * price_input + completion_tokens * price_output) / 1e6


@dataclass(frozen=True)
class Reply:
    text: str
    finish_reason: str | None  # "stop", "length", ...
    prompt_tokens: int
    completion_tokens: int
    cached: bool  # served from the cache, no call made


class LLMError(Exception):
    """One request failed for good: after its retries, or at once when retrying cannot help (400).

    `kind`: "rate_limit", "server_error", "timeout", "connection", "malformed" (also a reply over
    `max_reply_bytes`), "bad_request", "conflict", "auth", "not_found"; `status`: the HTTP status,
    if there was one.
    """

    def __init__(self, message: str, kind: str, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status


class LLMFatalError(LLMError):
    """The run cannot go on: no key or a refused one (401/403), an unknown model or wrong URL (404)."""


@dataclass
class Usage:
    """Running totals of one client. `faults` counts failed attempts by HTTP status ("429", "500")
    or by kind ("timeout", "connection", "malformed", "too_large"). Tokens and cost cover calls
    made, not cache hits. `cost_usd` is None unless both prices are known: half a price would read
    as a total."""

    requests: int = 0  # logical requests answered (from the cache or the endpoint)
    cached: int = 0  # of which served from the cache
    calls: int = 0  # HTTP attempts made, retries included
    retries: int = 0
    failures: int = 0  # requests that raised LLMError
    faults: Counter[str] = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "cached": self.cached, "calls": self.calls, "retries": self.retries,
                "failures": self.failures, "faults": dict(sorted(self.faults.items())),
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "cost_usd": self.cost_usd}

    def summary(self) -> str:
        """E.g. "412 requests (380 from the cache), 37 calls, 3 retries (429: 2, timeout: 1), 0 failures, 12,345 + 6,789 tokens, $0.12"."""
        faults = ", ".join(f"{kind}: {n}" for kind, n in sorted(self.faults.items()))
        line = (f"{self.requests:,} requests ({self.cached:,} from the cache), {self.calls:,} calls, "
                f"{self.retries:,} retries{f' ({faults})' if faults else ''}, {self.failures:,} failures, "
                f"{self.prompt_tokens:,} + {self.completion_tokens:,} tokens")
        return line + (f", ${self.cost_usd:,.2f}" if self.cost_usd is not None else "")


def default_cache_path() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "belle" / "llm.sqlite"


_SECRET_PARAM = re.compile(r"key|token|secret|pass|sig|auth|credential", re.IGNORECASE)


def redact_url(url: str | None) -> str | None:
    """`url` fit to print, log or save: a `user:password@` and the values of query parameters
    that look like secrets (`api-key`, `token`, `sig`, ...) become `***`; None stays None."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        host = f"[{host}]" if ":" in host else host
        netloc = "***@" + host + (f":{port}" if port is not None else "")
    query = urlencode([(name, "***" if _SECRET_PARAM.search(name) else value)
                       for name, value in parse_qsl(parts.query, keep_blank_values=True)], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment and "***"))


def url_secrets(url: str | None) -> list[str]:
    """What `redact_url` hides in `url`, as written and percent-decoded: the user name and
    password and the values of secret-looking query parameters; longest first."""
    try:
        parts = urlsplit(url or "")
    except ValueError:
        return [url] if url else []
    found = {parts.username, parts.password, parts.username and unquote(parts.username),
             parts.password and unquote(parts.password)}
    for pair in parts.query.split("&"):
        name, _, value = pair.partition("=")
        if _SECRET_PARAM.search(unquote_plus(name)):
            found.update((value, unquote_plus(value)))
    return sorted((secret for secret in found if secret), key=len, reverse=True)


_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def redact_text(text: str) -> str:
    """`text` with every URL in it passed through `redact_url`."""
    return _URL.sub(lambda match: redact_url(match.group()) or "", text) if "://" in text else text


def scrub(text: str, secrets: list[str]) -> str:
    """`text` fit to show: each of `secrets` (a key, the `url_secrets` of a base URL, longest
    first), should a server have echoed it, becomes `***`, and every URL in it is redacted."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return redact_text(text)


class _RedactURLs(logging.Filter):
    """Rewrites a record whose message holds a URL with a secret, so that the secret reads `***`."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


_REDACT_URLS = _RedactURLs()
# httpx logs every request's whole URL at INFO; openai 3 ships its HTTP client as httpx2
HTTP_LOGGERS = ("httpx", "httpx2", "openai", "openai._base_client")


def redact_http_logs() -> None:
    """Keep the secrets of URLs out of what the HTTP libraries log (idempotent)."""
    for name in HTTP_LOGGERS:
        logging.getLogger(name).addFilter(_REDACT_URLS)


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ReplyCache:
    """Valid replies by request hash, in one SQLite table. Every write commits at once; WAL lets
    several processes read and write the same file."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # autocommit (isolation_level=None); timeout: wait this long for another process's write
        try:
            self.db = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")  # durable across a killed process, not a power cut
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, text TEXT NOT NULL, finish_reason TEXT,"
                " prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, request TEXT NOT NULL, created REAL NOT NULL)"
            )
        except sqlite3.Error as error:
            raise DataError(f"{path}: not a usable reply cache ({error}); name another file with --cache, "
                            "or --cache off") from None

    def get(self, key: str) -> Reply | None:
        row = self.db.execute(
            "SELECT text, finish_reason, prompt_tokens, completion_tokens FROM replies WHERE key = ?", (key,)).fetchone()
        return None if row is None else Reply(row[0], row[1], row[2], row[3], cached=True)

    def put(self, key: str, request_json: str, reply: Reply) -> None:
        self.db.execute("INSERT OR REPLACE INTO replies VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (key, reply.text, reply.finish_reason, reply.prompt_tokens, reply.completion_tokens,
                         request_json, time.time()))

    def close(self) -> None:
        self.db.close()


class _Fault(Exception):
    """One failed attempt; `label` is what Usage.faults counts."""

    def __init__(self, message: str, kind: str, label: str, *, status: int | None = None,
                 retry: bool = True, fatal: bool = False, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind, self.label, self.status = kind, label, status
        self.retry, self.fatal, self.retry_after = retry, fatal, retry_after


def _retry_after(headers: Any) -> float | None:
    """Seconds from `retry-after-ms` or `Retry-After` (seconds or an HTTP date), if the server sent
    a usable one: NaN, infinity, a negative number, a date in the past or garbage give None (the
    normal backoff)."""
    for name, per_second in (("retry-after-ms", 1000), ("retry-after", 1)):
        value = headers.get(name)
        seconds = _header_seconds(value, per_second) if value else None
        if seconds is not None:
            return seconds
    return None


def _header_seconds(value: str, per_second: int) -> float | None:
    """`value` (a number of 1/`per_second` seconds, or an HTTP date when `per_second` is 1) as
    seconds from now; None unless it is finite and not negative."""
    try:
        seconds = float(value) / per_second
    except ValueError:
        if per_second != 1:
            return None
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, OverflowError, IndexError):
            return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _status_fault(error: openai.APIStatusError, key_env: str) -> _Fault:
    status = error.status_code
    if status in (401, 403):
        # never echo the server's message here: OpenAI's quotes part of the key
        return _Fault(f"the endpoint refused the key in ${key_env} (HTTP {status}); check the variable's value",
                      "auth", str(status), status=status, retry=False, fatal=True)
    message = f"HTTP {status}: {error.message}"
    if status == 404:
        return _Fault(f"{message} (are the model name and --base-url right?)", "not_found", "404",
                      status=status, retry=False, fatal=True)
    if status == 429:
        kind, retry = "rate_limit", True
    elif status >= 500:
        kind, retry = "server_error", True
    elif status == 408:
        kind, retry = "timeout", True
    elif status == 409:
        kind, retry = "conflict", True
    else:
        kind, retry = "bad_request", False
    return _Fault(message, kind, str(status), status=status, retry=retry, retry_after=_retry_after(error.response.headers))


def _parse(api: str, body: str) -> Reply:
    """The reply of a 200 answer, or a "malformed" fault if it is not a usable completion."""
    try:
        data = json.loads(body)
        choice = data["choices"][0]
        text = choice["message"]["content"] if api == "chat" else choice["text"]
        if not isinstance(text, str):
            raise TypeError(f"the reply text is {type(text).__name__}")
    except (ValueError, KeyError, IndexError, TypeError) as error:
        raise _Fault(f"malformed reply ({type(error).__name__}: {error}): {body[:200]!r}", "malformed", "malformed") from None
    usage = data.get("usage") or {}
    return Reply(text, choice.get("finish_reason"), int(usage.get("prompt_tokens") or 0),
                 int(usage.get("completion_tokens") or 0), cached=False)


def http_module() -> Any:
    """httpx (openai 1.x) or httpx2 (openai 3.x): whichever openai's HTTP client is built on."""
    base = next(c for c in openai.DefaultAsyncHttpxClient.__mro__ if c.__name__ == "AsyncClient")
    return importlib.import_module(base.__module__.split(".")[0])


class LLMClient:
    """Asks an OpenAI-compatible endpoint, with the cache, retries, limits and usage totals.

    Use one client per event loop (`async with LLMClient(options) as llm: ...`).

    Args:
        options: the endpoint and the limits.
        api_key: a key given directly (the eval web page's password field); default: the
            environment variable `options.api_key_env`. Held in memory only.
        backoff_base, backoff_cap: seconds; retry k waits uniform(0, min(cap, base * 2**k)).
    """

    def __init__(self, options: LLMOptions, *, api_key: str | None = None,
                 backoff_base: float = BACKOFF_BASE, backoff_cap: float = BACKOFF_CAP) -> None:
        problems = options.problems()
        if problems:
            raise ValueError("invalid LLM options:\n  " + "\n  ".join(problems))
        self.options = options
        self.base_url = (options.base_url or OPENAI_BASE_URL).rstrip("/")
        self.backoff_base, self.backoff_cap = backoff_base, backoff_cap
        key = api_key or os.environ.get(options.api_key_env)
        if not key:
            if not is_loopback(self.base_url):
                raise LLMFatalError(
                    f"no API key for {redact_url(self.base_url)}: set the environment variable {options.api_key_env} "
                    f"(export {options.api_key_env}=...), or name another variable with --api-key-env", "auth")
            logger.info("$%s is not set; %s is local, so no key is sent", options.api_key_env, redact_url(self.base_url))
            key = "EMPTY"  # local vLLM or `belle serve` need none, but the client wants one
        self._key = key
        self._secrets = sorted(([] if key == "EMPTY" else [key]) + url_secrets(self.base_url), key=len, reverse=True)
        redact_http_logs()
        self._http = http_module()
        pool = max(options.concurrency, 100)  # keep-alive connections: at least one per request in flight
        http_client = openai.DefaultAsyncHttpxClient(
            limits=self._http.Limits(max_connections=2 * pool, max_keepalive_connections=pool))
        self._client = openai.AsyncOpenAI(api_key=key, base_url=self.base_url, max_retries=0,
                                          timeout=options.timeout, http_client=http_client)
        self._slots = asyncio.Semaphore(options.concurrency)
        self._interval = 60.0 / options.rpm if options.rpm else 0.0
        self._next_start = 0.0  # time.monotonic() before which no attempt may start (rpm)
        self._random = random.Random()
        both_prices = options.price_input is not None and options.price_output is not None
        if not both_prices and (options.price_input is not None or options.price_output is not None):
            logger.warning("no cost estimate: it needs both the input and the output price")
        self.usage = Usage(cost_usd=0.0 if both_prices else None)
        self.cache: ReplyCache | None = None
        if options.cache != "off":
            path = default_cache_path() if options.cache == "default" else Path(options.cache).expanduser()
            self.cache = ReplyCache(path)
            logger.info("LLM reply cache: %s", path)

    async def __aenter__(self) -> LLMClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.close()
        if self.cache is not None:
            self.cache.close()

    async def chat(self, messages: list[dict[str, str]], *, variant: int = 0, **params: Any) -> Reply:
        """One chat completion (/chat/completions). `params`: sampling parameters sent as they are
        (temperature, top_p, max_tokens, stop, or an endpoint's own such as vLLM's top_k).
        `variant`: requests that differ only in it are separate cache entries (the k-th sample)."""
        return await self._request("chat", {"messages": messages}, params, variant)

    async def complete(self, prompt: str, *, variant: int = 0, **params: Any) -> Reply:
        """One text completion (/completions); `params` and `variant` as in `chat`."""
        return await self._request("completion", {"prompt": prompt}, params, variant)

    async def ask(self, prompt: str, *, variant: int = 0, **params: Any) -> Reply:
        """`prompt` as one user message through the options' API."""
        if self.options.api == "chat":
            return await self.chat([{"role": "user", "content": prompt}], variant=variant, **params)
        return await self.complete(prompt, variant=variant, **params)

    async def models(self) -> list[str]:
        """The ids of the endpoint's models (GET /models); not cached, not retried. The endpoint's
        `openai.APIError` comes as it is, for the caller to word."""
        return [model.id async for model in self._client.models.list()]

    async def stream(self, messages: list[dict[str, str]], *, model: str | None = None,
                     **params: Any) -> AsyncIterator[str]:
        """The lines of a streamed chat completion (server-sent events) as they arrive, from `model`
        (default: the options'); `params` as in `chat`. Not cached. A 429, 5xx, timeout or connection
        failure before the reply starts is retried as `chat` retries; then the endpoint's
        `openai.APIError` comes as it is, for the caller to word, as does the HTTP library's error
        when the stream breaks. Leaving the iteration early closes the connection, which ends the
        server's generation."""
        body = {"model": model or self.options.model, "messages": messages, **params, "stream": True}
        attempts = self.options.max_retries + 1
        for attempt in range(attempts):
            async with self._slots:
                await self._pace()
                self.usage.calls += 1
                try:
                    response = await self._client.post("/chat/completions", cast_to=self._http.Response, body=body,
                                                       options={"headers": {_STREAM_BODY_HEADER: "stream"}})
                except (openai.APIStatusError, openai.APIConnectionError) as error:
                    fault = (_status_fault(error, self.options.api_key_env) if isinstance(error, openai.APIStatusError)
                             else _Fault(str(error), "connection", "connection"))
                    self.usage.faults[fault.label] += 1
                    if not fault.retry or attempt == attempts - 1:
                        self.usage.failures += 1
                        raise
                else:
                    try:
                        async for line in response.aiter_lines():
                            yield line
                    finally:
                        await response.aclose()
                    self.usage.requests += 1
                    return
            await asyncio.sleep(self._retry_delay(attempt, fault))

    async def _request(self, api: str, payload: dict[str, Any], params: dict[str, Any], variant: int) -> Reply:
        if "stream" in params or "n" in params:
            raise ValueError("stream and n are not supported: one request gets one whole reply (use variant for more samples)")
        request = {"api": api, "base_url": self.base_url, "model": self.options.model, **payload,
                   "params": params, "variant": variant}
        request_json = json.dumps(request, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        key = hashlib.sha256(request_json.encode("utf-8")).hexdigest()  # the real URL: another password, another entry
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            self.usage.requests += 1
            self.usage.cached += 1
            return hit
        try:
            reply = await self._with_retries(api, payload, params)
        except LLMError:
            self.usage.failures += 1
            raise
        self.usage.requests += 1
        if self.cache is not None:
            stored = json.dumps({**request, "base_url": redact_url(self.base_url)}, ensure_ascii=False, sort_keys=True,
                                separators=(",", ":"))
            self.cache.put(key, stored, reply)
        return reply

    async def _with_retries(self, api: str, payload: dict[str, Any], params: dict[str, Any]) -> Reply:
        attempts = self.options.max_retries + 1
        for attempt in range(attempts):
            async with self._slots:  # held for the attempt only, not while backing off
                await self._pace()
                try:
                    return await self._attempt(api, payload, params)
                except _Fault as error:
                    fault = error
            self.usage.faults[fault.label] += 1
            message = self._scrub(str(fault))
            if fault.fatal:
                raise LLMFatalError(message, fault.kind, fault.status)
            if not fault.retry or attempt == attempts - 1:
                raise LLMError(message + (f" (after {attempts} attempts)" if fault.retry else ""), fault.kind, fault.status)
            delay = self._retry_delay(attempt, fault)
            logger.info("%s; retry %d of %d in %.1f s", message, attempt + 1, attempts - 1, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    def _retry_delay(self, attempt: int, fault: _Fault) -> float:
        """Seconds to wait before retrying after failed attempt `attempt` (0-based), counted as a
        retry: the server's Retry-After (capped), else uniform(0, min(cap, base * 2**attempt))."""
        delay = self._random.uniform(0, min(self.backoff_cap, self.backoff_base * 2**attempt))
        self.usage.retries += 1
        return delay if fault.retry_after is None else min(fault.retry_after, RETRY_AFTER_CAP)

    def _scrub(self, text: str) -> str:
        """`text` without the key or the secrets of the base URL, should a server have echoed them
        (a 404 that quotes the path and its query), and with any URL in it redacted."""
        return scrub(text, self._secrets)

    async def _pace(self) -> None:
        """Wait for this attempt's start slot under the rpm limit: starts are 60/rpm seconds apart."""
        if not self._interval:
            return
        now = time.monotonic()
        start = max(now, self._next_start)
        self._next_start = start + self._interval  # reserved before sleeping, so concurrent callers queue up
        if start > now:
            await asyncio.sleep(start - now)

    async def _attempt(self, api: str, payload: dict[str, Any], params: dict[str, Any]) -> Reply:
        self.usage.calls += 1
        # The client's generic `post` sends the body as it is; `create` would first walk every
        # message through its typed transforms, a quarter of the client's CPU time in bench_llm.
        body = {"model": self.options.model, **payload, **params}
        try:
            async with asyncio.timeout(self.options.timeout):  # the whole attempt, not one read: a drip counts too
                text = await self._post("/chat/completions" if api == "chat" else "/completions", body)
        except TimeoutError:
            raise _Fault(f"no whole reply within {self.options.timeout:g} s", "timeout", "timeout") from None
        reply = _parse(api, text)
        self.usage.prompt_tokens += reply.prompt_tokens
        self.usage.completion_tokens += reply.completion_tokens
        if self.usage.cost_usd is not None:
            self.usage.cost_usd += cost_usd(reply.prompt_tokens, reply.completion_tokens,
                                            self.options.price_input, self.options.price_output)
        return reply

    async def _post(self, path: str, body: dict[str, Any]) -> str:
        """The body of the endpoint's 200 answer to `body`, read no further than `max_reply_bytes`."""
        try:
            response = await self._client.post(path, cast_to=self._http.Response, body=body,
                                               options={"headers": {_STREAM_BODY_HEADER: "stream"}})
        except openai.APITimeoutError:
            raise TimeoutError from None
        except openai.APIConnectionError as error:
            raise _Fault(f"connection failed: {error.__cause__ or error}", "connection", "connection") from None
        except openai.APIStatusError as error:
            raise _status_fault(error, self.options.api_key_env) from None
        limit = self.options.max_reply_bytes
        too_large = _Fault(f"the reply is over {limit:,} bytes (max_reply_bytes)", "malformed", "too_large")
        chunks, size = [], 0
        try:
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                raise too_large
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > limit:
                    raise too_large
                chunks.append(chunk)
        except self._http.TimeoutException:
            raise TimeoutError from None
        except self._http.HTTPError as error:
            raise _Fault(f"the connection broke during the reply: {error}", "connection", "connection") from None
        finally:
            await response.aclose()
        return b"".join(chunks).decode("utf-8", errors="replace")


def resume_message(error: LLMFatalError, done: str, where: Path | str) -> str:
    """The usage error of a job that `error` stopped: what it did so far (`done`, e.g. "12
    tasks") is in `where`, and a re-run resumes there."""
    return f"{error}; {done} are in {where}, a re-run resumes there"


async def fan_out(requests: Iterable[T], ask: Callable[[T], Awaitable[R]],
                  settle: Callable[[T, R | LLMError], None], *, concurrency: int | Callable[[], int],
                  enough: Callable[[], bool] = lambda: False, progress: Callable[[], None] | None = None) -> None:
    """Run `ask(request)` for each of `requests` (taken in order, lazily), at most `concurrency`
    at a time, and hand each finished one to `settle(request, outcome)` in order of completion.

    This is the loop of every resumable LLM job; the job keeps its own output, journal and resume
    rules, in `settle`. `settle` runs on the event loop's thread, one call at a time, so it can
    append the output line and the journal entry without a lock. `outcome` is what `ask` returned,
    or the `LLMError` it raised: a request that failed for good, which the job records so that a
    re-run asks again.

    Args:
        requests: the job's units of work (a request, a dialogue, an item with its samples).
        ask: one unit's work; closes over the `LLMClient` and may make several calls.
        settle: takes each finished unit; a plain function, not a coroutine.
        concurrency: units in flight at most; a callable is read again before each start (a job
            that wants fewer in flight as it nears its goal).
        enough: once it is true, no unit is started or settled any more and those in flight
            are cancelled (any reply that did come is in the client's cache).
        progress: called after each `settle` (e.g. a tqdm bar's `update`).

    An `LLMFatalError`, or any other exception from `ask`, cancels every unit still in flight and
    propagates, after the other units that finished at the same moment are settled; an exception
    from `settle` does the same at once. Leftover tasks are always cancelled and awaited before
    this returns or raises.
    """
    pending = iter(requests)
    in_flight: dict[asyncio.Future[R], T] = {}
    limit = concurrency if callable(concurrency) else lambda: concurrency

    def start() -> None:
        while not enough() and len(in_flight) < max(1, limit()):
            request = next(pending, _END)
            if request is _END:
                return
            in_flight[asyncio.ensure_future(ask(request))] = request

    try:
        start()
        while in_flight:
            finished, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            failure: BaseException | None = None
            for future in finished:
                request = in_flight.pop(future)
                error = future.exception()
                if error is not None and (isinstance(error, LLMFatalError) or not isinstance(error, LLMError)):
                    failure = failure or error
                elif not enough():
                    settle(request, future.result() if error is None else error)
                    if progress is not None:
                        progress()
            if failure is not None:
                raise failure
            if enough():
                return
            start()
    finally:
        for future in in_flight:
            future.cancel()
        await asyncio.gather(*in_flight, return_exceptions=True)
