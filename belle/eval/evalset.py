"""Eval sets in BELLE's format: one question per record, with a reference answer and a class.

A record is `{"question": str | list[str], "std_answer": str, "class": str, "id"?: str}` in a
JSON-lines file or a JSON array (BELLE's `eval_set.json` is JSON lines with no `id`). A list
`question` is a multi-turn item: the user turns in order, judged on the model's last answer.

Records without an `id` get one derived from their content, `"{class slug}-{sha1(question)[:10]}"`,
so ids stay the same across runs, line reorderings and files that add or drop other items (answers
and judgments are resumed by id). The same class and question twice in one file is legal in BELLE's
format; the second copy gets `-2`, the third `-3`, in file order.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from belle.records import DataError, Rejection, bad_records, iter_json_records

CLASSES: tuple[str, ...] = (
    "open qa", "brainstorming", "rewrite", "generation", "math",
    "classification", "closed qa", "summarization", "code", "extract",
)
# BELLE's "others": left out of its headline metric Score_w/o_others.
OTHERS: tuple[str, ...] = ("math", "code")

# At most this many problems are listed in one DataError; the rest are counted.

_SPACES = re.compile(r"\s+")  # str patterns match every Unicode space, U+00A0 included


def class_key(name: str) -> str:
    """The canonical form of a class name, so `open QA`, `open qa` and `closed\\xa0QA` match theirs.

    NFKC (full-width letters, compatibility spaces), casefold, every run of whitespace to one
    space, stripped.
    """
    return _SPACES.sub(" ", unicodedata.normalize("NFKC", name).casefold()).strip()


@dataclass(frozen=True)
class EvalItem:
    """One eval question.

    `turns` are the user turns (one for a single-turn question); `std_answer` is "" when the item
    has no reference answer; `klass` is the `class_key` of the record's class.
    """

    id: str
    turns: tuple[str, ...]
    std_answer: str
    klass: str


def default_eval_set_path() -> Path:
    """Our own Chinese sample eval set, shipped with the package."""
    return Path(__file__).resolve().parents[1] / "assets" / "eval_set_zh.jsonl"


def derived_id(klass: str, turns: tuple[str, ...]) -> str:
    """`{class slug}-{first 10 hex digits of sha1(question)}`; turns of a multi-turn item are
    joined with U+001F (a separator no text contains) before hashing."""
    slug = class_key(klass).replace(" ", "_")
    digest = hashlib.sha1("\x1f".join(turns).encode("utf-8")).hexdigest()[:10]
    return f"{slug}-{digest}"


def read_eval_set(path: Path) -> list[EvalItem]:
    """Read an eval set; raise `DataError` listing every bad record as `file:line: field: problem`.

    Explicit ids must be unique; derived ids of repeated questions get `-2`, `-3`, ... suffixes.
    An empty file is an error too: an eval run over nothing is always a mistake.
    """
    return [item for item, _ in read_eval_records(path)]


def read_eval_records(path: Path, extra: Callable[[dict[str, Any]], list[tuple[str, str]]] | None = None,
                      ) -> list[tuple[EvalItem, dict[str, Any]]]:
    """(item, raw record) of every record of an eval-set-shaped file (eval sets, answers files).

    `extra(record)` returns the (field, problem) pairs of fields beyond the eval set's own (an
    answers file's `answer`); they are reported with the rest, `file:line: field: problem`.
    """
    path = Path(path)
    records: list[tuple[EvalItem, dict[str, Any]]] = []
    errors: list[str] = []
    seen: dict[str, int] = {}  # id -> line it was first used on
    for line, record in iter_json_records(path):
        where = f"{path}:{line}"
        try:
            item_id, turns, std_answer, klass = _parse_record(record)
        except _FieldError as e:
            errors.append(f"{where}: {e.field}: {e.problem}")
            continue
        except Rejection as e:
            errors.append(e.at(where))
            continue
        problems = extra(record) if extra else []
        if problems:
            errors.extend(f"{where}: {field}: {problem}" for field, problem in problems)
            continue
        if item_id is None:
            base = derived_id(klass, turns)
            item_id, n = base, 1
            while item_id in seen:  # the same question again: number the copies in file order
                n += 1
                item_id = f"{base}-{n}"
        elif item_id in seen:
            errors.append(f"{where}: id: duplicate {item_id!r} (first on line {seen[item_id]})")
            continue
        seen[item_id] = line
        records.append((EvalItem(id=item_id, turns=turns, std_answer=std_answer, klass=klass), record))
    if errors:
        raise bad_records(errors, "eval")
    if not records:
        raise DataError(f"{path}: no eval items")
    return records


class _FieldError(Exception):
    def __init__(self, field: str, problem: str):
        super().__init__(field, problem)
        self.field = field
        self.problem = problem


def _parse_record(record: Any) -> tuple[str | None, tuple[str, ...], str, str]:
    """(id or None, turns, std_answer, class key) of one record, or raise `_FieldError`."""
    if isinstance(record, Rejection):
        raise record
    if not isinstance(record, dict):
        raise _FieldError("record", f"not a JSON object (got {type(record).__name__})")

    question = record.get("question")
    if question is None:
        raise _FieldError("question", "missing")
    if isinstance(question, str):
        turns: tuple[str, ...] = (question,)
    elif isinstance(question, list):
        if not question:
            raise _FieldError("question", "empty list of turns")
        for i, turn in enumerate(question):
            if not isinstance(turn, str):
                raise _FieldError("question", f"turn {i} is not a string (got {type(turn).__name__})")
        turns = tuple(question)
    else:
        raise _FieldError("question", f"must be a string or a list of strings (got {type(question).__name__})")
    for i, turn in enumerate(turns):
        if not turn.strip():
            raise _FieldError("question", "empty" if len(turns) == 1 else f"turn {i} is empty")

    std_answer = record.get("std_answer")
    if std_answer is None:
        std_answer = ""
    elif not isinstance(std_answer, str):
        raise _FieldError("std_answer", f"must be a string (got {type(std_answer).__name__})")
    elif not std_answer.strip():
        std_answer = ""  # whitespace only is no reference: the judge gets the no-reference form

    klass = record.get("class")
    if klass is None:
        raise _FieldError("class", "missing")
    if not isinstance(klass, str):
        raise _FieldError("class", f"must be a string (got {type(klass).__name__})")
    if not class_key(klass):
        raise _FieldError("class", "empty")

    item_id = record.get("id")
    if item_id is not None:
        # ints are common in hand-made files; bool is an int in Python but never an id
        if isinstance(item_id, int) and not isinstance(item_id, bool):
            item_id = str(item_id)
        elif not isinstance(item_id, str):
            raise _FieldError("id", f"must be a string (got {type(item_id).__name__})")
        elif not item_id.strip():
            raise _FieldError("id", "empty")
    return item_id, turns, std_answer, class_key(klass)
