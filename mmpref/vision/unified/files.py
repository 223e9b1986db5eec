"""A unified reward model on disk: ``config.json`` + ``model.safetensors``, checked before anything is built.

The folder names the image encoder its embeddings come from (``encoder_id``, as a personal taste model folder does),
so a scorer can rebuild the whole path from pixels to per-dimension scores
(:func:`mmpref.vision.diffusion.rewards.load_reward`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mmpref.data.io import atomic_write
from mmpref.vision.unified.model import UnifiedRewardModel

UNIFIED_FORMAT = "mmpref-unified-reward-1"
_REBUILD = (
    "re-train the model and write it with mmpref.vision.unified.files.save_unified_model(), or copy the folder again"
)


def save_unified_model(model: UnifiedRewardModel, encoder_id: str, folder: str | Path) -> Path:
    """Write ``model`` (its trunk, heads and dimension names) and the encoder id it was trained on, atomically."""
    from safetensors.torch import save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    first = model.trunk.project[1]
    config = {
        "format": UNIFIED_FORMAT,
        "embedding_dim": first.in_features,
        "hidden": first.out_features,
        "dimensions": list(model.dimensions),
        "pooling": model.trunk.pooling,
        "encoder_id": encoder_id,
    }
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_write(folder / "model.safetensors", "wb") as handle:
        handle.write(save(state))
    with atomic_write(folder / "config.json", "w") as handle:
        json.dump(config, handle, indent=1)
    return folder


def load_unified_model(folder: str | Path) -> tuple[UnifiedRewardModel, dict]:
    """Read a folder written by :func:`save_unified_model`; returns the model (eval mode) and its config.

    Raises:
        FileNotFoundError: the folder or one of its two files is missing.
        ModelFolderError: a damaged file or fields that disagree with the weights, naming the file and the fix.
    """
    from mmpref.errors import ModelFolderError
    from mmpref.modelfiles import check_shapes, int_field, load_safetensors, read_json_object, require_files

    folder = require_files(folder, ("config.json", "model.safetensors"), "a unified reward model", _REBUILD)
    config_path = folder / "config.json"
    config = read_json_object(config_path, _REBUILD)
    if config.get("format") != UNIFIED_FORMAT:
        raise ModelFolderError(
            config_path, f"field 'format' is {config.get('format')!r}, expected {UNIFIED_FORMAT!r}", _REBUILD
        )
    for name in ("encoder_id", "pooling"):
        if not isinstance(config.get(name), str) or not config[name]:
            raise ModelFolderError(config_path, f"field {name!r} = {config.get(name)!r}, expected a name", _REBUILD)
    dimensions = config.get("dimensions")
    if not isinstance(dimensions, list) or not dimensions or not all(isinstance(d, str) for d in dimensions):
        raise ModelFolderError(config_path, f"field 'dimensions' = {dimensions!r}, expected a list of names", _REBUILD)
    dim, hidden = (int_field(config, config_path, k, _REBUILD) for k in ("embedding_dim", "hidden"))
    try:
        with torch.device("meta"):  # shapes only: a wrong config cannot allocate a huge model before the check
            expected = {
                k: tuple(v.shape)
                for k, v in UnifiedRewardModel(dim, dimensions, hidden, config["pooling"]).state_dict().items()
            }
    except ValueError as err:  # bad pooling name, repeated dimensions
        raise ModelFolderError(config_path, str(err), _REBUILD) from None
    state = load_safetensors(folder / "model.safetensors", _REBUILD)
    reason = f"the config ({config_path}) and the weights come from different models; {_REBUILD}"
    check_shapes(folder / "model.safetensors", state, expected, reason)
    model = UnifiedRewardModel(dim, dimensions, hidden, config["pooling"])
    model.load_state_dict(state)
    return model.eval(), config
