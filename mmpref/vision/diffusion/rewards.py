"""mmpref's reward models as on-policy scorers: images ``[N, C, H, W]`` in [−1, 1] → scores ``[N]``, batched, no grad.

One small interface (:class:`RewardScorer`, built by :func:`load_reward` from a path) over the three kinds of
reward model the project trains, so :func:`mmpref.vision.diffusion.train.train_dpo` can tune a generator against any
of them instead of a simulated taste:

* a **personal taste model folder** (``mmpref.vision.taste``) and a user id: s(x, u) = φ(e(x))ᵀ(w₀ + B z_u) with the
  user's enrolled code z_u (no user: the population, z = 0);
* a **unified reward model folder** (:mod:`mmpref.vision.unified.files`) and one of its dimensions;
* a **RewardModelSystem checkpoint** (``.ckpt``, :mod:`mmpref.reward.system`) whose scorer reads flattened pixels
  (``C·S·S`` features: the images are resized to S and given C channels) or image-encoder embeddings (1280:
  EfficientNet-Lite0; 1296: with the 16 colour statistics).

The taste and unified models score embeddings of photos: each image is turned into an RGB picture (grey digits are
repeated over the three channels) and the model's own encoder resizes and normalises it as it does for files.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from mmpref.errors import MmprefError

logger = logging.getLogger(__name__)
IMAGE_REWARD_FORMAT = "mmpref-image-reward-1"
_ENCODER_DIMS = {1280: "efficientnet-lite0-imagenet", 1296: "efficientnet-lite0-imagenet+colour16"}


class RewardError(MmprefError):
    """A reward model that cannot be used as a scorer: the message names the file and the fix."""


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """Images ``[N, C, H, W]`` in [−1, 1] (C = 1 or 3) → RGB PIL images (grey repeated over the channels)."""
    unit = ((images.detach().float().cpu() + 1) / 2).clamp(0, 1)
    if unit.shape[1] == 1:
        unit = unit.expand(-1, 3, -1, -1)
    array = (unit.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    return [Image.fromarray(a, "RGB") for a in array]


def pixel_features(images: torch.Tensor, channels: int, size: int) -> torch.Tensor:
    """Images ``[N, C, H, W]`` → flattened pixels ``[N, channels·size·size]`` (bilinear resize, grey ↔ RGB)."""
    x = images.float()
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    if x.shape[1] != channels:
        x = x.mean(1, keepdim=True).expand(-1, channels, -1, -1)  # RGB → grey, or grey repeated
    return x.reshape(len(x), -1)


class RewardScorer:
    """A reward model as a :data:`mmpref.vision.diffusion.onpolicy.Scorer`: ``scorer(images) → scores [N]``.

    Args:
        features: images ``[n, C, H, W]`` in [−1, 1] → the model's inputs (pixels or embeddings).
        head: those inputs → scores ``[n]``.
        kind: ``"taste"``, ``"unified"`` or ``"checkpoint"``.
        source: the file or folder the model came from.
        detail: what is scored (the user, the dimension, the features), for reports.
        batch_size: images per forward pass.
    """

    def __init__(
        self,
        features: Callable[[torch.Tensor], torch.Tensor],
        head: Callable[[torch.Tensor], torch.Tensor],
        kind: str,
        source: str | Path,
        detail: str = "",
        batch_size: int = 64,
    ):
        self.features, self.head = features, head
        self.kind, self.source, self.detail, self.batch_size = kind, str(source), detail, batch_size

    def describe(self) -> str:
        """One line for reports: kind, source and what is scored."""
        return f"{self.kind} reward {self.source}" + (f" ({self.detail})" if self.detail else "")

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Scores ``[N]`` (float32, on the images' device) of images ``[N, C, H, W]`` in [−1, 1]."""
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"{self.describe()}: expected images [N, 1 or 3, H, W], got {tuple(images.shape)}")
        out = [
            self.head(self.features(images[i : i + self.batch_size])).float().reshape(-1).cpu()
            for i in range(0, len(images), self.batch_size)
        ]
        return (torch.cat(out) if out else torch.zeros(0)).to(images.device)


