"""Typed configs: dataclasses loaded from YAML, overridden by `key=value` arguments, validated once.

A job's config is a dataclass whose fields are plain values or nested dataclasses (one per concern).
`load_config(TrainConfig, "run.yaml", ["lora.r=16", "output_dir=runs/a"])` reads the file, applies
the overrides in order, converts every value to its field's type, and then calls `problems()` on each
nested dataclass that defines it. Every problem found, unknown keys with the nearest valid key
included, is raised together in one `ConfigError`.

Other tools' names for a key (`learning_rate` for `training.learning_rate`) are `Alias`es a job
passes in; they are accepted at the top level of the file and on the command line, and each one used
is logged once. `parse_config_args` reads a config job's command line: `[CONFIG.yaml] [key=value |
--key value | --key=value | --flag ...]`.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import logging
import types
import typing
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence, TypeVar

import yaml

from belle.cli import UsageError
from belle.records import write_text_atomic

T = TypeVar("T")

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """One or more problems in a config, one per line."""

    def __init__(self, problems: list[str], source: str = "config"):
        self.problems = problems
        super().__init__(f"{source}: {len(problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in problems))


@dataclasses.dataclass(frozen=True)
class Alias:
    """Another tool's name for a config key (`num_train_epochs` for `training.epochs`).

    key: the dotted key it stands for.
    convert: turns the value given under the other name into the key's value; returns None when that
        value asks for nothing belle needs to set (`fp16: false`), raises ValueError with the reason
        for a value it cannot take. Without it the value is used as given.
    switch: a bare `--NAME` on the command line means `NAME=true` (for a converting alias; a plain
        one is a switch when its key is a bool).
    """

    key: str
    convert: Callable[[Any], Any] | None = None
    switch: bool = False


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                aliases: Mapping[str, Alias] | None = None) -> T:
    """Build `cls` from an optional YAML file and `key=value` overrides (dotted keys for nesting);
    `aliases` maps other tools' top-level names to keys of `cls`."""
    source = str(path) if path else "config"
    aliases = aliases or {}
    problems: list[str] = []
    notes: dict[str, str] = {}
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
    setters: dict[str, str] = {}
    for name in [k for k in raw if k in aliases]:
        _apply_alias(raw, name, raw.pop(name), aliases[name], problems, notes, setters)
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
        key, value = key.strip(), value if isinstance(value, (dict, list)) else _Override(text.strip(), value)
        if key in aliases:
            _apply_alias(raw, key, value, aliases[key], problems, notes)
        else:
            _set_dotted(raw, key, value)
    for note in notes.values():
        log.info(note)
    config = _build(cls, raw, "", problems, functools.partial(_unknown_key, cls, aliases))
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
    return list(_key_hints(cls))


def parse_config_args(parser: argparse.ArgumentParser, argv: Sequence[str], cls: type,
                      aliases: Mapping[str, Alias] | None = None) -> argparse.Namespace:
    """Read a config job's command line: `parser`'s namespace, with `config` (a Path or None) and
    `overrides` (`key=value` strings in the order given) for `load_config`.

    The first positional argument is the config when it has no `=` and ends in .yaml/.yml or names a
    file; `--config FILE` says the same. `key=value`, `--key value` and `--key=value` are overrides
    (a `--key`'s dashes read as underscores: `--num-train-epochs 3`); a bare `--key` is `key=true`
    for a bool key or a switch alias. The parser's own options (`--config`, `--help`, ...) go to it.
    Raises UsageError for a second config or a `--key` without its value.
    """
    aliases = aliases or {}
    own = parser._option_string_actions  # option string -> argparse action: what argparse parses itself
    switches = {key for key, hint in _key_hints(cls).items() if hint is bool}
    switches |= {name for name, alias in aliases.items()
                 if alias.switch or (alias.convert is None and alias.key in switches)}
    passed: list[str] = []
    positionals: list[str] = []
    overrides: list[str] = []
    config_file = None
    tokens = list(argv)
    while tokens:
        token = tokens.pop(0)
        if token == "--":
            positionals += tokens
            overrides += tokens
            break
        flag, eq, inline = token.partition("=")
        if flag in own:
            passed.append(token)
            if not eq and own[flag].nargs != 0 and tokens and not tokens[0].startswith("-"):
                passed.append(tokens.pop(0))
        elif not token.startswith("--"):
            if not positionals and _names_config(token):
                config_file = token
            else:
                overrides.append(token)
            positionals.append(token)
        elif eq:
            overrides.append(f"{flag[2:].replace('-', '_')}={inline}")
        else:
            key = flag[2:].replace("-", "_")
            if key in switches:
                overrides.append(f"{key}={tokens.pop(0) if tokens and _is_bool(tokens[0]) else 'true'}")
            elif tokens and not tokens[0].startswith("--"):
                overrides.append(f"{key}={tokens.pop(0)}")
            else:
                raise UsageError(f"{flag} needs a value: {flag} VALUE, or {key}=VALUE")
    args = parser.parse_args(passed)
    later = [p for p in positionals[1:] if _names_config(p)]
    configs = [config_file] * bool(config_file) + [f"--config {args.config}"] * (args.config is not None) + later
    if len(configs) > 1:
        raise UsageError(f"two configs: {configs[0]} and {configs[1]}; give one")
    if later:
        raise UsageError(f"{later[0]}: the config file comes first: {parser.prog} CONFIG.yaml key=value ...")
    if config_file:
        args.config = Path(config_file)
    args.overrides = overrides
    return args


