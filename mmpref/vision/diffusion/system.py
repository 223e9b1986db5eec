r"""Diffusion-DPO as a LightningModule: pairwise, listwise, personalized; ε or v; copy or LoRA reference.

Every candidate of one comparison (winner and loser, or the K samples of a list) is noised with the **same** ε and
the **same** timestep t; its score is the denoising-error improvement of the policy over the reference
(:func:`~mmpref.vision.diffusion.scores.diffusion_dpo_scores`); any loss of the core turns scores into a loss.

Constant folding (once, here). Wallace et al. (2023), eq. 14:

.. math:: L = -\log\sigma\!\Big(-\beta T\omega(\lambda_t)\big[(e^w_\theta - e^w_{\text{ref}})
                                                          - (e^l_\theta - e^l_{\text{ref}})\big]\Big)

with ω(λ_t) constant. The official training script writes the factor as ``0.5 * beta_dpo`` on per-pixel mean errors
(β_dpo = 5000 for SD 1.5); mmpref follows it: ``beta`` here is β_dpo and the core loss receives β' = β/2, so
``bradley_terry(s_w, s_l, beta=β/2)`` is exactly the official loss.

Families (:mod:`~mmpref.vision.diffusion.families`): with ``family`` given, the forward process, the training target
and the denoiser call (extra conditioning in a ``cond`` dict) are the family's; SD3-class flow models then score
velocity errors, and Flow-DPO's constant β/2 (Liu et al. 2025) is the same fold as above. Without it, the UNet is
called as ``unet(x_t, t, encoder_hidden_states=cond)`` with the DDPM ``scheduler`` (the digits model).

Reference: ``"copy"`` holds a frozen deep copy of the base UNet; ``"lora"`` adds peft LoRA adapters to the one UNet
and computes the reference with the adapters disabled, so only one UNet is held.

Personalized (PPD-style): with ``num_users > 0`` a learned user vector u (initialised to zero, so the policy starts
equal to the base) is added to the prompt token the UNet cross-attends to; the reference always sees the plain
prompt. One model serves every user; a new user is fitted from a few pairs by :meth:`fit_new_user_only`.
"""

from __future__ import annotations

import copy
import logging
from contextlib import contextmanager
from typing import Any, Literal

import lightning as L
import torch
from torch import nn

from mmpref.losses import get_loss, is_listwise, is_pointwise
from mmpref.vision.diffusion.base import training_target
from mmpref.vision.diffusion.scores import denoising_error, diffusion_dpo_scores

logger = logging.getLogger(__name__)
ReferenceKind = Literal["copy", "lora"]
Cond = torch.Tensor | dict[str, torch.Tensor]


def _mean(values: torch.Tensor) -> torch.Tensor:
    """Mean, or 0 for an empty tensor (a KTO batch may hold no like or no dislike)."""
    return values.mean() if values.numel() else values.new_zeros(())


def _tree(fn: Any, *conds: Cond) -> Cond:
    """Apply ``fn`` to a conditioning tensor, or to every entry of a conditioning dict (SDXL/SD3 extras)."""
    if isinstance(conds[0], dict):
        return {k: fn(*(c[k] for c in conds)) for k in conds[0]}
    return fn(*conds)


DEFAULT_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2")


