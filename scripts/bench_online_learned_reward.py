"""On-policy Diffusion-DPO against a LEARNED reward standing in for a person, and the over-optimisation figure.

For each seed, on the shipped digits base:

1. a hidden simulated taste (default ``thin``, the opposite of the default run's ``ink``) labels ``--pairs`` pairs of
   base samples on the preference prompts (classes 0–6); 20 % of them are kept aside;
2. a RewardModelSystem over flattened pixels (MLP, Bradley-Terry) is fitted on the rest, written as a checkpoint and
   read back through ``mmpref.vision.diffusion.rewards.load_reward`` (the path ``mmpref dpo --reward`` takes);
3. on-policy DPO rounds (sample → score with the LEARNED reward → pairs → DPO) tune a fresh copy of the base; the
   same run with the hidden taste itself as the scorer is the oracle reference;
4. both tuned models are judged on held-out prompts (classes 7–9, held-out wording) and held-out seeds: the unpaired
   win rate against independent base samples under the HIDDEN taste and under the learned reward. Their difference
   (learned − hidden) is the over-optimisation gap.

Usage::

    OMP_NUM_THREADS=1 nice .venv/bin/python scripts/bench_online_learned_reward.py --seeds 0 1 2

writes ``docs/benchmarks/online_learned_reward.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from mmpref.data.io import atomic_write
from mmpref.vision.diffusion.base import DEFAULT_ASSET, load_diffusion
from mmpref.vision.diffusion.classifier import load_classifier
from mmpref.vision.diffusion.digits import HELD_OUT_CLASSES, get_taste
from mmpref.vision.diffusion.evaluate import BaseSamples, compare, fidelity, sample_prompts, win_rate
from mmpref.vision.diffusion.learned_reward import (
    LabelledPairs,
    fit_pixel_reward,
    label_base_pairs,
    pair_accuracy,
    save_pixel_reward,
)
from mmpref.vision.diffusion.rewards import load_reward
from mmpref.vision.diffusion.train import DPOConfig, train_dpo

ROOT = Path(__file__).resolve().parents[1]


def held_out_pairs(samples: BaseSamples, taste: Any) -> LabelledPairs:
    """Pairs (noise A vs independent noise B) of base samples on the held-out prompts, ordered by ``taste``."""
    a = samples.a.reshape(-1, *samples.a.shape[2:])
    b = samples.b.reshape(-1, *samples.b.shape[2:])
    sa, sb = taste(a), taste(b)
    keep = sa != sb
    first = (sa >= sb).view(-1, 1, 1, 1)
    return LabelledPairs(torch.where(first, a, b)[keep], torch.where(first, b, a)[keep])


def evaluate(system: Any, model: Any, samples: BaseSamples, hidden: Any, learned: Any, classifier: Any) -> dict:
    """Win rates of the tuned model on the held-out prompts under the hidden taste and under the learned reward."""
    with torch.no_grad():
        tuned = sample_prompts(system.unet, model.scheduler, samples.cond, samples.per_prompt, samples.seed)
    under_hidden = compare(samples.a, samples.b, tuned, hidden)
    under_learned = compare(samples.a, samples.b, tuned, learned)
    return {
        "win_hidden": under_hidden["unpaired_win_rate"],
        "shift_sd_hidden": under_hidden["shift_sd"],
        "win_learned": under_learned["unpaired_win_rate"],
        "shift_sd_learned": under_learned["shift_sd"],
        "gap": under_learned["unpaired_win_rate"] - under_hidden["unpaired_win_rate"],
        "fidelity_tuned": fidelity(classifier, tuned, samples.labels),
    }


def run_seed(seed: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One seed of the whole experiment."""
    t0, c0 = time.perf_counter(), time.process_time()
    hidden = get_taste(args.hidden)
    base = load_diffusion(None)
    classifier = load_classifier(DEFAULT_ASSET / "classifier.safetensors")
    labelled = label_base_pairs(base, hidden, int(round(args.pairs / 0.8)), seed=5000 + seed)
    train, val = labelled.split(0.2, seed=seed)
    reward = fit_pixel_reward(train, steps=args.reward_steps, seed=seed)
    channels, size = int(train.x_w.shape[1]), int(train.x_w.shape[-1])
    learned = load_reward(save_pixel_reward(reward, work / f"reward-seed{seed}.ckpt", channels, size))
    t1 = time.perf_counter()
    samples = BaseSamples(base, classes=HELD_OUT_CLASSES, per_prompt=args.eval_per_prompt, seed=777 + 10 * seed)
    row: dict[str, Any] = {
        "seed": seed,
        "labelled_pairs": len(train),
        "reward_val_accuracy": pair_accuracy(learned, val),
        "reward_held_out_accuracy": pair_accuracy(learned, held_out_pairs(samples, hidden)),
        "reward_seconds": round(t1 - t0, 1),
        "fidelity_base": fidelity(classifier, samples.a, samples.labels),
        "base_vs_base_hidden": win_rate(
            hidden(samples.a.flatten(0, 1)).view(samples.a.shape[:2]),
            hidden(samples.b.flatten(0, 1)).view(samples.b.shape[:2]),
        ),
    }
    cfg = DPOConfig(
        taste=args.hidden, rounds=args.rounds, per_prompt=args.per_prompt, steps_per_round=args.steps, seed=seed
    )
    for name, scorer in (("learned", learned), ("oracle", None)):
        model = load_diffusion(None)
        system, report = train_dpo(model, cfg, scorer=scorer)
        row[name] = evaluate(system, model, samples, hidden, learned, classifier)
        row[name]["scorer"] = report["scorer"]
        row[name]["dpo_cpu_seconds"] = report["dpo_cpu_seconds"]
        row[name]["dpo_seconds"] = report["dpo_seconds"]
        print(f"seed {seed} {name}: {row[name]}", flush=True)
    row["seconds"] = round(time.perf_counter() - t0, 1)
    row["cpu_seconds"] = round(time.process_time() - c0, 1)
    return row


