"""Benchmark: CPL vs reward model + reward-weighted regression vs BC, offline, on one robomimic-format dataset.

Per seed: roll out three sources on a Meta-World task (fixed goal), 1/3 each: the scripted expert with action noise
σ = 0.3 ("good"), the same expert with a constant action offset and σ = 0.3 ("biased", fails), and a uniformly random
policy. Cut 25-step segments, label random pairs with the regret teacher (value = the scripted expert's
return-to-go from the restored simulator state, :class:`mmpref.control.regret.continuous.ExpertValueOracle`), write
everything with :func:`mmpref.control.robomimic_io.write_robomimic`, and train every method from the file read back:

- BC (all data): behaviour cloning on every transition;
- CPL: :class:`mmpref.control.cpl.algorithm.CPLSystem` (α = 0.1, λ = 0.5) after the shared BC warm-up;
- RM + RWR: a step-reward MLP learned with Bradley-Terry on the same pairs, then reward-weighted regression
  (weighted BC, weight exp(z(R̂(segment))/τ) clipped at 20, Peters & Schaal 2007) after the same BC warm-up;
- BC (good only): behaviour cloning on the σ = 0.3 expert episodes (an oracle filter, for reference).

All policy methods take the same number of gradient steps (warm-up + main); the reward model's own steps are extra.
Success: the deterministic (mean-action) policy on the dataset's task instance (1 episode, deterministic reset)
and the stochastic policy over 10 episodes. Writes docs/benchmarks/bench_cpl.{json,md}.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_cpl.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing as mp
import os
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"


def make_dataset(args: argparse.Namespace, seed: int, path: Path) -> dict[str, Any]:
    """The mixed-quality dataset of ``seed`` (:func:`mmpref.control.cpl.job.build_mixed_dataset`) at ``path``."""
    from mmpref.control.cpl.job import CPLJobConfig, build_mixed_dataset

    config = CPLJobConfig(
        task=args.task,
        seed=seed,
        episodes=args.episodes,
        horizon=args.horizon,
        length=args.length,
        pairs=args.pairs,
        teacher=args.teacher,
        value_horizon=args.value_horizon,
        gamma=args.gamma,
    )
    return build_mixed_dataset(config, path)


def weighted_bc(policy, obs, act, weights, steps: int, batch: int, lr: float, seed: int) -> None:
    import torch

    obs_t, act_t = torch.as_tensor(obs, dtype=torch.float32), torch.as_tensor(act, dtype=torch.float32)
    w_t = torch.as_tensor(weights, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.AdamW(policy.parameters(), lr=lr)
    policy.train()
    for _ in range(steps):
        idx = torch.randint(len(obs_t), (batch,), generator=gen)
        loss = -(w_t[idx] * policy.log_prob(obs_t[idx], act_t[idx])).sum() / w_t[idx].sum()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    policy.eval()


def reward_model_segment_returns(pairs, segments, steps: int, seed: int) -> tuple[np.ndarray, float]:
    import torch

    from mmpref.control.cpl.algorithm import oriented_pairs
    from mmpref.control.reward import StepReward
    from mmpref.losses import bradley_terry

    torch.manual_seed(seed)
    obs_w, act_w, obs_l, act_l = oriented_pairs(pairs).tensors
    x_w, x_l = torch.cat([obs_w, act_w], -1), torch.cat([obs_l, act_l], -1)
    model = StepReward(x_w.shape[-1])
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-4)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(len(x_w), (64,), generator=gen)
        loss = bradley_terry(model(x_w[idx]).sum(-1), model(x_l[idx]).sum(-1)).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        accuracy = float((model(x_w).sum(-1) > model(x_l).sum(-1)).float().mean())
        x = torch.as_tensor(np.stack([np.concatenate([s.observations, s.actions], -1) for s in segments]))
        returns = model(x.float()).sum(-1).numpy()
    return returns, accuracy


def evaluate(policy, args: argparse.Namespace, seed: int) -> dict[str, float]:
    from mmpref.control.cpl.job import evaluate as success

    rates = success(policy, args.task, seed, args.horizon, args.eval_episodes)
    return {"deterministic": rates["deterministic"], "stochastic": rates["stochastic"]}


def run_seed(job: tuple[argparse.Namespace, int]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    args, seed = job
    from mmpref.control.cpl.algorithm import train_cpl
    from mmpref.control.policies import GaussianPolicy
    from mmpref.control.robomimic_io import read_preference_pairs, read_robomimic
    from mmpref.control.segments import cut_segments

    start = time.perf_counter()
    out: dict[str, Any] = {"seed": seed}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{args.task}_seed{seed}.hdf5"
        out["data"] = make_dataset(args, seed, path)
        episodes = read_robomimic(path)
        good_episodes = read_robomimic(path, filter_key="good")
        pairs = read_preference_pairs(path)
    out["data"]["seconds"] = time.perf_counter() - start
    obs = np.concatenate([e.observations for e in episodes])
    act = np.concatenate([e.actions for e in episodes])
    torch.manual_seed(seed)
    warm = GaussianPolicy(obs_dim=obs.shape[1], act_dim=act.shape[1])
    warm.set_normalizer(obs)
    weighted_bc(warm, obs, act, np.ones(len(obs)), args.warmup_steps, 256, 1e-3, seed)
    results: dict[str, Any] = {}

    bc_all = copy.deepcopy(warm)
    weighted_bc(bc_all, obs, act, np.ones(len(obs)), args.steps, 256, 1e-3, seed + 1)
    results["BC (all data)"] = evaluate(bc_all, args, seed)

    cpl = copy.deepcopy(warm)
    metrics = train_cpl(
        cpl, pairs, steps=args.steps, batch_size=32, seed=seed, lr=args.cpl_lr, bc_weight=args.bc_weight
    )
    results["CPL"] = evaluate(cpl, args, seed) | {"train_pair_accuracy": metrics.get("train/accuracy", float("nan"))}

    segments = cut_segments(episodes, args.length)
    returns, rm_accuracy = reward_model_segment_returns(pairs, segments, args.reward_steps, seed)
    z = (returns - returns.mean()) / (returns.std() + 1e-8)
    seg_weights = np.minimum(np.exp(z / args.rwr_temperature), 20.0)
    seg_obs = np.concatenate([s.observations for s in segments])
    seg_act = np.concatenate([s.actions for s in segments])
    rwr = copy.deepcopy(warm)
    weighted_bc(rwr, seg_obs, seg_act, np.repeat(seg_weights, args.length), args.steps, 256, 1e-3, seed + 2)
    results["RM + RWR"] = evaluate(rwr, args, seed) | {"reward_pair_accuracy": rm_accuracy}

    good_obs = np.concatenate([e.observations for e in good_episodes])
    good_act = np.concatenate([e.actions for e in good_episodes])
    oracle = GaussianPolicy(obs_dim=obs.shape[1], act_dim=act.shape[1])
    oracle.set_normalizer(good_obs)
    weighted_bc(oracle, good_obs, good_act, np.ones(len(good_obs)), args.warmup_steps + args.steps, 256, 1e-3, seed)
    results["BC (good only, oracle filter)"] = evaluate(oracle, args, seed)
    out["results"] = results
    out["seconds"] = time.perf_counter() - start
    print(json.dumps(out), flush=True)
    return out


def write(runs: list[dict[str, Any]], args: argparse.Namespace, machine: str, wall: float) -> None:
    from mmpref.data.io import atomic_write

    OUT.mkdir(parents=True, exist_ok=True)
    with atomic_write(OUT / "bench_cpl.json", "w") as f:
        json.dump({"machine": machine, "args": vars(args), "runs": runs, "wall_s": wall}, f, indent=1)
    methods = list(runs[0]["results"]) if runs else []
    seeds = [r["seed"] for r in runs]
    lines = [
        f"Reproduce with `OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_cpl.py --task {args.task} --seeds "
        f"{' '.join(map(str, args.seeds))} --steps {args.steps}` ({wall:.0f} s here, seeds in parallel processes).",
        "",
        f"# CPL vs reward model + RWR vs BC on one offline dataset ({args.task})",
        "",
        f"machine: {machine}",
        "",
        f"Per seed: {args.episodes} episodes of {args.horizon} steps (1/3 expert σ = 0.3, 1/3 biased expert, 1/3 "
        f"random), {args.pairs} random pairs of {args.length}-step segments labelled by the {args.teacher} teacher "
        f"(expert return-to-go over {args.value_horizon} steps as V), written to and read from robomimic HDF5. "
        f"Every policy: {args.warmup_steps} BC warm-up steps + {args.steps} method steps (RM + RWR: plus "
        f"{args.reward_steps} reward-model steps). Success: deterministic policy (1 episode; the task instance is "
        f"fixed) / stochastic policy over {args.eval_episodes} episodes; seeds {seeds}.",
        "",
        "| method | deterministic success per seed | stochastic success per seed | mean stochastic success |",
        "|---|---|---|---|",
    ]
    for method in methods:
        det = [r["results"][method]["deterministic"] for r in runs]
        sto = [r["results"][method]["stochastic"] for r in runs]
        lines.append(f"| {method} | {det} | {[round(s, 2) for s in sto]} | {np.mean(sto):.2f} |")
    lines += ["", "Dataset per seed (success rate of each source, pairs, ties):", ""]
    for r in runs:
        lines.append(
            f"- seed {r['seed']}: {r['data']['success_by_source']}, {r['data']['pairs']} pairs, "
            f"{r['data']['ties']} ties; CPL train pair accuracy "
            f"{r['results']['CPL']['train_pair_accuracy']:.2f}, reward-model pair accuracy "
            f"{r['results']['RM + RWR']['reward_pair_accuracy']:.2f}"
        )
    with atomic_write(OUT / "bench_cpl.md", "w") as f:
        f.write("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="button-press-v3")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--episodes", type=int, default=30)
    parser.add_argument("--horizon", type=int, default=150)
    parser.add_argument("--length", type=int, default=25)
    parser.add_argument("--pairs", type=int, default=600)
    parser.add_argument("--teacher", choices=["regret", "partial_return"], default="regret")
    parser.add_argument("--value-horizon", type=int, default=50)
    parser.add_argument("--gamma", type=float, default=0.99)
    parser.add_argument("--warmup-steps", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--reward-steps", type=int, default=1000)
    parser.add_argument("--cpl-lr", type=float, default=1e-4)
    parser.add_argument("--bc-weight", type=float, default=0.0)
    parser.add_argument("--rwr-temperature", type=float, default=0.5)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--processes", type=int, default=3)
    args = parser.parse_args()
    import torch

    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} vCPU (AMD EPYC), torch {torch.__version__}, "
        f"CPU only, shared with other jobs; {datetime.now(UTC).isoformat(timespec='seconds')}"
    )
    start = time.perf_counter()
    runs: list[dict[str, Any]] = []
    with mp.get_context("spawn").Pool(min(args.processes, len(args.seeds))) as pool:
        for run in pool.imap(run_seed, [(args, s) for s in args.seeds]):
            runs.append(run)
            write(runs, args, machine, time.perf_counter() - start)


if __name__ == "__main__":
    main()
