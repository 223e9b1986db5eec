"""The ``mmpref`` command: Lightning jobs (fit/validate/test/predict) from recipes, plus mmpref's own jobs."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from collections.abc import Sequence

LIGHTNING_JOBS = {
    "fit": "train a system from a recipe: mmpref fit --config recipes/reward/synthetic_bt.yaml",
    "validate": "evaluate a system on its validation data (--ckpt_path for a checkpoint)",
    "test": "evaluate a system on its test data (--ckpt_path for a checkpoint)",
    "predict": "score items with a trained system (--ckpt_path for a checkpoint)",
}
OWN_JOBS = {
    "demo": "run the jobs on embedded defaults (reward models, taste, diffusion DPO, Meta-World) into runs/demo/",
    "score": "score images/videos for a user: mmpref score --model DIR --user ID FOLDER [--csv F] [--sheet F.png]",
    "enroll": "create a user profile from labelled pairs/ratings: mmpref enroll --model DIR --user ID LABELS.jsonl",
    "taste-train": "train personal taste from files: mmpref taste-train --pairs F.parquet [--ratings R.csv] --out DIR",
    "taste-eval": "unseen raters vs population and ceiling: mmpref taste-eval HELDOUT.parquet --model DIR --enroll 8",
    "label": "collect human labels: mmpref label serve|annotator|import|export --db labels.sqlite",
    "pbrl": "train a Meta-World policy from preferences: mmpref pbrl --config recipes/control/button_press.yaml",
    "peeling": "BC, then trajectory-DPO finetuning: mmpref peeling --config recipes/control/peeling/push.yaml",
    "regret": "regret vs partial-return model: mmpref regret --config recipes/control/regret/gridworld.yaml",
    "cpl": "CPL, offline from a robomimic file's pairs: mmpref cpl --config recipes/control/cpl/button_press.yaml",
    "pearl": "transfer labels to a new task: mmpref pearl --config recipes/control/pearl/window_open_to_close.yaml",
    "sample": 'sample a diffusion model: mmpref sample [--model DIR] [--compare DIR] "a handwritten 7" --out g.png',
    "dpo": "Diffusion-DPO: mmpref dpo --out DIR [--taste ink] | --pipeline SD_DIR --pairs F.parquet --ties drop",
    "dpo-eval": "fine-tuned vs base diffusion model: mmpref dpo-eval TUNED_DIR [--base DIR] [--taste ink]",
    "dpo-cache": "cache latents + text embeddings once: mmpref dpo-cache --pipeline DIR --pairs F.parquet --ties drop",
    "dpo-online": "on-policy DPO rounds: mmpref dpo-online --pipeline DIR --reward R.ckpt --prompts F.txt --out DIR",
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
    """``mmpref demo``: run mmpref's jobs on embedded defaults and print what they learned."""
    parser = argparse.ArgumentParser(prog="mmpref demo", description=run_demo.__doc__)
    parser.add_argument(
        "--job",
        choices=("all", "reward", "taste", "diffusion", "control"),
        default="all",
        help="reward: reward models on synthetic preferences; taste: personal image scoring; diffusion: "
        "Diffusion-DPO on the digits base; control: a reward and a policy from preferences on Meta-World",
    )
    parser.add_argument("--out", default="runs/demo", help="output folder")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: each job's own)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and the models")
    args = parser.parse_args(argv)
    import torch

    # small models on a CPU often shared with other processes: one thread each is faster than oversubscribing
    # (as the diffusion jobs do); OMP_NUM_THREADS raises it
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    if args.job in ("all", "reward"):
        from mmpref.reward.demo import format_table, run_reward_demo

        results = run_reward_demo(args.out, epochs=args.epochs or 15, seed=args.seed)
        print("\nReward models learned from noisy synthetic preferences (hidden linear utility, 16 features):\n")
        print(format_table(results))
        print(f"\nwritten: {args.out}/metrics.json, {args.out}/metrics.md, {args.out}/reliability.png")
        seconds["reward"], start = time.perf_counter() - start, time.perf_counter()
    if args.job in ("all", "taste"):
        try:
            from mmpref.vision.taste.demo import run_taste_demo
        except ImportError as err:
            print(
                f"mmpref demo: the taste job needs the vision extra ({err}); run: bash scripts/setup.sh vision",
                file=sys.stderr,
            )
            return 2
        out = f"{args.out}/taste"
        f = run_taste_demo(out, epochs=args.epochs, seed=args.seed)
        print(f"\nPersonal image scoring: {f['heldout_users']} unseen users enrolled from 8 labelled pairs each")
        print(
            f"  personal accuracy {f['accuracy_8_labels_personal']:.3f} vs population model "
            f"{f['accuracy_8_labels_population']:.3f} (noise ceiling {f['noise_ceiling']:.3f}); "
            f"ECE {f['ece_8_labels_personal']:.3f}; enrollment <= {1e3 * f['enroll_seconds_max']:.1f} ms"
        )
        print(
            f"  person-0, 24 new images: Kendall tau with their hidden taste {f['person0_kendall_tau_personal']:.2f} "
            f"(population model {f['person0_kendall_tau_population']:.2f})\n"
        )
        print(f["table"])
        print(
            f"\nwritten: {out}/learning_curve.png, {out}/person-0-contact-sheet.png, {out}/person-0-scores.csv, "
            f"{out}/model/, {out}/metrics.json"
        )
        seconds["taste"], start = time.perf_counter() - start, time.perf_counter()
    for job, module, extra, files in (
        ("diffusion", "mmpref.vision.diffusion.demo", "vision", ("before_after.png",)),
        ("control", "mmpref.control.demo", "control", ("reward_agreement.png", "success.png", "policy.safetensors")),
    ):
        if args.job not in ("all", job):
            continue
        try:
            demo = importlib.import_module(module)
        except ImportError as err:
            print(
                f"mmpref demo: the {job} job needs the {extra} extra ({err}); run: bash scripts/setup.sh {extra}",
                file=sys.stderr,
            )
            return 2
        out = f"{args.out}/{job}"
        print("\n" + demo.format_summary(getattr(demo, f"run_{job}_demo")(out, seed=args.seed)))
        print(f"written: {', '.join(f'{out}/{name}' for name in (*files, 'metrics.json'))}")
        seconds[job], start = time.perf_counter() - start, time.perf_counter()
    if len(seconds) > 1:
        print("\ntime: " + ", ".join(f"{job} {s:.0f} s" for job, s in seconds.items()))
    return 0


