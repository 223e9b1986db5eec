r"""Model families behind one small adapter: how prompts are encoded, how the denoiser is called, what it regresses.

A pipeline folder (``pipeline.save_pretrained``) names its family in ``model_index.json``'s ``_class_name``:

============================== ======== ============================ =============================================
``_class_name``                 family   denoiser                     training target
============================== ======== ============================ =============================================
StableDiffusionPipeline         sd       UNet2DConditionModel         ε, or v = √ᾱ_t ε − √(1−ᾱ_t) x₀ (SD 2.x)
StableDiffusionXLPipeline       sdxl     UNet2DConditionModel         ε / v; plus pooled text and 6 ``time_ids``
StableDiffusion3Pipeline        sd3      SD3Transformer2DModel        rectified-flow velocity v = ε − x₀
============================== ======== ============================ =============================================

Every family answers the same questions for :class:`~mmpref.vision.diffusion.system.DiffusionDPOSystem`:
``encode_prompts`` (the pipeline's own ``encode_prompt``, so training sees exactly what inference does),
``encode_images`` (VAE latents, shifted and scaled as the pipeline decodes them), ``noisy``/``target`` (the forward
process at the integer training step t), ``predict`` (the denoiser call with its extra conditioning), the LoRA target
modules, and ``save_lora`` (diffusers' own writer, so ``pipeline.load_lora_weights(folder)`` loads the result).

Flow matching (SD3). With σ_t the scheduler's sigma at training index t (SD3's shifted schedule),
x_t = (1 − σ_t) x₀ + σ_t ε and the transformer regresses v = ε − x₀. Flow-DPO (Liu et al. 2025, "Improving Video
Generation with Human Feedback", the Flow-DPO objective with constant β) is Diffusion-DPO's loss with these
velocity errors in place of the ε errors:

.. math:: L = -\log\sigma\Big(-\tfrac{\beta}{2}\big[(\lVert v^w - v_\theta(x^w_t)\rVert^2 - \lVert v^w -
          v_{\text{ref}}(x^w_t)\rVert^2) - (\lVert v^l - v_\theta(x^l_t)\rVert^2 - \lVert v^l -
          v_{\text{ref}}(x^l_t)\rVert^2)\big]\Big)

so the system's one constant β/2 serves every family. Training indices t are drawn uniformly, as Diffusion-DPO does.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from mmpref.errors import MmprefError

logger = logging.getLogger(__name__)
Cond = dict[str, torch.Tensor]


class PipelineError(MmprefError):
    """A pipeline folder that cannot be fine-tuned; the message names the folder, what was found and the fix."""


def read_model_index(folder: str | Path) -> dict[str, Any]:
    """``model_index.json`` of a pipeline folder, or a :class:`PipelineError` naming the folder and the fix."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PipelineError(f"{folder}: not a folder; pass the local folder of a diffusers pipeline")
    index = folder / "model_index.json"
    if not index.is_file():
        raise PipelineError(
            f"{folder}: missing model_index.json, so not a diffusers pipeline folder; save one with "
            "pipeline.save_pretrained(folder) (a UNet-only folder cannot be fine-tuned here)"
        )
    from mmpref.modelfiles import read_json_object

    return read_json_object(index, "re-save the pipeline with pipeline.save_pretrained(folder)")


