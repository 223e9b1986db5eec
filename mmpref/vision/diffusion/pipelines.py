"""Diffusion-DPO on a real diffusers pipeline from a local folder (SD 1.x/2.x, SDXL, SD3-class flow), LoRA or full.

Input: a pipeline folder (``pipeline.save_pretrained``; its family is read from ``model_index.json``,
:mod:`~mmpref.vision.diffusion.families`) and Pick-a-Pic Parquet pairs, streamed in row groups
(:mod:`~mmpref.vision.diffusion.data`). Images are resized + cropped to the pipeline's resolution, VAE-encoded and
their captions text-encoded **once** into an on-disk cache (:mod:`~mmpref.vision.diffusion.latent_cache`); later
epochs and runs read latents from it, one shard at a time, and never load the VAE or text encoders into the training
step. The denoiser is fine-tuned by :class:`~mmpref.vision.diffusion.system.DiffusionDPOSystem` under a Lightning
``Trainer`` that receives the knobs as they are (precision, accumulation, devices, strategy, checkpoints, logger).

Output: with LoRA, ``pytorch_lora_weights.safetensors`` in diffusers' format (``pipeline.load_lora_weights(out)``
loads it unchanged); full, a whole pipeline folder. Written atomically, so bad input leaves nothing behind.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import Callback

from mmpref.data.io import atomic_folder
from mmpref.vision.diffusion.data import DPOTiePolicy, ResizePolicy
from mmpref.vision.diffusion.families import Family, PipelineError, detect_family, load_family  # noqa: F401
from mmpref.vision.diffusion.latent_cache import CacheDtype, CacheReport, build_cache, cache_namespace
from mmpref.vision.diffusion.tiny import tiny_sd_pipeline

logger = logging.getLogger(__name__)
FineTuneMode = Literal["lora", "full"]
LoggerKind = Literal["csv", "tensorboard", "none"]
tiny_random_pipeline = tiny_sd_pipeline  # the name earlier code and tests use


@dataclass
class PipelineDPOConfig:
    """Settings of ``mmpref dpo --pipeline``: data, cache, loss, optimisation and the Lightning knobs.

    Args:
        pipeline: a local diffusers pipeline folder (SD 1.x/2.x, SDXL or SD3 layout).
        pairs: a Pick-a-Pic-style Parquet file (``caption``, ``jpg_0``, ``jpg_1``, ``label_0``).
        ties: ``drop`` or ``error``: what a tied pair (label_0 = 0.5) does.
        mode: ``lora`` (adapters; reference = adapters disabled, one denoiser) or ``full`` (frozen copy).
        resize: ``center``/``random``: shorter side to the resolution, then that square crop; ``refuse``: every
            image must already be R×R.
        cache_dir: root of the latent cache (default: ``.mmpref-cache`` beside the Parquet file).
        cache_dtype: dtype of cached latents and text embeddings (float16/bfloat16 halve the disk).
        encode_batch: pairs per VAE / text-encoder call while caching.
        shard_size: pairs per cache shard (what training holds in memory at once).
        steps: optimizer steps.
        batch_size: pairs per micro-batch (per device).
        beta: β_dpo of the official code (the core loss gets β/2).
        lr: AdamW learning rate.
        loss: a pairwise loss name of :mod:`mmpref.losses`.
        lora_rank: LoRA rank r; LoRA α = r.
        lr_scheduler: a diffusers schedule name (constant, constant_with_warmup, linear, cosine, ...).
        warmup_steps: linear warm-up steps.
        accumulate_grad_batches: micro-batches per optimizer step.
        gradient_checkpointing: recompute the denoiser's activations in backward (less memory, slower).
        gradient_clip_val: gradient-norm clip (the official scripts use 1).
        precision: Lightning precision: ``32-true``, ``bf16-mixed``, ``16-mixed``, ...
        accelerator: Lightning accelerator (``auto``, ``cpu``, ``gpu``).
        devices: Lightning devices (``auto``, a count, or a list as a string).
        strategy: Lightning strategy (``auto``, ``ddp``, ``ddp_spawn``, ``ddp_fork``, ``fsdp``, ...). With W devices
            each takes ``batch_size`` pairs of every global batch of W × ``batch_size`` (the same result as one
            device with the global batch; only rank 0 writes).
        log_dir: folder of the logger's files and checkpoints (``None``: no logger, no checkpoints).
        logger: ``csv``, ``tensorboard`` or ``none``.
        log_every_n_steps: how often metrics are logged.
        checkpoint_every_n_steps: > 0 writes ``log_dir/checkpoints/`` every so many steps (and ``last.ckpt``).
        resume: a Lightning checkpoint to resume from (``ckpt_path``): weights, optimizer, schedule and step
            count; the data continue at the batch after the checkpoint's step, with the same order and noise (exact
            mid-epoch; the global batch, seed and pairs must be those of the interrupted run).
        init_lora: a LoRA folder in diffusers' format (an earlier run's ``--out``) whose weights start the
            adapters (rank = ``lora_rank``); the reference stays the base (adapters disabled). ``mode: lora``.
        num_workers: DataLoader workers (each reads every n-th batch of its rank).
        seed: seed of crops, VAE draws, shuffling, noise and timesteps.
        validation_prompts: fixed prompts of the validation grid (empty: no grid).
        validation_seeds: fixed seeds of the grid (one base and one tuned column each).
        validation_every_n_steps: > 0 writes ``log_dir/validation/step-N.png`` every so many steps.
        validation_steps: denoising steps of each validation sample (small: it runs during training).
        validation_guidance: classifier-free guidance scale of the validation samples (<= 1: none).
    """

    pipeline: str
    pairs: str
    ties: DPOTiePolicy
    mode: FineTuneMode = "lora"
    resize: ResizePolicy = "center"
    cache_dir: str | None = None
    cache_dtype: CacheDtype = "float32"
    encode_batch: int = 8
    shard_size: int = 1024
    steps: int = 100
    batch_size: int = 4
    beta: float = 5000.0
    lr: float = 1e-4
    loss: str = "bradley_terry"
    lora_rank: int = 4
    lr_scheduler: str = "constant"
    warmup_steps: int = 0
    accumulate_grad_batches: int = 1
    gradient_checkpointing: bool = False
    gradient_clip_val: float = 1.0
    precision: str = "32-true"
    accelerator: str = "auto"
    devices: str | int = "auto"
    strategy: str = "auto"
    log_dir: str | None = None
    logger: LoggerKind = "csv"
    log_every_n_steps: int = 10
    checkpoint_every_n_steps: int = 0
    resume: str | None = None
    init_lora: str | None = None
    num_workers: int = 0
    seed: int = 0
    validation_prompts: list[str] = field(default_factory=list)
    validation_seeds: list[int] = field(default_factory=lambda: [0])
    validation_every_n_steps: int = 0
    validation_steps: int = 4
    validation_guidance: float = 5.0

    def __post_init__(self) -> None:
        if self.mode not in ("lora", "full"):
            raise ValueError(f"mode must be 'lora' or 'full', got {self.mode!r}")
        if self.ties not in ("drop", "error"):
            raise ValueError(f"ties must be 'drop' or 'error' (a tie has no winner to prefer), got {self.ties!r}")
        if self.resize not in ("center", "random", "refuse"):
            raise ValueError(f"resize must be 'center', 'random' or 'refuse', got {self.resize!r}")
        if self.init_lora and self.mode != "lora":
            raise ValueError("init_lora starts LoRA adapters: set mode: lora (a full run starts from its pipeline)")
        if self.cache_dtype not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"cache_dtype must be float32, float16 or bfloat16, got {self.cache_dtype!r}")
        from mmpref.losses import get_loss, is_listwise

        get_loss(self.loss)  # an unknown name raises listing the valid ones
        if is_listwise(self.loss):
            raise ValueError(f"loss {self.loss!r} is listwise; pipeline data are pairs: use a pairwise loss or kto")
        for name in ("steps", "batch_size", "encode_batch", "shard_size", "lora_rank", "accumulate_grad_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.validation_every_n_steps > 0:
            if not self.validation_prompts or not self.validation_seeds:
                raise ValueError(
                    "validation_every_n_steps needs validation_prompts and validation_seeds (a list each); "
                    "set them, or validation_every_n_steps: 0 for no grid"
                )
            if self.log_dir is None:
                raise ValueError(
                    "validation_every_n_steps needs log_dir (grids go to log_dir/validation); pass --log_dir DIR, "
                    "or validation_every_n_steps 0 for no grid"
                )
            if self.validation_steps < 1:
                raise ValueError(f"validation_steps must be >= 1, got {self.validation_steps}")

    @property
    def cache_root(self) -> Path:
        """Where the cache lives: ``cache_dir``, or ``.mmpref-cache`` beside the Parquet file."""
        return Path(self.cache_dir) if self.cache_dir else Path(self.pairs).resolve().parent / ".mmpref-cache"


def prepare_cache(cfg: PipelineDPOConfig, family: Family | None = None) -> tuple[Family, CacheReport]:
    """Load the pipeline and bring the cache up to date for ``cfg.pairs`` (``mmpref dpo-cache``; also step 1 of DPO).

    Raises:
        PipelineError: the folder is not a supported pipeline. DataError: bad rows or images (all named).
    """
    folder = Path(cfg.pipeline)
    family = family or load_family(folder)
    namespace = cache_namespace(cfg.cache_root, family, family.fingerprint(folder), cfg.resize, cfg.cache_dtype)
    report = build_cache(
        family,
        cfg.pairs,
        namespace,
        ties=cfg.ties,
        resize=cfg.resize,
        dtype=cfg.cache_dtype,
        encode_batch=cfg.encode_batch,
        shard_size=cfg.shard_size,
        seed=cfg.seed,
    )
    return family, report


def _logger(cfg: PipelineDPOConfig) -> Any:
    if cfg.log_dir is None or cfg.logger == "none":
        return False
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    kind = CSVLogger if cfg.logger == "csv" else TensorBoardLogger
    return kind(save_dir=cfg.log_dir, name="dpo")


def make_trainer(cfg: PipelineDPOConfig, callbacks: list[Any] | None = None) -> Any:
    """The Lightning ``Trainer`` with the config's knobs passed through unchanged."""
    import lightning as L

    callbacks = list(callbacks or [])
    if cfg.checkpoint_every_n_steps > 0:
        if cfg.log_dir is None:
            raise ValueError("checkpoint_every_n_steps needs log_dir (checkpoints go to log_dir/checkpoints)")
        from lightning.pytorch.callbacks import ModelCheckpoint

        callbacks.append(
            ModelCheckpoint(
                dirpath=Path(cfg.log_dir) / "checkpoints",
                every_n_train_steps=cfg.checkpoint_every_n_steps,
                save_last=True,
                save_top_k=-1,
            )
        )
    devices: Any = int(cfg.devices) if isinstance(cfg.devices, str) and cfg.devices.isdigit() else cfg.devices
    return L.Trainer(
        max_steps=cfg.steps,
        max_epochs=-1,
        accelerator=cfg.accelerator,
        devices=devices,
        strategy=cfg.strategy,
        precision=cfg.precision,
        accumulate_grad_batches=cfg.accumulate_grad_batches,
        gradient_clip_val=cfg.gradient_clip_val,
        logger=_logger(cfg),
        log_every_n_steps=cfg.log_every_n_steps,
        enable_checkpointing=cfg.checkpoint_every_n_steps > 0,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )


