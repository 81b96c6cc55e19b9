"""belle.cli: the command line generated from verb signatures; `belle data convert` end to end."""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import pytest

from belle.cli import UsageError, main, run_verbs
from belle.config import ConfigError
from belle.records import DataError
from tests.helpers import read_jsonl, write_lines


def make_verbs(calls: list):
    """Two verbs that record how they were called."""

    def greet(
        name: str,
        times: int = 1,
        *,
        from_: str = "world",
        loud: bool = False,
        style: Literal["plain", "fancy"] = "plain",
        tags: list[str] | None = None,
        out: Path | None = None,
    ) -> int:
        """Say hello to someone.

        Prints nothing; records the call.

        Args:
            name: who to greet.
            times: how many times, at least once.
            from_: who says hello.
            loud: shout it, in capitals.
            style: how to dress the greeting.
            tags: labels to attach,
                one or more.
            out: where to write it.
        """
        calls.append(dict(name=name, times=times, from_=from_, loud=loud, style=style, tags=tags, out=out))
        return 7 if name == "seven" else 0

    def make_list(*, inputs: list[str], limit: int | None = None, fail: bool = False) -> None:
        """Make a list from inputs.

        Args:
            inputs: files to read.
            limit: keep at most this many.
            fail: raise a usage error.
        """
        if fail:
            raise UsageError("--inputs: nothing to read in 'x'")
        calls.append(dict(inputs=inputs, limit=limit))

    return [greet, make_list]


@pytest.fixture
def calls():
    return []


@pytest.fixture
def run(calls):
    verbs = make_verbs(calls)
    return lambda *argv: run_verbs(verbs, list(argv), "prog")


# ---------------------------------------------------------------------------------------------
# Parser built from signatures


def test_positional_parameters_are_positional_arguments_with_types(run, calls):
    assert run("greet", "安娜", "3") == 0
    assert calls == [dict(name="安娜", times=3, from_="world", loud=False, style="plain", tags=None, out=None)]


def test_positional_parameter_with_default_is_optional(run, calls):
    run("greet", "Ann")
    assert calls[0]["times"] == 1


def test_keyword_only_parameters_are_flags(run, calls):
    run("greet", "Ann", "--style", "fancy", "--out", "runs/x", "--tags", "a", "b")
    assert calls[0]["style"] == "fancy"
    assert calls[0]["out"] == Path("runs/x") and isinstance(calls[0]["out"], Path)
    assert calls[0]["tags"] == ["a", "b"]


def test_trailing_underscore_is_dropped_from_the_flag(run, calls):
    run("greet", "Ann", "--from", "Bob")
    assert calls[0]["from_"] == "Bob"


def test_bool_parameters_are_switches_with_a_no_form(run, calls):
    run("greet", "Ann", "--loud")
    run("greet", "Ann", "--loud", "--no-loud")
    run("greet", "Ann")
    assert [c["loud"] for c in calls] == [True, False, False]


def test_verb_names_use_dashes(run, calls):
    run("make-list", "--inputs", "a.jsonl", "b.jsonl", "--limit", "2")
    assert calls == [dict(inputs=["a.jsonl", "b.jsonl"], limit=2)]


def test_required_list_flag_needs_at_least_one_value(run, capsys):
    with pytest.raises(SystemExit) as e:
        run("make-list", "--inputs")
    assert e.value.code == 2
    assert "--inputs" in capsys.readouterr().err


def test_missing_required_flag_exits_2(run, capsys):
    with pytest.raises(SystemExit) as e:
        run("make-list")
    assert e.value.code == 2
    assert "the following arguments are required: --inputs" in capsys.readouterr().err


def test_literal_choice_outside_the_choices_exits_2(run, calls, capsys):
    with pytest.raises(SystemExit) as e:
        run("greet", "Ann", "--style", "wild")
    assert e.value.code == 2
    assert "invalid choice: 'wild'" in capsys.readouterr().err
    assert calls == []


def test_value_of_the_wrong_type_exits_2(run, capsys):
    with pytest.raises(SystemExit) as e:
        run("greet", "Ann", "many")
    assert e.value.code == 2
    assert "invalid int value: 'many'" in capsys.readouterr().err


def test_unknown_verb_exits_2(run, capsys):
    with pytest.raises(SystemExit) as e:
        run("wave")
    assert e.value.code == 2


def test_verb_return_value_is_the_exit_code(run):
    assert run("greet", "seven") == 7
    assert run("make-list", "--inputs", "a") == 0  # None -> 0


def test_usage_error_is_a_message_on_stderr_and_exit_code_2(run, capsys):
    assert run("make-list", "--inputs", "a", "--fail") == 2
    captured = capsys.readouterr()
    assert captured.err == "prog: error: --inputs: nothing to read in 'x'\n"
    assert "Traceback" not in captured.err


