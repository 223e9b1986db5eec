"""The control demo on embedded defaults: a reward from scripted preferences on Meta-World, and a policy from it.

1. Roll out a mixed pool on one Meta-World task instance (``button-press-v3``): the scripted expert with action noise
   (σ = 0.3), the same expert with a constant action offset (it misses the button) and uniformly random actions, a
   third each; the same for a held-out pool with other seeds.
2. Cut the training pool into 25-step segments, draw random segment pairs and label them with the B-Pref scripted
   teacher (Lee et al. 2021; partial return, mistake probability ε = 0.1).
3. Learn a reward ensemble (PEBBLE's: 3 step-reward MLPs on bootstrap counts, Bradley-Terry on segment returns
   Σ_t r̂(o_t)) from the labels, and measure its agreement with the **true return** on the held-out pool's segments:
   Spearman's ρ and pairwise accuracy (baseline: the same ensemble untrained; chance 0.5).
4. A policy from the preferences: behaviour cloning of the training episodes the learned reward ranks in its top
   third, next to behaviour cloning of every episode (the baseline), both evaluated on the task (success of the
   mean action over one episode — the instance is fixed — and of the sampling policy over ``eval_episodes``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmpref.control.bc import behaviour_cloning
from mmpref.control.envs import ExpertPolicy, make_env
from mmpref.control.policies import GaussianPolicy, save_policy
from mmpref.control.reward import RewardEnsemble
from mmpref.control.segments import Episode, cut_segments, random_pairs, rollout
from mmpref.control.teachers import ScriptedTeacher
from mmpref.data import Segment
from mmpref.data.io import atomic_write
from mmpref.reward.trainers import quiet_lightning

logger = logging.getLogger(__name__)
BIAS_OFFSET = np.array([0.5, -0.5, 0.5, 0.0])  # the "biased" expert's constant action offset (it fails the task)
SOURCES = ("expert", "biased", "random")


def collect_pool(task: str, seed: int, episodes: int, horizon: int, base_seed: int) -> list[Episode]:
    """``episodes`` rollouts cycling through the three sources (noisy expert, biased expert, random actions)."""
    env = make_env(task, seed=seed)
    rng = np.random.default_rng(base_seed)
    expert = ExpertPolicy(task, noise=0.3, seed=base_seed)
    biased = ExpertPolicy(task, noise=0.3, seed=base_seed + 1)
    policies = {
        "expert": expert,
        "biased": lambda obs: np.clip(biased(obs) + BIAS_OFFSET, -1, 1),
        "random": lambda obs: rng.uniform(-1, 1, 4),
    }
    pool = []
    for k in range(episodes):
        name = SOURCES[k % len(SOURCES)]
        pool.append(rollout(env, policies[name], max_steps=horizon, seed=base_seed + k, source=name))
    env.close()
    return pool


def predicted_returns(ensemble: RewardEnsemble, segments: Sequence[Segment]) -> np.ndarray:
    """The ensemble's mean predicted return Σ_t r̂ of each segment (or whole episode), ``[N]``."""
    return np.array([ensemble.step_reward(s.observations, s.actions).sum() for s in segments])


