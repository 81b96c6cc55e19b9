"""The readers against hostile input: broken JSON arrays, odd suffixes, files that are not UTF-8,
lone surrogates, random bytes. Every input ends in a record, a counted reject, or one clear
`DataError` naming the file; never a traceback."""

from __future__ import annotations

import codecs
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from belle import cli
from belle.conversation import read_conversations
from belle.records import DataError, Rejection, RejectReport, iter_json_records, list_data_files, numbered_records

GOOD = {"instruction": "你好", "output": "你好！"}
GBK_LINE = json.dumps(GOOD, ensure_ascii=False).encode("gbk") + b"\n"


def read_all(source, **kwargs):
    report = RejectReport()
    return list(read_conversations(source, report=report, **kwargs)), report


# ---------------------------------------------------------------------------------------------
# JSON arrays with malformed elements: recover at the next element


def layout(elements: list[str], style: str) -> tuple[str, list[int]]:
    """A JSON array holding `elements` (JSON texts or garbage) in one of three layouts, and the
    line each element starts on."""
    if style == "compact":
        return "[" + ", ".join(elements) + "]\n", [1] * len(elements)
    if style == "pretty":
        elements = ["\n".join("  " + line for line in e.split("\n")) for e in elements]
    text, lines, line = "[\n", [], 2
    for i, element in enumerate(elements):
        lines.append(line)
        text += element + (",\n" if i < len(elements) - 1 else "\n")
        line += element.count("\n") + 1
    return text + "]\n", lines


def dump(record, style):
    return json.dumps(record, ensure_ascii=False, indent=2 if style == "pretty" else None)


@pytest.mark.parametrize("style", ["lines", "pretty", "compact"])
@pytest.mark.parametrize("chunk_chars", [100, 1 << 20])
def test_one_malformed_element_in_a_thousand_is_the_only_loss(tmp_path, style, chunk_chars):
    records = [{"id": str(i), "instruction": f"问题 {i}", "output": f"回答, {{{i}}} \"ok\""} for i in range(1000)]
    elements = [dump(r, style) for r in records]
    elements[10] = "{bad json}"
    text, lines = layout(elements, style)
    path = tmp_path / "a.json"
    path.write_text(text, encoding="utf-8")
    items = list(iter_json_records(path, chunk_chars=chunk_chars))
    kept = [record for _, record in items if not isinstance(record, Rejection)]
    rejects = [(line, record) for line, record in items if isinstance(record, Rejection)]
    assert kept == records[:10] + records[11:]
    assert [line for line, _ in rejects] == [lines[10]]
    assert rejects[0][1].reason == "malformed JSON"


def test_malformed_element_is_reported_with_its_line_and_the_rest_is_read(tmp_path):
    path = tmp_path / "a.json"
    records = [{"instruction": str(i), "output": "x"} for i in range(5)]
    elements = [json.dumps(r) for r in records]
    elements[2] = '{"instruction": "2", "output": }'
    path.write_text(layout(elements, "lines")[0], encoding="utf-8")
    conversations, report = read_all(path)
    assert len(conversations) == 4
    assert report.lines == [f"{path}:4: malformed JSON: Expecting value (skipped to the next element)"]