def summary(rows: list[dict[str, Any]], key: str) -> dict[str, float]:
    """Mean, sample SD, min and max over seeds of a (possibly nested ``a.b``) figure."""
    values = []
    for row in rows:
        value: Any = row
        for part in key.split("."):
            value = value[part]
        values.append(float(value))
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "sd": sd, "min": min(values), "max": max(values), "n": len(values)}


FIGURES = (
    ("reward_val_accuracy", "learned reward: accuracy on kept-aside labelled pairs (same prompts)"),
    ("reward_held_out_accuracy", "learned reward: accuracy on held-out-prompt base pairs (hidden-taste order)"),
    ("learned.win_hidden", "**DPO vs learned reward: win rate under the HIDDEN taste**"),
    ("learned.win_learned", "DPO vs learned reward: win rate under the learned reward"),
    ("learned.gap", "**over-optimisation gap** (learned − hidden win rate)"),
    ("learned.shift_sd_hidden", "DPO vs learned reward: hidden-taste shift (base SDs)"),
    ("oracle.win_hidden", "oracle DPO (hidden taste as scorer): win rate under the hidden taste"),
    ("oracle.win_learned", "oracle DPO: win rate under the learned reward"),
    ("oracle.gap", "oracle DPO: learned − hidden win rate"),
    ("fidelity_base", "digit-classifier fidelity, base"),
    ("learned.fidelity_tuned", "fidelity, DPO vs learned reward"),
    ("oracle.fidelity_tuned", "fidelity, oracle DPO"),
    ("base_vs_base_hidden", "base vs independent base samples under the hidden taste (chance)"),
)