def run_score(argv: Sequence[str]) -> int:
    """``mmpref score``: score images and videos for a user (or the population) with a personal taste model."""
    parser = argparse.ArgumentParser(prog="mmpref score", description=run_score.__doc__)
    parser.add_argument("inputs", nargs="+", help="image/video files, folders, or .txt lists of paths")
    parser.add_argument("--model", required=True, help="personal taste model folder")
    parser.add_argument("--user", default=None, help="user id (default: the population)")
    parser.add_argument("--csv", default=None, help="write the sorted table as CSV")
    parser.add_argument("--json", default=None, help="write the sorted table as JSON")
    parser.add_argument("--sheet", default=None, help="write a PNG contact sheet with the scores drawn on")
    parser.add_argument("--cache", default=None, help="embedding cache folder (default: <model>/cache)")
    parser.add_argument("--top", type=int, default=None, help="show only the best N in the terminal")
    args = parser.parse_args(argv)
    from mmpref.vision.media import MediaError
    from mmpref.vision.taste.scoring import (
        ScoringError,
        TasteScorer,
        collect_media,
        contact_sheet,
        format_table,
        write_table,
    )

    try:
        scorer = TasteScorer(args.model, cache_dir=args.cache)
        items = scorer.score(collect_media(args.inputs), args.user)
    except (ScoringError, MediaError, FileNotFoundError, ValueError) as err:
        print(f"mmpref score: {err}", file=sys.stderr)
        return 2
    print(format_table(items, args.top))
    for path in (args.csv, args.json):
        if path:
            write_table(items, path)
    if args.sheet:
        contact_sheet(items, args.sheet, title=f"scores for {args.user or 'the population'}, best first")
    return 0


