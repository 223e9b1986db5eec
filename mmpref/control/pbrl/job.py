"""``mmpref pbrl``: online preference-based RL in Meta-World (PEBBLE-style, :mod:`mmpref.control.pbrl.loop`).

Trains SAC on a reward learned from a scripted teacher's preferences (or people's, ``--teacher human --db
labels.sqlite``: :mod:`mmpref.control.pbrl.human`), checkpoints the loop after every chunk (``--resume`` continues
it), and writes ``success_curve.png``, ``summary.json`` and a video of the final policy.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mmpref.control.pbrl.config import PbRLConfig
from mmpref.control.pbrl.loop import PbRLLoop
from mmpref.recipe import RecipeError, out_option, run_job


def run_pbrl(argv: Sequence[str]) -> int:
    """``mmpref pbrl``: online preference-based RL in Meta-World (PEBBLE-style), resumable."""
    options = out_option("runs/pbrl/<task>-seed<seed>") | {
        "--resume": {"action": "store_true", "help": "continue from <out>/checkpoint (its recipe, not this one)"},
        "--no-video": {"action": "store_true", "help": "skip the MP4 of the final policy"},
    }
    return run_job("mmpref pbrl", PbRLConfig, argv, _run, options, run_pbrl.__doc__)


def _run(config: PbRLConfig, args: Any) -> int:
    from mmpref.control.video import plot_success_curve, record_policy

    out = Path(args.out or f"runs/pbrl/{config.task}-seed{config.seed}")
    if not args.resume and (out / "checkpoint").exists():
        # a new run would replace the checkpoint (and the summary, curve and video) of the one already there
        raise RecipeError(
            f"--out {out}: holds a run already ({out / 'checkpoint'}); continue it with `mmpref pbrl --resume --out "
            f"{out}`, or give another --out for a new run (nothing there was changed)"
        )
    try:  # an unknown task, a missing checkpoint
        loop = PbRLLoop.load(out / "checkpoint") if args.resume else PbRLLoop(config)
    except (ValueError, FileNotFoundError) as err:
        raise RecipeError(str(err)) from None
    config = loop.config
    try:
        history = loop.run(checkpoint=out / "checkpoint")
    except KeyboardInterrupt:
        if config.teacher != "human":
            raise
        # the posted tasks stay in the store; a resumed run finds them (and their answers) again: human.py
        print(
            f"mmpref pbrl: interrupted; the asked pairs stay queued in {config.db}. Continue with "
            f"`mmpref pbrl --resume --out {out}` (answers given meanwhile are used)",
            file=sys.stderr,
        )
        return 130
    plot_success_curve(history, out / "success_curve.png", title=f"{config.task}: PbRL ({config.reward} reward)")
    summary = {"config": asdict(config), "history": history, "budget": vars(loop.teacher.budget)}
    if not args.no_video:
        summary["video"] = record_policy(
            lambda o: loop.model.predict(o, deterministic=True)[0],
            config.task,
            out / "final_policy.mp4",
            seed=config.seed + 20_000,
        )
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print(
        f"final success rate {history[-1]['success_rate']:.2f} on {config.eval_episodes} goals (mean evaluation "
        f"return {history[-1].get('eval_return', float('nan')):.0f}) with {history[-1]['labels']} labels; "
        f"written: {out}/success_curve.png, {out}/summary.json"
        + ("" if args.no_video else f", {out}/final_policy.mp4")
    )
    return 0
