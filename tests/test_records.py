"""belle.records: reading JSON records with their lines, the JSON-lines outputs that resume after a
kill, and the reject report."""

import json
from pathlib import Path

import pytest

from belle.records import DataError, RejectReport, Rejection, iter_json_records, read_json_object, resume_records

GOOD = {"instruction": "你好", "output": "你好！"}


def write_lines(path: Path, *lines) -> Path:
    """One line per item: dicts (and other JSON values) dumped, strings written as they are."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join((item if isinstance(item, str) else json.dumps(item, ensure_ascii=False)) + "\n" for item in lines)
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# Reading: JSON lines, JSON arrays, pretty-printed objects


def test_jsonl_skips_blank_lines_and_keeps_file_line_numbers(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", "", GOOD, "   ", "", {"text": "t"}, "")
    assert [line for line, _ in iter_json_records(path)] == [2, 5]



def pretty_array(records) -> tuple[str, list[int]]:
    """A pretty-printed JSON array of objects, and the line on which each element starts."""
    text = json.dumps(records, ensure_ascii=False, indent=2)
    starts = [n for n, line in enumerate(text.splitlines(), start=1) if line == "  {"]
    return text + "\n", starts


ARRAY_RECORDS = [
    {"instruction": "列举三种节约用水的方法。", "input": "", "output": "关掉水龙头；\n用洗菜水浇花；\n修理漏水。"},
    {"id": 7, "instruction": "翻译", "input": "早上好", "output": "Good morning, \"friend\" [1], {2}"},
    {"conversations": [{"from": "human", "value": "你好"}, {"from": "assistant", "value": "你好！有什么可以帮你？"}]},
    {"messages": [{"role": "user", "content": "1+1"}, {"role": "assistant", "content": "2"}]},
]


@pytest.mark.parametrize("chunk_chars", [1, 7, 64, 1 << 20])
def test_json_array_yields_each_element_with_the_line_it_starts_on(tmp_path, chunk_chars):
    text, starts = pretty_array(ARRAY_RECORDS)
    assert len(starts) == len(ARRAY_RECORDS)  # the helper found one start per element
    path = tmp_path / "arr.json"
    path.write_text(text, encoding="utf-8")
    assert list(iter_json_records(path, chunk_chars=chunk_chars)) == list(zip(starts, ARRAY_RECORDS))


@pytest.mark.parametrize("chunk_chars", [3, 7, 64])
def test_json_array_numbers_split_by_a_chunk_boundary_are_read_whole(tmp_path, chunk_chars):
    path = tmp_path / "numbers.json"
    path.write_text("[1234567890,\n 42,\n 3.14159265]", encoding="utf-8")
    assert list(iter_json_records(path, chunk_chars=chunk_chars)) == [(1, 1234567890), (2, 42), (3, 3.14159265)]


@pytest.mark.parametrize("chunk_chars", [7, 1 << 20])
def test_json_array_with_bom_and_one_element_per_line(tmp_path, chunk_chars):
    path = tmp_path / "bom.json"
    body = "[\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in ARRAY_RECORDS) + "\n]\n"
    path.write_bytes(b"\xef\xbb\xbf" + body.encode("utf-8"))
    assert list(iter_json_records(path, chunk_chars=chunk_chars)) == [(n, r) for n, r in enumerate(ARRAY_RECORDS, start=2)]


@pytest.mark.parametrize("chunk_chars", [7, 64])
def test_json_array_after_more_blank_lines_than_one_chunk(tmp_path, chunk_chars):
    path = tmp_path / "late.json"
    path.write_text("\n" * 100 + "[\n" + json.dumps(GOOD, ensure_ascii=False) + "\n]\n", encoding="utf-8")
    assert list(iter_json_records(path, chunk_chars=chunk_chars)) == [(102, GOOD)]


def test_empty_json_array_yields_nothing(tmp_path):
    path = tmp_path / "empty.json"
    path.write_text("[\n]\n", encoding="utf-8")
    assert list(iter_json_records(path)) == []


@pytest.mark.parametrize("chunk_chars", [7, 64, 1 << 20])
def test_malformed_element_in_json_array_is_rejected_and_reading_goes_on_at_the_next(tmp_path, chunk_chars):
    path = tmp_path / "broken.json"
    path.write_text(
        '[\n'
        '  {"instruction": "a", "output": "b"},\n'
        '  {"instruction": "c",\n'
        '   "output": oops},\n'
        '  {"instruction": "d", "output": "e"}\n'
        ']\n',
        encoding="utf-8",
    )
    items = list(iter_json_records(path, chunk_chars=chunk_chars))
    assert items[0] == (2, {"instruction": "a", "output": "b"})
    assert items[2] == (5, {"instruction": "d", "output": "e"})
    assert len(items) == 3
    line, rejection = items[1]
    assert line == 3  # where the element starts; the detail names the line of the bad token
    assert isinstance(rejection, Rejection) and rejection.reason == "malformed JSON"
    assert rejection.detail == "Expecting value on line 4 (skipped to the next element)"


def test_pretty_printed_objects_one_after_another_are_read_with_their_start_lines(tmp_path):
    path = tmp_path / "pretty.json"
    records = [{"instruction": "翻译：猫", "output": "cat"}, {"instruction": "翻译：狗", "output": "dog"}]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False, indent=2) for r in records) + "\n", encoding="utf-8")
    assert list(iter_json_records(path, chunk_chars=16)) == [(1, records[0]), (5, records[1])]


# ---------------------------------------------------------------------------------------------
# JSON-lines outputs: resumed after a kill


def test_resume_records_cuts_a_torn_last_line(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text('{"id": 1}\n{"id": 2}\n{"id": 3, "te', encoding="utf-8")
    assert resume_records(path) == [{"id": 1}, {"id": 2}]
    assert path.read_text(encoding="utf-8") == '{"id": 1}\n{"id": 2}\n'


def test_resume_records_keeps_line_separators_inside_strings(tmp_path):
    path = tmp_path / "out.jsonl"
    records = [{"raw": "a\u2028b\u0085c"}, {"raw": "d"}]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    assert resume_records(path) == records


# ---------------------------------------------------------------------------------------------
# Small JSON files


def test_read_json_object_names_the_file_and_raises_the_error_asked_for(tmp_path):
    class FolderError(DataError):
        pass

    garbage = tmp_path / "belle.json"
    garbage.write_text("{garbage", encoding="utf-8")
    with pytest.raises(FolderError, match=r"belle\.json: not a JSON file"):
        read_json_object(garbage, FolderError)
    listing = tmp_path / "config.json"
    listing.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(DataError, match="config.json: expected a JSON object, got list"):
        read_json_object(listing)
    listing.write_text('{"model_type": "llama"}', encoding="utf-8")
    assert read_json_object(listing) == {"model_type": "llama"}


# ---------------------------------------------------------------------------------------------
# Reject report


def test_summary_with_no_rejections():
    assert RejectReport().summary() == "rejected 0 records"
