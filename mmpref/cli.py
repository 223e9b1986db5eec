"""The ``mmpref`` command: Lightning jobs (fit/validate/test/predict) from recipes, plus mmpref's own jobs."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

LIGHTNING_JOBS = {
    "fit": "train a system from a recipe: mmpref fit --config recipes/reward/synthetic_bt.yaml",
    "validate": "evaluate a system on its validation data (--ckpt_path for a checkpoint)",
    "test": "evaluate a system on its test data (--ckpt_path for a checkpoint)",
    "predict": "score items with a trained system (--ckpt_path for a checkpoint)",
}
OWN_JOBS = {
    "demo": "run the main job on embedded defaults (the reward-model demo for now) and write runs/demo/",
    "version": "print mmpref's version",
}


def _usage() -> str:
    width = max(map(len, [*LIGHTNING_JOBS, *OWN_JOBS]))
    lines = ["usage: mmpref <job> [options]    (mmpref <job> --help for a job's options)", "", "jobs:"]
    lines += [f"  {name:<{width}}  {text}" for name, text in {**OWN_JOBS, **LIGHTNING_JOBS}.items()]
    return "\n".join(lines)


def run_lightning(argv: Sequence[str]) -> None:
    """Hand a Lightning job to LightningCLI; systems and data modules are chosen by ``class_path`` in the recipe."""
    from lightning.pytorch.cli import LightningCLI

    LightningCLI(
        model_class=None,
        datamodule_class=None,
        subclass_mode_model=True,
        subclass_mode_data=True,
        trainer_defaults={"default_root_dir": "runs", "log_every_n_steps": 10},
        save_config_kwargs={"overwrite": True},
        args=list(argv),
        parser_kwargs={"prog": "mmpref"},
    )


def run_demo(argv: Sequence[str]) -> int:
    """``mmpref demo``: train reward models on embedded synthetic preferences and print what they learned."""
    parser = argparse.ArgumentParser(prog="mmpref demo", description=run_demo.__doc__)
    parser.add_argument("--out", default="runs/demo", help="folder for metrics.json, metrics.md, reliability.png")
    parser.add_argument("--epochs", type=int, default=15, help="training epochs per loss")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and the models")
    args = parser.parse_args(argv)
    from mmpref.reward.demo import format_table, run_reward_demo

    results = run_reward_demo(args.out, epochs=args.epochs, seed=args.seed)
    print("\nReward models learned from noisy synthetic preferences (hidden linear utility, 16 features):\n")
    print(format_table(results))
    print(f"\nwritten: {args.out}/metrics.json, {args.out}/metrics.md, {args.out}/reliability.png")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mmpref`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no model hub at run time: fail fast instead of retrying
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    job, rest = argv[0], argv[1:]
    if job in LIGHTNING_JOBS:
        run_lightning([job, *rest])
        return 0
    if job == "demo":
        return run_demo(rest)
    if job == "version":
        from mmpref import __version__

        print(__version__)
        return 0
    print(f"mmpref: unknown job {job!r}\n\n{_usage()}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
