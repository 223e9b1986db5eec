"""The CLI's one rule for bad input: ``mmpref <job>: <message>`` on stderr, exit 2, no traceback; bugs keep theirs.

Covers ``main``'s catch-all (every library error class shares :class:`mmpref.errors.MmprefError`), the Lightning
``fit`` path (errors raised inside a data module's ``setup`` during ``trainer.fit``), and ``mmpref dpo --pipeline``
with bad Pick-a-Pic Parquet files.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from mmpref import cli
from mmpref.errors import MmprefError, ModelFolderError


def _error_classes() -> dict[str, type]:
    from mmpref.data.io import DataError
    from mmpref.data.media import MediaError
    from mmpref.data.records import RecordError
    from mmpref.feedback.store import StoreError
    from mmpref.recipe import RecipeError
    from mmpref.vision.diffusion.families import PipelineError
    from mmpref.vision.taste.scoring import ScoringError

    return {
        c.__name__: c
        for c in (DataError, MediaError, RecordError, StoreError, RecipeError, PipelineError, ScoringError)
    } | {"ModelFolderError": ModelFolderError}


@pytest.mark.parametrize("name", sorted(_error_classes()))
def test_every_library_error_is_an_mmpref_error_and_a_value_error(name):
    cls = _error_classes()[name]
    assert issubclass(cls, MmprefError) and issubclass(cls, ValueError)


def _fake_job(exc: BaseException):  # noqa: ANN202
    def job(argv):  # noqa: ANN001, ANN202
        raise exc

    return job


def _chained(outer: BaseException, cause: BaseException) -> BaseException:
    try:
        try:
            raise cause
        except BaseException as inner:
            raise outer from inner
    except BaseException as err:  # noqa: BLE001
        return err


INPUT_ERRORS = {
    "mmpref-error": MmprefError("/data/x.jsonl: line 3: field 'label' must be in [0, 1]"),
    "model-folder": ModelFolderError("/m/config.json", "is not valid JSON", "re-train it"),
    "missing-file": FileNotFoundError(2, "No such file or directory", "/data/missing.parquet"),
    "permission": PermissionError(13, "Permission denied", "/data/locked.hdf5"),
    "loader-missing": FileNotFoundError("/m: no diffusion model here (expected unet/config.json)"),
    "wrapped-by-lightning": _chained(RuntimeError("setup failed"), MmprefError("/data/y.parquet: no rows")),
}
BUGS = {
    "key-error": KeyError("label"),
    "runtime": RuntimeError("shape mismatch in matmul"),
    "plain-value-error": ValueError("math domain error"),
    "oserror-without-file": OSError("disk on fire"),
    "bug-while-handling-input-error": _chained(AttributeError("x"), TypeError("y")),
}


@pytest.mark.parametrize("case", sorted(INPUT_ERRORS))
def test_input_errors_exit_2_with_one_line(monkeypatch, checks, case):
    monkeypatch.setattr(cli, "_resolve", lambda target: _fake_job(INPUT_ERRORS[case]))
    result = checks.run_cli(["score", "whatever"])
    checks.assert_clean_error(result, job="score")
    assert result.err.count("mmpref score:") == 1


def test_a_context_is_not_a_cause(monkeypatch):
    """An error raised while handling an input error (a bug in the handler) keeps its traceback."""
    try:
        try:
            raise MmprefError("/data/x: bad")
        except MmprefError:
            raise KeyError("oops")  # noqa: B904
    except KeyError as err:
        bug = err
    monkeypatch.setattr(cli, "_resolve", lambda target: _fake_job(bug))
    with pytest.raises(KeyError):
        cli.main(["score", "x"])


@pytest.mark.parametrize("case", sorted(BUGS))
def test_bugs_keep_their_traceback(monkeypatch, case):
    monkeypatch.setattr(cli, "_resolve", lambda target: _fake_job(BUGS[case]))
    with pytest.raises(type(BUGS[case])):
        cli.main(["score", "x"])


# --- mmpref fit: errors raised in a data module's setup, inside trainer.fit ----------------------------------------


def _manifest_cases(tmp: Path) -> dict[str, bytes]:
    vec = json.dumps([0.1, 0.2, 0.3, 0.4])
    good = f'{{"type": "pair", "id": "p1", "a": {vec}, "b": {vec}, "label": 1}}'
    return {
        "empty": b"",
        "only-blank-lines": b"\n\n   \n",
        "only-comments": b"# nothing here\n# at all\n",
        "not-json": b"a,b,label\n1,2,1\n",
        "truncated-line": good[: len(good) // 2].encode(),
        "json-array-line": b"[1, 2, 3]\n",
        "label-nan": good.replace('"label": 1', '"label": NaN').encode(),
        "label-text": good.replace('"label": 1', '"label": "yes"').encode(),
        "vector-with-text": good.replace("0.1", '"x"').encode(),
        "ragged-vectors": good.replace(vec, "[0.1]", 1).encode(),
        "latin-1": good.replace("p1", "p\u00e9").encode("latin-1"),
        "utf-16": good.encode("utf-16"),
        "nul-bytes": b"\x00" * 64,
        "binary-png": b"\x89PNG\r\n\x1a\n" + bytes(100),
        "deep-nesting": b"[" * 50_000 + b"]" * 50_000,
        "duplicate-ids": (good + "\n" + good).encode(),
    }


FIT_RECIPE = """
trainer:
  max_epochs: 1
  accelerator: cpu
  logger: false
  enable_checkpointing: false
  enable_progress_bar: false
  enable_model_summary: false
  default_root_dir: {root}