def agreement(predicted: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Spearman's ρ and the pairwise accuracy (all pairs with different true returns) of predicted vs true returns."""
    from scipy.stats import spearmanr

    i, j = np.triu_indices(len(true), 1)
    keep = true[i] != true[j]
    i, j = i[keep], j[keep]
    same_order = np.sign(predicted[i] - predicted[j]) == np.sign(true[i] - true[j])
    ties = predicted[i] == predicted[j]
    return {
        "spearman": float(spearmanr(predicted, true).statistic),
        "pairwise_accuracy": float(np.mean(same_order + 0.5 * ties)),
        "pairs": int(keep.sum()),
    }


def clone(episodes: Sequence[Episode], updates: int, seed: int) -> GaussianPolicy:
    """A Gaussian MLP policy behaviour-cloned on ``episodes`` for about ``updates`` minibatches of 128."""
    obs = np.concatenate([e.observations for e in episodes])
    act = np.concatenate([e.actions for e in episodes])
    torch.manual_seed(seed)
    policy = GaussianPolicy(obs_dim=obs.shape[1], act_dim=act.shape[1], hidden=256)
    epochs = max(1, -(-updates * 128 // len(obs)))  # the same number of updates whatever the data size
    behaviour_cloning(policy, obs, act, epochs=epochs, batch_size=128, lr=1e-3, seed=seed)
    return policy


def success(policy: GaussianPolicy, task: str, seed: int, horizon: int, episodes: int) -> dict[str, float]:
    """Success of the mean action (one episode: the task instance is fixed) and of sampling over ``episodes``."""
    env = make_env(task, seed=seed)
    mean = rollout(env, policy.numpy_policy(deterministic=True), max_steps=horizon, seed=0).succeeded
    sampled = [
        rollout(env, policy.numpy_policy(deterministic=False, seed=k), max_steps=horizon, seed=k).succeeded
        for k in range(episodes)
    ]
    env.close()
    return {"mean_action": float(mean), "sampled": float(np.mean(sampled)) if sampled else float("nan")}


def run_control_demo(
    out_dir: str | Path = "runs/demo/control",
    task: str = "button-press-v3",
    seed: int = 0,
    episodes: int = 24,
    heldout_episodes: int = 12,
    horizon: int = 150,
    length: int = 25,
    pairs: int = 400,
    reward_epochs: int = 60,
    bc_updates: int = 600,
    eval_episodes: int = 10,
) -> dict[str, Any]:
    """Run the demo; returns its figures and writes ``metrics.json`` and two figures under ``out_dir``.

    Args:
        out_dir: output folder.
        task: a Meta-World v3 task with a scripted expert.
        seed: seeds the task instance, the pools, the teacher, the ensemble and the policies.
        episodes: training-pool episodes (a third from each source).
        heldout_episodes: held-out-pool episodes (a third from each source).
        horizon: steps per episode.
        length: segment length.
        pairs: segment pairs the teacher labels.
        reward_epochs: passes of the reward ensemble over the labelled pairs.
        bc_updates: behaviour-cloning minibatches per policy.
        eval_episodes: episodes of the sampling policy's evaluation (0 skips the policies).
    """
    quiet_lightning()
    out = Path(out_dir)
    t0 = time.perf_counter()
    train_pool = collect_pool(task, seed, episodes, horizon, base_seed=1000 * seed)
    heldout_pool = collect_pool(task, seed, heldout_episodes, horizon, base_seed=1000 * seed + 500)
    segments = cut_segments(train_pool, length)
    teacher = ScriptedTeacher(eps=0.1, seed=seed)
    labelled = teacher.label_pairs(random_pairs(segments, pairs, np.random.default_rng(seed)))
    ensemble = RewardEnsemble(
        obs_dim=train_pool[0].observations.shape[1],
        act_dim=train_pool[0].actions.shape[1],
        members=3,
        hidden=128,
        layers=2,
        seed=seed,
        use_actions=False,  # a state-only reward, as the PbRL recipes learn
    )
    heldout = cut_segments(heldout_pool, length)
    true = np.array([float(s.rewards.sum()) for s in heldout])
    before = predicted_returns(ensemble, heldout)
    ensemble.fit(labelled, epochs=reward_epochs, batch_size=64)
    after = predicted_returns(ensemble, heldout)
    figures: dict[str, Any] = {
        "task": task,
        "labels": len(labelled),
        "label_agreement_with_true_return": float(
            np.mean([(p.label > 0.5) == (p.a.rewards.sum() > p.b.rewards.sum()) for p in labelled if p.label != 0.5])
        ),
        "heldout_segments": len(heldout),
        "learned": agreement(after, true),
        "untrained": agreement(before, true),
        "reward_seconds": round(time.perf_counter() - t0, 1),
    }
    plot_agreement(true, before, after, figures, out / "reward_agreement.png")
    if eval_episodes > 0:
        t1 = time.perf_counter()
        whole = [Segment(id=str(k), observations=e.observations, actions=e.actions) for k, e in enumerate(train_pool)]
        ranked = np.argsort(-predicted_returns(ensemble, whole), kind="stable")
        top = [train_pool[k] for k in ranked[: max(1, len(train_pool) // 3)]]
        filtered, everything = clone(top, bc_updates, seed), clone(train_pool, bc_updates, seed)
        save_policy(filtered, out / "policy.safetensors")
        figures |= {
            "kept_episodes": len(top),
            "kept_sources": {name: sum(e.source == name for e in top) for name in SOURCES},
            "pool_success": {
                name: float(np.mean([e.succeeded for e in train_pool if e.source == name])) for name in SOURCES
            },
            "success_reward_filtered_bc": success(filtered, task, seed, horizon, eval_episodes),
            "success_bc_all": success(everything, task, seed, horizon, eval_episodes),
            "eval_episodes": eval_episodes,
            "policy_seconds": round(time.perf_counter() - t1, 1),
        }
        plot_success(figures, out / "success.png")
    figures["seconds"] = round(time.perf_counter() - t0, 1)
    with atomic_write(out / "metrics.json", "w") as handle:
        json.dump(figures, handle, indent=1)
    return figures


def plot_agreement(true: np.ndarray, before: np.ndarray, after: np.ndarray, f: dict, path: Path) -> None:
    """Predicted vs true held-out segment returns, untrained and learned, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.6))
    for ax, predicted, name in ((axes[0], before, "untrained"), (axes[1], after, "learned")):
        ax.scatter(true, predicted, s=10, alpha=0.7)
        a = f[name]
        ax.set_title(f"{name}: Spearman {a['spearman']:.2f}, pair acc. {a['pairwise_accuracy']:.2f}", fontsize=9)
        ax.set_xlabel("true segment return")
        ax.set_ylabel("predicted segment return")
    fig.suptitle(f"{f['task']}: reward from {f['labels']} scripted preferences, held-out segments", fontsize=10)
    fig.tight_layout()
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=100)
    plt.close(fig)


def plot_success(f: dict, path: Path) -> None:
    """Success of BC on every episode vs BC on the episodes the learned reward ranks highest."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ("BC, all episodes", "BC, top third by learned reward")
    runs = (f["success_bc_all"], f["success_reward_filtered_bc"])
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ax.bar(x - 0.2, [r["mean_action"] for r in runs], 0.4, label="mean action")
    ax.bar(x + 0.2, [r["sampled"] for r in runs], 0.4, label=f"sampled ({f['eval_episodes']} episodes)")
    ax.set_xticks(x, names, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success")
    ax.set_title(f"{f['task']}: policy from preferences vs its baseline", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=100)
    plt.close(fig)


def format_summary(f: dict[str, Any]) -> str:
    """The demo's result in a few lines, against its baselines."""
    learned, untrained = f["learned"], f["untrained"]
    lines = [
        f"Preference learning on Meta-World {f['task']}: a reward ensemble from {f['labels']} scripted-teacher labels "
        f"(ε = 0.1; {100 * f['label_agreement_with_true_return']:.0f} % agree with the true return)",
        f"  held-out segments ({f['heldout_segments']}), agreement with the true return: Spearman "
        f"{learned['spearman']:.2f}, pairwise accuracy {learned['pairwise_accuracy']:.3f} (untrained: "
        f"{untrained['spearman']:.2f}, {untrained['pairwise_accuracy']:.3f}; chance 0.5)",
    ]
    if "success_bc_all" in f:
        s, b = f["success_reward_filtered_bc"], f["success_bc_all"]
        kept = ", ".join(f"{n} {c}" for n, c in f["kept_sources"].items())
        lines += [
            f"  policy: BC on the {f['kept_episodes']} episodes the learned reward ranks highest ({kept}): success "
            f"mean action {s['mean_action']:.0f}, sampled {s['sampled']:.2f}",
            f"          BC on all episodes (baseline): mean action {b['mean_action']:.0f}, sampled {b['sampled']:.2f}"
            f"  (pool success: {', '.join(f'{n} {v:.2f}' for n, v in f['pool_success'].items())})",
        ]
    return "\n".join(lines)