def make_system(cfg: PipelineDPOConfig, family: Family) -> Any:
    """The DPO system around the family's denoiser (the denoiser object becomes the policy)."""
    from mmpref.vision.diffusion.system import DiffusionDPOSystem

    denoiser = family.denoiser
    if cfg.gradient_checkpointing:
        denoiser.enable_gradient_checkpointing()
    system = DiffusionDPOSystem(
        denoiser,
        family.train_scheduler,
        loss=cfg.loss,
        beta=cfg.beta,
        lr=cfg.lr,
        reference="lora" if cfg.mode == "lora" else "copy",
        lora_rank=cfg.lora_rank,
        lora_targets=family.lora_targets,
        family=family,
        lr_scheduler=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_steps,
        total_steps=cfg.steps,
    )
    if cfg.init_lora:
        load_lora_into(family, system.unet, cfg.init_lora)
    return system


def load_lora_into(family: Family, model: Any, folder: str | Path) -> None:
    """Copy diffusers-format LoRA weights (:meth:`Family.save_lora`'s output) into ``model``'s ``default`` adapter.

    Raises:
        PipelineError: no denoiser LoRA weights in ``folder``, or their names/shapes do not fit the adapters.
    """
    from diffusers.utils import convert_unet_state_dict_to_peft
    from peft import set_peft_model_state_dict

    fix = "pass the LoRA folder of a run on this pipeline family with the same lora_rank"
    if not (Path(folder) / "pytorch_lora_weights.safetensors").is_file():
        raise PipelineError(f"{folder}: no pytorch_lora_weights.safetensors in it (field init_lora); {fix}")
    state = type(family.pipe).lora_state_dict(str(folder))
    state = state[0] if isinstance(state, tuple) else state
    prefix = "transformer." if family.name == "sd3" else "unet."
    state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    adapters = sum(1 for name, _ in model.named_parameters() if ".lora_" in name)
    if len(state) != adapters:  # e.g. other lora_targets: a partial load would leave adapters at their random start
        raise PipelineError(
            f"{folder}: {len(state)} {prefix[:-1]} LoRA tensors for {adapters} adapters (field init_lora); {fix}"
        )
    try:
        result = set_peft_model_state_dict(model, convert_unet_state_dict_to_peft(state), adapter_name="default")
    except RuntimeError as err:  # a shape mismatch: another rank or another denoiser
        raise PipelineError(f"{folder}: its LoRA weights do not fit (field init_lora): {err}; {fix}") from None
    if result.unexpected_keys:
        raise PipelineError(f"{folder}: LoRA weights for unknown modules {result.unexpected_keys[:3]}; {fix}")