def run_enroll(argv: Sequence[str]) -> int:
    """``mmpref enroll``: create a user profile from a JSONL file of labelled pairs and/or ratings."""
    parser = argparse.ArgumentParser(prog="mmpref enroll", description=run_enroll.__doc__)
    parser.add_argument("labels", nargs="?", help='JSONL: {"type": "pair", "a": img, "b": img, "label": 1} / ratings')
    parser.add_argument("--model", required=True, help="personal taste model folder")
    parser.add_argument("--user", required=True, help="id of the new user")
    parser.add_argument("--store", default=None, help="read the labels from a label store instead (mmpref label)")
    parser.add_argument("--annotator", default=None, help="with --store: whose labels (default: --user)")
    parser.add_argument(
        "--media-root",
        action="append",
        default=None,
        help="folder the labels' media may live in (repeatable; default: the labels file's folder)",
    )
    parser.add_argument("--cache", default=None, help="embedding cache folder (default: <model>/cache)")
    parser.add_argument("--rater", default=None, help="with a .parquet labels file: whose pairs (default: --user)")
    parser.add_argument("--ask", type=int, default=0, help="ask N pairs chosen from --pool in the terminal")
    parser.add_argument("--pool", nargs="+", default=None, help="with --ask: the user's images (files/folders)")
    parser.add_argument("--labels-out", default=None, help="with --ask: write the answers as a JSONL labels file")
    args = parser.parse_args(argv)
    if args.ask:
        from mmpref.vision.taste.jobs import run_active_enroll

        return run_active_enroll(args)
    from mmpref.data import DataError, read_jsonl_manifest
    from mmpref.vision.media import MediaError
    from mmpref.vision.taste.scoring import ScoringError, TasteScorer

    if (args.labels is None) == (args.store is None):
        print("mmpref enroll: give either a labels file or --store", file=sys.stderr)
        return 2
    try:
        if args.store is not None:  # the labels first: they are cheaper to check than the model is to load
            from mmpref.feedback.hooks import records_for_annotator
            from mmpref.feedback.store import LabelStore

            # create=False: a mistyped --store is an error, not a new empty store
            records = records_for_annotator(LabelStore(args.store, create=False), args.annotator or args.user)
        elif str(args.labels).lower().endswith(".parquet"):  # Pick-a-Pic-style, one rater's rows
            from mmpref.vision.taste.jobs import read_enroll_parquet

            records = read_enroll_parquet(args.labels, args.rater or args.user)
        else:
            records = read_jsonl_manifest(args.labels, media_root=args.media_root)
        scorer = TasteScorer(args.model, cache_dir=args.cache)
        profile = scorer.enroll_from_records(args.user, records)
    except (DataError, ScoringError, MediaError, FileNotFoundError, ValueError) as err:
        print(f"mmpref enroll: {err}", file=sys.stderr)
        return 2
    print(
        f"enrolled {profile.user_id!r} from {profile.num_labels} comparisons; code uncertainty "
        f"{profile.uncertainty:.3f}; profile: {scorer.profile_path(args.user)}"
    )
    return 0


