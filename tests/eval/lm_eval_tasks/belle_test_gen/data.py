"""The belle_test_gen dataset: one few-shot example ("dev") and four questions ("test")."""

from typing import Any

ROWS = {
    "dev": [("一周有几天？", "七天")],
    "test": [("中国的首都是哪座城市？", "北京"), ("一年有几个月？", "十二个月"), ("水的化学式是什么？", "H2O"),
             ("太阳从哪个方向升起？", "东方")],
}


def load(**_: Any) -> Any:
    from datasets import Dataset, DatasetDict

    return DatasetDict({split: Dataset.from_list([{"question": q, "answer": a} for q, a in rows])
                        for split, rows in ROWS.items()})