# ---------------------------------------------------------------------------------------------
# Help text from docstrings


def verb_help(run, capsys, verb: str) -> str:
    with pytest.raises(SystemExit) as e:
        run(verb, "--help")
    assert e.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines: compare with spaces normalized


def test_docstring_args_are_the_help_of_each_argument(run, capsys):
    text = verb_help(run, capsys, "greet")
    for expected in (
        "who to greet.",
        "how many times, at least once. (default: 1)",
        "who says hello. (default: world)",
        "shout it, in capitals.",
        "labels to attach, one or more.",  # a continuation line joins the first
        "where to write it.",
    ):
        assert expected in text


def test_help_shows_flags_choices_and_description(run, capsys):
    text = verb_help(run, capsys, "greet")
    assert "--from FROM_" in text or "--from FROM" in text
    assert "--loud, --no-loud" in text
    assert "{plain,fancy}" in text
    assert "Say hello to someone. Prints nothing; records the call." in text
    assert "Args:" not in text


def test_top_level_help_lists_verbs_with_their_first_doc_line(run, capsys):
    with pytest.raises(SystemExit):
        run("--help")
    text = " ".join(capsys.readouterr().out.split())
    assert "greet Say hello to someone." in text
    assert "make-list Make a list from inputs." in text


def test_help_text_may_contain_a_percent_sign(capsys):
    def keep(*, share: float = 0.9, exact: bool = False) -> None:
        """Keep part of the data.

        Args:
            share: fraction to keep, e.g. 0.9 keeps 90% of records.
            exact: keep exactly 100% of the rounding.
        """

    with pytest.raises(SystemExit) as e:
        run_verbs([keep], ["keep", "--help"], "prog")
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "90% of records" in out and "exactly 100% of" in out


# ---------------------------------------------------------------------------------------------
# `belle` itself


def test_belle_without_arguments_prints_jobs_and_exits_2(capsys):
    assert main([]) == 2
    out = capsys.readouterr().out
    assert out.startswith("usage: belle JOB")
    assert "  data" in out


def test_belle_help_exits_0(capsys):
    assert main(["--help"]) == 0
    assert "usage: belle JOB" in capsys.readouterr().out


def test_belle_unknown_job_exits_2_naming_the_choices(capsys):
    assert main(["trian"]) == 2
    err = capsys.readouterr().err
    assert "unknown job 'trian'" in err and "data" in err


@pytest.mark.slow
def test_belle_subprocess_without_arguments_exits_2(belle_cli):
    result = belle_cli()
    assert result.returncode == 2
    assert "usage: belle JOB" in result.stdout


# ---------------------------------------------------------------------------------------------
# `belle data convert` end to end


MULTITURN = "Human:你好\nAssistant:嗨\nHuman:再见\nAssistant:"


@pytest.fixture
def mixed(tmp_path) -> Path:
    """Five good records in five formats and three bad ones, on known lines."""
    return write_lines(
        tmp_path / "mixed.jsonl",
        {"id": "b1", "conversations": [{"from": "human", "value": "问"}, {"from": "gpt", "value": "答"}]},  # 1
        {"id": "a1", "instruction": "翻译", "input": "早上好", "output": "Good morning"},  # 2
        '{"instruction": "broken",',  # 3: malformed JSON
        {"id": "m1", "instruction": MULTITURN, "input": "", "output": "拜拜"},  # 4
        "",  # 5
        {"conversations": [{"from": "narrator", "value": "从前"}]},  # 6: unknown role
        {"id": "o1", "messages": [{"role": "system", "content": "系统"}, {"role": "user", "content": "问"},
                                  {"role": "assistant", "content": "答"}]},  # 7
        {"messages": [{"role": "user", "content": "只有问题"}]},  # 8: no assistant turn
        {"id": "t1", "text": "一段文字"},  # 9
    )


@pytest.mark.slow
def test_data_convert_writes_belle_records_and_lists_every_rejected_line(belle_cli, mixed, tmp_path):
    out = tmp_path / "out" / "train.jsonl"
    result = belle_cli("data", "convert", "--input", str(mixed), "--output", str(out))
    assert result.returncode == 0, result.stderr
    records = read_jsonl(out)
    assert [r["id"] for r in records] == ["b1", "a1", "m1", "o1", "t1"]
    assert records[1] == {"id": "a1", "conversations": [{"from": "human", "value": "翻译\n早上好"},
                                                        {"from": "assistant", "value": "Good morning"}]}
    assert [t["from"] for t in records[2]["conversations"]] == ["human", "assistant", "human", "assistant"]
    assert records[3]["conversations"][0] == {"from": "system", "value": "系统"}
    assert "翻译" in out.read_text(encoding="utf-8")  # real characters, not \\u escapes

    listing = out.with_name("train.jsonl.rejected.txt")
    rejected = listing.read_text(encoding="utf-8").splitlines()
    assert [line.split(": ")[0] for line in rejected] == [f"{mixed}:3", f"{mixed}:6", f"{mixed}:8"]
    assert rejected[0].startswith(f"{mixed}:3: malformed JSON")
    assert rejected[1].startswith(f"{mixed}:6: unknown role")
    assert rejected[2] == f"{mixed}:8: no assistant turn"

    assert f"wrote 5 conversations to {out}" in result.stdout
    assert "rejected 3 records (malformed JSON: 1, unknown role: 1, no assistant turn: 1)" in result.stdout
    assert f"rejected: {mixed}:6: unknown role" in result.stderr
    assert str(listing) in result.stderr


