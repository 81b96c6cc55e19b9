"""The `belle` command: one subcommand per job, each job a list of verbs.

A verb is a plain typed function. Its signature is the command line: positional parameters become
positional arguments, keyword-only parameters become `--flags` (required when they have no default),
`bool` flags are switches, `Literal[...]` gives choices, `list[T]` takes one or more values, and a
trailing underscore is dropped (`from_` is `--from`, a verb `eval_` is `eval`). Help text comes from
the docstring's `Args:`.

A keyword-only parameter typed as a dataclass (options shared by several verbs: the LLM endpoint,
`belle.generation.EngineOptions`, `SamplingOptions`) is a flag group: one flag per field, named
`--PARAM-FIELD` (`judge: LLMOptions` gives `--judge-model`), or plain `--FIELD` for a parameter
named `llm` or a dataclass that sets `FLAT = True` (a group every verb spells the same way). A
field's help is its attribute docstring, the string literal on the line right under the field (as
in `belle.train.config` and `belle.generation.SamplingOptions`); functions keep `Args:`. The
parameter's default, when it is an instance, gives the fields' defaults for that verb
(`sampling: SamplingOptions = EVAL_SAMPLING`).

What the user typed wrong ends as one line per problem on stderr and exit status 2, never a
traceback: a `UsageError` the verb raises, the `problems()` of a flag group (checked before the
verb runs; lines of a prefixed group start with `--PARAM-...:`), a `DataError` (a bad input file)
or a `ConfigError`, and an `OSError` about a path the user named. Any other exception is a bug and
keeps its traceback.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import errno
import functools
import importlib
import inspect
import logging
import os
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Protocol, Sequence, runtime_checkable

from belle.records import DataError

# job name -> module with `VERBS` (a list of functions) or `main(argv)`.
JOBS = {
    "model": "belle.models.cli",
    "models": "belle.models.cli",
    "data": "belle.data.cli",
    "train": "belle.train.cli",
    "chat": "belle.chat.cli",
    "serve": "belle.chat.serve",
    "vocab": "belle.vocab.cli",
    "eval": "belle.eval.cli",
    "gptq": "belle.gptq.cli",
    "generate": "belle.generate.cli",
    "export": "belle.export.cli",
}


class UsageError(Exception):
    """Bad input from the user: printed as one clear message, exit code 2, no traceback."""


@runtime_checkable
class Checked(Protocol):
    """A flag group that can say what is wrong with it: `problems()` is empty when it is usable."""

    def problems(self) -> list[str]: ...


def _user_errors() -> tuple[type[Exception], ...]:
    """The exceptions that mean bad user input, not a bug: the message is for the user."""
    from belle.config import ConfigError  # belle.config reads YAML: loaded only when a verb fails

    return UsageError, DataError, ConfigError


# OS errors that mean a path the user named is missing, of the wrong kind or out of reach.
_PATH_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)
_PATH_ERRNOS = (errno.EROFS, errno.ENAMETOOLONG)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: belle JOB ...\n\njobs:\n" + "\n".join(f"  {name}" for name in sorted(set(JOBS))))
        return 0 if argv else 2
    job, rest = argv[0], argv[1:]
    if job not in JOBS:
        print(f"belle: unknown job {job!r}; choose from {', '.join(sorted(JOBS))}", file=sys.stderr)
        return 2
    module = importlib.import_module(JOBS[job])
    return module.main(rest, prog=f"belle {job}")


def job_parsers() -> dict[str, argparse.ArgumentParser]:
    """Every command line of every job, `"belle JOB"` or `"belle JOB VERB"` -> its parser.

    A job module has `VERBS` (functions), `COMMAND` (one function) or `config_parser(prog)` (a job
    configured by a YAML file and `key=value` overrides), or several of them. For the CLI reference
    and the check that the commands in the docs parse.
    """
    parsers = {}
    for job, module_name in sorted(JOBS.items()):
        module = importlib.import_module(module_name)
        if hasattr(module, "COMMAND"):
            parsers[f"belle {job}"] = command_parser(module.COMMAND, f"belle {job}")
        if hasattr(module, "config_parser"):
            parsers[f"belle {job}"] = module.config_parser(f"belle {job}")
        for verb in getattr(module, "VERBS", []):
            parsers[f"belle {job} {verb_name(verb)}"] = command_parser(verb, f"belle {job} {verb_name(verb)}")
    return parsers


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # torchao, imported by peft and transformers' quantizers, warns about torch internals on import.
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    # httpx logs every request at INFO: Gradio's start-up checks, each call to a chat server.
    for name in ("httpx", "httpx2"):  # openai 3 ships its HTTP client as httpx2
        logging.getLogger(name).setLevel(logging.WARNING)


def run_verbs(verbs: Sequence[Callable[..., Any]], argv: Sequence[str] | None, prog: str) -> int:
    """Parse `argv` as `VERB [args]`, call the verb, and turn `UsageError` into a message and exit 2."""
    args = vars(verbs_parser(verbs, prog).parse_args(argv))
    args.pop("verb")
    return _call(args.pop("_verb"), args, prog)


def run_command(command: Callable[..., Any], argv: Sequence[str] | None, prog: str) -> int:
    """Like `run_verbs` for a job that is one command: `argv` holds its arguments alone."""
    return _call(command, vars(command_parser(command, prog).parse_args(argv)), prog)


def verbs_parser(verbs: Sequence[Callable[..., Any]], prog: str) -> argparse.ArgumentParser:
    """The parser of a job made of verbs: one subparser per verb, which stores the verb as `_verb`."""
    parser = argparse.ArgumentParser(prog=prog)
    subparsers = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb in verbs:
        doc = inspect.getdoc(verb) or ""
        sub = subparsers.add_parser(verb_name(verb), help=doc.split("\n")[0], **_described(verb))
        _add_parameters(sub, verb, _arg_docs(doc))
        sub.set_defaults(_verb=verb)
    return parser


def command_parser(command: Callable[..., Any], prog: str) -> argparse.ArgumentParser:
    """The parser of one command, built from its signature and docstring."""
    parser = argparse.ArgumentParser(prog=prog, **_described(command))
    _add_parameters(parser, command, _arg_docs(inspect.getdoc(command) or ""))
    return parser


def verb_name(verb: Callable[..., Any]) -> str:
    """A verb's name on the command line: `eval_` is `eval`, `to_text` is `to-text`."""
    return verb.__name__.rstrip("_").replace("_", "-")