def _embedder(encoder: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """Images → the encoder's embeddings ``[n, D]`` (through PIL, so the encoder's own preprocessing applies)."""
    return lambda images: torch.from_numpy(np.asarray(encoder.embed_images(to_pil(images)), np.float32))


def _check_encoder(encoder: Any, wanted: str, config_path: Path) -> Any:
    """The given encoder, or the one ``config_path`` names (built by name); a mismatch is a RewardError."""
    from mmpref.vision.taste.features import checked_encoder

    return checked_encoder(encoder, wanted, config_path, RewardError)


def taste_reward(
    folder: str | Path, user: str | None = None, encoder: Any = None, batch_size: int = 64
) -> RewardScorer:
    """A personal taste model folder as a scorer for one enrolled ``user`` (``None``: the population)."""
    from mmpref.vision.taste.scoring import ScoringError, TasteScorer

    try:
        taste = TasteScorer(folder, encoder=encoder)
        profile = taste.profile(user)
    except ScoringError as err:
        raise RewardError(str(err)) from None
    embed = _embedder(_check_encoder(encoder, taste.config["encoder_id"], Path(folder) / "config.json"))
    code = torch.from_numpy(np.asarray(profile.code)).float()
    model = taste.model.eval()
    detail = f"user {user!r}" if user is not None else "population"
    return RewardScorer(embed, lambda emb: model.score(emb, code), "taste", folder, detail, batch_size)


def unified_reward(
    folder: str | Path, dimension: str | None = None, encoder: Any = None, batch_size: int = 64
) -> RewardScorer:
    """A unified reward model folder as a scorer on one of its dimensions (default: its first)."""
    from mmpref.vision.unified.files import load_unified_model

    model, config = load_unified_model(folder)
    dimension = dimension or model.dimensions[0]
    if dimension not in model.dimensions:
        raise RewardError(
            f"{Path(folder) / 'config.json'}: no dimension {dimension!r}; this model scores {model.dimensions}; "
            "pick one of them (--reward-user names the dimension for a unified model)"
        )
    index = model.dimension_index(dimension)
    embed = _embedder(_check_encoder(encoder, config["encoder_id"], Path(folder) / "config.json"))
    return RewardScorer(
        embed, lambda emb: model(emb)[:, index], "unified", folder, f"dimension {dimension!r}", batch_size
    )


def save_reward_checkpoint(
    system: nn.Module, path: str | Path, features: dict[str, Any], scorer: dict[str, Any] | None = None
) -> Path:
    """Write a RewardModelSystem as a Lightning-format checkpoint that also says how images become its inputs.

    Args:
        system: the trained system.
        path: the ``.ckpt`` file (written atomically).
        features: ``{"kind": "pixels", "channels": C, "size": S}`` or ``{"kind": "encoder", "encoder_id": ...}``.
        scorer: ``{"class_path": ..., "init_args": {...}}`` of the scorer network; default: read from an
            :class:`~mmpref.reward.networks.MLPScorer`'s layers.
    """
    import lightning as L

    from mmpref.data.io import atomic_write

    state = {k: v.detach().cpu() for k, v in system.state_dict().items()}
    payload = {
        "state_dict": state,
        "hyper_parameters": dict(getattr(system, "hparams", {})),
        "pytorch-lightning_version": L.__version__,
        "mmpref_reward": {"format": IMAGE_REWARD_FORMAT, "features": dict(features), "scorer": scorer},
    }
    with atomic_write(Path(path), "wb") as handle:
        torch.save(payload, handle)
    return Path(path)


def _mlp_from_state(state: dict[str, torch.Tensor]) -> nn.Module | None:
    """An MLPScorer rebuilt from ``scorer.net.<i>.weight`` shapes (hidden widths, input size), or ``None``."""
    from mmpref.reward.networks import MLPScorer

    weights = sorted(
        ((int(k.split(".")[2]), v) for k, v in state.items() if k.startswith("scorer.net.") and k.endswith(".weight")),
        key=lambda kv: kv[0],
    )
    if not weights or any(v.dim() != 2 for _, v in weights) or weights[-1][1].shape[0] != 1:
        return None
    return MLPScorer(int(weights[0][1].shape[1]), hidden=[int(v.shape[0]) for _, v in weights[:-1]])


def _scorer_from_spec(spec: Any, path: Path) -> nn.Module | None:
    """The scorer a ``{"class_path", "init_args"}`` spec names; only mmpref's own classes are built."""
    import importlib

    if not isinstance(spec, dict) or not isinstance(spec.get("class_path"), str):
        return None
    module, _, name = spec["class_path"].rpartition(".")
    if not module.startswith("mmpref."):
        raise RewardError(
            f"{path}: the scorer class {spec['class_path']!r} is not one of mmpref's; build the scorer yourself "
            "and pass it as load_reward(..., scorer=...)"
        )
    return getattr(importlib.import_module(module), name)(**dict(spec.get("init_args") or {}))


def _infer_features(width: int, path: Path) -> dict[str, Any]:
    """Features of a scorer input width: an encoder's embedding size, or C·S·S pixels (C = 1 or 3)."""
    if width in _ENCODER_DIMS:
        return {"kind": "encoder", "encoder_id": _ENCODER_DIMS[width]}
    for channels in (1, 3):
        side = math.isqrt(width // channels)
        if width % channels == 0 and side * side * channels == width:
            return {"kind": "pixels", "channels": channels, "size": side}
    raise RewardError(
        f"{path}: cannot tell how images become this scorer's {width} input features (neither C·S·S pixels nor an "
        "encoder's embedding); write the checkpoint with save_reward_checkpoint(..., features=...)"
    )


def checkpoint_reward(
    path: str | Path, scorer: nn.Module | None = None, encoder: Any = None, batch_size: int = 256
) -> RewardScorer:
    """A RewardModelSystem checkpoint as a scorer.

    The scorer network comes from, in order: ``scorer`` (given), the spec :func:`save_reward_checkpoint` or
    LightningCLI stored, or the shapes of an MLPScorer's layers. The features from the stored spec, or from the
    scorer's input width (:func:`_infer_features`).
    """
    from mmpref.reward.system import RewardModelSystem

    path = Path(path)
    fix = "give a .ckpt written by save_reward_checkpoint() or a Lightning Trainer fitting a RewardModelSystem"
    if not path.is_file():
        raise RewardError(f"{path}: no such reward checkpoint; {fix}")
    try:
        # weights_only: tensors and plain containers only, so opening a checkpoint cannot run code
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and EOF errors of a damaged or foreign file
        raise RewardError(f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: {err}); {fix}") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("state_dict"), dict):
        raise RewardError(f"{path}: holds no 'state_dict'; {fix}")
    state = payload["state_dict"]
    meta = payload.get("mmpref_reward") or {}
    hparams = dict(payload.get("hyper_parameters") or {})
    scorer = scorer or _scorer_from_spec(meta.get("scorer") or hparams.get("scorer"), path) or _mlp_from_state(state)
    if scorer is None:
        raise RewardError(
            f"{path}: cannot rebuild its scorer network (no stored spec, not an MLPScorer); "
            "pass the network as load_reward(..., scorer=...)"
        )
    kwargs = {k: hparams[k] for k in ("loss", "beta", "loss_kwargs") if k in hparams}
    system = RewardModelSystem(scorer, **kwargs)
    missing, unexpected = system.load_state_dict(state, strict=False)
    missing = [k for k in missing if k.startswith("scorer.")]
    if missing or [k for k in unexpected if k.startswith("scorer.")]:
        raise RewardError(
            f"{path}: its weights do not fit the scorer {type(scorer).__name__} (missing {missing[:3]}, unexpected "
            f"{[k for k in unexpected if k.startswith('scorer.')][:3]}); pass the right network as scorer="
        )
    system.eval()
    spec = meta.get("features")
    if not spec:
        width = getattr(scorer, "in_features", None)
        if width is None:
            raise RewardError(f"{path}: no feature spec and the scorer has no in_features; {fix}")
        spec = _infer_features(int(width), path)
    if spec.get("kind") == "pixels":
        channels, size = int(spec["channels"]), int(spec["size"])
        features: Callable[[torch.Tensor], torch.Tensor] = lambda x: pixel_features(x, channels, size)  # noqa: E731
        detail = f"pixels {channels}×{size}×{size}"
    elif spec.get("kind") == "encoder":
        features = _embedder(_check_encoder(encoder, str(spec["encoder_id"]), path))
        detail = f"{spec['encoder_id']} embeddings"
    else:
        raise RewardError(f"{path}: unknown feature kind {spec.get('kind')!r}; expected 'pixels' or 'encoder'")
    return RewardScorer(features, system, "checkpoint", path, detail, batch_size)


def load_reward(
    path: str | Path,
    user: str | None = None,
    encoder: Any = None,
    scorer: nn.Module | None = None,
    batch_size: int | None = None,
) -> RewardScorer:
    """Any mmpref reward model by path, as a scorer of images in [−1, 1].

    Args:
        path: a personal taste model folder, a unified reward model folder (told apart by ``config.json``'s
            ``format``) or a RewardModelSystem ``.ckpt`` file.
        user: the taste model's user id (``None``: the population), or the unified model's dimension.
        encoder: the image encoder (default: rebuilt from the id the model names).
        scorer: a checkpoint's scorer network, when it cannot be rebuilt from the file.
        batch_size: images per forward pass.

    Raises:
        RewardError, ModelFolderError, FileNotFoundError: naming the file and the fix (all are input errors).
    """
    from mmpref.modelfiles import read_json_object
    from mmpref.vision.taste.model import MODEL_FORMAT
    from mmpref.vision.unified.files import UNIFIED_FORMAT

    path = Path(path)
    size = {"batch_size": batch_size} if batch_size else {}
    if path.is_file():
        if user is not None:
            raise RewardError(f"{path}: a reward checkpoint scores one taste; drop the user ({user!r})")
        return checkpoint_reward(path, scorer, encoder, **size)
    if not path.is_dir():
        raise FileNotFoundError(
            f"{path}: no such reward model; give a taste model folder, a unified reward model folder or a .ckpt file"
        )
    config_path = path / "config.json"
    if not config_path.is_file():
        raise RewardError(
            f"{path}: not a reward model folder (no config.json); give a taste model folder, a unified reward "
            "model folder or a .ckpt file"
        )
    fmt = read_json_object(config_path, "copy the model folder again").get("format")
    if fmt == MODEL_FORMAT:
        return taste_reward(path, user, encoder, **size)
    if fmt == UNIFIED_FORMAT:
        return unified_reward(path, user, encoder, **size)
    raise RewardError(
        f"{config_path}: field 'format' is {fmt!r}; a reward model folder is {MODEL_FORMAT!r} (personal taste) or "
        f"{UNIFIED_FORMAT!r} (unified)"
    )