def test_data_convert_to_messages(belle_main, mixed, tmp_path):
    out = tmp_path / "messages.jsonl"
    result = belle_main("data", "convert", "--input", str(mixed), "--output", str(out), "--to", "messages")
    assert result.returncode == 0, result.stderr
    records = read_jsonl(out)
    assert records[0] == {"id": "b1", "messages": [{"role": "user", "content": "问"}, {"role": "assistant", "content": "答"}]}
    assert records[2]["messages"][-1] == {"role": "assistant", "content": "拜拜"}
    assert all(set(r) == {"id", "messages"} for r in records)


def test_data_convert_unknown_output_format_exits_2(belle_main, mixed, tmp_path):
    out = tmp_path / "x.jsonl"
    result = belle_main("data", "convert", "--input", str(mixed), "--output", str(out), "--to", "xml")
    assert result.returncode == 2
    assert "--to must be one of belle, messages" in result.stderr
    assert not out.exists()


def test_data_convert_strict_stops_at_the_first_bad_line_and_writes_nothing(belle_main, mixed, tmp_path):
    out = tmp_path / "out" / "strict.jsonl"
    result = belle_main("data", "convert", "--input", str(mixed), "--output", str(out), "--strict")
    assert result.returncode == 2
    assert f"{mixed}:3: malformed JSON" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()
    assert not out.with_name("strict.jsonl.rejected.txt").exists()
    assert list(out.parent.iterdir()) == []  # no temporary file left behind


def test_data_convert_strict_replaces_nothing_when_it_fails(belle_main, mixed, tmp_path):
    out = tmp_path / "keep.jsonl"
    out.write_text("previous output\n", encoding="utf-8")
    result = belle_main("data", "convert", "--input", str(mixed), "--output", str(out), "--strict")
    assert result.returncode == 2
    assert out.read_text(encoding="utf-8") == "previous output\n"


def test_data_convert_from_alpaca_keeps_multiturn_instruction_literally(belle_main, tmp_path):
    source = write_lines(tmp_path / "mt.jsonl", {"id": "m1", "instruction": MULTITURN, "input": "", "output": "拜拜"})
    out = tmp_path / "out.jsonl"
    result = belle_main("data", "convert", "--input", str(source), "--output", str(out), "--from", "alpaca")
    assert result.returncode == 0, result.stderr
    assert read_jsonl(out) == [{"id": "m1", "conversations": [{"from": "human", "value": MULTITURN},
                                                               {"from": "assistant", "value": "拜拜"}]}]
    assert "rejected 0 records" in result.stdout


def test_data_convert_from_rejects_an_unknown_format(belle_main, mixed, tmp_path):
    result = belle_main("data", "convert", "--input", str(mixed), "--output", str(tmp_path / "o.jsonl"), "--from", "csv")
    assert result.returncode == 2
    assert "invalid choice: 'csv'" in result.stderr


def test_data_convert_reads_several_inputs_and_folders(belle_main, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    array = [{"id": "x1", "instruction": "一", "output": "1"}, {"id": "x2", "instruction": "二", "output": "2"}]
    (folder / "a.json").write_text(json.dumps(array, ensure_ascii=False, indent=2), encoding="utf-8")
    write_lines(folder / "b.jsonl", {"id": "x3", "text": "三"})
    single = write_lines(tmp_path / "c.jsonl", {"id": "x4", "instruction": "四", "output": "4"})
    out = tmp_path / "out.jsonl"
    result = belle_main("data", "convert", "--input", str(folder), str(single), "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert [r["id"] for r in read_jsonl(out)] == ["x1", "x2", "x3", "x4"]
    assert not out.with_name("out.jsonl.rejected.txt").exists()


def test_data_convert_removes_a_stale_rejected_listing(belle_main, mixed, tmp_path):
    out = tmp_path / "out.jsonl"
    assert belle_main("data", "convert", "--input", str(mixed), "--output", str(out)).returncode == 0
    listing = out.with_name("out.jsonl.rejected.txt")
    assert listing.exists()
    clean = write_lines(tmp_path / "clean.jsonl", {"instruction": "问", "output": "答"})
    assert belle_main("data", "convert", "--input", str(clean), "--output", str(out)).returncode == 0
    assert not listing.exists()


@pytest.mark.slow
def test_data_convert_reads_a_saved_dataset_folder(belle_main, tmp_path):
    # `--input` help: "files or folders (.json/.jsonl, ...) or saved datasets".
    from datasets import Dataset

    saved = tmp_path / "saved"
    Dataset.from_list([{"id": "d1", "instruction": "问", "input": "", "output": "答"}]).save_to_disk(str(saved))
    out = tmp_path / "out.jsonl"
    result = belle_main("data", "convert", "--input", str(saved), "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert read_jsonl(out) == [{"id": "d1", "conversations": [{"from": "human", "value": "问"},
                                                               {"from": "assistant", "value": "答"}]}]
    assert "rejected 0 records" in result.stdout


