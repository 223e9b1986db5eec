"""Recipes of mmpref's own jobs, read by jsonargparse: ``--config recipe.yaml``, ``--FIELD VALUE``, ``--print_config``.

``mmpref pbrl``, ``peeling``, ``regret``, ``cpl`` and ``pearl`` each describe their settings with one dataclass (the
recipe schema). :func:`job_parser` gives a jsonargparse parser of its fields, the same machinery LightningCLI uses for
``mmpref fit``: YAML recipes (``--config``, repeatable, later files and options win), one option per field
(``--seed 3``; nested dataclasses such as the Trainer settings are dotted groups, ``--trainer.accelerator cpu``),
``--print_config`` and ``--help`` with each field's docstring line. :func:`parse_job` parses a command line and builds
the dataclass.

jsonargparse checks names and types; its messages do not say where a value came from nor which names were meant, so
every problem is raised as one :class:`RecipeError` naming the source (the recipe file or the command-line option),
the field and the fix: unknown fields and options (with the closest valid names, from the recipe files before parsing
and from the command line), missing required fields, values of the wrong type, and whatever the dataclass's own
``__post_init__`` checks raise.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import re
import sys
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from mmpref.errors import MmprefError

T = TypeVar("T")
_INTERNAL = {"help", "config", "print_config"}


class RecipeError(MmprefError):
    """A recipe or override that does not fit its job's settings; the message names the source, field and fix."""


def job_parser(schema: type, prog: str, description: str | None = None):
    """A jsonargparse parser of ``schema``'s fields plus ``--config`` and ``--print_config``.

    A job adds its own options (``--out``...) to the returned parser with ``add_argument``.
    """
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog=prog, description=description, exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile, help=f"a YAML recipe: fields of {schema.__name__}")
    parser.add_class_arguments(schema, None, fail_untyped=True)
    return parser


def parse_job(parser: Any, schema: type[T], argv: Sequence[str]) -> tuple[T, argparse.Namespace] | None:
    """Parse ``argv`` with a :func:`job_parser` and build ``schema``; ``None`` after ``--help`` or ``--print_config``.

    Returns:
        The recipe dataclass and the job's other options (``out``...) as an ``argparse.Namespace``.

    Raises:
        RecipeError: naming the recipe file or the option, the field and the fix.
    """
    argv = list(argv)
    leaves = {a.dest for a in parser._actions if a.dest not in _INTERNAL and not _is_group(a)}
    origins = _origins(parser, argv, leaves)
    try:
        namespace = parser.parse_args(argv)
    except SystemExit as exit_:  # --help and --print_config print and exit 0
        if exit_.code in (0, None):
            return None
        raise
    except argparse.ArgumentError as err:
        raise _translate(str(err), schema, origins) from None
    built = parser.instantiate(namespace)  # nested dataclasses (the Trainer settings...) are built here
    names = {f.name for f in dataclasses.fields(schema) if f.init}
    try:
        config = schema(**{name: built[name] for name in names})
    except (TypeError, ValueError) as err:
        sources = sorted(set(origins.values())) or ["the defaults"]
        raise RecipeError(f"{', '.join(sources)}: {err}") from None
    extras = {key: built[key] for key in leaves if key.partition(".")[0] not in names}
    return config, argparse.Namespace(**extras)


def run_job(
    prog: str,
    schema: type[T],
    argv: Sequence[str],
    body: Callable[[T, argparse.Namespace], int],
    options: dict[str, dict[str, Any]] | None = None,
    description: str | None = None,
    hidden: Sequence[str] = (),
) -> int:
    """Parse a job's command line, then run ``body(config, options)``; a :class:`RecipeError` exits 2 with one line.

    Args:
        prog: the job's name in messages, e.g. ``"mmpref regret"``.
        schema: the recipe dataclass.
        argv: the command line after the job's name.
        body: the job itself; its input errors (:func:`blame`) also exit 2.
        options: the job's own options beyond the recipe, ``{"--out": {"default": None, "help": ...}}``.
        description: the ``--help`` text.
        hidden: recipe fields the job fills in itself: left out of ``--help`` and the usage line.
    """
    parser = job_parser(schema, prog, description)
    for action in parser._actions:  # argparse has no public way to hide an action once added
        if action.dest in hidden:
            action.help = argparse.SUPPRESS
    for name, settings in (options or {}).items():
        parser.add_argument(name, **settings)
    try:
        parsed = parse_job(parser, schema, argv)
        return 0 if parsed is None else body(*parsed)  # None: --help or --print_config printed
    except RecipeError as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return 2


def out_option(default: str) -> dict[str, dict[str, Any]]:
    """The ``--out`` option every job has: its output folder."""
    return {"--out": {"default": None, "help": f"output folder (default {default})"}}


@contextlib.contextmanager
def blame(field: str) -> Iterator[None]:
    """Re-raise a ``ValueError`` of the block (bad task name, missing file...) as a ``RecipeError`` naming ``field``.

    Jobs wrap the steps that read their inputs, so that bad input exits with one message and code 2, while errors of
    the training itself still surface as tracebacks.
    """
    try:
        yield
    except RecipeError:
        raise
    except ValueError as err:  # DataError is a ValueError too
        raise RecipeError(f"field {field!r}: {err}") from None


def require_at_least(config: Any, names: Sequence[str], minimum: int = 1) -> None:
    """Raise ``ValueError`` naming the first of the fields ``names`` of ``config`` that is below ``minimum``.

    The shared check of the recipe dataclasses' ``__post_init__`` (counts, steps, sizes...).
    """
    for name in names:
        value = getattr(config, name)
        if value < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value}")


# --- where each value came from, checked before jsonargparse sees it ----------------------------------------------