model:
  class_path: mmpref.reward.RewardModelSystem
  init_args:
    loss: bradley_terry
    scorer:
      class_path: mmpref.reward.MLPScorer
      init_args:
        in_features: 4
        hidden: [8]
data:
  class_path: mmpref.reward.datamodule.ManifestFeatureDataModule
  init_args:
    train: {train}
    batch_size: 4
"""

MANIFEST_CASES = sorted(_manifest_cases(Path()))
FIT_MANIFEST_CASES = ["empty", "label-nan", "not-json", "utf-16"]  # one per class; the reader sees them all


@pytest.mark.parametrize("case", MANIFEST_CASES)
def test_manifest_reader_refuses_naming_the_file(tmp_path, case):
    from mmpref.data import DataError, read_jsonl_manifest
    from mmpref.reward.datamodule import ManifestFeatureDataModule

    manifest = tmp_path / f"{case}.jsonl"
    manifest.write_bytes(_manifest_cases(tmp_path)[case])
    with pytest.raises(DataError, match=case):
        read_jsonl_manifest(manifest)
        ManifestFeatureDataModule(manifest).setup("fit")  # duplicate ids etc. that the records allow: the module


@pytest.mark.parametrize("case", FIT_MANIFEST_CASES)
def test_fit_with_a_bad_manifest_exits_2_naming_it(tmp_path, checks, case):
    manifest = tmp_path / f"{case}.jsonl"
    manifest.write_bytes(_manifest_cases(tmp_path)[case])
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(FIT_RECIPE.format(root=tmp_path / "runs", train=manifest))
    before = checks.snapshot(tmp_path)
    result = checks.run_cli(["fit", "--config", recipe])
    checks.assert_clean_error(result, manifest.name, job="fit")
    checks.assert_unchanged(before, tmp_path)


def test_fit_with_a_missing_manifest_exits_2(tmp_path, checks):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(FIT_RECIPE.format(root=tmp_path / "runs", train=tmp_path / "nowhere.jsonl"))
    result = checks.run_cli(["fit", "--config", recipe])
    checks.assert_clean_error(result, "nowhere.jsonl", job="fit")


def _pickapic_frames() -> dict[str, object]:
    import pandas as pd
    from PIL import Image

    png = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 10)).save(png, format="PNG")
    img = png.getvalue()
    row = {"caption": "c", "jpg_0": img, "jpg_1": img, "label_0": 1.0, "user_id": "u1"}
    return {
        "no-rows": pd.DataFrame({k: pd.Series([], dtype=object) for k in row}),
        "missing-columns": pd.DataFrame([{"caption": "c", "label_0": 1.0}]),
        "label-nan": pd.DataFrame([row | {"label_0": float("nan")}]),
        "label-out-of-range": pd.DataFrame([row | {"label_0": 3.0}]),
        "image-garbage": pd.DataFrame([row | {"jpg_1": b"not an image at all"}]),
        "image-truncated": pd.DataFrame([row | {"jpg_0": img[: len(img) // 2]}]),
        "image-number": pd.DataFrame([row | {"jpg_0": 7}]),
        "all-ties": pd.DataFrame([row | {"label_0": 0.5}] * 3),
        "no-user": pd.DataFrame([row | {"user_id": None}]),
    }


RAW_PARQUET = {"zero-bytes": b"", "garbage": b"PAR1 but not really", "csv-text": b"caption,jpg_0\nx,y\n"}
PARQUET_CASES = sorted(_pickapic_frames()) + sorted(RAW_PARQUET)


def _write_parquet(path: Path, case: str) -> None:
    if case in RAW_PARQUET:
        path.write_bytes(RAW_PARQUET[case])
    else:
        _pickapic_frames()[case].to_parquet(path)


TASTE_RECIPE = """
trainer:
  max_epochs: 1
  accelerator: cpu
  logger: false
  enable_checkpointing: false
  enable_progress_bar: false
  default_root_dir: {root}
model:
  class_path: mmpref.vision.taste.system.PersonalTasteSystem
  init_args:
    model:
      class_path: mmpref.vision.taste.model.PersonalTasteModel
      init_args:
        embedding_dim: 1280
        num_users: 1
data:
  class_path: mmpref.vision.taste.files.TasteFilesDataModule
  init_args:
    pairs: {pairs}
    ties: drop
    cache_dir: {root}/cache