def test_a_dataclass_parameter_becomes_a_group_of_flags(capsys):
    from dataclasses import dataclass

    @dataclass
    class Endpoint:
        """Where to send requests."""

        model: str
        """model name."""
        base_url: str | None = None
        """endpoint root."""
        rpm: float | None = None
        """requests per minute."""

    seen = {}

    def ask(*, llm: Endpoint, judge: Endpoint, question: str = "hi") -> int:
        """Ask twice."""
        seen.update(llm=llm, judge=judge, question=question)
        return 0

    argv = ["ask", "--model", "m1", "--rpm", "60", "--judge-model", "m2", "--judge-base-url", "http://x/v1"]
    assert run_verbs([ask], argv, "prog") == 0
    assert seen == {"llm": Endpoint("m1", None, 60.0), "judge": Endpoint("m2", "http://x/v1", None), "question": "hi"}

    with pytest.raises(SystemExit):
        run_verbs([ask], ["ask", "--model", "m1"], "prog")
    assert "--judge-model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_verbs([ask], ["ask", "--help"], "prog")
    assert "requests per minute" in capsys.readouterr().out


@dataclass(frozen=True)
class Decoding:
    """How to decode."""

    temperature: float = 0.1
    """sampling temperature."""
    max_new_tokens: int = 512
    """the longest reply."""

    def problems(self) -> list[str]:
        found = []
        if self.temperature < 0:
            found.append(f"temperature must be 0 or more, not {self.temperature}")
        if self.max_new_tokens < 1:
            found.append(f"max_new_tokens must be at least 1, not {self.max_new_tokens}")
        return found


@dataclass(frozen=True)
class Sampling(Decoding):
    """How to decode, as plain flags."""

    FLAT: ClassVar[bool] = True


def test_a_flat_group_keeps_plain_flags_and_a_verb_may_change_its_defaults(capsys):
    seen = {}

    def answer(*, sampling: Sampling = Sampling(temperature=0.001), judge: Decoding = Decoding()) -> None:
        """Answer."""
        seen.update(sampling=sampling, judge=judge)

    assert run_verbs([answer], ["answer", "--max-new-tokens", "9"], "prog") == 0
    assert seen == {"sampling": Sampling(0.001, 9), "judge": Decoding(0.1, 512)}
    with pytest.raises(SystemExit):
        run_verbs([answer], ["answer", "--help"], "prog")
    help_text = capsys.readouterr().out
    assert "--temperature" in help_text and "--judge-temperature" in help_text
    assert "sampling temperature. (default: 0.001)" in " ".join(help_text.split())


def test_problems_of_a_flag_group_exit_2_one_line_each_before_the_verb_runs(capsys):
    called = []

    def answer(*, sampling: Sampling, judge: Decoding) -> None:
        """Answer."""
        called.append(True)

    argv = ["answer", "--temperature", "-1", "--max-new-tokens", "0", "--judge-temperature", "-2"]
    assert run_verbs([answer], argv, "prog") == 2
    assert not called
    assert capsys.readouterr().err.splitlines() == [
        "prog: error: temperature must be 0 or more, not -1.0",
        "prog: error: max_new_tokens must be at least 1, not 0",
        "prog: error: --judge-...: temperature must be 0 or more, not -2.0",
    ]


@pytest.mark.parametrize("error", [DataError("data.jsonl:3: question: missing"),
                                   ConfigError(["lora.r: must be at least 1"], "train.yaml")])
def test_user_input_errors_exit_2_without_a_traceback(error, capsys):
    def load() -> None:
        """Load."""
        raise error

    assert run_verbs([load], ["load"], "prog") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"prog: error: {str(error).splitlines()[0]}") and "Traceback" not in err


def test_a_value_error_from_a_bug_is_not_swallowed():
    def load() -> None:
        """Load."""
        raise ValueError("a bug in belle")

    with pytest.raises(ValueError, match="a bug in belle"):
        run_verbs([load], ["load"], "prog")