def _described(command: Callable[..., Any]) -> dict[str, Any]:
    doc = inspect.getdoc(command) or ""
    return {"description": doc.split("\nArgs:")[0], "formatter_class": argparse.RawDescriptionHelpFormatter}


def _call(command: Callable[..., Any], args: dict[str, Any], prog: str) -> int:
    setup_logging()
    problems = []
    for name, kind in typing.get_type_hints(command).items():
        if dataclasses.is_dataclass(kind):
            args[name] = kind(**{f.name: args.pop(f"{name}.{f.name}") for f in dataclasses.fields(kind)})
            if isinstance(args[name], Checked):
                prefix = "" if _flat(name, kind) else f"--{_flag_name(name)}-...: "
                problems += [prefix + problem for problem in args[name].problems()]
    if problems:
        for problem in problems:
            print(f"{prog}: error: {problem}", file=sys.stderr)
        return 2
    try:
        result = command(**args)
    except OSError as e:
        message = os_error_message(e, args)
        if message is None:
            raise
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2
    except Exception as e:
        if not isinstance(e, _user_errors()):
            raise
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    return result if isinstance(result, int) else 0


def os_error_message(error: OSError, args: dict[str, Any]) -> str | None:
    """`PATH: what is wrong` when `error` is about a path the user named among `args` (values that are
    paths, strings, lists or config dataclasses), else None: then it is a bug and keeps its traceback.
    For jobs that do not run through `_call` (a config-file job catches OSError and asks this)."""
    path = _user_path_of(error, args)
    return None if path is None else _path_problem(error, path)


def _user_path_of(error: OSError, args: dict[str, Any]) -> str | None:
    """The path a user named that `error` is about: an argument, a path inside one, or the folder
    holding one; for a file beside an argument named after it (an output's temporary file, its
    `.stats.json`), the argument. None for any other error: that is a bug in belle and keeps its traceback."""
    if not isinstance(error, _PATH_ERRORS) and error.errno not in _PATH_ERRNOS:
        return None
    named = {os.path.abspath(p) for p in _path_values(args.values())}
    failed = [f for f in (error.filename, error.filename2) if isinstance(f, (str, Path))]
    for filename in failed:
        path = os.path.abspath(filename)
        if any(path in (p, os.path.dirname(p)) or path.startswith(p.rstrip(os.sep) + os.sep) for p in named):
            return str(filename)
    for filename in failed:
        folder, name = os.path.split(os.path.abspath(filename))
        for p in named:
            if os.path.dirname(p) == folder and os.path.basename(p) in name:
                return p
    return None


def _path_problem(error: OSError, path: str) -> str:
    """`PATH: what is wrong`, in words: a file where a folder is needed reads better than `File exists`."""
    if isinstance(error, (FileExistsError, NotADirectoryError)):
        file = next((p for p in (path, *map(str, Path(path).parents)) if os.path.isfile(p)), None)
        if file:
            return f"{file}: a file where a folder is needed"
    if isinstance(error, IsADirectoryError):
        return f"{path}: a folder where a file is needed"
    return f"{path}: {error.strerror or error}"


def _path_values(values: Any) -> Iterator[str]:
    """Every string or path among argument values, inside lists and option dataclasses too."""
    for value in values:
        if isinstance(value, (str, Path)) and str(value):
            yield str(value)
        elif isinstance(value, (list, tuple)):
            yield from _path_values(value)
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            yield from _path_values(vars(value).values())


