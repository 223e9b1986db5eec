"""Cost of a Diffusion-DPO step: time and peak memory against an SFT step + one reference forward, and the memory of
a LoRA-disabled reference against a second model copy, in the same run.

Usage:
    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_dpo.py [--model assets/digit_diffusion] [--pairs 32]

Time: in one process, the DPO step (policy forward+backward on 2B noised images, reference forward under no_grad,
loss) and the baseline (an SFT step on the same 2B images + one reference forward on them) alternate, so load on
the shared machine hits both alike; medians are reported. Memory: each configuration runs in a fresh subprocess and
reports its peak RSS above the RSS measured after imports (models, optimizer state and activations; CPU has no
allocator statistics like ``torch.cuda.max_memory_allocated``). Targets: DPO time ≤ 1.25× baseline, DPO memory
≤ +5 % over the baseline's; the LoRA-disabled reference must need less than a second copy.
Writes docs/benchmarks/bench_dpo.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmpref.data.io import atomic_write  # noqa: E402
from mmpref.vision.diffusion.base import DEFAULT_ASSET, load_diffusion, training_target  # noqa: E402
from mmpref.vision.diffusion.scores import denoising_error  # noqa: E402
from mmpref.vision.diffusion.system import DiffusionDPOSystem  # noqa: E402

MACHINE = "2 vCPU AMD EPYC, torch {}, CPU only, 1 thread, shared with other jobs"


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _batch(pairs: int, size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "x_w": torch.rand(pairs, 1, size, size, generator=g) * 2 - 1,
        "x_l": torch.rand(pairs, 1, size, size, generator=g) * 2 - 1,
        "cond": torch.randn(pairs, 1, 384, generator=g),
    }


def dpo_step(system: DiffusionDPOSystem, optimizer: torch.optim.Optimizer, batch: dict) -> None:
    loss = system._step(batch, "train")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def sft_plus_reference(system: DiffusionDPOSystem, optimizer: torch.optim.Optimizer, batch: dict) -> None:
    """The baseline: an SFT (denoising) step on the same 2B images, plus one reference forward on them."""
    x0 = torch.cat([batch["x_w"], batch["x_l"]])
    cond = torch.cat([batch["cond"], batch["cond"]])
    noise = torch.randn_like(x0)
    t = torch.randint(0, system.scheduler.config.num_train_timesteps, (len(x0),))
    xt = system.scheduler.add_noise(x0, noise, t)
    target = training_target(system.scheduler, x0, noise, t)
    loss = denoising_error(system.unet(xt, t, encoder_hidden_states=cond).sample, target).mean()
    with torch.no_grad(), system.reference_mode() as ref:
        ref(xt, t, encoder_hidden_states=cond)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def worker(args: argparse.Namespace) -> dict:
    """One configuration in a fresh process: peak RSS above the post-import baseline over a few steps."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    start_rss = _rss_mb()
    model = load_diffusion(args.model)
    base_copy = copy.deepcopy(model.unet) if args.worker == "dpo_lora_copyref" else None
    reference = "lora" if "lora" in args.worker else "copy"
    system = DiffusionDPOSystem(model.unet, model.scheduler, reference=reference, lr=1e-6)
    if base_copy is not None:  # same LoRA training, but the reference is a second, frozen copy of the base
        system.ref_unet = base_copy.eval().requires_grad_(False)
    optimizer = system.configure_optimizers()
    batch = _batch(args.pairs, model.size)
    step = dpo_step if args.worker.startswith("dpo") else sft_plus_reference
    for _ in range(args.mem_steps):
        step(system, optimizer, batch)
    return {"worker": args.worker, "peak_rss_above_baseline_mb": round(_rss_mb() - start_rss, 1)}


def timing(args: argparse.Namespace) -> dict:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    out = {}
    for reference in ("copy", "lora"):
        model = load_diffusion(args.model)
        system = DiffusionDPOSystem(copy.deepcopy(model.unet), model.scheduler, reference=reference, lr=1e-6)
        optimizer = system.configure_optimizers()
        batch = _batch(args.pairs, model.size)
        times: dict[str, list[float]] = {"dpo": [], "sft_plus_ref": []}
        for i in range(args.warmup + args.steps):
            for name, fn in (("dpo", dpo_step), ("sft_plus_ref", sft_plus_reference)):
                t0 = time.perf_counter()
                fn(system, optimizer, batch)
                if i >= args.warmup:
                    times[name].append(time.perf_counter() - t0)
        dpo, base = statistics.median(times["dpo"]), statistics.median(times["sft_plus_ref"])
        out[reference] = {"dpo_s": round(dpo, 4), "sft_plus_ref_s": round(base, 4), "ratio": round(dpo / base, 3)}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_ASSET))
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--mem-steps", type=int, default=3)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default="docs/benchmarks")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    memory = {}
    for name in ("dpo_copy", "sft_plus_ref_copy", "dpo_lora", "sft_plus_ref_lora", "dpo_lora_copyref"):
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            name,
            "--model",
            args.model,
            "--pairs",
            str(args.pairs),
            "--mem-steps",
            str(args.mem_steps),
        ]
        line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        memory[name] = json.loads(line)["peak_rss_above_baseline_mb"]
    result = {
        "machine": MACHINE.format(torch.__version__),
        "pairs_per_step": args.pairs,
        "time": timing(args),
        "memory_mb": memory,
        "memory_ratio_dpo_vs_sft_plus_ref": {
            k: round(memory[f"dpo_{k}"] / memory[f"sft_plus_ref_{k}"], 3) for k in ("copy", "lora")
        },
        "memory_lora_disabled_vs_second_copy": round(memory["dpo_lora"] / memory["dpo_lora_copyref"], 3),
        "unet_parameter_mb": round(
            sum(p.numel() * 4 for p in load_diffusion(args.model).unet.parameters()) / 2**20, 2
        ),
    }
    t, m = result["time"], result["memory_ratio_dpo_vs_sft_plus_ref"]
    md = "\n".join(
        [
            "# Diffusion-DPO step cost",
            "",
            f"Machine: {result['machine']}. Model: the shipped digits UNet, {args.pairs} pairs per step (64 images).",
            "Reproduce: `OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_dpo.py`.",
            "",
            "| reference | DPO step (s, median) | SFT step + ref forward (s) | time ratio (target ≤ 1.25) | "
            "DPO peak MB | SFT+ref peak MB | memory ratio (target ≤ 1.05) |",
            "|---|---|---|---|---|---|---|",
            *[
                f"| {k} | {t[k]['dpo_s']} | {t[k]['sft_plus_ref_s']} | {t[k]['ratio']} | {memory[f'dpo_{k}']} | "
                f"{memory[f'sft_plus_ref_{k}']} | {m[k]} |"
                for k in ("copy", "lora")
            ],
            "",
            "LoRA training, reference = the base with adapters disabled vs a second frozen copy (DPO peak memory): "
            f"{memory['dpo_lora']} MB vs {memory['dpo_lora_copyref']} MB (ratio "
            f"{result['memory_lora_disabled_vs_second_copy']}); one copy of this UNet's weights is "
            f"{result['unet_parameter_mb']} MB, so on this tiny model activations dominate the peak.",
            "Peak memory = peak RSS above the RSS after imports, one fresh process per configuration.",
            "",
        ]
    )
    out = Path(args.out)
    with atomic_write(out / "bench_dpo.json", "w") as handle:
        json.dump(result, handle, indent=2)
    with atomic_write(out / "bench_dpo.md", "w") as handle:
        handle.write(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