def markdown(result: dict[str, Any]) -> str:
    """The benchmark report."""
    a = result["args"]
    lines = [
        "# On-policy DPO against a learned reward: the over-optimisation figure",
        "",
        f"Hidden taste `{a['hidden']}` (the default run uses `ink`); {a['pairs']} labelled pairs of base samples on "
        f"the preference prompts (classes 0–6) train a pixel-MLP RewardModelSystem ({a['reward_steps']} steps); "
        f"on-policy DPO: {a['rounds']} rounds × {a['steps']} steps, {a['per_prompt']} samples per prompt, the "
        "other `DPOConfig` defaults. Judged on held-out prompts (classes 7–9, held-out wording) and held-out seeds, "
        f"{a['eval_per_prompt']} samples per prompt ({6 * a['eval_per_prompt']} unpaired comparisons per model "
        "and seed).",
        "",
        f"Machine: {result['machine']}. Date: {result.get('date', 'not recorded')}.",
        "",
        f"Command: `{result['command']}`",
        "",
        f"| figure | mean ± SD over {len(result['seeds'])} seed(s) | min – max |",
        "|---|---|---|",
    ]
    for key, label in FIGURES:
        s = result["summary"][key]
        lines.append(f"| {label} | {s['mean']:.3f} ± {s['sd']:.3f} | {s['min']:.3f} – {s['max']:.3f} |")
    lines += [
        "",
        "Per seed:",
        "",
        "| seed | reward acc (val / held-out) | learned: win hidden / learned / gap | "
        "oracle: win hidden / learned | CPU s |",
        "|---|---|---|---|---|",
    ]
    for r in result["seeds"]:
        lines.append(
            f"| {r['seed']} | {r['reward_val_accuracy']:.3f} / {r['reward_held_out_accuracy']:.3f} | "
            f"{r['learned']['win_hidden']:.3f} / {r['learned']['win_learned']:.3f} / {r['learned']['gap']:+.3f} | "
            f"{r['oracle']['win_hidden']:.3f} / {r['oracle']['win_learned']:.3f} | {r['cpu_seconds']} |"
        )
    lines += [
        "",
        "The win rates are unpaired: each tuned sample against an independent base sample of the same prompt, "
        "ties ½ (the base against itself: the chance row). The gap is positive when the generator gains more under "
        "the learned reward than under the person's hidden taste: what it learned that the person does not want.",
        "",
    ]
    return "\n".join(lines)


def command(args: argparse.Namespace) -> str:
    """The command line that reproduces a run (every setting spelled out)."""
    return (
        "OMP_NUM_THREADS=1 nice .venv/bin/python scripts/bench_online_learned_reward.py "
        f"--seeds {' '.join(map(str, args.seeds))} --hidden {args.hidden} --pairs {args.pairs} "
        f"--reward-steps {args.reward_steps} --rounds {args.rounds} --steps {args.steps} "
        f"--per-prompt {args.per_prompt} --eval-per-prompt {args.eval_per_prompt} --out {args.out}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--hidden", default="thin", help="the hidden simulated taste (ink, thin, slant)")
    parser.add_argument("--pairs", type=int, default=320, help="labelled pairs the reward model trains on")
    parser.add_argument("--reward-steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=65, help="DPO steps per round")
    parser.add_argument("--per-prompt", type=int, default=25, help="on-policy samples per prompt and round")
    parser.add_argument("--eval-per-prompt", type=int, default=30)
    parser.add_argument("--out", default="docs/benchmarks/online_learned_reward", help="path stem of .json/.md")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for seed in args.seeds:
            rows.append(run_seed(seed, args, Path(work)))
    result = {
        "args": vars(args),
        "command": command(args),
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} logical CPUs (shared with "
        f"other jobs, load average {os.getloadavg()[0]:.1f} at the end), torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s), CPU only",
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "seeds": rows,
        "summary": {key: summary(rows, key) for key, _ in FIGURES},
    }
    out = Path(args.out) if Path(args.out).is_absolute() else ROOT / args.out
    with atomic_write(out.with_suffix(".json"), "w") as handle:
        json.dump(result, handle, indent=2)
    with atomic_write(out.with_suffix(".md"), "w") as handle:
        handle.write(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
