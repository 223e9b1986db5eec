"""CLI jobs: ``mmpref sample``, ``mmpref dpo`` (digits default or a local pipeline), ``dpo-cache``, ``dpo-eval``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mmpref.data.io import atomic_write

if TYPE_CHECKING:
    from mmpref.vision.diffusion.pipelines import PipelineDPOConfig
    from mmpref.vision.diffusion.train import DPOConfig

logger = logging.getLogger(__name__)


def _say(text: str) -> None:
    """The job's result line for the terminal (the command's output, not a log record)."""
    sys.stdout.write(text + "\n")


def _threads() -> None:
    # several processes share this machine's cores: one thread each is 5-10x faster than oversubscribing
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))


def run_sample(argv: Sequence[str]) -> int:
    """``mmpref sample``: sample images for prompts from a digits model; optional side-by-side with a base model."""
    from mmpref.vision.diffusion.base import DEFAULT_ASSET, load_diffusion
    from mmpref.vision.diffusion.evaluate import save_grid

    parser = argparse.ArgumentParser(prog="mmpref sample", description=run_sample.__doc__)
    parser.add_argument("prompts", nargs="+", help='prompts, e.g. "a handwritten seven, thick strokes"')
    parser.add_argument("--model", default=str(DEFAULT_ASSET), help="model folder (default: the shipped base)")
    parser.add_argument("--compare", default=None, help="a second model folder: its samples (same seeds) go beside")
    parser.add_argument("--n", type=int, default=8, help="samples per prompt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps")
    parser.add_argument("--out", default="samples.png", help="PNG grid: one row per prompt (and model)")
    args = parser.parse_args(list(argv))
    _threads()
    models = [load_diffusion(args.model)] + ([load_diffusion(args.compare)] if args.compare else [])
    prompts = [p for p in args.prompts for _ in range(args.n)]
    outs = [m.sample(prompts, seed=args.seed, steps=args.steps) for m in models]
    rows = []
    for i in range(len(args.prompts)):
        rows += [o[i * args.n : (i + 1) * args.n] for o in outs]
    path = save_grid(rows, args.out)
    _say(f"wrote {path} ({len(args.prompts)} prompt(s) × {args.n} sample(s) × {len(models)} model(s))")
    return 0


def run_dpo(argv: Sequence[str]) -> int:
    """``mmpref dpo``: Diffusion-DPO on the digits default (simulated taste) or on a local SD pipeline."""
    if any(a == "--pipeline" or a.startswith("--pipeline=") for a in argv):
        return run_pipeline_dpo(argv)
    parser = argparse.ArgumentParser(prog="mmpref dpo", description=run_dpo.__doc__)
    parser.add_argument("--out", required=True, help="output folder (a model folder, LoRA weights or a pipeline)")
    parser.add_argument("--model", default=None, help="digits model folder (default: the shipped base)")
    parser.add_argument(
        "--config", default=None, help="digits: a YAML recipe of DPOConfig fields (recipes/diffusion/)"
    )
    parser.add_argument("--taste", default=None, help="digits: the simulated taste (ink, thin, slant; default ink)")
    parser.add_argument(
        "--reward",
        default=None,
        help="digits: score on-policy samples with this reward model instead of --taste: a personal taste model "
        "folder, a unified reward model folder or a RewardModelSystem .ckpt",
    )
    parser.add_argument(
        "--reward-user", default=None, help="the taste model's user id (default: the population) or unified dimension"
    )
    parser.add_argument("--loss", default=None, help="a pairwise or listwise loss of mmpref.losses (bradley_terry)")
    parser.add_argument("--beta", type=float, default=None, help="β_dpo of the official code (5000)")
    parser.add_argument("--lr", type=float, default=None, help="default: 1.5e-6 (digits), 1e-4 (pipeline LoRA)")
    parser.add_argument("--steps", type=int, default=None, help="DPO steps (per round; 130)")
    parser.add_argument("--rounds", type=int, default=None, help="on-policy rounds (digits; 1)")
    parser.add_argument("--per-prompt", type=int, default=None, help="on-policy samples per prompt (digits; 50)")
    parser.add_argument("--stop-on-collapse", action="store_true", help="stop and keep the last good weights")
    parser.add_argument("--seed", type=int, default=0)
    parser.epilog = "a real pipeline: mmpref dpo --pipeline DIR --pairs F.parquet --ties drop --out DIR (--help there)"
    args = parser.parse_args(list(argv))
    _threads()
    from mmpref.vision.diffusion.base import DEFAULT_ASSET, load_diffusion, save_diffusion
    from mmpref.vision.diffusion.train import DPOConfig, train_dpo

    cfg = load_recipe(args.config) if args.config else DPOConfig()
    flags = {
        "taste": args.taste,
        "reward": args.reward,
        "reward_user": args.reward_user,
        "loss": args.loss,
        "beta": args.beta,
        "lr": args.lr,
        "steps_per_round": args.steps,
        "rounds": args.rounds,
        "per_prompt": args.per_prompt,
        "stop_on_collapse": args.stop_on_collapse or None,
    }
    cfg = dataclasses.replace(cfg, seed=args.seed, **{k: v for k, v in flags.items() if v is not None})
    if cfg.users:
        parser.error("personalized runs keep user vectors outside the UNet folder; use scripts/run_dpo_eval.py")
    if cfg.reward_user and not cfg.reward:
        parser.error("--reward-user needs --reward (a taste model folder or a unified reward model folder)")
    scorer = None
    if cfg.reward:
        from mmpref.vision.diffusion.rewards import load_reward

        scorer = load_reward(cfg.reward, user=cfg.reward_user)  # input errors exit 2 (MmprefError, FileNotFound)
        _say(f"on-policy samples scored by the {scorer.describe()}")
    model = load_diffusion(args.model)
    system, report = train_dpo(model, cfg, scorer=scorer)
    meta = dict(model.meta, dpo=report)
    out = save_diffusion(args.out, system.unet, model.scheduler, model.prompts, meta)
    source = Path(args.model) if args.model else DEFAULT_ASSET
    if (source / "classifier.safetensors").is_file():  # the fidelity guard travels with the model
        shutil.copyfile(source / "classifier.safetensors", out / "classifier.safetensors")
    _say(f"wrote {out}; DPO took {report['dpo_seconds']} s; last metrics: {report['rounds'][-1]['metrics']}")
    return 0


def _prepare(cfg: PipelineDPOConfig) -> tuple[Any, Any]:
    """Check the pipeline folder, then build or refresh the cache; input errors name their field (exit 2)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from mmpref.recipe import blame
    from mmpref.vision.diffusion.pipelines import detect_family, load_family, prepare_cache

    diffusers_logging.disable_progress_bar()  # one line per job, not a bar per loaded part
    transformers_logging.disable_progress_bar()
    with blame("pipeline"):
        detect_family(cfg.pipeline)
        family = load_family(cfg.pipeline)
    with blame("pairs"):
        return prepare_cache(cfg, family)


