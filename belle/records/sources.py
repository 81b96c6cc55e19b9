"""Data sources: a file, a folder of .json/.jsonl files, a saved or in-memory `datasets` dataset,
read as `(location, default_id, record)` with `location` as `file:line`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from belle.records.encoding import file_encoding
from belle.records.errors import DataError, EncodingProblem
from belle.records.reading import iter_json_records

DATA_SUFFIXES = (".json", ".jsonl")


def list_data_files(source: str | Path) -> list[Path]:
    """`source` itself if it is a file, else every .json/.jsonl file below it (suffix in any letter
    case: `.JSONL` and `.Json` are read too), sorted."""
    path = Path(source)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in DATA_SUFFIXES)
        if not files:
            raise DataError(f"{path}: no .json or .jsonl files in this folder")
        return files
    raise DataError(f"{path}: no such file or folder")


def is_saved_dataset(source: Any) -> bool:
    """True for a folder written by `datasets.Dataset.save_to_disk`."""
    return isinstance(source, (str, Path)) and (Path(source) / "dataset_info.json").is_file()


def iter_source_records(source: Any) -> Iterator[tuple[str, str, Any]]:
    """Yield `(location, default_id, record)` from a path (file, folder or saved dataset) or a
    `datasets` dataset.

    `location` is `file:line` (or `name:row`); `default_id` is used when a record has no `id`. A
    file named itself that is not UTF-8 (or UTF-16 with a byte-order mark) raises
    `EncodingProblem`; such a file inside a folder is one `Rejection` with the file as location,
    so it is skipped and counted like a bad record (and stops a strict run).
    """
    if is_saved_dataset(source):
        from datasets import load_from_disk

        source = load_from_disk(str(source))
    if isinstance(source, (str, Path)):
        in_folder = Path(source).is_dir()
        for path in list_data_files(source):
            try:
                encoding = file_encoding(path)
            except EncodingProblem as e:
                if not in_folder:
                    raise
                yield str(path), path.stem, e.rejection
                continue
            for line, record in iter_json_records(path, encoding=encoding):
                yield f"{path}:{line}", f"{path.stem}-{line}", record
        return
    name = getattr(getattr(source, "info", None), "dataset_name", None) or "dataset"
    for row, record in enumerate(source, start=1):
        yield f"{name}:{row}", f"{name}-{row}", record


def as_source_list(sources: Any) -> list[Any]:
    """One source (a path or a dataset) or several, as a list."""
    return [sources] if isinstance(sources, (str, Path)) or hasattr(sources, "features") else list(sources)
