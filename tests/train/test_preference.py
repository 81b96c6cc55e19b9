"""Preference pairs: every prompt form becomes the same messages, and bad records are reported."""

import json

import pytest

from belle.records import DataError, Rejection
from belle.train.preference import load_preference_pairs, preference_pair


def test_belle_template_prompt_becomes_the_turns_it_holds():
    prompt = "Human: \n你好\n\nAssistant: \n你好！有什么可以帮你？\n\nHuman: \n讲个笑话\n\nAssistant: \n"
    pair = preference_pair({"prompt": prompt, "chosen": "好的。", "rejected": "不。"})
    assert pair["prompt"] == [
        {"role": "user", "content": "你好"},
        {"role": "assistant", "content": "你好！有什么可以帮你？"},
        {"role": "user", "content": "讲个笑话"},
    ]
    assert pair["chosen"] == [{"role": "assistant", "content": "好的。"}]
    assert pair == preference_pair({"prompt": pair["prompt"], "chosen": pair["chosen"], "rejected": "不。"})


@pytest.mark.parametrize(
    "record, reason",
    [
        ({"chosen": "a", "rejected": "b"}, "missing field"),
        ({"prompt": "q", "chosen": "", "rejected": "b"}, "missing field"),
        ({"prompt": "q", "chosen": "a"}, "missing field"),
        ({"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "chosen": "a", "rejected": "b"}, "roles out of order"),
    ],
)
def test_unusable_pairs_are_rejected_with_a_reason(record, reason):
    with pytest.raises(Rejection) as caught:
        preference_pair(record)
    assert caught.value.reason == reason


def test_bad_lines_are_counted_or_stop_the_run_with_file_and_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [{"prompt": "q1", "chosen": "a", "rejected": "b"}, {"prompt": "q2", "chosen": "a"}, {"prompt": "q3", "chosen": "a", "rejected": "b"}]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    pairs, report = load_preference_pairs(path)
    assert len(pairs) == 2 and report.total == 1
    assert report.lines == [f"{path}:2: missing field: 'rejected' is not a non-empty string"]
    with pytest.raises(DataError, match=f"{path}:2: missing field"):
        load_preference_pairs(path, policy="strict")
