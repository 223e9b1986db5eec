"""The ``mmpref`` command: Lightning jobs (fit/validate/test/predict) from recipes, plus mmpref's own jobs."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

LIGHTNING_JOBS = {
    "fit": "train a system from a recipe: mmpref fit --config recipes/reward/synthetic_bt.yaml",
    "validate": "evaluate a system on its validation data (--ckpt_path for a checkpoint)",
    "test": "evaluate a system on its test data (--ckpt_path for a checkpoint)",
    "predict": "score items with a trained system (--ckpt_path for a checkpoint)",
}
OWN_JOBS = {
    "demo": "run the jobs on embedded defaults (reward models; personal image scoring) and write runs/demo/",
    "score": "score images/videos for a user: mmpref score --model DIR --user ID FOLDER [--csv F] [--sheet F.png]",
    "enroll": "create a user profile from labelled pairs/ratings: mmpref enroll --model DIR --user ID LABELS.jsonl",
    "label": "collect human labels: mmpref label serve|annotator|import|export --db labels.sqlite",
    "pbrl": "train a Meta-World policy from preferences: mmpref pbrl --config recipes/control/button_press.yaml",
    "peeling": "BC, then trajectory-DPO finetuning: mmpref peeling --config recipes/control/peeling/push.yaml",
    "regret": "regret vs partial-return model: mmpref regret --config recipes/control/regret/gridworld.yaml",
    "cpl": "CPL, offline from a robomimic file's pairs: mmpref cpl --config recipes/control/cpl/button_press.yaml",
    "pearl": "transfer labels to a new task: mmpref pearl --config recipes/control/pearl/window_open_to_close.yaml",
    "sample": 'sample a diffusion model: mmpref sample [--model DIR] [--compare DIR] "a handwritten 7" --out g.png',
    "dpo": "Diffusion-DPO: mmpref dpo --out DIR [--taste ink] | --pipeline SD_DIR --pairs F.parquet --ties drop",
    "dpo-eval": "fine-tuned vs base diffusion model: mmpref dpo-eval TUNED_DIR [--base DIR] [--taste ink]",
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
        choices=("all", "reward", "taste"),
        default="all",
        help="reward: reward models on synthetic preferences; taste: personal image scoring",
    )
    parser.add_argument("--out", default="runs/demo", help="output folder")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: each job's own)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and the models")
    args = parser.parse_args(argv)
    if args.job in ("all", "reward"):
        from mmpref.reward.demo import format_table, run_reward_demo

        results = run_reward_demo(args.out, epochs=args.epochs or 15, seed=args.seed)
        print("\nReward models learned from noisy synthetic preferences (hidden linear utility, 16 features):\n")
        print(format_table(results))
        print(f"\nwritten: {args.out}/metrics.json, {args.out}/metrics.md, {args.out}/reliability.png")
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
        f = run_taste_demo(out, epochs=args.epochs or 25, seed=args.seed)
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
    parser.add_argument("--cache", default=None, help="embedding cache folder (default: <model>/cache)")
    args = parser.parse_args(argv)
    from mmpref.data import DataError, read_jsonl_manifest
    from mmpref.vision.media import MediaError
    from mmpref.vision.taste.scoring import ScoringError, TasteScorer

    if (args.labels is None) == (args.store is None):
        print("mmpref enroll: give either a labels file or --store", file=sys.stderr)
        return 2
    try:
        scorer = TasteScorer(args.model, cache_dir=args.cache)
        if args.store is not None:
            from mmpref.feedback.hooks import records_for_annotator
            from mmpref.feedback.store import LabelStore

            records = records_for_annotator(LabelStore(args.store), args.annotator or args.user)
        else:
            records = read_jsonl_manifest(args.labels)
        profile = scorer.enroll_from_records(args.user, records)
    except (DataError, ScoringError, MediaError, FileNotFoundError, ValueError) as err:
        print(f"mmpref enroll: {err}", file=sys.stderr)
        return 2
    print(
        f"enrolled {profile.user_id!r} from {profile.num_labels} comparisons; code uncertainty "
        f"{profile.uncertainty:.3f}; profile: {scorer.profile_path(args.user)}"
    )
    return 0


def run_pbrl(argv: Sequence[str]) -> int:
    """``mmpref pbrl``: online preference-based RL in Meta-World (PEBBLE-style), resumable."""
    from mmpref.recipe import RecipeError, add_recipe_arguments, load_recipe

    parser = argparse.ArgumentParser(prog="mmpref pbrl", description=run_pbrl.__doc__)
    add_recipe_arguments(parser, "mmpref.control.pbrl.loop.PbRLConfig")
    parser.add_argument("--out", default=None, help="output folder (default runs/pbrl/<task>-seed<seed>)")
    parser.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint")
    parser.add_argument("--no-video", action="store_true", help="skip the MP4 of the final policy")
    args = parser.parse_args(argv)
    from mmpref.control.pbrl.loop import PbRLConfig, PbRLLoop
    from mmpref.control.video import plot_success_curve, record_policy

    try:
        config = load_recipe(PbRLConfig, args.config, args.set)
    except RecipeError as err:
        print(f"mmpref pbrl: {err}", file=sys.stderr)
        return 2
    out = Path(args.out or f"runs/pbrl/{config.task}-seed{config.seed}")
    try:
        loop = PbRLLoop.load(out / "checkpoint") if args.resume else PbRLLoop(config)
    except (ValueError, FileNotFoundError) as err:
        print(f"mmpref pbrl: {err}", file=sys.stderr)
        return 2
    history = loop.run(checkpoint=out / "checkpoint")
    plot_success_curve(history, out / "success_curve.png", title=f"{config.task}: PbRL ({config.reward} reward)")
    summary = {"config": vars(config), "history": history, "budget": vars(loop.teacher.budget)}
    if not args.no_video:
        summary["video"] = record_policy(
            lambda o: loop.model.predict(o, deterministic=True)[0],
            config.task,
            out / "final_policy.mp4",
            seed=config.seed + 20_000,
        )
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print(
        f"final success rate {history[-1]['success_rate']:.2f} with {history[-1]['labels']} labels; "
        f"written: {out}/success_curve.png, {out}/summary.json"
        + ("" if args.no_video else f", {out}/final_policy.mp4")
    )
    return 0


def run_label(argv: Sequence[str]) -> int:
    """``mmpref label``: the labelling web app and its store."""
    parser = argparse.ArgumentParser(prog="mmpref label", description=run_label.__doc__)
    parser.add_argument("--db", default="labels.sqlite", help="store: a SQLite file or a SQLAlchemy URL")
    sub = parser.add_subparsers(dest="action", required=True)
    serve = sub.add_parser("serve", help="serve the web app (127.0.0.1 by default)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8765)
    annotator = sub.add_parser("annotator", help="create an annotator and print their token")
    annotator.add_argument("name")
    imported = sub.add_parser("import", help="create tasks from a JSONL manifest or a Pick-a-Pic Parquet")
    imported.add_argument("manifest", help=".jsonl (pairs, lists, ratings of media files) or .parquet (Pick-a-Pic)")
    imported.add_argument("--media-dir", default="label_media", help="where Parquet image bytes are written")
    imported.add_argument("--labels-as", default=None, help="also import the file's labels as this annotator")
    exported = sub.add_parser("export", help="write all labels to .jsonl (all kinds) or .parquet (pairs)")
    exported.add_argument("out")
    args = parser.parse_args(argv)
    from mmpref.data import DataError
    from mmpref.feedback.exchange import export_labels, import_manifest
    from mmpref.feedback.store import LabelStore, StoreError

    try:
        store = LabelStore(args.db)
        if args.action == "serve":
            import uvicorn

            from mmpref.feedback.app import create_app

            print(f"mmpref labelling on http://{args.host}:{args.port}/  (store: {store.url})", flush=True)
            uvicorn.run(create_app(store), host=args.host, port=args.port, log_level="warning")
        elif args.action == "annotator":
            print(store.add_annotator(args.name))
        elif args.action == "import":
            if args.manifest.endswith(".parquet"):
                from mmpref.feedback.exchange import import_pickapic

                created = import_pickapic(store, args.manifest, args.media_dir, annotator=args.labels_as)
            else:
                created = import_manifest(store, args.manifest)
            print(f"created {len(created)} tasks")
        else:
            print(f"wrote {export_labels(store, args.out)}")
    except (StoreError, DataError) as err:
        print(f"mmpref label: {err}", file=sys.stderr)
        return 2
    return 0


# job name -> "module:function" taking argv and returning an exit code; imported only when the job runs, so one
# family's optional extra is never needed by another family's job. A new job adds one line here and one in OWN_JOBS.
_RUNNERS = {
    "demo": "mmpref.cli:run_demo",
    "score": "mmpref.cli:run_score",
    "enroll": "mmpref.cli:run_enroll",
    "label": "mmpref.cli:run_label",
    "pbrl": "mmpref.cli:run_pbrl",
    "peeling": "mmpref.control.peeling.pipeline:run_peeling",
    "regret": "mmpref.control.regret.job:run_regret",
    "cpl": "mmpref.control.cpl.job:run_cpl",
    "pearl": "mmpref.control.pearl.job:run_pearl",
    "sample": "mmpref.vision.diffusion.jobs:run_sample",
    "dpo": "mmpref.vision.diffusion.jobs:run_dpo",
    "dpo-eval": "mmpref.vision.diffusion.jobs:run_dpo_eval",
}


def _resolve(target: str):
    import importlib

    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


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