def _names_config(token: str) -> bool:
    """Whether a positional argument is a config file rather than a `key=value` override."""
    return "=" not in token and (token.endswith((".yaml", ".yml")) or Path(token).is_file())


def _is_bool(text: str) -> bool:
    try:
        return isinstance(yaml.safe_load(text), bool)
    except yaml.YAMLError:
        return False


def _key_hints(cls: type, prefix: str = "") -> dict[str, Any]:
    """Every dotted key of a config class -> its type."""
    hints = typing.get_type_hints(cls)
    keys: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        hint = hints[field.name]
        if dataclasses.is_dataclass(hint):
            keys |= _key_hints(hint, f"{prefix}{field.name}.")
        else:
            keys[prefix + field.name] = hint
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


def _build(cls: type[T], raw: Any, prefix: str, problems: list[str], unknown: Callable[[str, Any], list[str]]) -> T:
    if not isinstance(raw, dict):
        problems.append(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {raw!r}")
        raw = {}
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            problems.extend(unknown(prefix + str(key), raw[key]))
    values = {}
    for name, field in fields.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, raw.get(name, {}), f"{prefix}{name}.", problems, unknown)
        elif name in raw:
            values[name] = _convert(raw[name], hint, prefix + name, problems)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            problems.append(f"missing required key {prefix + name!r}")
    try:
        return cls(**values)
    except TypeError:
        return None  # type: ignore[return-value]  # a required key is missing; already reported


def _unknown_key(root: type, aliases: Mapping[str, Alias], key: str, value: Any) -> list[str]:
    """The problems for an unknown dotted `key` of `root`, each naming the nearest valid key: a close
    name in the same section (a section for a mapping, else a value key), else the key or alias whose
    last part is closest to this one (`r` -> `lora.r`, `lora_rnk` -> alias `lora_rank` -> `lora.r`),
    else the key closest to the whole dotted key. A mapping under an unknown name that is close to no
    section is reported key by key."""
    prefix, _, leaf = key.rpartition(".")
    section = _section(root, prefix)
    if section is not None:
        hints = typing.get_type_hints(section)
        names = [f.name for f in dataclasses.fields(section)
                 if dataclasses.is_dataclass(hints[f.name]) == isinstance(value, dict)]
        nearest = difflib.get_close_matches(leaf, names, n=1, cutoff=0.6)
        if nearest:
            return [_did_you_mean(key, f"{prefix}.{nearest[0]}" if prefix else nearest[0])]
    if isinstance(value, dict) and value:
        return [p for sub, v in value.items() for p in _unknown_key(root, aliases, f"{key}.{sub}", v)]
    keys = config_keys(root)
    by_name: dict[str, str] = {}  # last part of a key, or an alias -> the key
    for known in keys:
        by_name.setdefault(known.rsplit(".", 1)[-1], known)
    for name, alias in aliases.items():
        by_name.setdefault(name, alias.key)
    for candidates, typed in ((by_name, leaf), ({k: k for k in keys}, key)):
        nearest = difflib.get_close_matches(typed, candidates, n=1, cutoff=0.6)
        if nearest:
            return [_did_you_mean(key, candidates[nearest[0]])]
    return [f"unknown key {key!r}; no valid key is close to it (--help lists them)"]


def _section(root: type, prefix: str) -> type | None:
    """The config class at dotted `prefix` of `root` ("" is root), or None when there is none."""
    section = root
    for part in prefix.split(".") if prefix else []:
        hint = typing.get_type_hints(section).get(part)
        if not dataclasses.is_dataclass(hint) or part not in {f.name for f in dataclasses.fields(section)}:
            return None
        section = hint
    return section


def _did_you_mean(key: str, known: str) -> str:
    return f"unknown key {key!r}; did you mean {known!r}?"


def _apply_alias(raw: dict[str, Any], name: str, value: Any, alias: Alias, problems: list[str],
                 notes: dict[str, str], setters: dict[str, str] | None = None) -> None:
    """Set `alias.key` in `raw` from `value`, given as `name`, and note the translation once.

    `setters` (for the YAML file, where no value overrides another) records which name set each
    key, so that two names for one key are reported instead of one silently winning."""
    note = f"{name} is belle's {alias.key}; using it"
    if alias.convert is not None:
        given = value.value if isinstance(value, _Override) else value
        try:
            value = alias.convert(given)
        except ValueError as e:
            problems.append(f"{name}: {e}")
            return
        if value is None:
            notes.setdefault(name, f"{name}={_shown(given)} leaves belle's {alias.key} as it is; ignoring it")
            return
        note = f"{name}={_shown(given)} is belle's {alias.key}={_shown(value)}; using it"
    if setters is not None:
        *parents, leaf = alias.key.split(".")
        node: Any = raw
        for part in parents:
            node = node.get(part, {})
            if not isinstance(node, dict):
                return  # the section is not a mapping: reported when the section is built
        if leaf in node:
            problems.append(f"{name} and {setters.get(alias.key, alias.key)} both set {alias.key}; keep one")
            return
        setters[alias.key] = name
    _set_dotted(raw, alias.key, value)
    notes.setdefault(name, note)


def _shown(value: Any) -> str:
    """A value as it would be typed: true, 3, [q_proj, v_proj]."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(_shown, value)) + "]"
    return str(value)


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
        key_hint, value_hint = args or (Any, Any)
        return {_convert(k, key_hint, f"{key} key {k!r}", problems): _convert(v, value_hint, f"{key}.{k}", problems)
                for k, v in value.items()}
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
