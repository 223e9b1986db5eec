"""One Diffusion-DPO run on the digits default: on-policy rounds of sample → score → build pairs/lists → train.

The trainer sees the simulated taste only through the pairs it produces; preference prompts cover classes 0–6 in
the training wording, so evaluation on classes 7–9 in held-out wording measures transfer.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

import torch
from torch.utils.data import DataLoader

from mmpref.reward.trainers import quick_trainer, quiet_lightning
from mmpref.vision.diffusion.base import DigitDiffusion
from mmpref.vision.diffusion.digits import PREFERENCE_CLASSES, get_taste, prompt_for
from mmpref.vision.diffusion.guard import CollapseGuard
from mmpref.vision.diffusion.onpolicy import Scorer, build_lists, build_pairs, concat, sample_candidates
from mmpref.vision.diffusion.system import DiffusionDPOSystem

logger = logging.getLogger(__name__)
PREFERENCE_TEMPLATES = ("a handwritten {word}", "the digit {digit}")


@dataclass
class DPOConfig:
    """Settings of a digits Diffusion-DPO run (defaults: the calibrated ink run)."""

    taste: str = "ink"
    loss: str = "bradley_terry"
    beta: float = 5000.0
    lr: float = 1.5e-6
    reference: str = "copy"
    lora_rank: int = 8
    batch: int = 32
    steps_per_round: int = 130
    max_seconds: float | None = None
    rounds: int = 1
    per_prompt: int = 50
    pairing: str = "random"
    pairs_per_sample: int = 4
    min_gap_sd: float = 0.0
    list_k: int = 4
    classes: tuple[int, ...] = PREFERENCE_CLASSES
    guard_threshold: float = 0.005
    stop_on_collapse: bool = False
    seed: int = 0
    users: tuple[str, ...] = ()
    user_lr: float = 3e-3
    # a reward model scoring the on-policy samples instead of the simulated taste (mmpref.vision.diffusion.rewards):
    # a personal taste folder, a unified reward folder or a RewardModelSystem .ckpt; reward_user: its user/dimension
    reward: str | None = None
    reward_user: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def preference_prompts(classes: tuple[int, ...]) -> list[str]:
    """The prompts on-policy pairs are sampled for."""
    return [prompt_for(c, t) for c in classes for t in PREFERENCE_TEMPLATES]


def make_system(model: DigitDiffusion, cfg: DPOConfig) -> DiffusionDPOSystem:
    """The DPO system around the model's UNet (the UNet object becomes the policy)."""
    return DiffusionDPOSystem(
        model.unet,
        model.scheduler,
        loss=cfg.loss,
        beta=cfg.beta,
        lr=cfg.lr,
        reference=cfg.reference,  # type: ignore[arg-type]
        lora_rank=cfg.lora_rank,
        num_users=len(cfg.users),
        user_lr=cfg.user_lr,
    )


def policy_cond(system: DiffusionDPOSystem, cond: torch.Tensor, user: int | None) -> torch.Tensor:
    """Conditioning the policy samples with (the prompt, plus the user's vector when personalized)."""
    if user is None:
        return cond
    with torch.no_grad():
        return system.condition(cond, torch.full((len(cond),), user, dtype=torch.long))


def collect(
    system: DiffusionDPOSystem, model: DigitDiffusion, cfg: DPOConfig, round_index: int, scorer: Scorer | None = None
) -> Any:
    """Sample on-policy candidates for every (user,) prompt, score them, build the dataset.

    The scorer is ``scorer`` when given (a reward model), else each user's simulated taste.
    """
    prompts = preference_prompts(cfg.classes)
    cond = model.prompts.encode(prompts)
    listwise = system.listwise
    parts = []
    users = list(enumerate(cfg.users)) or [(None, cfg.taste)]
    for user, taste in users:
        candidates = sample_candidates(
            system.unet,
            model.scheduler,
            policy_cond(system, cond, user),
            prompts,
            cfg.per_prompt,
            scorer or get_taste(taste),
            seed=cfg.seed * 1000 + round_index * 10 + (user or 0) + 1,
        )
        candidates.cond = cond  # pairs carry the plain prompt; the system adds the user vector itself
        if listwise:
            parts.append(build_lists(candidates, k=cfg.list_k, min_spread_sd=cfg.min_gap_sd, user=user))
        else:
            parts.append(
                build_pairs(
                    candidates,
                    pairing=cfg.pairing,  # type: ignore[arg-type]
                    pairs_per_sample=cfg.pairs_per_sample,
                    min_gap_sd=cfg.min_gap_sd,
                    seed=cfg.seed + round_index,
                    user=user,
                )
            )
    return concat(parts) if len(parts) > 1 else parts[0]