class _FinalStep(Callback):
    """Puts the final step in ``callback_metrics``: ddp_spawn / ddp_fork send only those back to the launcher."""

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        trainer.callback_metrics["trainer/global_step"] = torch.tensor(float(trainer.global_step))


def train(
    cfg: PipelineDPOConfig,
    callbacks: list[Any] | None = None,
    prepared: tuple[Family, CacheReport] | None = None,
) -> tuple[Family, Any, dict[str, Any]]:
    """Cache (if needed), then fine-tune; returns the family, the trained system and a report (nothing written).

    ``prepared`` is :func:`prepare_cache`'s result when the caller already ran it. The report holds the cache
    figures, the training seconds and steps, and the last logged metrics.
    """
    from mmpref.reward.trainers import quiet_lightning
    from mmpref.vision.diffusion.latent_cache import CachedPairsData

    quiet_lightning()
    if prepared is None:
        detect_family(cfg.pipeline)  # a bad folder fails before any data is read
    family, cache = prepared or prepare_cache(cfg)
    callbacks = list(callbacks or [])
    if cfg.validation_every_n_steps > 0:  # its prompts are encoded now, before the text encoders go
        from mmpref.vision.diffusion.validation import ValidationGrid

        callbacks.append(
            ValidationGrid(
                family,
                cfg.validation_prompts,
                cfg.validation_seeds,
                cfg.validation_every_n_steps,
                Path(str(cfg.log_dir)) / "validation",
                steps=cfg.validation_steps,
                guidance=cfg.validation_guidance,
            )
        )
    # the cache holds the encoders' outputs; training needs only the denoiser (and a validation grid the VAE)
    family.release_encoders(keep_vae=cfg.validation_every_n_steps > 0)
    torch.manual_seed(cfg.seed)
    system = make_system(cfg, family)
    data = CachedPairsData(
        cache.folder,
        cache.keys,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        workers=cfg.num_workers,
        accumulate=cfg.accumulate_grad_batches,
    )
    trainer = make_trainer(cfg, [*callbacks, _FinalStep()])
    start = time.perf_counter()
    trainer.fit(system, datamodule=data, ckpt_path=cfg.resume)
    report = {
        "family": family.name,
        "cache": {k: getattr(cache, k) for k in ("pairs", "encoded", "reused", "seconds", "cpu_seconds")}
        | {"folder": str(cache.folder)},
        "train_seconds": round(time.perf_counter() - start, 2),
        "steps": int(trainer.callback_metrics.get("trainer/global_step", trainer.global_step)),
        "global_rank": trainer.global_rank,  # with strategy=ddp every rank returns here; only rank 0 writes
        "metrics": {k: float(v) for k, v in trainer.callback_metrics.items() if k != "trainer/global_step"},
        "config": asdict(cfg),
    }
    return family, system.eval(), report