# job name -> "module:function" taking argv and returning an exit code; imported only when the job runs, so one
# family's optional extra is never needed by another family's job. A new job adds one line here and one in OWN_JOBS.
_RUNNERS = {
    "demo": "mmpref.cli:run_demo",
    "score": "mmpref.cli:run_score",
    "enroll": "mmpref.cli:run_enroll",
    "taste-train": "mmpref.vision.taste.jobs:run_taste_train",
    "taste-eval": "mmpref.vision.taste.jobs:run_taste_eval",
    "label": "mmpref.feedback.jobs:run_label",
    "pbrl": "mmpref.control.pbrl.job:run_pbrl",
    "peeling": "mmpref.control.peeling.job:run_peeling",
    "regret": "mmpref.control.regret.job:run_regret",
    "cpl": "mmpref.control.cpl.job:run_cpl",
    "pearl": "mmpref.control.pearl.job:run_pearl",
    "sample": "mmpref.vision.diffusion.jobs:run_sample",
    "dpo": "mmpref.vision.diffusion.jobs:run_dpo",
    "dpo-eval": "mmpref.vision.diffusion.jobs:run_dpo_eval",
    "dpo-cache": "mmpref.vision.diffusion.jobs:run_dpo_cache",
    "dpo-online": "mmpref.vision.diffusion.jobs:run_dpo_online",
}


def _resolve(target: str):
    import importlib

    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _input_error(err: BaseException) -> str | None:
    """The one-line message for an error about the user's input, or ``None`` for a bug (which keeps its traceback).

    Input errors are mmpref's own (:class:`mmpref.errors.MmprefError`: data, media, recipe, store, scoring,
    pipeline and model-folder errors, whose messages name the file, the record or field and the fix) and operating
    system errors about a file (missing, a folder, no permission, unreadable HDF5). An error raised ``from`` an
    input error (how Lightning and jsonargparse wrap what a recipe's classes raise) is one too: ``__cause__`` is
    followed, never ``__context__``, so a bug inside an ``except`` block keeps its traceback.
    """
    from mmpref.errors import MmprefError

    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, MmprefError):
            return str(err)
        if isinstance(err, OSError) and getattr(err, "filename", None):
            reason = err.strerror or str(err)
            return f"{err.filename}: {reason}; check the path and that it is a readable file of the expected kind"
        if isinstance(err, (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)):
            return str(err)  # raised by mmpref's loaders with the path and the fix in the message
        if _raised_by_jsonargparse(err):  # its verdict on a recipe: a value no class path or type accepts
            return f"the recipe does not fit its classes: {err}"
        err = err.__cause__
    return None


def _raised_by_jsonargparse(err: BaseException) -> bool:
    """Whether ``err`` (a ``ValueError``/``TypeError`` or jsonargparse's own) was raised inside jsonargparse."""
    import traceback

    if type(err).__module__.startswith("jsonargparse"):
        return True
    frames = traceback.extract_tb(err.__traceback__) if isinstance(err, (ValueError, TypeError)) else []
    return bool(frames) and f"{os.sep}jsonargparse{os.sep}" in frames[-1].filename


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mmpref`` console script.

    A job that fails on bad input (any :class:`mmpref.errors.MmprefError`, or a missing/unreadable named file) prints
    ``mmpref <job>: <message>`` to stderr and returns 2; any other exception is a bug and propagates with its
    traceback.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no model hub at run time: fail fast instead of retrying
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    try:
        return _run(argv)
    except Exception as err:
        message = _input_error(err)
        if message is None:
            raise
        job = argv[0] if argv[0] in LIGHTNING_JOBS or argv[0] in _RUNNERS else ""
        print(f"mmpref {job}: {message}" if job else f"mmpref: {message}", file=sys.stderr)
        return 2


def _run(argv: list[str]) -> int:
    job, rest = argv[0], argv[1:]
    if job in LIGHTNING_JOBS:
        run_lightning([job, *rest])
        return 0
    runner = _RUNNERS.get(job)
    if runner is not None:
        return _resolve(runner)(rest)
    if job == "version":
        from mmpref import __version__

        print(__version__)
        return 0
    print(f"mmpref: unknown job {job!r}\n\n{_usage()}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