def _is_group(action: Any) -> bool:
    return type(action).__name__ == "_ActionConfigLoad"  # ``--trainer`` itself: a group, its fields are leaves


def _origins(parser: Any, argv: list[str], leaves: set[str]) -> dict[str, str]:
    """``{field: "recipe FILE" or "--field"}`` for every field set, in argv order; unknown names raise here."""
    options = {s for a in parser._actions for s in a.option_strings}
    origins: dict[str, str] = {}
    for i, token in enumerate(argv):
        if not token.startswith("--"):
            continue
        name, sep, value = token.partition("=")
        if name not in options:
            fields = {o[2:] for o in options - {"-h", "--help", "--print_config"}}
            close = [f"--{c}" for c in _closest(name[2:], fields)]
            hint = f" (did you mean {' or '.join(close)}?)" if close else ""
            raise RecipeError(f"command line: unknown option {name}{hint}; see --help for the fields")
        if name == "--config":
            path = value if sep else (argv[i + 1] if i + 1 < len(argv) else None)
            if path is not None:
                for key in _recipe_keys(Path(path), leaves, parser):
                    origins[key] = f"recipe {path}"
        elif name[2:] in leaves or name[2:].replace("-", "_") in leaves:
            origins[name[2:].replace("-", "_")] = name
    return origins


def _recipe_keys(path: Path, leaves: set[str], parser: Any) -> list[str]:
    """The dotted field names a recipe file sets; a missing, unreadable or unknown one raises ``RecipeError``."""
    import yaml

    if not path.is_file():
        raise RecipeError(f"recipe {path}: file not found; check the path")
    try:
        settings = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise RecipeError(f"recipe {path}: not valid YAML ({err}); fix the line it names") from None
    if settings is None:
        return []
    if not isinstance(settings, dict):
        raise RecipeError(f"recipe {path}: must be a mapping of 'field: value' lines, got a {type(settings).__name__}")
    keys, unknown = [], []
    _flatten(settings, "", leaves, keys, unknown)
    if unknown:
        fields = sorted({k.partition(".")[0] for k in leaves})
        problems = []
        for name in unknown:
            close = _closest(name, leaves)
            hint = f" (did you mean {' or '.join(close)}?)" if close else ""
            problems.append(f"unknown field {name!r}{hint}")
        raise RecipeError(f"recipe {path}: {'; '.join(problems)}. Valid fields: {', '.join(fields)}")
    return keys


def _closest(name: str, known: set[str]) -> list[str]:
    """The (at most two) valid names nearest ``name``, compared within its dotted group (``trainer.x``: trainer's)."""
    group, _, last = name.rpartition(".")
    siblings = {k.rpartition(".")[2] for k in known if k.rpartition(".")[0] == group}
    return [f"{group}.{c}" if group else c for c in difflib.get_close_matches(last, sorted(siblings), n=2)]


def _flatten(settings: dict, prefix: str, leaves: set[str], keys: list[str], unknown: list[str]) -> None:
    for name, value in settings.items():
        key = f"{prefix}{name}"
        if key in leaves:
            keys.append(key)
        elif isinstance(value, dict) and any(leaf.startswith(f"{key}.") for leaf in leaves):
            _flatten(value, f"{key}.", leaves, keys, unknown)
        else:
            unknown.append(key)


# --- jsonargparse's messages, said again with the source and the expected type ------------------------------------


def _translate(message: str, schema: type, origins: dict[str, str]) -> RecipeError:
    required = re.match(r"the following arguments are required: (.+)", message)
    if required:
        names = [n.strip() for n in required.group(1).split(",")]
        example = " ".join(f"--{n} ..." for n in names)
        return RecipeError(f"missing required field(s) {', '.join(names)}: set them in the recipe or {example}")
    key = re.search(r'Parser key "([^"]+)"', message)
    if key is None:
        return RecipeError(message.strip().replace("\n", " "))
    name = key.group(1)
    got = re.findall(r"Got value: (.*)", message)
    value = got[-1].strip() if got else "?"
    hint = _field_hint(schema, name)
    expected = _describe(hint) if hint is not None else "another value"
    origin = origins.get(name, "recipe")
    if name == "config":
        return RecipeError(f"--config: {message.split(':', 1)[-1].strip()}")
    return RecipeError(f"{origin}: field {name!r} expects {expected}, got {value!r}")


def _field_hint(schema: type, dotted: str) -> Any:
    """The annotation of ``a.b`` in ``schema`` (nested dataclasses), or None."""
    hint: Any = schema
    for part in dotted.split("."):
        try:
            hints = typing.get_type_hints(hint)
        except Exception:  # not a dataclass, or an annotation that does not resolve at run time
            return None
        if part not in hints:
            return None
        hint = hints[part]
    return hint


def _example(hint: Any) -> str:
    """One or two example values of ``hint`` as written in a list on the command line."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Literal:
        return ", ".join(str(a) for a in args[:2])
    return {int: "1, 2", float: "0.5, 1.0", str: "a, b", bool: "true, false"}.get(hint, "...")


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in args)
    if origin is typing.Literal:
        return f"one of {', '.join(map(repr, args))}"
    if hint is bool:
        return "true or false"
    if hint is int:
        return "an integer"
    if hint is float:
        return "a number"
    if hint is str:
        return "a string"
    if origin in (list, tuple, Sequence) or hint in (list, tuple):
        same = len(args) == 1 or (len(args) == 2 and args[1] is Ellipsis)  # list[X], Sequence[X], tuple[X, ...]
        if same:  # the element type says what goes in: "a list, each one of 'surf', 'rune', ..."
            return f"a list, each {_describe(args[0])}, e.g. [{_example(args[0])}]"
        return "a list, e.g. [1, 2]"
    if (origin or hint) is dict:
        return "a mapping {key: value}"
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
