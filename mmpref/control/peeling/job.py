"""``mmpref peeling``: BC from noisy demonstrations, then preference finetuning.

The stages are :mod:`mmpref.control.peeling.pipeline`'s, the settings
:class:`~mmpref.control.peeling.config.PeelingConfig`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from mmpref.control.peeling.config import PeelingConfig
from mmpref.control.peeling.evaluation import training_pool
from mmpref.control.peeling.pipeline import stage_one, stage_two
from mmpref.control.policies import save_policy
from mmpref.data import atomic_write
from mmpref.recipe import out_option, run_job


def run_peeling(argv: Sequence[str]) -> int:
    """``mmpref peeling``: BC from noisy demonstrations, then preference finetuning (trajectory DPO).

    Writes ``<out>/demos.hdf5``, ``bc_policy.safetensors``, ``finetuned_policy.safetensors`` and ``summary.json``.
    """
    options = out_option("runs/peeling/<task>-seed<seed>")
    return run_job("mmpref peeling", PeelingConfig, argv, _run, options, run_peeling.__doc__)


def _run(config: PeelingConfig, args: Any) -> int:
    torch.set_num_threads(1)  # many small ops: one thread is faster than several on a shared CPU
    out = Path(args.out or f"runs/peeling/{config.task}-seed{config.seed}")
    pool = training_pool(config)
    first = stage_one(config, pool, out / "demos.hdf5")
    results, timings = first.results, first.timings
    save_policy(first.policy, out / "bc_policy.safetensors")
    finetuned, policy = stage_two(config, first.policy, first.reward, pool, first.demonstrations, first.rated)
    results |= finetuned
    save_policy(policy, out / "finetuned_policy.safetensors")
    summary = {"config": asdict(config), "results": results, "timings": timings}
    with atomic_write(out / "summary.json", "w") as handle:
        json.dump(summary, handle, indent=1)
    bc, ft = results["bc_mean"]["success"], results["ft_mean"]["success"]
    bc_sample, ft_sample = results["bc_sample"]["success"], results["ft_sample"]["success"]
    tempered = results.get("bc_tempered_sample")
    baseline = f" (BC sampled at {config.explore_temperature}·σ: {tempered['success']:.2f})" if tempered else ""
    print(
        f"success (mean action) BC {bc:.2f} -> finetuned {ft:.2f}; sampled {bc_sample:.2f} -> {ft_sample:.2f}"
        f"{baseline}; {out}"
    )
    return 0