class DiffusionDPOSystem(L.LightningModule):
    """Fine-tune a diffusers UNet on preference pairs or ranked lists with Diffusion-DPO.

    Batches: pairs ``{"x_w": [B,C,H,W], "x_l": [B,C,H,W], "cond": [B,S,D]}``; lists ``{"x": [B,K,C,H,W],
    "targets": [B,K], "mask": [B,K] (optional), "cond": [B,S,D]}``; both with ``"user": [B]`` when personalized.
    Pairs with ``"seed": [B]`` (int64) draw their noise and timesteps from it (:meth:`seeded_draws`).

    Args:
        unet: the base UNet (a diffusers ``UNet2DConditionModel``); it becomes the policy.
        scheduler: the DDPM training scheduler (noise schedule and prediction type).
        loss: a pairwise (bradley_terry = the paper's, hinge, ipo, robust), listwise (plackett_luce, ranklist) or
            pointwise (kto: Diffusion-KTO on unpaired likes/dislikes, :meth:`point_scores`) loss of
            :mod:`mmpref.losses`.
        beta: β_dpo of the official code; the core loss gets β/2 (see the module docstring).
        lr: AdamW learning rate (no weight decay); 1e-6..5e-6 works for the digits model, higher collapses.
        reference: ``"copy"`` (frozen deep copy) or ``"lora"`` (adapters disabled; one UNet held).
        lora_rank: LoRA rank r when ``reference="lora"``.
        lora_alpha: LoRA α (default r).
        lora_targets: module names the adapters wrap.
        loss_kwargs: extra keyword arguments of the loss (e.g. ``eps`` of robust).
        num_users: > 0 adds a learned user embedding table (personalized DPO).
        user_lr: learning rate of the user embeddings (they start at zero and need a larger step).
        timestep_range: (low, high) of the uniform timestep draw.
        family: a model-family adapter (:mod:`~mmpref.vision.diffusion.families`); ``None`` = the plain UNet call.
        lr_scheduler: a diffusers schedule name (constant, constant_with_warmup, linear, cosine, ...).
        warmup_steps: linear warm-up steps of the schedule.
        total_steps: the schedule's length (decaying schedules need it; the Trainer's max_steps).
    """

    def __init__(
        self,
        unet: nn.Module,
        scheduler: Any,
        loss: str = "bradley_terry",
        beta: float = 5000.0,
        lr: float = 1.5e-6,
        reference: ReferenceKind = "copy",
        lora_rank: int = 8,
        lora_alpha: float | None = None,
        lora_targets: tuple[str, ...] = DEFAULT_LORA_TARGETS,
        loss_kwargs: dict[str, Any] | None = None,
        num_users: int = 0,
        user_lr: float = 1e-3,
        timestep_range: tuple[int, int] | None = None,
        family: Any | None = None,
        lr_scheduler: str = "constant",
        warmup_steps: int = 0,
        total_steps: int | None = None,
    ):
        super().__init__()
        if reference not in ("copy", "lora"):
            raise ValueError(f"reference must be 'copy' or 'lora', got {reference!r}")
        if beta <= 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        self.save_hyperparameters(ignore=["unet", "scheduler", "family"])
        self.family = family
        self.loss_fn = get_loss(loss)
        self.listwise = is_listwise(loss)
        self.pointwise = is_pointwise(loss)
        # the official script's 0.5 * beta_dpo = βTω(λ_t) of Wallace et al. eq. 14, folded once; for flow families the
        # same β/2 is Flow-DPO's constant (Liu et al. 2025), applied to velocity errors
        self.scale = 0.5 * beta
        self.scheduler = scheduler
        self.unet = unet
        self.reference_kind = reference
        if reference == "copy":
            self.ref_unet = copy.deepcopy(unet).eval().requires_grad_(False)
        else:
            from peft import LoraConfig

            unet.requires_grad_(False)
            unet.add_adapter(
                LoraConfig(
                    r=lora_rank,
                    lora_alpha=lora_alpha or lora_rank,
                    init_lora_weights="gaussian",
                    target_modules=list(lora_targets),
                )
            )
            self.ref_unet = None
        self.user_embeddings = None
        if num_users > 0:
            width = unet.config.cross_attention_dim
            self.user_embeddings = nn.Embedding(num_users, width)
            nn.init.zeros_(self.user_embeddings.weight)
        self.last_error_gaps: tuple[float, float] | None = None

    # -- the model -----------------------------------------------------------------------------------------------

    @contextmanager
    def reference_mode(self):
        """Run the reference inside this block: the frozen copy, or the one UNet with adapters disabled."""
        if self.ref_unet is not None:
            yield self.ref_unet
            return
        self.unet.disable_adapters()
        try:
            yield self.unet
        finally:
            self.unet.enable_adapters()

    def condition(self, cond: Cond, user: torch.Tensor | None) -> Cond:
        """The policy's conditioning: the prompt tokens, plus the user vector when personalized."""
        if self.user_embeddings is None or user is None:
            return cond
        if isinstance(cond, dict):
            raise ValueError("personalized DPO adds the user vector to a plain prompt tensor, not a family's dict")
        return cond + self.user_embeddings(user).unsqueeze(1)

    def _predict(self, model: nn.Module, xt: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        if self.family is not None:
            return self.family.predict(model, xt, t, cond)
        return model(xt, t, encoder_hidden_states=cond).sample

    def errors(
        self, x0: torch.Tensor, cond: Cond, ref_cond: Cond, noise: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Policy and reference denoising errors ``[N]`` of clean images ``[N,C,H,W]`` at noise ε and step t."""
        if self.family is not None:
            xt, target = self.family.noisy(x0, noise, t), self.family.target(x0, noise, t)
        else:
            xt, target = self.scheduler.add_noise(x0, noise, t), training_target(self.scheduler, x0, noise, t)
        policy = denoising_error(self._predict(self.unet, xt, t, cond), target)
        with torch.no_grad(), self.reference_mode() as ref:
            reference = denoising_error(self._predict(ref, xt, t, ref_cond), target)
        return policy, reference

    def _timesteps(self, count: int, device: torch.device) -> torch.Tensor:
        steps = self.family.num_timesteps if self.family is not None else self.scheduler.config.num_train_timesteps
        low, high = self.hparams.timestep_range or (0, steps)
        return torch.randint(low, high, (count,), device=device)

    def seeded_draws(self, seeds: torch.Tensor, like: torch.Tensor, per_item: int = 1) -> tuple[torch.Tensor, ...]:
        """Noise ``[B·k, ...]`` and training indices ``[B·k]`` drawn from one CPU generator per item seed.

        Draw j of item i is at row ``j·B + i``. Data that carry a ``seed`` per pair (the pipeline cache) get the same
        ε and t for a pair whichever process or batch reads it: DDP on W ranks then equals one process with the
        same global batch, and a resumed run redraws exactly what the interrupted one would have.
        """
        steps = self.family.num_timesteps if self.family is not None else self.scheduler.config.num_train_timesteps
        low, high = self.hparams.timestep_range or (0, steps)
        noises, times = [], []
        for seed in seeds.tolist():
            generator = torch.Generator().manual_seed(int(seed))
            for _ in range(per_item):
                times.append(torch.randint(low, high, (1,), generator=generator))
                noises.append(torch.randn(like.shape[1:], generator=generator))
        noise = torch.stack(noises).view(len(seeds), per_item, *like.shape[1:]).transpose(0, 1).flatten(0, 1)
        t = torch.cat(times).view(len(seeds), per_item).T.flatten()
        return noise.to(like.device, like.dtype), t.to(like.device)

    def pair_scores(
        self, batch: dict[str, Any], noise: torch.Tensor | None = None, t: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Scores ``[B]`` of winners and losers (shared ε and t per pair) and the error gaps for the guard.

        ``noise`` ``[B,C,H,W]`` and training indices ``t`` ``[B]`` are drawn here unless given. Per-image extras
        ``micro_w``/``micro_l`` (SDXL's source size and crop) join the conditioning as ``cond["micro"]``.
        """
        x_w, x_l, cond = batch["x_w"], batch["x_l"], batch["cond"]
        b = len(x_w)
        if noise is None and t is None and "seed" in batch:
            noise, t = self.seeded_draws(batch["seed"], x_w)
        noise = torch.randn_like(x_w) if noise is None else noise
        t = self._timesteps(b, x_w.device) if t is None else t
        both = torch.cat([x_w, x_l])
        ref_cond = _tree(lambda c: torch.cat([c, c]), cond)
        if "micro_w" in batch:
            ref_cond = dict(ref_cond, micro=torch.cat([batch["micro_w"], batch["micro_l"]]))
        pol_cond = self.condition(ref_cond, None if "user" not in batch else torch.cat([batch["user"]] * 2))
        policy, reference = self.errors(both, pol_cond, ref_cond, torch.cat([noise, noise]), torch.cat([t, t]))
        scores = diffusion_dpo_scores(policy, reference)
        gaps = {"err_gap_w": (policy - reference)[:b].detach(), "err_gap_l": (policy - reference)[b:].detach()}
        return scores[:b], scores[b:], gaps

    def point_scores(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Scores ``[N]`` of single liked/disliked images, each with its own ε and t (Diffusion-KTO).

        Batches ``{"x", "desirable", "cond"}``, or pair batches read as unpaired data: every winner a like and every
        loser a dislike (how Diffusion-KTO uses Pick-a-Pic), no longer sharing noise or timestep.

        Returns:
            Scores, the desirable flags and the policy-minus-reference error gaps, all ``[N]``.
        """
        if "x" in batch:
            x, cond, desirable = batch["x"], batch["cond"], batch["desirable"].bool()
        else:
            x = torch.cat([batch["x_w"], batch["x_l"]])
            cond = _tree(lambda c: torch.cat([c, c]), batch["cond"])
            if "micro_w" in batch:
                cond = dict(cond, micro=torch.cat([batch["micro_w"], batch["micro_l"]]))
            b = len(batch["x_w"])
            desirable = torch.arange(2 * b, device=x.device) < b
        if "seed" in batch and "x" not in batch:  # winner draws then loser draws, each pair's own seed
            noise, t = self.seeded_draws(batch["seed"], batch["x_w"], per_item=2)
        else:
            noise, t = torch.randn_like(x), self._timesteps(len(x), x.device)
        policy, reference = self.errors(x, cond, cond, noise, t)
        return diffusion_dpo_scores(policy, reference), desirable, (policy - reference).detach()

    def list_scores(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores ``[B, K]`` of K candidates sharing ε and t per list, and the policy-minus-reference error gaps."""
        x, cond = batch["x"], batch["cond"]
        b, k = x.shape[:2]
        flat = x.reshape(b * k, *x.shape[2:])
        noise = torch.randn_like(x[:, 0]).unsqueeze(1).expand_as(x).reshape_as(flat)
        t = self._timesteps(b, x.device).repeat_interleave(k)
        ref_cond = _tree(lambda c: c.repeat_interleave(k, 0), cond)
        user = batch["user"].repeat_interleave(k) if "user" in batch else None
        policy, reference = self.errors(flat, self.condition(ref_cond, user), ref_cond, noise, t)
        return diffusion_dpo_scores(policy, reference).view(b, k), (policy - reference).view(b, k).detach()

    # -- Lightning hooks -----------------------------------------------------------------------------------------

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        kwargs = dict(self.hparams.loss_kwargs or {})
        if self.pointwise:
            scores, desirable, gap = self.point_scores(batch)
            # KTO's reference point z0: the batch's mean implicit reward (a KL estimate), detached, clamped at 0
            z0 = scores.detach().mean().clamp(min=0)
            loss = self.loss_fn(scores, desirable, beta=self.scale, reference_point=z0, **kwargs).mean()
            s_w, s_l = scores[desirable], scores[~desirable]
            # accuracy: likes above the reference point and dislikes below it
            margin = (scores - z0).detach() * torch.where(desirable, 1.0, -1.0)
            gaps = {"err_gap_w": gap[desirable], "err_gap_l": gap[~desirable]}
            return self._log(stage, loss, margin, s_w, s_l, gaps)
        if self.listwise:
            scores, gap = self.list_scores(batch)
            loss = self.loss_fn(scores, batch["targets"], batch.get("mask"), beta=self.scale, **kwargs).mean()
            mask = batch.get("mask", torch.ones_like(scores, dtype=torch.bool))
            # the list's best and worst stand in for winner and loser in the shared metric vocabulary
            best = batch["targets"].masked_fill(~mask, -torch.inf).argmax(1, keepdim=True)
            worst = batch["targets"].masked_fill(~mask, torch.inf).argmin(1, keepdim=True)
            s_w, s_l = scores.gather(1, best)[:, 0], scores.gather(1, worst)[:, 0]
            gaps = {"err_gap_w": gap.gather(1, best)[:, 0], "err_gap_l": gap.gather(1, worst)[:, 0]}
        else:
            s_w, s_l, gaps = self.pair_scores(batch)
            loss = self.loss_fn(s_w, s_l, beta=self.scale, **kwargs).mean()
        return self._log(stage, loss, (s_w - s_l).detach(), s_w, s_l, gaps)

    def _log(
        self,
        stage: str,
        loss: torch.Tensor,
        margin: torch.Tensor,
        s_w: torch.Tensor,
        s_l: torch.Tensor,
        gaps: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        """Log the shared metric vocabulary (ties count ½) and the guard's error gaps; returns ``loss``."""
        accuracy = ((margin > 0).float() + 0.5 * (margin == 0).float()).mean()
        gap_w, gap_l = _mean(gaps["err_gap_w"]), _mean(gaps["err_gap_l"])
        if self._trainer is not None:  # also callable outside a Trainer (tests, evaluation)
            self.log_dict(
                {
                    f"{stage}/loss": loss.detach(),
                    f"{stage}/accuracy": accuracy,
                    f"{stage}/margin": margin.mean(),
                    f"{stage}/score_w": _mean(s_w.detach()),
                    f"{stage}/score_l": _mean(s_l.detach()),
                    f"{stage}/dpo/err_gap_w": gap_w,
                    f"{stage}/dpo/err_gap_l": gap_l,
                },
                batch_size=len(margin),
                sync_dist=self.trainer.world_size > 1,  # the mean over every rank's equal share of the global batch
            )
        if stage == "train":
            self.last_error_gaps = (float(gap_w), float(gap_l))
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Loss of a pair or list batch (shared ε and t per comparison)."""
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Log the same metrics on held-out comparisons."""
        self._step(batch, "val")

    def configure_optimizers(self) -> Any:
        """AdamW without weight decay on the trainable UNet weights (and user vectors at their own rate).

        With a schedule other than ``"constant"`` (or a warm-up), diffusers' ``get_scheduler`` steps it every
        optimizer step.
        """
        unet_params = [p for p in self.unet.parameters() if p.requires_grad]
        groups: list[dict[str, Any]] = []
        if unet_params:
            groups.append({"params": unet_params, "lr": self.hparams.lr})
        if self.user_embeddings is not None and self.user_embeddings.weight.requires_grad:
            groups.append({"params": self.user_embeddings.parameters(), "lr": self.hparams.user_lr})
        optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
        name, warmup = self.hparams.lr_scheduler, self.hparams.warmup_steps
        if name == "constant" and not warmup:
            return optimizer
        from diffusers.optimization import get_scheduler

        total = self.hparams.total_steps or (self.trainer.max_steps if self._trainer is not None else None)
        schedule = get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # -- helpers -------------------------------------------------------------------------------------------------

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Copies of every trainable tensor (LoRA adapters only, with a LoRA reference): the guard's snapshot."""
        return {n: p.detach().clone() for n, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        """Write a :meth:`trainable_state` snapshot back."""
        params = dict(self.named_parameters())
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value)

    def fit_new_user_only(self, user_index: int) -> None:
        """Freeze everything but row ``user_index`` of the user table (enrol a new user from a few pairs)."""
        if self.user_embeddings is None:
            raise ValueError("the system has no user embeddings; build it with num_users > 0")
        self.unet.requires_grad_(False)
        keep = torch.zeros(self.user_embeddings.num_embeddings, 1)
        keep[user_index] = 1.0
        self.user_embeddings.weight.register_hook(lambda grad: grad * keep.to(grad))
