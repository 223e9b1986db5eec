"""Mixed-quality behaviour data for cross-task preference transfer (PEARL), cached as ``.npz``.

Per task, trajectories come from seven behaviours in equal shares (design measured in ``pearl-notes``): the scripted
expert with Gaussian action noise σ ∈ {0, 0.3, 1, 2}; *late* (random actions for U[0, 150) steps, then the expert);
*early* (the expert for U[10, 120) steps, then random actions); uniform random actions. Noise alone barely hurts
the scripted experts, so the late/early mixtures are what give a continuum of segment qualities instead of a bimodal
expert-vs-random set. Goals vary per episode (each reset draws one of the task's 50 configurations).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmpref.control.envs import ExpertPolicy, make_env
from mmpref.control.segments import Episode, rollout
from mmpref.data.io import atomic_write

logger = logging.getLogger(__name__)

BEHAVIOURS: tuple[str, ...] = ("expert0", "expert0.3", "expert1", "expert2", "late", "early", "random")


class BehaviourPolicy:
    """One of :data:`BEHAVIOURS` for a task: a callable ``obs → action`` that switches at a drawn step.

    Args:
        task: Meta-World task name.
        behaviour: one of :data:`BEHAVIOURS`.
        seed: seeds the expert's noise, the random actions and the switch time.
    """

    def __init__(self, task: str, behaviour: str, seed: int):
        if behaviour not in BEHAVIOURS:
            raise ValueError(f"unknown behaviour {behaviour!r}; valid: {', '.join(BEHAVIOURS)}")
        self.rng = np.random.default_rng(seed)
        noise = float(behaviour[len("expert") :]) if behaviour.startswith("expert") else 0.0
        self.expert = ExpertPolicy(task, noise=noise, seed=seed)
        self.behaviour = behaviour
        # Steps before the switch: late = random first, early = expert first.
        self.switch = {"late": int(self.rng.integers(0, 150)), "early": int(self.rng.integers(10, 120))}.get(
            behaviour, 0
        )
        self.t = 0

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        """The behaviour's action at the current step."""
        t, self.t = self.t, self.t + 1
        if self.behaviour == "random":
            use_expert = False
        elif self.behaviour == "late":
            use_expert = t >= self.switch
        elif self.behaviour == "early":
            use_expert = t < self.switch
        else:
            use_expert = True
        if use_expert:
            return self.expert(obs)
        return self.rng.uniform(-1.0, 1.0, 4)


@dataclass(frozen=True)
class TaskData:
    """Trajectories of one task, stacked.

    Observations ``[N, T, 39]``, actions ``[N, T, 4]``, rewards ``[N, T]``, success ``[N]`` (any step succeeded) and
    the behaviour index ``[N]`` into :data:`BEHAVIOURS`.
    """

    task: str
    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    success: np.ndarray
    behaviour: np.ndarray

    def episodes(self) -> list[Episode]:
        """The trajectories as :class:`~mmpref.control.segments.Episode` records (next observations shifted)."""
        out = []
        for n in range(len(self.observations)):
            obs = self.observations[n]
            nxt = np.concatenate([obs[1:], obs[-1:]], 0)
            success = np.zeros(len(obs), np.float32)
            success[-1] = self.success[n]
            out.append(Episode(obs, self.actions[n], self.rewards[n], nxt, success, source=self.task))
        return out


def generate_task_data(
    task: str, per_behaviour: int, steps: int = 200, seed: int = 0, behaviours: Sequence[str] = BEHAVIOURS
) -> TaskData:
    """Roll out ``per_behaviour`` trajectories of ``steps`` steps for every behaviour (interleaved by index).

    Trajectory n uses behaviour ``n % len(behaviours)``, so even and odd indices (source/target halves in the
    benchmark) hold every behaviour.
    """
    env = make_env(task, seed=seed, goal_variation=True)
    obs, act, rew, suc, beh = [], [], [], [], []
    for n in range(per_behaviour * len(behaviours)):
        b = n % len(behaviours)
        episode = rollout(
            env, BehaviourPolicy(task, behaviours[b], seed * 100_003 + n), steps, seed=seed * 100_003 + n
        )
        if len(episode) != steps:
            raise RuntimeError(f"{task}: episode {n} ended after {len(episode)} of {steps} steps")
        obs.append(episode.observations)
        act.append(episode.actions)
        rew.append(episode.rewards)
        suc.append(episode.succeeded)
        beh.append(BEHAVIOURS.index(behaviours[b]))
    env.close()
    return TaskData(task, np.stack(obs), np.stack(act), np.stack(rew), np.array(suc), np.array(beh))


def load_or_generate(
    task: str, cache_dir: str | Path, per_behaviour: int, steps: int = 200, seed: int = 0
) -> TaskData:
    """:func:`generate_task_data`, cached at ``cache_dir/<task>_b<per_behaviour>_t<steps>_s<seed>.npz``."""
    path = Path(cache_dir) / f"{task}_b{per_behaviour}_t{steps}_s{seed}.npz"
    if path.exists():
        with np.load(path) as f:
            return TaskData(task, f["observations"], f["actions"], f["rewards"], f["success"], f["behaviour"])
    logger.info("rolling out %d trajectories of %s", per_behaviour * len(BEHAVIOURS), task)
    data = generate_task_data(task, per_behaviour, steps, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as f:
        np.savez_compressed(
            f,
            observations=data.observations,
            actions=data.actions,
            rewards=data.rewards,
            success=data.success,
            behaviour=data.behaviour,
        )
    return data


def segment_arrays(
    data: TaskData, length: int = 50, stride: int | None = None, trajectories: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Cut trajectories into segments.

    Returns ``obs [S, H, 39]``, ``act [S, H, 4]``, ``ret [S]`` (true return), ``start [S]``, ``traj [S]``
    (trajectory index) and ``behaviour [S]``.
    """
    stride = stride or length
    rows = np.arange(len(data.observations)) if trajectories is None else np.asarray(trajectories)
    starts = np.arange(0, data.observations.shape[1] - length + 1, stride)
    traj = np.repeat(rows, len(starts))
    start = np.tile(starts, len(rows))
    window = start[:, None] + np.arange(length)[None]
    return {
        "obs": data.observations[traj[:, None], window],
        "act": data.actions[traj[:, None], window],
        "ret": data.rewards[traj[:, None], window].sum(-1),
        "start": start,
        "traj": traj,
        "behaviour": data.behaviour[traj],
    }
