"""Train the shipped base model: a tiny text-conditioned UNet on scikit-learn's real digits (16 px), reproducibly.

Usage:
    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python scripts/train_digit_diffusion.py [--steps 1600] [--out DIR]

AdamW 5e-4 (100-step warm-up, cosine decay to 10 %), batch 64, gradient clip 1, EMA 0.995 (the EMA weights are the
saved model), ±1 px shifts, 10 % empty-prompt dropout; prompts name the digit and, in half the templates, the
image's stroke weight. Also trains and saves the fidelity classifier (a small CNN on 80 % of the real digits).
The folder is written atomically and holds safetensors only.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmpref.vision.diffusion.base import (  # noqa: E402
    DEFAULT_ASSET,
    make_noise_scheduler,
    make_unet,
    save_diffusion,
    seeded_noise,
    training_target,
)
from mmpref.vision.diffusion.classifier import save_classifier, train_classifier  # noqa: E402
from mmpref.vision.diffusion.digits import (  # noqa: E402
    all_training_prompts,
    class_prompts,
    load_digits,
    random_shift,
    training_prompts,
)
from mmpref.vision.diffusion.text import PromptEncoder  # noqa: E402

logger = logging.getLogger("train_digit_diffusion")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1600)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--prediction-type", default="epsilon", choices=("epsilon", "v_prediction"))
    parser.add_argument("--out", default=str(DEFAULT_ASSET))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)

    data = load_digits(args.size)
    encoder = PromptEncoder()
    encoder.encode([*all_training_prompts(), "", *class_prompts(range(10))])
    empty = encoder.encode([""])[0]

    unet = make_unet(sample_size=args.size)
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    scheduler = make_noise_scheduler(args.prediction_type)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=1e-4)
    warmup = 100

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, args.steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    params = sum(p.numel() for p in unet.parameters())
    logger.info(
        "UNet2DConditionModel with %.2f M parameters; %d steps of batch %d", params / 1e6, args.steps, args.batch
    )
    start, running = time.perf_counter(), None
    for step in range(args.steps):
        idx = torch.randint(len(data.labels), (args.batch,), generator=generator)
        x0 = random_shift(data.images[idx], generator)
        prompts = training_prompts(data.labels[idx], data.ink_tercile[idx], generator)
        cond = encoder.encode(prompts)
        drop = torch.rand(args.batch, generator=generator) < 0.1  # classifier-free guidance stays possible
        cond[drop] = empty
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (args.batch,), generator=generator)
        xt = scheduler.add_noise(x0, noise, t)
        loss = F.mse_loss(unet(xt, t, encoder_hidden_states=cond).sample, training_target(scheduler, x0, noise, t))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        lr_schedule.step()
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), unet.parameters(), strict=True):
                pe.lerp_(p, 0.005)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 100 == 0 or step == args.steps - 1:
            logger.info("step %d loss %.4f (%.0f s)", step, running, time.perf_counter() - start)
    train_s = time.perf_counter() - start

    classifier, cls_report = train_classifier(data, seed=args.seed)
    from mmpref.vision.diffusion.base import sample

    labels = torch.arange(10).repeat_interleave(50)
    cond = encoder.encode([class_prompts([int(c)])[0] for c in labels])
    samples = sample(ema, scheduler, cond, seeded_noise(len(labels), 12345, args.size))
    with torch.no_grad():
        sample_acc = (classifier(samples).argmax(1) == labels).float().mean().item()
    meta = {
        "image_size": args.size,
        "train": {
            "steps": args.steps,
            "batch": args.batch,
            "lr": args.lr,
            "seed": args.seed,
            "final_loss_ema": round(running, 4),
            "seconds": round(train_s, 1),
            "parameters": params,
        },
        "classifier": cls_report,
        "sample_accuracy_500": round(sample_acc, 4),
        "machine": f"2 vCPU AMD EPYC, torch {torch.__version__}, CPU only, 1 thread, shared with other jobs",
    }
    out = save_diffusion(args.out, ema, scheduler, encoder, meta)
    save_classifier(classifier, out / "classifier.safetensors")
    logger.info("saved %s: %s", out, json.dumps(meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