def _cache_line(cache: Any) -> str:
    return (
        f"cache {cache.folder}: {cache.pairs} pairs, {cache.encoded} encoded, {cache.reused} already cached, "
        f"{cache.seconds} s"
    )


def run_pipeline_dpo(argv: Sequence[str]) -> int:
    """``mmpref dpo --pipeline DIR --pairs F.parquet --ties drop --out DIR``: Diffusion-DPO on a local pipeline.

    SD 1.x/2.x, SDXL or SD3-class flow (read from model_index.json); LoRA weights (diffusers format) or a full
    pipeline are written to --out. Settings: fields of PipelineDPOConfig, from --config recipes/diffusion/<family>.yaml
    and/or --FIELD VALUE.
    """
    from mmpref.recipe import RecipeError, run_job
    from mmpref.vision.diffusion.pipelines import PipelineDPOConfig, save_finetuned, train

    def body(cfg: PipelineDPOConfig, options: Any) -> int:
        if not options.out:
            raise RecipeError("--out is required: the folder the LoRA weights or the tuned pipeline go to")
        _threads()
        prepared = _prepare(cfg)
        _say(_cache_line(prepared[1]))
        family, system, report = train(cfg, prepared=prepared)
        if report["global_rank"] != 0:  # strategy=ddp runs this body on every rank; rank 0 holds the same weights
            return 0
        out = save_finetuned(family, system, cfg.mode, options.out, cfg.pipeline)
        with atomic_write(Path(f"{out}.report.json"), "w") as handle:
            json.dump(report, handle, indent=2, default=str)
        metrics = {k: round(v, 4) for k, v in report["metrics"].items()}
        _say(
            f"wrote {out} ({family.name}, {cfg.mode}); {report['steps']} steps in {report['train_seconds']} s; "
            f"{metrics}"
        )
        return 0

    options = {"--out": {"default": None, "help": "output folder: LoRA weights, or the tuned pipeline (mode full)"}}
    return run_job("mmpref dpo", PipelineDPOConfig, argv, body, options, run_pipeline_dpo.__doc__)