def train_dpo(
    model: DigitDiffusion, cfg: DPOConfig, system: DiffusionDPOSystem | None = None, scorer: Scorer | None = None
) -> tuple[Any, dict]:
    """Run ``cfg.rounds`` on-policy rounds; returns the system and a report (timings split sample/train).

    The on-policy samples are scored by ``scorer`` when given, else by the reward model ``cfg.reward`` (loaded once
    with :func:`mmpref.vision.diffusion.rewards.load_reward`), else by the simulated taste ``cfg.taste``.
    """
    quiet_lightning()
    torch.manual_seed(cfg.seed)
    if scorer is None and cfg.reward:
        from mmpref.vision.diffusion.rewards import load_reward

        scorer = load_reward(cfg.reward, user=cfg.reward_user)
    if scorer is not None and cfg.users:
        raise ValueError("a reward model scores for one person; personalized runs (users) take simulated tastes")
    system = system or make_system(model, cfg)
    guard = CollapseGuard(threshold=cfg.guard_threshold, stop=cfg.stop_on_collapse)
    report: dict[str, Any] = {"config": asdict(cfg), "rounds": []}
    describe = getattr(scorer, "describe", None)
    report["scorer"] = describe() if describe else (f"taste {cfg.taste}" if scorer is None else repr(scorer))
    for r in range(cfg.rounds):
        t0, c0 = time.perf_counter(), time.process_time()
        data = collect(system, model, cfg, r, scorer)
        t1, c1 = time.perf_counter(), time.process_time()
        loader = DataLoader(data, batch_size=cfg.batch, shuffle=True, generator=torch.Generator().manual_seed(r))
        max_time = timedelta(seconds=cfg.max_seconds) if cfg.max_seconds else None
        trainer = quick_trainer(
            max_epochs=10_000,
            max_steps=cfg.steps_per_round,
            max_time=max_time,
            gradient_clip_val=1.0,
            callbacks=[guard],
        )
        trainer.fit(system, loader)
        t2, c2 = time.perf_counter(), time.process_time()
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        report["rounds"].append(
            {
                "examples": len(data),
                "sample_seconds": round(t1 - t0, 1),
                "train_seconds": round(t2 - t1, 1),
                # CPU seconds of this (1-thread) process: what the run costs on an idle core, whatever the load
                "sample_cpu_seconds": round(c1 - c0, 1),
                "train_cpu_seconds": round(c2 - c1, 1),
                "steps": trainer.global_step,
                "metrics": metrics,
                "collapsed_at": guard.collapsed_at,
            }
        )
        logger.info("round %d: %s", r, report["rounds"][-1])
        if guard.collapsed_at is not None and cfg.stop_on_collapse:
            break
    report["dpo_seconds"] = round(sum(x["sample_seconds"] + x["train_seconds"] for x in report["rounds"]), 1)
    report["dpo_cpu_seconds"] = round(
        sum(x["sample_cpu_seconds"] + x["train_cpu_seconds"] for x in report["rounds"]), 1
    )
    system.eval()
    return system, report


def enroll_new_user(
    system: DiffusionDPOSystem,
    model: DigitDiffusion,
    user: int,
    taste: str,
    pairs: int = 32,
    steps: int = 60,
    lr: float = 3e-3,
    seed: int = 0,
) -> dict[str, Any]:
    """Fit one unused row of the user table from a few on-policy pairs; the UNet and other users stay frozen.

    The new user's pairs are sampled with its (zero) vector, i.e. from the population model, labelled by ``taste``,
    and only that row is trained with the same DPO loss.
    """
    quiet_lightning()
    torch.manual_seed(seed)
    prompts = preference_prompts(PREFERENCE_CLASSES)
    cond = model.prompts.encode(prompts)
    per_prompt = max(2, -(-2 * pairs // len(prompts)))
    t0 = time.perf_counter()
    candidates = sample_candidates(
        system.unet,
        model.scheduler,
        policy_cond(system, cond, user),
        prompts,
        per_prompt,
        get_taste(taste),
        seed=seed + 4242,
    )
    candidates.cond = cond
    data = build_pairs(candidates, pairing="random", pairs_per_sample=1, seed=seed, user=user)
    keep = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:pairs]
    data.tensors = {k: v[keep] for k, v in data.tensors.items()}
    system.fit_new_user_only(user)
    system.hparams.user_lr = lr
    loader = DataLoader(data, batch_size=min(16, pairs), shuffle=True, generator=torch.Generator().manual_seed(seed))
    quick_trainer(max_epochs=10_000, max_steps=steps, gradient_clip_val=1.0).fit(system, loader)
    system.eval()
    return {"pairs": len(data), "steps": steps, "seconds": round(time.perf_counter() - t0, 1)}
