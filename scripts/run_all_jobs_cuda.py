"""Run every mmpref job briefly on CUDA and check that each one really used the GPU.

For a machine with a GPU: ``MUJOCO_GL=egl .venv/bin/python scripts/run_all_jobs_cuda.py [--out runs/cuda_check]``.
Each job runs in this process through ``mmpref.cli.main`` on tiny settings with the GPU asked for explicitly
(``--trainer.accelerator cuda``; SAC ``--device cuda``; PEARL's transport ``--device cuda``), and the peak CUDA memory
allocated during the job must be above zero, so a job that silently trained on the CPU fails the check. ``regret`` is
tabular (exact value iteration and a few hundred full-batch steps on 36-state gridworlds) and runs on the CPU by
design; it is run for completeness and not held to the check.

``--accelerator cpu`` runs the same jobs on the CPU (no memory check): the script's own test on a machine without a
GPU. Prints one line per job (exit code, seconds, peak CUDA MiB) and exits 1 if any job failed its check.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def jobs(out: Path, accelerator: str) -> dict[str, list[str]]:
    """Each job's command line (after ``mmpref``) on tiny settings, on ``accelerator``."""
    trainer = ["--trainer.accelerator", accelerator]
    device = "cuda" if accelerator != "cpu" else "cpu"
    pearl = out / "pearl"
    return {
        "fit": [
            "fit",
            "--config",
            str(REPO / "recipes/reward/synthetic_bt.yaml"),
            *trainer,
            "--trainer.max_epochs",
            "1",
            "--trainer.default_root_dir",
            str(out / "fit"),
            "--trainer.enable_progress_bar",
            "false",
        ],
        "dpo": ["dpo", "--out", str(out / "dpo"), "--steps", "4", "--rounds", "1", "--per-prompt", "4"],
        "pbrl": [
            "pbrl",
            "--config",
            str(REPO / "recipes/control/button_press.yaml"),
            *("--task", "reach-v3", "--total_steps", "400", "--learning_starts", "100", "--feedback_start", "0"),
            *("--feedback_every", "200", "--eval_every", "400", "--eval_episodes", "1", "--queries_per_round", "10"),
            *("--segment_length", "20", "--reward_updates", "5", "--device", device, *trainer),
            *("--out", str(out / "pbrl"), "--no-video"),
        ],
        "peeling": [
            "peeling",
            *("--demos", "3", "--max_steps", "20", "--bc_epochs", "1", "--pool", "2", "--rated", "8"),
            *("--iterations", "1", "--groups", "1", "--group_size", "2", "--eval_episodes", "1", *trainer),
            *("--out", str(out / "peeling")),
        ],
        "regret": [
            "regret",
            *("--instances", "2", "--sizes", "[8]", "--steps", "25", "--height", "4", "--width", "4"),
            *("--out", str(out / "regret")),
        ],
        "pearl": [
            "pearl",
            "--config",
            str(REPO / "recipes/control/pearl/window_open_to_close.yaml"),
            *("--per_behaviour", "1", "--steps", "40", "--length", "10", "--segments", "12", "--restarts", "1"),
            *("--write_pairs", "40", "--cache", str(pearl / "cache"), "--device", device, "--out", str(pearl / "run")),
        ],
        "cpl": [
            "cpl",
            *("--dataset", str(pearl / "run" / "target.hdf5"), "--warmup_steps", "5", "--steps", "5"),
            *("--hidden", "32", "--batch_size", "8", "--eval_episodes", "1", "--horizon", "30", *trainer),
            *("--out", str(out / "cpl")),
        ],
    }


CPU_BY_DESIGN = {"regret"}


def main(argv: list[str] | None = None) -> int:
    """Run the jobs; 0 when every job exited 0 and (on CUDA) allocated GPU memory."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/cuda_check", help="output folder of the jobs")
    parser.add_argument("--accelerator", default="cuda", help="cuda (the check) or cpu (a dry run of the script)")
    parser.add_argument("--only", nargs="*", default=None, help="run only these jobs")
    args = parser.parse_args(argv)
    os.environ.setdefault("MUJOCO_GL", "egl")
    import torch

    from mmpref.cli import main as mmpref

    on_cuda = args.accelerator != "cpu"
    if on_cuda and not torch.cuda.is_available():
        print("no CUDA device here; run with --accelerator cpu for a dry run", file=sys.stderr)
        return 2
    failed = []
    for name, command in jobs(Path(args.out), args.accelerator).items():
        if args.only and name not in args.only:
            continue
        if on_cuda:
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        code = mmpref(command)
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated() / 2**20 if on_cuda else 0.0
        used = not on_cuda or peak > 0 or name in CPU_BY_DESIGN
        note = " (CPU by design)" if on_cuda and name in CPU_BY_DESIGN else ""
        print(f"{name:8s} exit {code}  {seconds:7.1f} s  peak CUDA {peak:9.1f} MiB{note}", flush=True)
        if code != 0 or not used:
            failed.append(name)
    print("all jobs ran" + (" on CUDA" if on_cuda else "") if not failed else f"FAILED: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
