"""Regret on continuous control (Meta-World), where V* is unknown: the score under a value estimate V.

:class:`SegmentRegretTeacher` takes any V(s) at a segment's first state and the state after its last action, e.g. the
scripted expert's Monte-Carlo return from the restored simulator state (:class:`ExpertValueOracle`):
score = R(σ) + γ^T V(s_T) − V(s_0) = −regret(σ) under V (Knox et al., eq. 3-6; the tabular model is
:mod:`mmpref.control.regret.model`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from mmpref.control.envs import wrapper_chain
from mmpref.control.segments import Episode, rollout
from mmpref.data import Segment, SegmentPair


@dataclass
class SegmentRegretTeacher:
    """Labels Meta-World (or any) segment pairs by regret under a value estimate V, instead of partial return.

    score(σ) = Σ_t γ^t r_t + γ^T V(s_T) − V(s_0) = −regret(σ) when V = V* (Knox et al., deterministic case), where
    s_T is the state *after* the segment's last action. With a constant V and γ = 1 the score is the partial return,
    so the teacher reduces to the B-Pref teacher; with γ < 1 a constant V adds the same (γ^T − 1)·V to both segments
    of a pair, which changes no label either.

    Args:
        value: ``segment → (V(s_0), V(s_T))``, e.g. a lookup into :func:`segment_boundary_values`.
        gamma: discount γ ∈ (0, 1] of the returns and of V.
        beta: inverse temperature of P(a ≻ b) = σ(β Δscore); ``math.inf``: the better segment (ties → 0.5).
        seed: seed of the label draws.
    """

    value: Callable[[Segment], tuple[float, float]]
    gamma: float = 1.0
    beta: float = math.inf
    seed: int = 0
    rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma must lie in (0, 1], got {self.gamma}")
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0 (math.inf for a noiseless teacher), got {self.beta}")
        self.rng = np.random.default_rng(self.seed)

    def score(self, segment: Segment) -> float:
        """−regret(σ) under V: R_γ(σ) + γ^T V(s_T) − V(s_0)."""
        if segment.rewards is None:
            raise ValueError(f"segment {segment.id!r} has no true rewards; a regret teacher needs them")
        rewards = np.asarray(segment.rewards, np.float64)
        v_start, v_end = self.value(segment)
        if not (math.isfinite(v_start) and math.isfinite(v_end)):
            raise ValueError(f"segment {segment.id!r}: value estimate is not finite ({v_start}, {v_end})")
        horizon = len(rewards)
        return float(rewards @ self.gamma ** np.arange(horizon) + self.gamma**horizon * v_end - v_start)

    def label(self, a: Segment, b: Segment) -> float:
        """P(a ≻ b) ∈ {0, 0.5, 1}."""
        diff = self.score(a) - self.score(b)
        if math.isinf(self.beta):
            return 0.5 if abs(diff) < 1e-12 else float(diff > 0)
        return float(self.rng.random() < 0.5 * (1.0 + math.tanh(0.5 * self.beta * diff)))

    def label_pairs(self, pairs: Sequence[SegmentPair]) -> list[SegmentPair]:
        """The pairs with regret labels (teacher ``"regret"``)."""
        return [SegmentPair(id=p.id, a=p.a, b=p.b, label=self.label(p.a, p.b), teacher="regret") for p in pairs]


@dataclass
class ExpertValueOracle:
    """V(s) ≈ the scripted expert's discounted return over ``horizon`` steps from the exact simulator state.

    The env's full state (MuJoCo qpos/qvel/mocap plus every wrapper's counters, as PbRL checkpoints save it) is
    snapshot, the expert runs from it, and the snapshot is restored, so the caller's episode goes on unchanged.
    The expert stands in for π*: on Meta-World its success rate is near 100 %, so its return-to-go is a close lower
    bound on V*. Returns are truncated where the episode would end (500 steps), so V also knows the time left.

    Args:
        task: Meta-World task name (selects the scripted expert).
        horizon: steps of each expert rollout.
        gamma: discount γ of the return.
    """

    task: str
    horizon: int = 100
    gamma: float = 0.99

    def __post_init__(self) -> None:
        from mmpref.control.envs import ExpertPolicy

        if self.horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {self.horizon}")
        self.expert = ExpertPolicy(self.task, noise=0.0)

    def __call__(self, env: object, obs: np.ndarray) -> float:
        """V(current state of ``env``), whose current observation is ``obs``; ``env`` is left as it was."""
        snapshot = _snapshot(env)
        total, discount = 0.0, 1.0
        for _ in range(self.horizon):
            obs, reward, terminated, truncated, _ = env.step(self.expert(obs))
            total += discount * float(reward)
            discount *= self.gamma
            if terminated or truncated:
                break
        _restore(env, snapshot)
        return total


def _snapshot(env: object) -> dict:
    """MuJoCo state plus each wrapper's small attributes (step counters, previous observation, goal).

    The same content as the PbRL loop's checkpoint state, built here so that a teacher does not import the RL stack.
    """
    data = env.unwrapped.data
    plain = (int, float, bool, str, np.ndarray, tuple, list)
    return {
        "sim": [data.qpos.copy(), data.qvel.copy(), data.mocap_pos.copy(), data.mocap_quat.copy()],
        "layers": [
            {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in vars(layer).items() if isinstance(v, plain)}
            for layer in wrapper_chain(env)
        ],
    }


def _restore(env: object, snapshot: dict) -> None:
    import mujoco

    for layer, attributes in zip(wrapper_chain(env), snapshot["layers"], strict=True):
        for key, value in attributes.items():
            setattr(layer, key, value.copy() if isinstance(value, np.ndarray) else value)
    data = env.unwrapped.data
    data.qpos[:], data.qvel[:], data.mocap_pos[:], data.mocap_quat[:] = snapshot["sim"]
    mujoco.mj_forward(env.unwrapped.model, data)


def rollout_with_values(
    env: object,
    policy: Callable[[np.ndarray], np.ndarray],
    value: Callable[[object, np.ndarray], float],
    every: int,
    max_steps: int = 500,
    seed: int | None = None,
    source: str = "",
) -> tuple[Episode, np.ndarray]:
    """One episode plus V at every ``every``-th state: ``values[t]`` = V(s_t) for t = 0, every, 2·every, … ≤ T.

    ``values`` has length T + 1 (s_T is the state after the last action) and NaN where V was not computed; cut
    segments of length ``every`` (stride ``every``) and :func:`segment_boundary_values` finds both ends of each.
    """
    if every < 1 or max_steps < 1:
        raise ValueError(f"every and max_steps must be >= 1, got {every} and {max_steps}")
    values: list[float] = []

    def acting(obs: np.ndarray) -> np.ndarray:
        # called once per step, before the action, with the simulator still at s_t: the place to estimate V(s_t)
        values.append(value(env, obs) if len(values) % every == 0 else math.nan)
        return policy(obs)

    episode = rollout(env, acting, max_steps=max_steps, seed=seed, source=source)
    final = episode.next_observations[-1]  # the simulator is still at s_T
    values.append(value(env, final) if len(episode) % every == 0 else math.nan)
    return episode, np.asarray(values)


def segment_boundary_values(
    episodes: Sequence[Episode], values: Sequence[np.ndarray], length: int
) -> tuple[list[Segment], dict[str, tuple[float, float]]]:
    """Non-overlapping segments of ``length`` steps and, per segment id, (V(s_0), V(s_T)) from ``values``.

    Raises:
        ValueError: when a needed value is missing (NaN): compute values every ``length`` steps.
    """
    from mmpref.control.segments import cut_segments

    if len(episodes) != len(values):
        raise ValueError(f"need one value array per episode, got {len(episodes)} episodes, {len(values)} arrays")
    segments = cut_segments(episodes, length)
    ends = [(e, s) for e, ep in enumerate(episodes) for s in range(0, len(ep) - length + 1, length)]
    table = {}
    for segment, (e, start) in zip(segments, ends, strict=True):
        v = np.asarray(values[e])
        if len(v) != len(episodes[e]) + 1:
            raise ValueError(f"episode {e}: values must have T + 1 = {len(episodes[e]) + 1} entries, got {len(v)}")
        pair = (float(v[start]), float(v[start + length]))
        if not all(map(math.isfinite, pair)):
            raise ValueError(f"episode {e}: no value at step {start} or {start + length}; compute V every {length}")
        table[segment.id] = pair
    return segments, table
