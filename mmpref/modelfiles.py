"""Reading the files of a saved model folder so that any damage is one :class:`ModelFolderError`.

A model folder (a personal taste model, a digits diffusion model, a policy file) is made of JSON files and
safetensors files. A truncated download, a half-copied folder or a hand-edited config must not surface as a
``JSONDecodeError``, a ``SafetensorError`` or a shape mismatch deep inside ``load_state_dict``: each reader here
checks its file and raises one error naming the file, what is wrong, and how to rebuild it (``fix``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mmpref.errors import ModelFolderError


def require_files(folder: str | Path, names: tuple[str, ...], what: str, fix: str) -> Path:
    """``folder`` as a path once it is a folder holding every file in ``names``; else a ``FileNotFoundError``.

    ``FileNotFoundError`` (not :class:`ModelFolderError`) because the files are absent, not damaged; the CLI treats
    both as input errors. The message names the folder, the missing files and ``fix``.
    """
    folder = Path(folder)
    if folder.is_file():
        raise ModelFolderError(folder, f"is a file, not {what} folder", fix)
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: not {what} folder (missing {', '.join(missing)}); {fix}")
    return folder


def read_json_object(path: str | Path, fix: str) -> dict[str, Any]:
    """The JSON object in ``path``; unreadable, non-UTF-8, non-JSON or non-object content is a ModelFolderError."""
    value = read_json(path, fix)
    if not isinstance(value, dict):
        raise ModelFolderError(path, f"holds a JSON {type(value).__name__}, expected an object", fix)
    return value


def read_json(path: str | Path, fix: str) -> Any:
    """The JSON value in ``path``; unreadable, non-UTF-8 or non-JSON content is a ModelFolderError."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ModelFolderError(path, f"cannot be read ({err.strerror or err})", fix) from None
    if not raw.strip():
        raise ModelFolderError(path, "is empty (0 bytes of JSON)", fix)
    try:
        value = json.loads(raw.decode("utf-8-sig"), parse_constant=lambda c: float(c))
    except UnicodeDecodeError as err:
        raise ModelFolderError(path, f"is not UTF-8 text (byte {err.start})", fix) from None
    except json.JSONDecodeError as err:
        raise ModelFolderError(
            path, f"is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})", fix
        ) from None
    except RecursionError:
        raise ModelFolderError(path, "is not valid JSON (nested too deeply)", fix) from None
    return value


def int_field(config: Mapping[str, Any], path: str | Path, name: str, fix: str, low: int = 1) -> int:
    """``config[name]`` as an int ``>= low``; missing, non-integer (``true``, ``2.5``, ``"8"``) or less: an error."""
    if name not in config:
        raise ModelFolderError(path, f"field {name!r} is missing", fix)
    value = config[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ModelFolderError(path, f"field {name!r} = {value!r}, expected an integer >= {low}", fix)
    return value


def float_list(config: Mapping[str, Any], path: str | Path, name: str, shape: tuple[int, ...], fix: str) -> Any:
    """``config[name]`` as a finite float64 array of ``shape``; anything else is an error naming the field."""
    import numpy as np

    if name not in config:
        raise ModelFolderError(path, f"field {name!r} is missing", fix)
    try:
        array = np.asarray(config[name], dtype=np.float64)
    except (TypeError, ValueError):
        raise ModelFolderError(path, f"field {name!r} is not an array of numbers", fix) from None
    if array.shape != shape:
        raise ModelFolderError(path, f"field {name!r} has shape {list(array.shape)}, expected {list(shape)}", fix)
    if not np.isfinite(array).all():
        raise ModelFolderError(path, f"field {name!r} holds NaN or infinite values", fix)
    return array


def positive_float(config: Mapping[str, Any], path: str | Path, name: str, default: float, fix: str) -> float:
    """``config.get(name, default)`` as a finite float > 0."""
    value = config.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ModelFolderError(path, f"field {name!r} = {value!r}, expected a finite number > 0", fix)
    return float(value)


def load_safetensors(path: str | Path, fix: str) -> dict[str, Any]:
    """The tensors of a safetensors file; truncated or corrupt files and NaN/inf weights are a ModelFolderError."""
    import torch
    from safetensors.torch import load_file

    path = Path(path)
    try:
        state = load_file(str(path))
    except Exception as err:  # safetensors raises SafetensorError / OSError / ValueError for damaged files
        reason = str(err).splitlines()[0][:200] if str(err) else err.__class__.__name__
        raise ModelFolderError(
            path, f"is not a readable safetensors file, truncated or corrupt ({reason})", fix
        ) from None
    for name, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ModelFolderError(path, f"tensor {name!r} holds NaN or infinite weights", fix)
    return state


def check_shapes(
    path: str | Path, state: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]], fix: str
) -> None:
    """Every tensor of ``expected`` is in ``state`` with that shape, and ``state`` holds nothing else."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = ([f"missing tensors {missing[:5]}"] if missing else []) + (
            [f"unexpected tensors {unexpected[:5]}"] if unexpected else []
        )
        raise ModelFolderError(path, "does not hold this model's weights (" + "; ".join(parts) + ")", fix)
    for name, shape in expected.items():
        if tuple(state[name].shape) != tuple(shape):
            raise ModelFolderError(
                path, f"tensor {name!r} has shape {list(state[name].shape)}, the config says {list(shape)}", fix
            )


def check_safetensors_header(path: str | Path, fix: str) -> None:
    """Open only the header of a safetensors file: a truncated or corrupt file fails here, no weights are read."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt"):
            pass
    except Exception as err:  # SafetensorError, OSError
        reason = str(err).splitlines()[0][:200] if str(err) else err.__class__.__name__
        raise ModelFolderError(
            path, f"is not a readable safetensors file, truncated or corrupt ({reason})", fix
        ) from None


def check_folder_files(folder: str | Path, fix: str, max_files: int = 10_000) -> None:
    """Every ``*.json`` and ``*.safetensors`` file under ``folder`` parses (JSON) or has a sound header (weights)."""
    for count, path in enumerate(sorted(Path(folder).rglob("*"))):
        if count >= max_files:
            break
        if path.is_file() and path.suffix == ".json":
            read_json(path, fix)
        elif path.is_file() and path.suffix == ".safetensors":
            check_safetensors_header(path, fix)