@dataclass
class Family:
    """The SD 1.x / 2.x adapter (ε or v prediction); SDXL and SD3 override what differs.

    Attributes:
        pipe: the loaded diffusers pipeline (its VAE and text encoders are only needed to build the cache).
        train_scheduler: the scheduler whose forward process training uses (``DDPMScheduler`` for SD/SDXL).
    """

    pipe: Any
    train_scheduler: Any
    name: ClassVar[str] = "sd"
    pipeline_class: ClassVar[str] = "StableDiffusionPipeline"
    parts: ClassVar[tuple[str, ...]] = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
    lora_targets: ClassVar[tuple[str, ...]] = ("to_q", "to_k", "to_v", "to_out.0")

    # -- loading ---------------------------------------------------------------------------------------------------

    @classmethod
    def load(cls, folder: Path, dtype: torch.dtype = torch.float32) -> Family:
        """Load the pipeline and its training scheduler from ``folder`` (checked by :func:`load_family`)."""
        import diffusers

        kwargs = cls._pipeline_kwargs(folder)
        pipe = getattr(diffusers, cls.pipeline_class).from_pretrained(folder, dtype=dtype, **kwargs)
        return cls(pipe=pipe, train_scheduler=cls._train_scheduler(folder))

    @classmethod
    def _pipeline_kwargs(cls, folder: Path) -> dict[str, Any]:
        return {"safety_checker": None, "requires_safety_checker": False}

    @classmethod
    def _train_scheduler(cls, folder: Path) -> Any:
        from diffusers import DDPMScheduler

        # the training forward process is DDPM's whatever sampler the folder ships (PNDM, Euler...), as in SD training
        return DDPMScheduler.from_pretrained(folder / "scheduler")

    @property
    def denoiser(self) -> nn.Module:
        """The network DPO fine-tunes (the UNet, or SD3's transformer)."""
        return self.pipe.unet

    @property
    def resolution(self) -> int:
        """The pipeline's native training resolution in pixels."""
        return int(self.denoiser.config.sample_size) * int(self.pipe.vae_scale_factor)

    @property
    def num_timesteps(self) -> int:
        """Training steps T; the system draws t uniformly from ``[0, T)``."""
        return int(self.train_scheduler.config.num_train_timesteps)

    def release_encoders(self, keep_vae: bool = False) -> None:
        """Drop the VAE and text encoders once the cache holds their outputs (training needs only the denoiser).

        ``keep_vae`` keeps the VAE (a validation grid decodes its samples with it).
        """
        for name in ("text_encoder", "text_encoder_2", "text_encoder_3") + (() if keep_vae else ("vae",)):
            if getattr(self.pipe, name, None) is not None:
                setattr(self.pipe, name, None)

    # -- encoding (cache building) ---------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Cond:
        """Text conditioning of each prompt, as the pipeline computes it at inference (no classifier-free guidance)."""
        embeds, _ = self.pipe.encode_prompt(prompts, self.pipe.device, 1, False)
        return {"prompt_embeds": embeds}

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """VAE latents of pixels ``[N,3,R,R]`` in [−1, 1]: a seeded posterior draw, shifted and scaled."""
        vae = self.pipe.vae
        latents = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.sample(generator)
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return ((latents - shift) * vae.config.scaling_factor).float()

    # -- the forward process and the denoiser call -----------------------------------------------------------------

    def noisy(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε."""
        return self.train_scheduler.add_noise(x0, noise, t)

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """ε, or v = √ᾱ_t ε − √(1−ᾱ_t) x₀ for v-prediction."""
        from mmpref.vision.diffusion.base import training_target

        return training_target(self.train_scheduler, x0, noise, t)

    def predict(self, model: nn.Module, xt: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        """The denoiser's output at (x_t, t) under ``cond``."""
        return model(xt, t, encoder_hidden_states=cond["prompt_embeds"]).sample

    # -- writing ---------------------------------------------------------------------------------------------------

    def save_lora(self, folder: Path, model: nn.Module) -> None:
        """``pytorch_lora_weights.safetensors`` in diffusers' format (``pipeline.load_lora_weights`` reads it)."""
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(model))
        type(self.pipe).save_lora_weights(folder, unet_lora_layers=layers, safe_serialization=True)

    def fingerprint(self, folder: Path) -> str:
        """A short hash of what the cache depends on: family, the VAE and text encoders' configs and weights.

        Weight files are hashed by size plus their first and last MiB (a full hash of multi-GB files on every run
        would cost more than it protects); any re-saved or different checkpoint changes those bytes.
        """
        digest = hashlib.blake2b(self.name.encode(), digest_size=8)
        for part in sorted(p for p in self.parts if p not in ("unet", "transformer", "scheduler")):
            sub = folder / part
            if not sub.is_dir():
                continue
            for path in sorted(sub.rglob("*")):
                if not path.is_file():
                    continue
                digest.update(str(path.relative_to(folder)).encode())
                size = path.stat().st_size
                digest.update(str(size).encode())
                with path.open("rb") as handle:
                    digest.update(handle.read(1 << 20))
                    if size > 2 << 20:
                        handle.seek(-(1 << 20), 2)
                        digest.update(handle.read())
        return digest.hexdigest()


