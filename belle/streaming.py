"""Turning generated token ids into text as they arrive: whole characters only, stop strings held
back; and reading a server's stream of server-sent events.

All pieces are pure text logic: the first two are shared by every front end through
`belle.generation`, `sse_data` by the remote chat backend.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Sequence

REPLACEMENT_CHAR = "\ufffd"


class IncrementalDecoder:
    """Decode one token at a time, emitting only text that later tokens cannot change.

    A byte-level token may hold part of a multi-byte character (one Chinese character is often
    two or three tokens); decoding it alone gives U+FFFD. The decoder re-decodes a short window,
    from `prefix` (a few tokens back, so tokenizers that merge or strip spaces at a boundary
    decode the same way) to the newest token, and emits the new text only once it no longer
    ends in U+FFFD. `flush` emits whatever is left, broken or not, when generation ends.
    """

    def __init__(self, tokenizer: Any, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self.prefix = 0  # start of the window that is decoded again
        self.read = 0  # end of the tokens already emitted as text

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        done = self._decode(self.ids[self.prefix : self.read])
        text = self._decode(self.ids[self.prefix :])
        if len(text) > len(done) and not text.endswith(REPLACEMENT_CHAR):
            self.prefix, self.read = self.read, len(self.ids)
            return text[len(done) :]
        return ""

    def flush(self) -> str:
        done = self._decode(self.ids[self.prefix : self.read])
        text = self._decode(self.ids[self.prefix :])
        self.prefix = self.read = len(self.ids)
        return text[len(done) :]


class StopMatcher:
    """Cut a text stream at the first stop string, holding back any tail that could begin one.

    `push(delta)` returns `(text safe to show, stopped)`. While the tail of the stream is a prefix
    of some stop string (`"\\nHu"` of `"\\nHuman:"`) it is held back; it is released when the
    stream moves on, or by `flush` when the stream ends.
    """

    def __init__(self, stops: Sequence[str] = ()):
        self.stops = [s for s in stops if s]
        self.pending = ""

    def push(self, delta: str) -> tuple[str, bool]:
        self.pending += delta
        text, stopped = cut_at_stop(self.pending, self.stops)
        if stopped:
            self.pending = ""
            return text, True
        hold = max((_overlap(self.pending, s) for s in self.stops), default=0)
        text, self.pending = self.pending[: len(self.pending) - hold], self.pending[len(self.pending) - hold :]
        return text, False

    def flush(self) -> str:
        text, self.pending = self.pending, ""
        return text


def _overlap(text: str, stop: str) -> int:
    """Length of the longest tail of `text` that is a proper prefix of `stop`."""
    for k in range(min(len(text), len(stop) - 1), 0, -1):
        if stop.startswith(text[-k:]):
            return k
    return 0


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """`text` up to its first stop string, and whether one was found."""
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


def sse_data(lines: Iterable[str]) -> Iterator[str]:
    """The data of each server-sent event in `lines` (a stream's lines without their line ends):
    the `data:` lines of one event joined by newlines; comments (`:`), `event:`, `id:` and
    `retry:` lines carry no data and are passed over. The last event needs no blank line after it.
    Raises ValueError at a line of no event field (an HTML error page, garbage): where the
    standard would pass it over, an OpenAI-compatible stream is broken."""
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        field, colon, value = line.partition(":")
        if field == "data":
            data.append(value[1:] if value.startswith(" ") else value)
        elif not colon or field not in ("", "event", "id", "retry"):
            raise ValueError(f"a line that is not a server-sent event: {line[:80]!r}")
    if data:
        yield "\n".join(data)