def run_dpo_cache(argv: Sequence[str]) -> int:
    """``mmpref dpo-cache --pipeline DIR --pairs F.parquet --ties drop``: encode latents + text once, on disk.

    Later ``mmpref dpo`` runs with the same pipeline, resolution, resize policy and cache settings skip the VAE and
    the text encoders; pairs are keyed by content, so a re-written or extended Parquet file only encodes new pairs.
    """
    from mmpref.recipe import run_job
    from mmpref.vision.diffusion.pipelines import PipelineDPOConfig

    def body(cfg: PipelineDPOConfig, options: Any) -> int:
        _threads()
        _say(_cache_line(_prepare(cfg)[1]))
        return 0

    return run_job("mmpref dpo-cache", PipelineDPOConfig, argv, body, None, run_dpo_cache.__doc__)


def run_dpo_online(argv: Sequence[str]) -> int:
    """``mmpref dpo-online --pipeline DIR --reward PATH --prompts F.txt --out DIR``: on-policy DPO rounds.

    Each round samples --per-prompt images per prompt from the pipeline with the previous round's LoRA, scores them
    with the reward model (a taste model folder with --reward-user, a unified reward folder or a RewardModelSystem
    .ckpt), writes best-vs-worst (or random, gap-filtered) pairs to OUT/round-r/pairs.parquet and trains LoRA on them
    (OUT/round-r/lora). DPO settings: fields of PipelineDPOConfig, from --config recipes/diffusion/pipelines/*.yaml
    and/or --FIELD VALUE (pairs and ties are set by the loop).
    """
    from mmpref.recipe import RecipeError, blame, run_job
    from mmpref.vision.diffusion.online_pipeline import OnlineSettings, read_prompts, run_online
    from mmpref.vision.diffusion.pipelines import PipelineDPOConfig

    if any(a == "--pairs" or a.startswith("--pairs=") for a in argv):
        print("mmpref dpo-online: --pairs is not an option here: each round writes its own pairs", file=sys.stderr)
        return 2

    def body(cfg: PipelineDPOConfig, options: Any) -> int:
        for name in ("out", "reward", "prompts"):
            if not getattr(options, name):
                raise RecipeError(f"--{name} is required (see --help)")
        if cfg.mode != "lora":
            raise RecipeError("field 'mode': dpo-online tunes LoRA adapters round after round; set mode: lora")
        with blame("online settings"):
            settings = OnlineSettings(
                rounds=options.rounds,
                per_prompt=options.per_prompt,
                sample_steps=options.sample_steps,
                guidance=options.guidance,
                pairing=options.pairing,
                min_gap_sd=options.min_gap_sd,
                seed=cfg.seed,
            )
        _threads()
        from mmpref.vision.diffusion.rewards import load_reward

        with blame("prompts"):
            prompts = read_prompts(options.prompts)  # a missing file exits 2 naming it (FileNotFoundError)
        scorer = load_reward(options.reward, user=options.reward_user)  # input errors exit 2 (MmprefError)
        _say(f"samples scored by the {scorer.describe()}")
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        diffusers_logging.disable_progress_bar()  # one line per round, not a bar per loaded part
        transformers_logging.disable_progress_bar()
        with blame("pipeline"):
            from mmpref.vision.diffusion.pipelines import detect_family

            detect_family(cfg.pipeline)
        report = run_online(cfg, prompts, scorer, settings, options.out, say=_say)  # input errors: MmprefError
        means = ", ".join(f"{r['mean_reward']:+.4f}" for r in report["rounds"])
        _say(f"wrote {options.out}; mean reward per round: {means}; final: {report['final_mean_reward']:+.4f}")
        return 0

    options = {
        "--out": {"default": None, "help": "output folder: round-r/{pairs.parquet, lora, report.json}, report.json"},
        "--reward": {"default": None, "help": "reward model: taste folder, unified reward folder or .ckpt"},
        "--reward-user": {"default": None, "help": "the taste model's user id (default: population) or dimension"},
        "--prompts": {"default": None, "help": "a text file, one prompt per line"},
        "--rounds": {"type": int, "default": 2, "help": "sample → score → DPO rounds"},
        "--per-prompt": {"type": int, "default": 4, "help": "samples per prompt and round"},
        "--sample-steps": {"type": int, "default": 10, "help": "denoising steps of each sample"},
        "--guidance": {"type": float, "default": 5.0, "help": "classifier-free guidance of the samples"},
        "--pairing": {"default": "best_worst", "help": "best_worst (of all N of a prompt) or random"},
        "--min-gap-sd": {"type": float, "default": 0.0, "help": "drop pairs closer than this many score SDs"},
    }
    fixed = ["--pairs", "-", "--ties", "drop"]  # placeholders: every round sets its own pairs file
    doc, hidden = run_dpo_online.__doc__, ("pairs", "ties")
    return run_job("mmpref dpo-online", PipelineDPOConfig, [*fixed, *argv], body, options, doc, hidden)