def dpo_finetune(pipeline_dir: str | Path, pairs_path: str | Path, **settings: Any) -> tuple[Family, Any]:
    """Fine-tune (:func:`train`) with ``settings`` = :class:`PipelineDPOConfig` fields; returns (family, system)."""
    family, system, _ = train(PipelineDPOConfig(pipeline=str(pipeline_dir), pairs=str(pairs_path), **settings))
    return family, system


def finetune_pipeline(pipeline_dir: str | Path, pairs_path: str | Path, out_dir: str | Path, **settings: Any) -> Path:
    """Fine-tune (:func:`dpo_finetune`, same settings) and write the result to ``out_dir`` atomically."""
    family, system = dpo_finetune(pipeline_dir, pairs_path, **settings)
    return save_finetuned(family, system, settings.get("mode", "lora"), out_dir, pipeline_dir)


def save_finetuned(
    family: Family, system: Any, mode: FineTuneMode, out_dir: str | Path, pipeline_dir: str | Path | None = None
) -> Path:
    """Write LoRA weights in diffusers' format, or (``full``) the source pipeline with the tuned denoiser, atomically.

    ``pipeline_dir`` (the source folder) is needed for ``full``: its other parts are copied as they are.
    """
    with atomic_folder(out_dir) as tmp:
        if mode == "lora":
            family.save_lora(tmp, system.unet)
        else:
            if pipeline_dir is None:
                raise ValueError("saving a full fine-tune needs pipeline_dir, the folder the other parts come from")
            part = "transformer" if family.name == "sd3" else "unet"
            source = Path(pipeline_dir)
            for item in source.iterdir():
                if item.name == part:
                    continue
                (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
            system.unet.save_pretrained(tmp / part, safe_serialization=True)
    return Path(out_dir)


def default_threads() -> None:
    """One torch thread unless OMP_NUM_THREADS says otherwise (shared CPUs oversubscribe badly)."""
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