"""


@pytest.mark.parametrize("case", [c for c in PARQUET_CASES if c != "no-user"])
def test_pickapic_reader_refuses_naming_the_file(tmp_path, case):
    from mmpref.data import DataError, read_pickapic_parquet
    from mmpref.vision.diffusion.data import iter_pickapic

    pairs = tmp_path / f"{case}.parquet"
    _write_parquet(pairs, case)
    with pytest.raises(DataError, match=case):
        read_pickapic_parquet(pairs, ties="drop")
    if case.startswith("image-"):
        return  # the streaming reader leaves images to the latent cache, which names the row (DPO cases below)
    with pytest.raises(DataError, match=case):  # the streaming reader of `mmpref dpo --pipeline`
        list(iter_pickapic(pairs, ties="drop"))


@pytest.mark.parametrize("case", ["no-rows", "image-garbage", "no-user", "zero-bytes"])
def test_fit_with_bad_taste_files_exits_2_naming_them(tmp_path, checks, case):
    pairs = tmp_path / f"{case}.parquet"
    _write_parquet(pairs, case)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(TASTE_RECIPE.format(root=tmp_path / "runs", pairs=pairs))
    before = checks.snapshot(tmp_path)
    result = checks.run_cli(["fit", "--config", recipe])
    checks.assert_clean_error(result, pairs.name, job="fit")
    checks.assert_unchanged(before, tmp_path)


# --- mmpref dpo --pipeline DIR --pairs BAD.parquet -------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory) -> Path:
    pytest.importorskip("diffusers")
    from mmpref.vision.diffusion.tiny import tiny_sd_pipeline

    folder = tmp_path_factory.mktemp("pipe") / "tiny-sd"
    tiny_sd_pipeline(seed=0).save_pretrained(folder)
    return folder


DPO_CASES = ["all-ties", "garbage", "image-truncated", "label-nan", "no-rows"]


@pytest.mark.parametrize("case", DPO_CASES)
def test_dpo_pipeline_with_bad_pairs_exits_2(tmp_path, tiny_pipeline, checks, case):
    pairs = tmp_path / f"{case}.parquet"
    _write_parquet(pairs, case)
    out = tmp_path / "lora"
    out.mkdir()
    (out / "pytorch_lora_weights.safetensors").write_bytes(b"previous run")
    before = checks.snapshot(tmp_path)
    args = ["dpo", "--pipeline", tiny_pipeline, "--pairs", pairs, "--ties", "drop", "--out", out, "--steps", "1"]
    result = checks.run_cli(args)
    checks.assert_clean_error(result, pairs.name, job="dpo")
    checks.assert_unchanged(before, tmp_path)


def test_fit_with_a_data_module_that_refuses_its_arguments_exits_2(tmp_path, checks):
    """jsonargparse re-raises what ``__init__`` raised as its own ValueError: a recipe error, not a traceback."""
    recipe = tmp_path / "recipe.yaml"
    text = TASTE_RECIPE.format(root=tmp_path / "runs", pairs="null")
    recipe.write_text(text.replace("    ties: drop\n", ""))
    result = checks.run_cli(["fit", "--config", recipe])
    checks.assert_clean_error(result, "give pairs", job="fit")


@pytest.mark.parametrize(
    "change",
    [
        ("mmpref.reward.datamodule.ManifestFeatureDataModule", "mmpref.reward.NoSuchModule"),
        ("batch_size: 4", "batch_size: four"),
        ("in_features: 4", "in_features: [4, 4]"),
    ],
    ids=["unknown-class", "wrong-type", "list-for-int"],
)
def test_fit_with_a_recipe_jsonargparse_refuses_exits_2_without_traceback(tmp_path, checks, change):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(FIT_RECIPE.format(root=tmp_path / "runs", train=tmp_path / "x.jsonl").replace(*change))
    result = checks.run_cli(["fit", "--config", recipe])
    assert result.code == 2 and "Traceback" not in result.err
    assert "error" in result.err.lower()


PIPELINE_DAMAGE = {
    "model_index.json:not-json": ("model_index.json", b"{StableDiffusionPipeline"),
    "model_index.json:latin-1": ("model_index.json", '{"_class_name": "\xe9"}'.encode("latin-1")),
    "model_index.json:array": ("model_index.json", b"[1, 2]"),
    "unet-config:truncated": ("unet/config.json", None),
    "unet-weights:truncated": ("unet/diffusion_pytorch_model.safetensors", None),
    "vae-weights:garbage": ("vae/diffusion_pytorch_model.safetensors", bytes(range(256)) * 4),
}


@pytest.mark.parametrize("case", sorted(PIPELINE_DAMAGE))
def test_dpo_with_a_damaged_pipeline_folder_exits_2_naming_the_file(tmp_path, tiny_pipeline, checks, case):
    import shutil

    folder = tmp_path / "pipe"
    shutil.copytree(tiny_pipeline, folder)
    name, data = PIPELINE_DAMAGE[case]
    target = folder / name
    target.write_bytes(data if data is not None else target.read_bytes()[: target.stat().st_size // 2])
    _write_parquet(tmp_path / "pairs.parquet", "label-nan")  # never reached: the folder is checked first
    out = tmp_path / "lora"
    args = ["dpo", "--pipeline", folder, "--pairs", tmp_path / "pairs.parquet", "--ties", "drop", "--out", out]
    result = checks.run_cli(args)
    checks.assert_clean_error(result, Path(name).name, job="dpo")
    assert not out.exists()