def _arg_docs(doc: str) -> dict[str, str]:
    """Map parameter name -> help text from a Google-style `Args:` section."""
    docs: dict[str, str] = {}
    if "\nArgs:" not in doc:
        return docs
    name = None
    for line in doc.split("\nArgs:", 1)[1].splitlines():
        match = re.match(r"^\s{4}(\w+)(?: \([^)]*\))?:\s*(.*)$", line)
        if match:
            name, docs[match[1]] = match[1], match[2]
        elif name and line.startswith(" " * 8):
            docs[name] += " " + line.strip()
        elif line.strip() and not line.startswith(" "):
            break
    return docs


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """A dataclass's field name -> the docstring written under the field (its own and its bases')."""
    docs: dict[str, str] = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        try:
            (node,) = ast.parse(inspect.cleandoc("\n" + inspect.getsource(klass))).body
        except (OSError, TypeError):  # no source file: a class made at run time
            continue
        for field, after in zip(node.body, node.body[1:]):
            if (isinstance(field, ast.AnnAssign) and isinstance(field.target, ast.Name)
                    and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)):
                docs[field.target.id] = " ".join(str(after.value.value).split())
    return docs


def _add_parameters(parser: argparse.ArgumentParser, verb: Callable[..., Any], docs: dict[str, str]) -> None:
    hints = typing.get_type_hints(verb)
    for param in inspect.signature(verb).parameters.values():
        if dataclasses.is_dataclass(hints[param.name]):
            _add_dataclass(parser, param.name, hints[param.name], param.default)
            continue
        _add_parameter(parser, param, hints[param.name], docs.get(param.name, ""), dest=param.name)


def _add_parameter(parser: Any, param: inspect.Parameter, hint: Any, help_text: str, dest: str) -> None:
    kind, choices, is_list = _unwrap(hint)
    if param.default not in (inspect.Parameter.empty, None) and not isinstance(param.default, bool):
        help_text += f" (default: {param.default})"
    options: dict[str, Any] = {"help": help_text.replace("%", "%%")}  # argparse %-formats help text
    if param.kind is inspect.Parameter.KEYWORD_ONLY:
        flag = "--" + param.name.rstrip("_").replace("_", "-")
        options["dest"] = dest
        if param.default is inspect.Parameter.empty:
            options["required"] = True
        else:
            options["default"] = param.default
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
            parser.add_argument(flag, **options)
            return
        names = [flag]
    else:
        names = [param.name]
        if param.default is not inspect.Parameter.empty:
            options.update(nargs="?", default=param.default)
    options["type"] = kind
    if dest != param.name and not choices:
        options["metavar"] = param.name.upper()
    if choices:
        options["choices"] = choices
    if is_list and param.kind is inspect.Parameter.KEYWORD_ONLY:
        options.update(nargs="+", action="extend")  # `--x a b` and `--x a --x b` both give [a, b]
    elif is_list:
        options["nargs"] = "+" if param.default is inspect.Parameter.empty else "*"
    parser.add_argument(*names, **options)


def _add_dataclass(parser: argparse.ArgumentParser, name: str, options: type, default: Any = None) -> None:
    """One flag per field of the dataclass `options`, stored as `NAME.FIELD` for `_call` to regroup.
    `default`, an instance of `options`, gives the fields' defaults instead of the class."""
    docs = field_docs(options)
    hints = typing.get_type_hints(options)
    prefix = "" if _flat(name, options) else name + "_"
    summary = (inspect.getdoc(options) or "").split("\n")[0].rstrip(".")
    group = parser.add_argument_group(summary if not prefix else f"{name}: {summary}")
    for field in dataclasses.fields(options):
        if isinstance(default, options):
            value = getattr(default, field.name)
        elif field.default is not dataclasses.MISSING:
            value = field.default
        else:
            value = inspect.Parameter.empty
        parameter = inspect.Parameter(prefix + field.name, inspect.Parameter.KEYWORD_ONLY, default=value)
        _add_parameter(group, parameter, hints[field.name], docs.get(field.name, ""), dest=f"{name}.{field.name}")


def _flat(name: str, options: type) -> bool:
    """True when the group's flags are plain `--FIELD`, not `--NAME-FIELD`."""
    return name == "llm" or getattr(options, "FLAT", False)


def _flag_name(name: str) -> str:
    return name.rstrip("_").replace("_", "-")


def _unwrap(hint: Any) -> tuple[type, tuple | None, bool]:
    """Reduce a type hint to (element type, choices, is_list); `X | None` counts as `X`."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        (hint,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return _unwrap(hint)
    if origin is list:
        kind, choices, _ = _unwrap(typing.get_args(hint)[0])
        return kind, choices, True
    if origin is Literal:
        choices = typing.get_args(hint)
        return type(choices[0]), choices, False
    if hint is Path:
        return Path, None, False
    return hint, None, False