class SDXLFamily(Family):
    """SDXL: two CLIP encoders (hidden states concatenated), the pooled embedding and the 6 micro-conditioning ids.

    ``time_ids`` = (original height, original width, crop top, crop left, target height, target width) per image, as
    SDXL was trained; the data path records them when it resizes and crops (``micro`` = the first four).
    """

    name: ClassVar[str] = "sdxl"
    pipeline_class: ClassVar[str] = "StableDiffusionXLPipeline"
    parts: ClassVar[tuple[str, ...]] = (
        "unet",
        "vae",
        "text_encoder",
        "text_encoder_2",
        "tokenizer",
        "tokenizer_2",
        "scheduler",
    )

    @classmethod
    def _pipeline_kwargs(cls, folder: Path) -> dict[str, Any]:
        return {}

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Cond:
        """Both encoders' penultimate hidden states (concatenated) and the second encoder's pooled projection."""
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            prompts, device=self.pipe.device, do_classifier_free_guidance=False
        )
        return {"prompt_embeds": embeds, "pooled": pooled}

    def predict(self, model: nn.Module, xt: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        """The UNet call with ``added_cond_kwargs`` = pooled text and the 6 ``time_ids`` of each image."""
        size = float(self.resolution)
        micro = cond.get("micro")
        if micro is None:  # no record of the source image: as if it was the target size, uncropped
            micro = xt.new_tensor([size, size, 0.0, 0.0]).expand(len(xt), 4)
        time_ids = torch.cat([micro.to(xt.dtype), micro.new_full((len(xt), 2), size).to(xt.dtype)], dim=1)
        added = {"text_embeds": cond["pooled"], "time_ids": time_ids}
        return model(xt, t, encoder_hidden_states=cond["prompt_embeds"], added_cond_kwargs=added).sample


class SD3Family(Family):
    """SD3-class rectified flow: ``SD3Transformer2DModel`` with pooled projections, velocity target (module doc)."""

    name: ClassVar[str] = "sd3"
    pipeline_class: ClassVar[str] = "StableDiffusion3Pipeline"
    parts: ClassVar[tuple[str, ...]] = (
        "transformer",
        "vae",
        "text_encoder",
        "text_encoder_2",
        "text_encoder_3",
        "tokenizer",
        "tokenizer_2",
        "tokenizer_3",
        "scheduler",
    )
    lora_targets: ClassVar[tuple[str, ...]] = (
        "to_q",
        "to_k",
        "to_v",
        "to_out.0",
        "add_q_proj",
        "add_k_proj",
        "add_v_proj",
        "to_add_out",
    )

    @classmethod
    def _pipeline_kwargs(cls, folder: Path) -> dict[str, Any]:
        # SD3 runs without its T5 encoder (its tokens are then zeros), as diffusers allows; a folder saved that way
        # has no text_encoder_3/ and must be told so explicitly
        if not (folder / "text_encoder_3").is_dir():
            return {"text_encoder_3": None, "tokenizer_3": None}
        return {}

    @classmethod
    def _train_scheduler(cls, folder: Path) -> Any:
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler.from_pretrained(folder / "scheduler")

    @property
    def denoiser(self) -> nn.Module:
        """SD3's ``SD3Transformer2DModel``."""
        return self.pipe.transformer

    @property
    def num_timesteps(self) -> int:
        """Training indices into the (shifted) sigma schedule."""
        return len(self.train_scheduler.sigmas)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Cond:
        """CLIP-L/G hidden states (+ T5 tokens, zeros without T5) and the two pooled projections, as SD3 computes."""
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            prompts, None, None, device=self.pipe.device, do_classifier_free_guidance=False
        )
        return {"prompt_embeds": embeds, "pooled": pooled}

    def _sigma(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        sigma = self.train_scheduler.sigmas.to(like.device)[t.long()].to(like.dtype)
        return sigma.view(-1, *([1] * (like.dim() - 1)))

    def noisy(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = (1 − σ_t) x₀ + σ_t ε."""
        sigma = self._sigma(t, x0)
        return (1.0 - sigma) * x0 + sigma * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The rectified-flow velocity v = ε − x₀."""
        return noise - x0

    def predict(self, model: nn.Module, xt: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        """The transformer's velocity at (x_t, σ_t) with the prompt tokens and pooled projections."""
        timestep = self.train_scheduler.timesteps.to(xt.device)[t.long()]  # σ_t × 1000: what the model embeds
        return model(
            hidden_states=xt,
            timestep=timestep,
            encoder_hidden_states=cond["prompt_embeds"],
            pooled_projections=cond["pooled"],
        ).sample

    def save_lora(self, folder: Path, model: nn.Module) -> None:
        """SD3's writer takes peft's state dict as it is (``transformer_lora_layers``)."""
        from peft.utils import get_peft_model_state_dict

        type(self.pipe).save_lora_weights(
            folder, transformer_lora_layers=get_peft_model_state_dict(model), safe_serialization=True
        )


FAMILIES: dict[str, type[Family]] = {f.pipeline_class: f for f in (Family, SDXLFamily, SD3Family)}


def detect_family(folder: str | Path) -> type[Family]:
    """The adapter class of a pipeline folder, from ``model_index.json``'s ``_class_name``; parts are checked.

    Raises:
        PipelineError: not a pipeline folder, an unsupported ``_class_name`` (naming it and the supported ones), or
            a missing part (naming it).
    """
    folder = Path(folder)
    found = read_model_index(folder).get("_class_name")
    if found not in FAMILIES:
        raise PipelineError(
            f"{folder / 'model_index.json'}: _class_name {found!r} is not a supported family; supported: "
            f"{', '.join(FAMILIES)}; convert the model to one of these layouts or open an issue for its family"
        )
    family = FAMILIES[found]
    optional = {"text_encoder_3", "tokenizer_3"}
    missing = [p for p in family.parts if p not in optional and not (folder / p).is_dir()]
    if missing:
        raise PipelineError(
            f"{folder}: a {found} folder missing {', '.join(missing)}; save the whole pipeline with "
            "pipeline.save_pretrained(folder) (a denoiser-only folder cannot be fine-tuned here)"
        )
    return family


def load_family(folder: str | Path, dtype: torch.dtype = torch.float32) -> Family:
    """Detect the family of ``folder`` and load it (see :func:`detect_family`)."""
    from mmpref.modelfiles import check_folder_files

    folder = Path(folder)
    family = detect_family(folder)
    check_folder_files(
        folder, "re-save the pipeline with pipeline.save_pretrained(folder) or copy the whole folder again"
    )
    try:
        return family.load(folder, dtype)
    except Exception as err:  # diffusers/transformers/safetensors raise many types for a damaged part
        first = (str(err).splitlines() or [err.__class__.__name__])[0][:300]
        raise PipelineError(
            f"{folder}: a part of the {family.name} pipeline cannot be loaded ({err.__class__.__name__}: {first}); "
            "re-save it with pipeline.save_pretrained(folder) or copy the whole folder again"
        ) from None
