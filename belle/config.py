"""Typed configs: dataclasses loaded from YAML, overridden by `key=value` arguments, validated once.

A job's config is a dataclass whose fields are plain values or nested dataclasses (one per concern).
`load_config(TrainConfig, "run.yaml", ["lora.r=16", "output_dir=runs/a"])` reads the file, applies
the overrides in order, converts every value to its field's type, and then calls `problems()` on each
nested dataclass that defines it. Every problem found, unknown keys with the nearest valid key
included, is raised together in one `ConfigError`.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from belle.data.outputs import write_text_atomic

T = TypeVar("T")


class ConfigError(ValueError):
    """One or more problems in a config, one per line."""

    def __init__(self, problems: list[str], source: str = "config"):
        self.problems = problems
        super().__init__(f"{source}: {len(problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in problems))


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> T:
    """Build `cls` from an optional YAML file and `key=value` overrides (dotted keys for nesting)."""
    source = str(path) if path else "config"
    problems: list[str] = []
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise ConfigError([f"cannot read YAML: not UTF-8 (byte 0x{e.object[e.start]:02x} at offset {e.start})"],
                              source) from None
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError([f"cannot read YAML: {e}"], source) from e
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(["the top level must be a mapping of keys to values"], source)
        raw = loaded or {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            problems.append(f"override {item!r} is not of the form key=value")
            continue
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as e:
            problems.append(f"override {item!r}: the value is not valid YAML ({getattr(e, 'problem', e)})")
            continue
        _set_dotted(raw, key.strip(), value if isinstance(value, (dict, list)) else _Override(text.strip(), value))
    config = _build(cls, raw, "", problems)
    if not problems:
        problems.extend(_validate(config, ""))
    if problems:
        raise ConfigError(problems, source)
    return config


def config_to_dict(config: Any) -> dict[str, Any]:
    """The config as plain YAML-safe values (paths as strings), for saving the resolved config."""

    def plain(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


def save_config(config: Any, path: str | Path) -> None:
    write_text_atomic(Path(path), yaml.safe_dump(config_to_dict(config), allow_unicode=True, sort_keys=False))


def config_keys(cls: type) -> list[str]:
    """Every valid dotted key of a config class, for help text and 'did you mean' hints."""
    keys = []
    for field in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[field.name]
        if dataclasses.is_dataclass(hint):
            keys += [f"{field.name}.{sub}" for sub in config_keys(hint)]
        else:
            keys.append(field.name)
    return keys


@dataclasses.dataclass(frozen=True)
class _Override:
    """A scalar given on the command line: string fields take its `text` as typed (`path=1.10`
    stays "1.10", not the float 1.1); every other field takes the YAML `value`."""

    text: str
    value: Any


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[leaf] = value


def _build(cls: type[T], raw: Any, prefix: str, problems: list[str]) -> T:
    if not isinstance(raw, dict):
        problems.append(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {raw!r}")
        raw = {}
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            problems.append(f"unknown key {prefix + str(key)!r}; " + _suggest(cls, str(key), prefix))
    values = {}
    for name, field in fields.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, raw.get(name, {}), f"{prefix}{name}.", problems)
        elif name in raw:
            values[name] = _convert(raw[name], hint, prefix + name, problems)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            problems.append(f"missing required key {prefix + name!r}")
    try:
        return cls(**values)
    except TypeError:
        return None  # type: ignore[return-value]  # a required key is missing; already reported


def _suggest(cls: type, key: str, prefix: str) -> str:
    """'did you mean ...' for a misspelt key: a close name in the same section, else a key
    elsewhere with exactly this name (`r` -> `lora.r`), else the list of valid keys."""
    names = [f.name for f in dataclasses.fields(cls)]
    nearest = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    if nearest:
        return f"did you mean {prefix + nearest[0]!r}?"
    known = [prefix + k for k in config_keys(cls)]
    nested = [k for k in known if k.rsplit(".", 1)[-1] == key]
    if nested:
        return f"did you mean {nested[0]!r}?"
    return f"valid keys: {', '.join(known)}"


def _is_text(hint: Any) -> bool:
    """True for `str`, `Path` and their `Optional`s."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_is_text(arg) for arg in typing.get_args(hint) if arg is not type(None))
    return hint in (str, Path)


def _convert(value: Any, hint: Any, key: str, problems: list[str]) -> Any:
    """Convert a YAML value to `hint`, or record why it cannot be."""
    if isinstance(value, _Override):
        value = value.text if _is_text(hint) and value.value is not None else value.value
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(value, inner, key, problems)
    if origin is Literal:
        if value in args:
            return value
        problems.append(f"{key}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (list, tuple):
        items = value if isinstance(value, list) else [value] if isinstance(value, str) else None
        if items is None:
            problems.append(f"{key}: expected a list, got {value!r}")
            return value
        converted = [_convert(v, args[0], f"{key}[{i}]", problems) for i, v in enumerate(items)]
        return tuple(converted) if origin is tuple else converted
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{key}: expected a mapping, got {value!r}")
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        problems.append(f"{key}: expected true or false, got {value!r}")
        return value
    if hint in (int, float):
        if isinstance(value, str):
            value = _yaml11_number(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{key}: expected a number, got {value!r}")
            return value
        if hint is int and value != int(value):
            problems.append(f"{key}: expected a whole number, got {value!r}")
            return value
        return hint(value)
    if hint in (str, Path):
        if isinstance(value, (dict, list)) or value is None:
            problems.append(f"{key}: expected a string, got {value!r}")
            return value
        return hint(value)
    return value


def _yaml11_number(text: str) -> Any:
    """`1e-3` as a number: PyYAML follows YAML 1.1, which reads exponents without a dot as strings."""
    try:
        return float(text)
    except ValueError:
        return text


def _validate(config: Any, prefix: str) -> list[str]:
    problems = []
    check = getattr(config, "problems", None)
    if callable(check):
        problems += [f"{prefix}{p}" if prefix else p for p in check()]
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            problems += _validate(value, f"{prefix}{field.name}.")
    return problems