def load_recipe(path: str | Path) -> DPOConfig:
    """A ``DPOConfig`` from a YAML recipe; unknown keys raise naming the valid ones (lists become tuples)."""
    import yaml

    from mmpref.vision.diffusion.train import DPOConfig

    data = yaml.safe_load(Path(path).read_text()) or {}
    valid = {f.name for f in dataclasses.fields(DPOConfig)}
    unknown = sorted(set(data) - valid)
    if unknown:
        raise ValueError(f"{path}: unknown field(s) {unknown}; valid fields: {', '.join(sorted(valid))}")
    return DPOConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def run_dpo_eval(argv: Sequence[str]) -> int:
    """``mmpref dpo-eval``: a fine-tuned digits model against its base on held-out prompts (win rates, fidelity)."""
    from mmpref.vision.diffusion.base import DEFAULT_ASSET, load_diffusion
    from mmpref.vision.diffusion.classifier import load_classifier
    from mmpref.vision.diffusion.digits import HELD_OUT_CLASSES, get_taste
    from mmpref.vision.diffusion.evaluate import BaseSamples, evaluate_against_base
    from mmpref.vision.diffusion.system import DiffusionDPOSystem

    parser = argparse.ArgumentParser(prog="mmpref dpo-eval", description=run_dpo_eval.__doc__)
    parser.add_argument("model", help="the fine-tuned model folder")
    parser.add_argument("--base", default=str(DEFAULT_ASSET), help="the base model folder")
    parser.add_argument("--taste", default="ink", help="held-out preference function (ink, thin, slant)")
    parser.add_argument("--per-prompt", type=int, default=50, help="samples per evaluation prompt")
    parser.add_argument("--out", default="dpo_eval", help="folder for report.json and grid.png")
    args = parser.parse_args(list(argv))
    _threads()
    base, tuned = load_diffusion(args.base), load_diffusion(args.model)
    classifier = load_classifier(Path(args.base) / "classifier.safetensors")
    system = DiffusionDPOSystem(tuned.unet, base.scheduler)
    system.ref_unet = base.unet.eval().requires_grad_(False)  # implicit rewards against the real base
    samples = BaseSamples(base, per_prompt=args.per_prompt)
    out = Path(args.out)
    report = evaluate_against_base(
        base, system, samples, get_taste(args.taste), classifier, HELD_OUT_CLASSES, grid_path=out / "grid.png"
    )
    with atomic_write(out / "report.json", "w") as handle:
        json.dump(report, handle, indent=2)
    h = report["held_out"]
    _say(
        f"held-out classes {list(HELD_OUT_CLASSES)}: unpaired win {100 * h['unpaired_win_rate']:.1f} %, paired "
        f"{100 * h['paired_win_rate']:.1f} %, shift {h['shift_sd']:+.2f} SD; fidelity "
        f"{100 * report['fidelity_base']:.1f} → {100 * report['fidelity_tuned']:.1f} %; implicit accuracy "
        f"{100 * report['implicit_accuracy_held_out_pairs']:.1f} %; wrote {out}"
    )
    return 0