def test_torn_element_on_its_own_line_resumes_at_the_next_line(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('[\n{"instruction": "a", "output": "b"},\n{"instruction": "c\n{"instruction": "d", "output": "e"}\n]\n',
                    encoding="utf-8")
    items = list(iter_json_records(path))
    assert [r for _, r in items if not isinstance(r, Rejection)] == [
        {"instruction": "a", "output": "b"}, {"instruction": "d", "output": "e"}]
    assert [line for line, r in items if isinstance(r, Rejection)] == [3]


def test_a_malformed_last_element_is_rejected_and_the_array_still_ends(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('[{"instruction": "a", "output": "b"}, {oops}]', encoding="utf-8")
    conversations, report = read_all(path)
    assert len(conversations) == 1 and report.counts == {"malformed JSON": 1}


def test_an_element_whose_end_cannot_be_found_fails_the_whole_file(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('[{"instruction": "a", "output": "b"}, {"oops: [1, 2}, {"instruction": "c", "output": "d"}]',
                    encoding="utf-8")
    with pytest.raises(DataError, match=r"a\.json:1: malformed JSON: .*cannot find where the next element starts"):
        read_all(path)


JSON_TEXT = st.text(st.characters(codec="utf-8"), max_size=12)
RECORD = st.fixed_dictionaries({"instruction": JSON_TEXT, "output": JSON_TEXT})
# Garbage that is not JSON but whose brackets and quotes pair up: recovery is certain.
WORD = st.text(st.sampled_from("abcxyz 中文:1"), min_size=1, max_size=6).filter(lambda w: w.strip() and not w.strip().isdigit())
BALANCED_GARBAGE = st.one_of(
    WORD.map(lambda w: "{" + w + "}"),
    WORD.map(lambda w: '{"instruction": ' + w + "}"),
    JSON_TEXT.map(lambda t: '{"output": ' + json.dumps(t) + ", }"),
    WORD.map(lambda w: '{"a": [' + w + "]}"),
)
# Anything JSON-like, on one line or several: brackets and quotes may not pair up.
ANY_GARBAGE = st.text(st.sampled_from('{}[]",:\\ ab1\n'), min_size=1, max_size=12).filter(lambda g: not_json_values(g))


def not_json_values(text: str) -> bool:
    """Whether `text` is not a run of JSON values (which a lenient reader may take as elements)."""
    decoder, pos = json.JSONDecoder(), 0
    while True:
        while pos < len(text) and text[pos] in " \n,":
            pos += 1
        if pos == len(text):
            return False
        try:
            pos = decoder.raw_decode(text, pos)[1]
        except json.JSONDecodeError:
            return True


@st.composite
def arrays(draw, garbage):
    """(text, records, indices of garbage elements, element start lines, style, element texts)."""
    records = draw(st.lists(RECORD, min_size=1, max_size=12))
    style = draw(st.sampled_from(["lines", "pretty", "compact"]))
    elements = [dump(r, style) for r in records]
    bad = sorted(draw(st.sets(st.integers(0, len(records) - 1), min_size=1, max_size=max(1, len(records) // 3))))
    for i in bad:
        elements[i] = draw(garbage)
        if style == "compact":
            elements[i] = elements[i].replace("\n", " ")
    text, lines = layout(elements, style)
    return text, records, bad, lines, style, elements


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=arrays(BALANCED_GARBAGE), chunk_chars=st.sampled_from([16, 1 << 20]))
def test_balanced_garbage_elements_are_each_one_reject_and_every_good_element_is_kept(tmp_path, case, chunk_chars):
    text, records, bad, lines, _, _ = case
    path = tmp_path / "h.json"
    path.write_text(text, encoding="utf-8")
    items = list(iter_json_records(path, chunk_chars=chunk_chars))
    assert [r for _, r in items if not isinstance(r, Rejection)] == [r for i, r in enumerate(records) if i not in bad]
    assert [line for line, r in items if isinstance(r, Rejection)] == [lines[i] for i in bad]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=arrays(ANY_GARBAGE), chunk_chars=st.sampled_from([16, 1 << 20]))
def test_any_garbage_is_rejects_or_one_clear_error_and_untouched_elements_are_kept(tmp_path, case, chunk_chars):
    text, records, bad, lines, style, elements = case
    path = tmp_path / "h.json"
    path.write_text(text, encoding="utf-8")
    try:
        items = list(iter_json_records(path, chunk_chars=chunk_chars))
    except DataError as e:
        assert str(e).startswith(f"{path}:")
        return
    kept = [r for _, r in items if not isinstance(r, Rejection)]
    untouched = [r for i, r in enumerate(records) if not {i - 1, i, i + 1} & set(bad)]
    # kept, or inside a value that is not an object (garbage "[1" ... "2]" pairing up around good
    # elements is valid JSON), which read_conversations counts as a reject at its line
    assert all(r in kept or any(inside(r, v) for v in kept if not isinstance(v, dict)) for r in untouched)
    assert sum(not isinstance(r, dict) for _, r in items) >= 1  # a Rejection, or a value read_conversations rejects
    if style != "compact":  # every reject is on a line of garbage, or is the array left open
        garbage_lines = {line for i in bad for line in range(lines[i], lines[i] + elements[i].count("\n") + 1)}
        assert {line for line, r in items if isinstance(r, Rejection)} <= garbage_lines | {text.count("\n") + 1}


def inside(record, value) -> bool:
    return value == record or isinstance(value, list) and any(inside(record, v) for v in value)


def test_a_stray_opening_bracket_that_takes_the_rest_of_an_open_array_is_rejected(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('[\n[1,\n{"instruction": "a", "output": "b"},\n{"instruction": "c", "output": "d"}\n]\n', encoding="utf-8")
    items = list(iter_json_records(path))
    assert [r for _, r in items if isinstance(r, dict)] == [{"instruction": "a", "output": "b"}, {"instruction": "c", "output": "d"}]
    assert [line for line, r in items if isinstance(r, Rejection)] == [2]


# ---------------------------------------------------------------------------------------------
# Folders


def test_upper_case_suffixes_in_a_folder_are_read(tmp_path):
    for name in ("a.JSONL", "b.Json", "c.JSON"):
        (tmp_path / name).write_text(json.dumps(GOOD) + "\n", encoding="utf-8")
    (tmp_path / "notes.TXT").write_text("x\n", encoding="utf-8")
    assert [p.name for p in list_data_files(tmp_path)] == ["a.JSONL", "b.Json", "c.JSON"]
    assert len(read_all(tmp_path)[0]) == 3


# ---------------------------------------------------------------------------------------------
# Encodings


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-le", "utf-16-be"])
@pytest.mark.parametrize("shape", ["jsonl", "array"])
def test_utf8_with_bom_and_utf16_with_bom_are_read(tmp_path, encoding, shape):
    records = [GOOD, {"instruction": "second", "output": "二"}]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records) if shape == "jsonl" else \
        json.dumps(records, ensure_ascii=False, indent=2)
    bom = {"utf-16-le": codecs.BOM_UTF16_LE, "utf-16-be": codecs.BOM_UTF16_BE}.get(encoding, b"")
    path = tmp_path / "a.json"
    path.write_bytes(bom + text.encode(encoding))
    conversations, report = read_all(path)
    assert [c.messages[0]["content"] for c in conversations] == ["你好", "second"] and report.total == 0


@pytest.mark.parametrize(
    "data, byte, offset",
    [
        (GBK_LINE, 0xc4, 17),
        ('{"instruction": "a", "output": "b"}\n'.encode("utf-16-le"), 0x00, 1),
        (bytes(range(256)) * 4, 0x00, 0),
        (b'{"instruction": "a", "output": "b"}\n' * 3 + b'{"instruction": "\xff"}\n', 0xff, 125),
    ],
    ids=["gbk", "utf16-without-bom", "binary", "bad-byte-after-good-lines"],
)
def test_a_named_file_that_is_not_utf8_is_one_error_naming_byte_and_offset(tmp_path, data, byte, offset):
    path = tmp_path / "a.jsonl"
    path.write_bytes(data)
    with pytest.raises(DataError) as e:
        read_all(path)
    assert str(e.value).startswith(f"{path}: not UTF-8: byte 0x{byte:02x} at offset {offset}; ")
    assert "iconv -f" in str(e.value)
    with pytest.raises(DataError, match="not UTF-8"):
        list(iter_json_records(path))


def test_a_file_in_a_folder_that_is_not_utf8_is_a_counted_skip(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(GBK_LINE)
    (tmp_path / "b.jsonl").write_text(json.dumps(GOOD) + "\n", encoding="utf-8")
    conversations, report = read_all(tmp_path)
    assert len(conversations) == 1
    assert report.counts == {"not UTF-8": 1}
    assert report.lines[0].startswith(f"{tmp_path / 'a.jsonl'}: not UTF-8: byte 0xc4 at offset 17; ")
    with pytest.raises(DataError, match="a.jsonl: not UTF-8"):
        read_all(tmp_path, policy="strict")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=200), suffix=st.sampled_from([".json", ".jsonl"]))
def test_any_bytes_end_in_records_rejects_or_one_error(tmp_path, data, suffix):
    path = tmp_path / f"x{suffix}"
    path.write_bytes(data)
    try:
        conversations, report = read_all(path)
    except DataError as e:
        assert str(e).startswith(f"{path}")
        return
    for c in conversations:  # what is kept can be written out and encoded
        json.dumps(c.messages, ensure_ascii=False).encode("utf-8")


def test_lone_surrogate_is_a_counted_reject_and_a_pair_is_kept(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"instruction": "a\\ud800", "output": "b"}\n'
                    '{"instruction": "\\ud83d\\ude00", "output": "b"}\n'
                    '{"instruction": "a", "output": "b", "meta": {"\\udfff": 1}}\n', encoding="utf-8")
    conversations, report = read_all(path)
    assert [c.messages[0]["content"] for c in conversations] == ["😀"]
    assert report.lines == [f"{path}:1: invalid text: lone surrogate", f"{path}:3: invalid text: lone surrogate"]
    array = tmp_path / "b.json"
    array.write_text('[{"instruction": "a\\ud800", "output": "b"}, {"instruction": "a", "output": "b"}]', encoding="utf-8")
    conversations, report = read_all(array)
    assert len(conversations) == 1 and report.counts == {"invalid text": 1}


def test_numbered_records_reads_a_utf8_bom_and_names_the_offset_of_a_bad_byte(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_bytes(codecs.BOM_UTF8 + b'{"id": "1"}\n{"id": "2"}\n')
    assert numbered_records(path, cut_torn=False) == [(1, {"id": "1"}), (2, {"id": "2"})]
    path.write_bytes(b'{"id": "1"}\n{"id": "\xd6"}\n')
    with pytest.raises(DataError, match=r"out\.jsonl:2: not UTF-8: byte 0xd6 at offset 20"):
        numbered_records(path, cut_torn=False)


# ---------------------------------------------------------------------------------------------
# End to end, in-process: `belle data convert` and `belle data tokenize`


def test_convert_a_lone_gbk_file_exits_2_with_one_line_naming_it(tmp_path, capsys):
    path = tmp_path / "gbk.jsonl"
    path.write_bytes(GBK_LINE)
    out = tmp_path / "out.jsonl"
    assert cli.main(["data", "convert", "--input", str(path), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and "not UTF-8" in err and "Traceback" not in err
    assert not out.exists()


def test_convert_skips_and_reports_a_gbk_file_in_a_folder_and_converts_the_good_one(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "gbk.jsonl").write_bytes(GBK_LINE)
    (folder / "good.JSONL").write_text(json.dumps(GOOD, ensure_ascii=False) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert cli.main(["data", "convert", "--input", str(folder), "--output", str(out)]) == 0
    captured = capsys.readouterr()
    assert len(out.read_text(encoding="utf-8").splitlines()) == 1
    assert f"{folder / 'gbk.jsonl'}: not UTF-8" in captured.err
    assert "rejected 1 records (not UTF-8: 1)" in captured.out
    assert cli.main(["data", "convert", "--input", str(folder), "--output", str(out), "--strict"]) == 2


@pytest.mark.slow
def test_tokenize_a_lone_gbk_file_exits_2_with_one_line_naming_it(tiny_model_dir, tmp_path, capsys):
    lone = tmp_path / "gbk.jsonl"
    lone.write_bytes(GBK_LINE)
    out = tmp_path / "tokens.jsonl"
    argv = ["data", "tokenize", "--model", str(tiny_model_dir), "--output", str(out), "--input"]
    assert cli.main(argv + [str(lone)]) == 2
    err = capsys.readouterr().err.strip().splitlines()  # datasets' progress bars come first
    assert f"{lone}: not UTF-8: byte 0xc4 at offset 17" in err[-1] and "Traceback" not in "\n".join(err)


@pytest.mark.slow
def test_tokenize_skips_and_reports_a_gbk_file_in_a_folder(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "tokens.jsonl"
    argv = ["data", "tokenize", "--model", str(tiny_model_dir), "--output", str(out), "--input"]
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "gbk.jsonl").write_bytes(GBK_LINE)
    (folder / "good.jsonl").write_text(json.dumps(GOOD, ensure_ascii=False) + "\n", encoding="utf-8")
    assert cli.main(argv + [str(folder)]) == 0
    assert len(out.read_text(encoding="utf-8").splitlines()) == 1
    assert f"{folder / 'gbk.jsonl'}: not UTF-8" in capsys.readouterr().err
