"""Recipes of mmpref's own jobs: a YAML file plus ``--set KEY=VALUE`` overrides, checked against a dataclass.

``mmpref pbrl``, ``peeling``, ``regret``, ``cpl`` and ``pearl`` each describe their settings with one dataclass (the
recipe schema). :func:`load_recipe` reads the YAML mapping, applies the overrides (YAML values, so ``sizes=[30,100]``
and ``reward_updates=null`` work), and builds the dataclass. Every problem raises one :class:`RecipeError` naming
where the value came from (the file or ``--set``), the field, and the fix: unknown fields (with the closest valid
names), missing required fields, values of the wrong type, and whatever the dataclass's own checks raise.

Types are checked from the dataclass's annotations (``int``, ``float``, ``bool``, ``str``, ``Literal``, ``X | None``,
``list``/``tuple``, ``dict``); other annotations pass through unchecked. PyYAML reads ``1e-4`` as a string (YAML 1.1
wants ``1.0e-4``): for ``float`` and ``int`` fields such a string is parsed as the number it spells.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import types
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
_SET = "--set"


class RecipeError(ValueError):
    """A recipe or override that does not fit its job's settings; the message names the source, field and fix."""


def add_recipe_arguments(parser: argparse.ArgumentParser, schema: type | str) -> None:
    """Add the shared ``--config FILE`` and ``--set KEY=VALUE ...`` options of a recipe-driven job.

    ``schema`` is the recipe dataclass, or its dotted name (so that a job can parse its arguments before importing
    heavy modules).
    """
    name = schema if isinstance(schema, str) else f"{schema.__module__}.{schema.__qualname__}"
    parser.add_argument("--config", default=None, help=f"a YAML recipe (fields of {name})")
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="override recipe fields (YAML values)"
    )


def load_recipe(schema: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Build ``schema`` (a dataclass) from the YAML recipe at ``path`` (optional) and ``KEY=VALUE`` overrides.

    Raises:
        RecipeError: naming the file or ``--set``, the field and the fix.
    """
    settings: dict[str, Any] = {}
    origins: dict[str, str] = {}
    if path is not None:
        settings = read_recipe(path)
        origins = dict.fromkeys(settings, f"recipe {path}")
    for key, value in parse_overrides(overrides).items():
        settings[key] = value
        origins[key] = f"{_SET} {key}"
    return build_config(schema, settings, origins)


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


def read_recipe(path: str | Path) -> dict[str, Any]:
    """The ``field: value`` mapping of a YAML recipe (an empty file is an empty mapping)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe {path}: file not found; check the path")
    try:
        settings = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise RecipeError(f"recipe {path}: not valid YAML ({err}); fix the line it names") from None
    if settings is None:
        return {}
    if not isinstance(settings, dict):
        raise RecipeError(f"recipe {path}: must be a mapping of 'field: value' lines, got a {type(settings).__name__}")
    return settings


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["steps=300", "sizes=[30,100]"]`` → ``{"steps": 300, "sizes": [30, 100]}`` (values read as YAML)."""
    import yaml

    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise RecipeError(f"{_SET} {item!r}: expected KEY=VALUE, e.g. {_SET} seed=1")
        try:
            parsed[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise RecipeError(f"{_SET} {item!r}: the value is not valid YAML ({err}); quote it") from None
    return parsed


def build_config(schema: type[T], settings: dict[str, Any], origins: dict[str, str] | None = None) -> T:
    """``schema(**settings)`` after checking names and types; ``origins`` says where each value came from."""
    origins = origins or {}
    known = {f.name: f for f in dataclasses.fields(schema) if f.init}
    _check_names(schema, settings, known, origins)
    hints = _type_hints(schema)
    values = {
        name: _coerce(value, hints[name], name, origins.get(name, "recipe")) if name in hints else value
        for name, value in settings.items()
    }
    try:
        return schema(**values)
    except (TypeError, ValueError) as err:
        sources = sorted(set(origins.values())) or ["the defaults"]
        raise RecipeError(f"{', '.join(sources)}: {err}") from None


def _check_names(schema: type, settings: dict[str, Any], known: dict[str, Any], origins: dict[str, str]) -> None:
    unknown = [name for name in settings if name not in known]
    if unknown:
        problems = []
        for name in unknown:
            close = difflib.get_close_matches(name, known, n=2, cutoff=0.6)
            hint = f" (did you mean {' or '.join(close)}?)" if close else ""
            problems.append(f"{origins.get(name, 'recipe')}: unknown field {name!r}{hint}")
        raise RecipeError(f"{'; '.join(problems)}. Valid fields of {schema.__name__}: {', '.join(known)}")
    missing = [
        name
        for name, f in known.items()
        if name not in settings and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        example = " ".join(f"{name}=..." for name in missing)
        raise RecipeError(
            f"missing required field(s) {', '.join(missing)}: set them in the recipe or {_SET} {example}"
        )


def _type_hints(schema: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(schema)
    except Exception:  # an annotation that cannot be resolved at run time: leave the types to the dataclass
        return {}


def _coerce(value: Any, hint: Any, name: str, origin: str) -> Any:
    """``value`` checked against the annotation ``hint`` (numbers spelled as strings are parsed)."""
    try:
        return _convert(value, hint)
    except _Mismatch as err:
        raise RecipeError(f"{origin}: field {name!r} expects {err}, got {value!r}") from None


class _Mismatch(Exception):
    """Internal: a value does not fit an annotation; the message describes the expected type."""


def _describe(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _convert(value: Any, hint: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or isinstance(hint, TypeVar):
        return value
    if origin in (typing.Union, types.UnionType):
        return _convert_union(value, args)
    if origin is typing.Literal:
        if value not in args:
            raise _Mismatch(f"one of {', '.join(map(repr, args))}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise _Mismatch("true or false")
        return value
    if hint is int:
        return _to_int(value)
    if hint is float:
        return _to_float(value)
    if hint is str:
        if not isinstance(value, str):
            raise _Mismatch("a string (quote it)")
        return value
    if origin in (list, tuple, Sequence) or hint in (list, tuple):
        return _convert_sequence(value, origin or hint, args)
    if (origin or hint) is dict and not isinstance(value, dict):
        raise _Mismatch("a mapping {key: value}")
    return value


def _convert_union(value: Any, args: tuple[Any, ...]) -> Any:
    if value is None:
        if type(None) in args:
            return None
        raise _Mismatch(" or ".join(_describe(a) for a in args))
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _convert(value, arg)
        except _Mismatch:
            pass
    raise _Mismatch(" or ".join(_describe(a) for a in args))


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise _Mismatch("an integer")
    if isinstance(value, int):
        return value
    try:
        number = _to_float(value)
    except _Mismatch:
        raise _Mismatch("an integer") from None
    if not number.is_integer():
        raise _Mismatch("an integer")
    return int(number)


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise _Mismatch("a number")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise _Mismatch("a number")


def _convert_sequence(value: Any, kind: Any, args: tuple[Any, ...]) -> Any:
    if not isinstance(value, list | tuple):
        raise _Mismatch("a list, e.g. [1, 2]")
    item = args[0] if len(args) == 1 or (len(args) == 2 and args[1] is Ellipsis) else None
    items = [_convert(v, item) for v in value] if item is not None else list(value)
    return tuple(items) if kind is tuple else items
