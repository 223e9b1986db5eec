"""Model folders: taste models (``mmpref score`` / ``enroll``), user profiles, digits diffusion models
(``mmpref sample`` / ``dpo-eval``) and the digit classifier, each damaged file by file.

Every case must give one error naming the damaged file and how to rebuild it (``ModelFolderError``, or
``FileNotFoundError`` for a missing file), and the CLI jobs exit 2 with it and no traceback.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from mmpref.errors import ModelFolderError
from mmpref.vision.taste.model import CodePrior, PersonalTasteModel, load_taste_model, save_taste_model

RANK = 3


@pytest.fixture
def taste_model(tmp_path) -> Path:
    torch.manual_seed(0)
    model = PersonalTasteModel(1280, num_users=2, rank=RANK, hidden=8).eval()
    return save_taste_model(
        model, CodePrior(np.zeros(RANK), np.eye(RANK)), "efficientnet-lite0-imagenet", tmp_path / "m"
    )


# --- damage generators: each takes a file's bytes (or the folder) and breaks it one way -------------------------


def _truncations(data: bytes) -> dict[str, bytes]:
    return {f"cut-{f}": data[: int(len(data) * f)] for f in (0.0, 0.05, 0.5, 0.9, 0.999)} | {
        "cut-header": data[:7],
        "flipped-header-length": (2**62).to_bytes(8, "little") + data[8:],
        "garbage": bytes(range(256)) * 8,
        "text": b"this is not a model\n",
    }


def _json_damage(data: bytes) -> dict[str, bytes]:
    text = data.decode()
    return {
        "empty": b"",
        "truncated": data[: len(data) // 2],
        "not-json": b"embedding_dim: 1280\n",
        "array": b"[1, 2, 3]",
        "string": b'"config"',
        "utf16": text.encode("utf-16"),
        "latin1-garbage": b'{"format": "\xe9\xff"}',
        "deep": b"[" * 100_000 + b"]" * 100_000,
    }


def _config_field_damage() -> dict[str, Callable[[dict], None]]:
    cases: dict[str, Callable[[dict], None]] = {}
    for field in ("embedding_dim", "num_users", "rank", "hidden"):
        for bad in (None, "8", 2.5, True, 0, -3, [8], 10**9):
            cases[f"{field}={bad!r}"] = lambda c, f=field, b=bad: c.__setitem__(f, b)
        cases[f"{field}-missing"] = lambda c, f=field: c.pop(f)
    cases["format-wrong"] = lambda c: c.__setitem__("format", "mmpref-personal-taste-0")
    cases["format-missing"] = lambda c: c.pop("format")
    cases["encoder-missing"] = lambda c: c.pop("encoder_id")
    cases["encoder-number"] = lambda c: c.__setitem__("encoder_id", 7)
    return cases


def _prior_field_damage() -> dict[str, Callable[[dict], None]]:
    return {
        "mean-missing": lambda p: p.pop("mean"),
        "mean-short": lambda p: p.__setitem__("mean", [0.0] * (RANK - 1)),
        "mean-text": lambda p: p.__setitem__("mean", ["a"] * RANK),
        "mean-nan": lambda p: p.__setitem__("mean", [float("nan")] * RANK),
        "mean-ragged": lambda p: p.__setitem__("mean", [[0.0], [0.0, 1.0], 0.0]),
        "cov-missing": lambda p: p.pop("covariance"),
        "cov-shape": lambda p: p.__setitem__("covariance", np.eye(RANK + 1).tolist()),
        "cov-inf": lambda p: p.__setitem__("covariance", (np.eye(RANK) * np.inf).tolist()),
        "cov-not-pd": lambda p: p.__setitem__("covariance", (-np.eye(RANK)).tolist()),
        "cov-asymmetric": lambda p: p.__setitem__(
            "covariance", (np.eye(RANK) + np.triu(np.ones((RANK, RANK)), 1)).tolist()
        ),
        "temperature-zero": lambda p: p.__setitem__("temperature", 0),
        "temperature-text": lambda p: p.__setitem__("temperature", "1.0"),
        "temperature-nan": lambda p: p.__setitem__("temperature", float("nan")),
    }


def _weights_damage() -> dict[str, Callable[[Path], None]]:
    from safetensors.torch import load_file, save_file

    def rewrite(change: Callable[[dict], None]) -> Callable[[Path], None]:
        def apply(path: Path) -> None:
            state = load_file(str(path))
            change(state)
            save_file(state, str(path))

        return apply

    def nan(state: dict) -> None:
        state["basis"][0, 0] = float("nan")

    return {
        "weights-nan": rewrite(nan),
        "weights-inf": rewrite(lambda s: s["population"].fill_(float("inf"))),
        "weights-missing-tensor": rewrite(lambda s: s.pop("basis")),
        "weights-extra-tensor": rewrite(lambda s: s.__setitem__("extra", torch.zeros(2))),
        "weights-wrong-shape": rewrite(lambda s: s.__setitem__("basis", torch.zeros(8, RANK + 1))),
        "weights-from-other-model": rewrite(lambda s: s.__setitem__("user_codes.weight", torch.zeros(5, RANK))),
    }


def _cases() -> list[tuple[str, str, Callable[[Path], None]]]:
    cases: list[tuple[str, str, Callable[[Path], None]]] = []
    for name in ("model.safetensors",):
        for kind in _truncations(b"\x00" * 64):
            cases.append((f"{name}:{kind}", name, lambda p, k=kind: p.write_bytes(_truncations(p.read_bytes())[k])))
    for name in ("config.json", "prior.json"):
        for kind in _json_damage(b"{}"):
            cases.append((f"{name}:{kind}", name, lambda p, k=kind: p.write_bytes(_json_damage(p.read_bytes())[k])))
    for kind, change in _config_field_damage().items():
        cases.append((f"config.json:{kind}", "config.json", lambda p, c=change: _edit_json(p, c)))
    for kind, change in _prior_field_damage().items():
        cases.append((f"prior.json:{kind}", "prior.json", lambda p, c=change: _edit_json(p, c)))
    for kind, apply in _weights_damage().items():
        cases.append((f"model.safetensors:{kind}", "model.safetensors", apply))
    return cases


def _edit_json(path: Path, change: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


TASTE_CASES = _cases()


@pytest.mark.parametrize(("case", "file", "damage"), TASTE_CASES, ids=[c[0] for c in TASTE_CASES])
def test_damaged_taste_model_names_the_file_and_the_fix(taste_model, case, file, damage):
    damage(taste_model / file)
    with pytest.raises(ModelFolderError) as info:
        load_taste_model(taste_model)
    message = str(info.value)
    assert str(taste_model / file) in message, message
    assert "re-train" in message or "rebuild" in message


@pytest.mark.parametrize("missing", ["config.json", "model.safetensors", "prior.json"])
def test_missing_files_are_listed(taste_model, missing):
    (taste_model / missing).unlink()
    with pytest.raises(FileNotFoundError, match=f"missing {missing}"):
        load_taste_model(taste_model)


def test_a_file_instead_of_a_folder(taste_model):
    with pytest.raises(ModelFolderError, match="is a file"):
        load_taste_model(taste_model / "config.json")


@pytest.mark.parametrize("case", ["model.safetensors:cut-0.5", "config.json:not-json", "prior.json:mean-nan"])
@pytest.mark.parametrize("job", ["score", "enroll"])
def test_score_and_enroll_exit_2_naming_the_file(tmp_path, taste_model, checks, case, job):
    _, file, damage = next(c for c in TASTE_CASES if c[0] == case)
    damage(taste_model / file)
    from PIL import Image

    for name, colour in (("x", (200, 10, 10)), ("y", (10, 10, 200))):
        Image.new("RGB", (16, 16), colour).save(tmp_path / f"{name}.png")
    labels = tmp_path / "labels.jsonl"
    labels.write_text('{"type": "pair", "id": "p1", "a": "x.png", "b": "y.png", "label": 1}\n')
    before = checks.snapshot(tmp_path)
    if job == "score":
        result = checks.run_cli(["score", tmp_path, "--model", taste_model])
    else:
        result = checks.run_cli(["enroll", labels, "--model", taste_model, "--user", "ann"])
    checks.assert_clean_error(result, file, job=job)
    checks.assert_unchanged(before, tmp_path)


PROFILE_DAMAGE = {
    "not-json": b"{user_id: ann",
    "empty": b"",
    "code-short": json.dumps({"user_id": "ann", "code": [0.0], "covariance": np.eye(RANK).tolist(), "num_labels": 2}),
    "code-nan": json.dumps(
        {"user_id": "ann", "code": [float("nan")] * RANK, "covariance": np.eye(RANK).tolist(), "num_labels": 2}
    ),
    "cov-shape": json.dumps({"user_id": "ann", "code": [0.0] * RANK, "covariance": [[1.0]], "num_labels": 2}),
    "missing-field": json.dumps({"user_id": "ann", "code": [0.0] * RANK}),
}


@pytest.mark.parametrize("kind", sorted(PROFILE_DAMAGE))
def test_damaged_user_profile_exits_2_naming_it(tmp_path, taste_model, checks, kind):
    from PIL import Image

    (taste_model / "users").mkdir()
    data = PROFILE_DAMAGE[kind]
    (taste_model / "users" / "ann.json").write_bytes(data if isinstance(data, bytes) else data.encode())
    (tmp_path / "media").mkdir()
    Image.new("RGB", (16, 16), (200, 10, 10)).save(tmp_path / "media" / "red.png")
    result = checks.run_cli(["score", tmp_path / "media", "--model", taste_model, "--user", "ann"])
    checks.assert_clean_error(result, "ann.json", job="score")


# --- digits diffusion model folders (mmpref sample / dpo-eval) -----------------------------------------------------


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory) -> Path:
    from mmpref.vision.diffusion.base import DEFAULT_ASSET

    if not (DEFAULT_ASSET / "unet" / "config.json").is_file():
        pytest.skip("the shipped digits model is not in this checkout")
    return DEFAULT_ASSET


DIFFUSION_FILES = {
    "unet/config.json": "json",
    "scheduler/scheduler_config.json": "json",
    "mmpref.json": "json",
    "unet/diffusion_pytorch_model.safetensors": "weights",
    "prompt_embeddings.safetensors": "weights",
}
DIFFUSION_CASES = [
    (f"{file}:{kind}", file, kind)
    for file, what in DIFFUSION_FILES.items()
    for kind in (
        ["empty", "truncated", "not-json", "array", "latin1-garbage"]
        if what == "json"
        else ["cut-0.05", "cut-0.5", "cut-0.999", "cut-header", "garbage", "text"]
    )
] + [("scheduler/scheduler_config.json:missing", "scheduler/scheduler_config.json", "missing")]


@pytest.mark.parametrize(("case", "file", "kind"), DIFFUSION_CASES, ids=[c[0] for c in DIFFUSION_CASES])
def test_damaged_diffusion_folder_sample_exits_2(tmp_path, digits_model, checks, case, file, kind):
    folder = tmp_path / "model"
    shutil.copytree(digits_model, folder)
    path = folder / file
    if kind == "missing":
        path.unlink()
    else:
        data = path.read_bytes()
        damaged = _json_damage(data) if DIFFUSION_FILES[file] == "json" else _truncations(data)
        path.write_bytes(damaged[kind])
    out = tmp_path / "grid.png"
    out.write_bytes(b"previous grid")
    before = checks.snapshot(tmp_path)
    result = checks.run_cli(["sample", "a handwritten 7", "--model", folder, "--n", "1", "--steps", "2", "--out", out])
    checks.assert_clean_error(result, Path(file).name, job="sample")
    assert "rebuild" in result.err or "re-train" in result.err
    checks.assert_unchanged(before, tmp_path)


def test_missing_diffusion_folder_exits_2(tmp_path, checks):
    result = checks.run_cli(["sample", "a 7", "--model", tmp_path / "nothing", "--out", tmp_path / "g.png"])
    checks.assert_clean_error(result, "nothing", job="sample")


@pytest.mark.parametrize("kind", ["cut-0.5", "garbage", "weights-nan"])
def test_damaged_classifier(tmp_path, digits_model, kind):
    from safetensors.torch import load_file, save_file

    from mmpref.vision.diffusion.classifier import load_classifier

    path = tmp_path / "classifier.safetensors"
    shutil.copyfile(digits_model / "classifier.safetensors", path)
    if kind == "weights-nan":
        state = load_file(str(path))
        first = next(iter(state))
        state[first] = torch.full_like(state[first], float("nan"))
        save_file(state, str(path))
    else:
        path.write_bytes(_truncations(path.read_bytes())[kind])
    with pytest.raises(ModelFolderError, match="classifier.safetensors"):
        load_classifier(path)


# --- control: a policy file (load_policy) and a PbRL checkpoint (mmpref pbrl --resume) -----------------------------


def _policy_file(tmp_path: Path) -> Path:
    from mmpref.control.policies import GaussianPolicy, save_policy

    torch.manual_seed(0)
    return save_policy(GaussianPolicy(4, 2, hidden=8), tmp_path / "policy.safetensors")


@pytest.mark.parametrize("kind", ["cut-0.05", "cut-0.5", "cut-header", "garbage", "text", "nan", "config-not-json"])
def test_damaged_policy_file(tmp_path, kind):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from mmpref.control.policies import load_policy
    from mmpref.data import DataError

    path = _policy_file(tmp_path)
    if kind in ("nan", "config-not-json"):
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata())
        state = load_file(str(path))
        if kind == "nan":
            first = next(iter(state))
            state[first] = torch.full_like(state[first], float("nan"))
        else:
            metadata["config"] = "{hidden: (8,"
        save_file(state, str(path), metadata=metadata)
    else:
        path.write_bytes(_truncations(path.read_bytes())[kind])
    with pytest.raises(DataError) as info:
        load_policy(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("kind", ["empty", "garbage", "truncated-pickle", "not-a-dict"])
def test_pbrl_resume_from_a_damaged_checkpoint_exits_2(tmp_path, checks, kind):
    import pickle

    checkpoint = tmp_path / "run" / "checkpoint"
    checkpoint.mkdir(parents=True)
    payload = pickle.dumps({"config": {"task": "button-press-v3"}, "steps": 3})
    data = {
        "empty": b"",
        "garbage": bytes(range(256)),
        "truncated-pickle": payload[:-5],
        "not-a-dict": pickle.dumps(7),
    }
    (checkpoint / "loop.pkl").write_bytes(data[kind])
    before = checks.snapshot(tmp_path)
    result = checks.run_cli(["pbrl", "--resume", "--out", tmp_path / "run"])
    checks.assert_clean_error(result, "loop.pkl", job="pbrl")
    assert "without --resume" in result.err
    checks.assert_unchanged(before, tmp_path)
