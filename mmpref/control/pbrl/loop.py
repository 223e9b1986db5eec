"""Online preference-based RL (PEBBLE-style) as a plain outer loop with named, injectable parts.

rollout (SAC acting in the env) → fragmenter (recent transitions → segments → candidate pairs) → query selection →
teacher (scripted or human) → preference buffer → reward update (the reward ensemble, through the reward
LightningModule) → relabel SAC's whole replay buffer with the new reward → policy update (stable-baselines3 SAC).

Lee, Smith & Abbeel (2021), "PEBBLE": SAC with a learned reward, optional unsupervised pre-training that maximises a
k-nearest-neighbour state-entropy estimate, and relabelling of the replay buffer after every reward update.
:class:`PbRLLoop` checkpoints everything it needs to resume exactly where it stopped (policy, replay buffer, reward
ensemble, preference buffer, teacher budget and random states).
"""

from __future__ import annotations

import pickle
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch

from mmpref.control.envs import make_env
from mmpref.control.reward import QueryMethod, RewardEnsemble, select_queries
from mmpref.control.segments import Episode, cut_segments, random_pairs
from mmpref.control.teachers import Budget, ScriptedTeacher
from mmpref.data import SegmentPair
from mmpref.data.io import atomic_write


class RewardSource:
    """What the policy is trained on: the true reward, the learned reward, or the state-entropy bonus."""

    def __init__(
        self,
        mode: Literal["true", "learned", "entropy"] = "true",
        ensemble: RewardEnsemble | None = None,
        k: int = 5,
        memory: int = 10_000,
        scale: float = 1.0,
        pessimism: float = 0.0,
    ):
        self.mode = mode
        self.ensemble = ensemble
        # learned reward given to the policy = (r̂ − shift) · scale, r̂ = members' mean − pessimism · std; the loop
        # refits shift and scale after each reward update when it standardises the reward
        self.shift, self.scale, self.pessimism = 0.0, scale, pessimism
        self.k = k
        self.states: deque[np.ndarray] = deque(maxlen=memory)

    def __call__(self, obs: np.ndarray, action: np.ndarray, next_obs: np.ndarray, true_reward: float) -> float:
        """The reward of one transition under the current mode."""
        if self.mode == "true":
            return true_reward
        if self.mode == "learned":
            return float(self.learned(obs[None], action[None])[0])
        # PEBBLE's unsupervised phase: the distance to the k-th nearest recent state (a state-entropy estimate)
        self.states.append(np.asarray(next_obs, np.float32))
        if len(self.states) <= self.k:
            return 0.0
        distances = np.linalg.norm(np.asarray(self.states)[:-1] - next_obs, axis=1)
        return float(np.log(1.0 + np.partition(distances, self.k - 1)[self.k - 1]))

    def raw_learned(self, observations: np.ndarray, actions: np.ndarray, chunk: int = 4096) -> np.ndarray:
        """r̂ of transitions ``[N, o]``, ``[N, a]`` → ``[N]`` before the affine map (in chunks, for whole buffers)."""
        parts = [
            self.ensemble.step_reward(observations[i : i + chunk], actions[i : i + chunk], self.pessimism)
            for i in range(0, len(observations), chunk)
        ]
        return np.concatenate(parts)

    def affine(self, raw: np.ndarray) -> np.ndarray:
        """(r̂ − shift) · scale: what the policy gets for raw learned rewards."""
        return (raw - self.shift) * self.scale

    def learned(self, observations: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """The learned reward the policy gets for transitions ``[N, o]``, ``[N, a]`` → ``[N]``."""
        return self.affine(self.raw_learned(observations, actions))


class PreferenceEnv(gym.Wrapper):
    """Gives the policy the reward of a :class:`RewardSource` and records true-reward transitions for queries."""

    def __init__(self, env: gym.Env, source: RewardSource, memory_steps: int = 20_000):
        super().__init__(env)
        self.source = source
        self.episodes: deque[Episode] = deque()
        self.memory_steps = memory_steps
        self._current: dict[str, list] = {}
        self._obs: np.ndarray | None = None
        self.true_returns: list[float] = []
        self.successes: list[bool] = []

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict]:
        """Reset the env and start recording a new episode."""
        obs, info = self.env.reset(**kwargs)
        self._obs = obs
        self._current = {k: [] for k in ("obs", "act", "rew", "next", "succ")}
        return obs, info

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        """Step with the source's reward; the true reward stays in ``info["true_reward"]``."""
        obs, true_reward, terminated, truncated, info = self.env.step(action)
        reward = self.source(self._obs, np.asarray(action, np.float32), obs, float(true_reward))
        for key, value in (
            ("obs", self._obs),
            ("act", action),
            ("rew", true_reward),
            ("next", obs),
            ("succ", info.get("success", 0.0)),
        ):
            self._current[key].append(value)
        self._obs = obs
        info = dict(info, true_reward=float(true_reward))
        if terminated or truncated:
            self._finish()
        return obs, reward, terminated, truncated, info

    def _episode_so_far(self) -> Episode | None:
        c = self._current
        if not c.get("act"):
            return None
        return Episode(
            np.asarray(c["obs"], np.float32),
            np.asarray(c["act"], np.float32),
            np.asarray(c["rew"], np.float32),
            np.asarray(c["next"], np.float32),
            np.asarray(c["succ"], np.float32),
            source="rollout",
        )

    def recent_episodes(self) -> list[Episode]:
        """Finished episodes in memory plus the one in progress (queries need not wait for an episode's end)."""
        current = self._episode_so_far()
        return list(self.episodes) + ([current] if current is not None else [])

    def _finish(self) -> None:
        c = self._current
        episode = self._episode_so_far()
        if episode is None:
            return
        self.episodes.append(episode)
        self.true_returns.append(float(episode.rewards.sum()))
        self.successes.append(episode.succeeded)
        while sum(len(e) for e in self.episodes) > self.memory_steps:
            self.episodes.popleft()
        self._current = {k: [] for k in c}


@dataclass
class PbRLConfig:
    """The loop's settings (PEBBLE's defaults where they apply; budgets scaled to Meta-World v3 on a CPU).

    Args:
        task: Meta-World v3 task.
        seed: seed of the env, SAC, the teacher, the reward ensemble and the query sampler.
        total_steps: environment steps in all.
        reward: ``"learned"`` (preferences), ``"true"`` (SAC on the task reward: the baseline).
        unsupervised_steps: PEBBLE's state-entropy pre-training steps (0 disables).
        learning_starts: random-action steps before SAC updates.
        feedback_every: steps between preference rounds.
        feedback_start: step of the first preference round (0: the first round is at ``feedback_every``); later
            rounds follow every ``feedback_every`` steps.
        queries_per_round: labels asked per round.
        max_labels: the total label budget.
        segment_length: steps per segment (PEBBLE: 50).
        query_method: uniform, disagreement or entropy.
        ensemble_size: reward models in the ensemble (PEBBLE: 3).
        reward_epochs: epochs over all labels per reward update (when ``reward_updates`` is None).
        reward_updates: if set, a fixed number of minibatch updates per reward update instead of epochs, so a
            round costs the same however many labels exist (members are warm-started from the last round).
        reward_batch_size: labelled pairs per reward minibatch.
        reward_hidden: width of each member's step-reward MLP (PEBBLE: 256).
        reward_layers: hidden layers of each member's step-reward MLP (PEBBLE: 3).
        reward_scale: the learned reward given to SAC is multiplied by this (PEBBLE: 1, a tanh-bounded reward).
        reward_normalize: standardise the learned reward over the replay buffer after every reward update (mean 0,
            std ``reward_scale``). A Bradley-Terry reward has no scale of its own, while SAC's entropy temperature
            starts at a fixed value: standardising gives every reward update the same scale relative to it.
        reward_pessimism: λ ≥ 0; the policy's reward is the members' mean − λ · their standard deviation (0: the
            mean, as in PEBBLE), so transitions the ensemble disagrees on earn less.
        reward_use_actions: learn r̂(o, a) (PEBBLE) or a state-only r̂(o).
        eval_every: steps between success-rate evaluations.
        eval_episodes: episodes per evaluation.
        sac_kwargs: extra arguments of stable-baselines3's SAC.
    """

    task: str = "reach-v3"
    seed: int = 0
    total_steps: int = 20_000
    reward: Literal["learned", "true"] = "learned"
    unsupervised_steps: int = 0
    learning_starts: int = 1_000
    feedback_every: int = 2_000
    feedback_start: int = 0
    queries_per_round: int = 100
    max_labels: int = 1_000
    segment_length: int = 50
    query_method: QueryMethod = "disagreement"
    ensemble_size: int = 3
    reward_epochs: int = 20
    reward_updates: int | None = None
    reward_batch_size: int = 128
    reward_hidden: int = 256
    reward_layers: int = 3
    reward_scale: float = 1.0
    reward_normalize: bool = False
    reward_pessimism: float = 0.0
    reward_use_actions: bool = True
    eval_every: int = 5_000
    eval_episodes: int = 5
    sac_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.reward == "learned" and self.max_labels < 1:
            raise ValueError(
                f"max_labels is the label budget and must be >= 1 for a learned reward, got {self.max_labels}"
            )
        if self.feedback_every < 1 or self.feedback_start < 0:
            raise ValueError(
                f"feedback_every must be >= 1 and feedback_start >= 0, got {self.feedback_every} and "
                f"{self.feedback_start}"
            )
        if self.reward_pessimism < 0:
            raise ValueError(f"reward_pessimism must be >= 0, got {self.reward_pessimism}")
        if not self.reward_scale > 0:
            raise ValueError(f"reward_scale must be > 0, got {self.reward_scale}")
        if self.reward_updates is not None and self.reward_updates < 1:
            raise ValueError(f"reward_updates must be >= 1 (or null for epochs), got {self.reward_updates}")


class PbRLLoop:
    """PEBBLE-style online preference learning; parts are injectable (teacher, ensemble, fragmenter).

    Args:
        config: the loop's settings.
        teacher: answers queries (default: a perfectly rational B-Pref teacher with the label budget).
        ensemble: the reward ensemble (default: built from the env's spaces).
        fragmenter: recent episodes → candidate segment pairs (default: random pairs of fixed-length segments).
        progress: show a progress bar with success rate and labels used.
    """

    def __init__(
        self,
        config: PbRLConfig,
        teacher: ScriptedTeacher | None = None,
        ensemble: RewardEnsemble | None = None,
        fragmenter: Callable[[list[Episode], int, np.random.Generator], list[SegmentPair]] | None = None,
        progress: bool = True,
    ):
        from stable_baselines3 import SAC

        from mmpref.reward.trainers import quiet_lightning

        quiet_lightning()
        self.config = config
        self.rng = np.random.default_rng(config.seed)
        base = make_env(config.task, seed=config.seed)
        obs_dim, act_dim = base.observation_space.shape[0], base.action_space.shape[0]
        self.ensemble = ensemble or RewardEnsemble(
            obs_dim,
            act_dim,
            members=config.ensemble_size,
            hidden=config.reward_hidden,
            layers=config.reward_layers,
            seed=config.seed,
            use_actions=config.reward_use_actions,
        )
        self.teacher = teacher or ScriptedTeacher(seed=config.seed, budget=Budget(limit=config.max_labels))
        self.fragmenter = fragmenter or self._random_pairs
        mode = "true" if config.reward == "true" else ("entropy" if config.unsupervised_steps > 0 else "learned")
        self.source = RewardSource(mode, self.ensemble, scale=config.reward_scale, pessimism=config.reward_pessimism)
        self.env = PreferenceEnv(base, self.source)
        sac_kwargs = {
            "learning_starts": config.learning_starts,
            "batch_size": 256,
            "train_freq": 1,
            "gradient_steps": 1,
            "policy_kwargs": {"net_arch": [256, 256]},
            "verbose": 0,
            "device": "cpu",
        } | config.sac_kwargs
        self.model = SAC("MlpPolicy", self.env, seed=config.seed, **sac_kwargs)
        _silence(self.model)
        self.eval_env = make_env(config.task, seed=config.seed + 10_000)
        self.labelled: list[SegmentPair] = []
        self.steps = 0
        self.history: list[dict[str, float]] = []
        self.progress = progress
        self.reward_learned = False

    def _random_pairs(self, episodes: list[Episode], n: int, rng: np.random.Generator) -> list[SegmentPair]:
        segments = cut_segments(episodes, self.config.segment_length, stride=self.config.segment_length // 2)
        return random_pairs(segments, n, rng) if len(segments) >= 2 else []

    # --- the parts of one round -------------------------------------------------------------------------------------

    def feedback_round(self) -> int:
        """Ask a round of queries, update the reward, relabel the replay buffer; returns the labels obtained."""
        c = self.config
        room = int(min(c.queries_per_round, self.teacher.budget.remaining))
        episodes = self.env.recent_episodes()
        if room <= 0 or not episodes:
            return 0
        candidates = self.fragmenter(episodes, room * 10, self.rng)
        if not candidates:
            return 0
        method = c.query_method if self.reward_learned else "uniform"  # nothing to disagree about yet
        queries = select_queries(candidates, room, method, self.rng, self.ensemble)
        new = self.teacher.label_pairs(queries)
        self.labelled += new
        if self.labelled:
            self.ensemble.fit(
                self.labelled, epochs=c.reward_epochs, batch_size=c.reward_batch_size, updates=c.reward_updates
            )
            self.reward_learned = True
            self.source.mode = "learned"
            self.relabel()
        return len(new)

    def relabel(self) -> None:
        """Recompute every stored transition's reward with the current reward model (PEBBLE)."""
        buffer = self.model.replay_buffer
        size = buffer.buffer_size if buffer.full else buffer.pos
        if size == 0:
            return
        obs = buffer.observations[:size].reshape(size, -1)
        actions = buffer.actions[:size].reshape(size, -1)
        raw = self.source.raw_learned(obs, actions)
        if self.config.reward_normalize:
            self.source.shift = float(raw.mean())
            self.source.scale = self.config.reward_scale / max(float(raw.std()), 1e-6)
        rewards = self.source.affine(raw)
        buffer.rewards[:size] = rewards.reshape(buffer.rewards[:size].shape)

    def evaluate(self) -> float:
        """Success rate of the deterministic policy over ``eval_episodes`` episodes (success at any step)."""
        wins = 0
        for episode in range(self.config.eval_episodes):
            obs, _ = self.eval_env.reset(seed=self.config.seed + 10_000 + episode)
            for _ in range(500):
                action, _ = self.model.predict(obs, deterministic=True)
                obs, _, terminated, truncated, info = self.eval_env.step(action)
                if info.get("success", 0.0) > 0:
                    wins += 1
                    break
                if terminated or truncated:
                    break
        return wins / self.config.eval_episodes

    # --- the loop ---------------------------------------------------------------------------------------------------

    def _is_feedback_step(self, step: int) -> bool:
        """Preference rounds happen at ``feedback_start`` (if > 0) and every ``feedback_every`` steps after it."""
        offset = step - self.config.feedback_start
        return step > 0 and offset >= 0 and offset % self.config.feedback_every == 0

    def _next_feedback_step(self) -> int:
        """The first feedback step after the current step."""
        c = self.config
        if self.steps < c.feedback_start:
            return c.feedback_start
        return c.feedback_start + ((self.steps - c.feedback_start) // c.feedback_every + 1) * c.feedback_every

    def run(self, until: int | None = None, checkpoint: str | Path | None = None) -> list[dict[str, float]]:
        """Run until ``until`` (default: ``total_steps``) environment steps; checkpoint after every chunk."""
        from tqdm.auto import tqdm

        c = self.config
        until = min(until or c.total_steps, c.total_steps)
        bar = tqdm(
            total=c.total_steps,
            initial=self.steps,
            disable=not self.progress,
            unit="step",
            desc=f"{c.task} {c.reward}",
        )
        while self.steps < until:
            boundaries = [c.eval_every] + ([c.unsupervised_steps] if c.unsupervised_steps else [])
            next_stop = min([until, self._next_feedback_step()] + [(self.steps // b + 1) * b for b in boundaries])
            if c.unsupervised_steps and self.steps < c.unsupervised_steps:
                next_stop = min(next_stop, c.unsupervised_steps)
            self.model.learn(total_timesteps=next_stop - self.steps, reset_num_timesteps=False, progress_bar=False)
            bar.update(next_stop - self.steps)
            self.steps = next_stop
            if c.reward == "learned" and self.steps >= c.unsupervised_steps and self._is_feedback_step(self.steps):
                self.feedback_round()
            if self.steps % c.eval_every == 0 or self.steps == c.total_steps:
                row = {
                    "steps": self.steps,
                    "success_rate": self.evaluate(),
                    "labels": len(self.labelled),
                    "queries": self.teacher.budget.asked,
                    "train_true_return": float(np.mean(self.env.true_returns[-5:] or [0.0])),
                }
                self.history.append(row)
                bar.set_postfix(success=f"{row['success_rate']:.2f}", labels=row["labels"])
            if checkpoint is not None:
                self.save(checkpoint)
        bar.close()
        return self.history

    # --- exact resume -----------------------------------------------------------------------------------------------

    def save(self, folder: str | Path) -> Path:
        """Write policy, replay buffer, reward ensemble, labels, teacher and random states (each atomically)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save(folder / "sac.zip")
        self.model.save_replay_buffer(folder / "replay_buffer.pkl")
        state = {
            "config": asdict(self.config),
            "steps": self.steps,
            "history": self.history,
            "labelled": self.labelled,
            "ensemble": self.ensemble.state_dict(),
            "ensemble_rng": self.ensemble.rng,
            "reward_learned": self.reward_learned,
            "source_mode": self.source.mode,
            "source_affine": (self.source.shift, self.source.scale),
            "rng": self.rng,
            "teacher": {"budget": self.teacher.budget, "rng": self.teacher.rng},
            "episodes": list(self.env.episodes),
            "env_current": self.env._current,
            "env_obs": self.env._obs,
            "true_returns": self.env.true_returns,
            "successes": self.env.successes,
            "env_state": _env_state(self.env),
            "eval_env_state": _env_state(self.eval_env),
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": np.random.get_state(),
            "monitor": _monitor_state(self.model),
            "last_obs": self.model._last_obs,
            "last_original_obs": getattr(self.model, "_last_original_obs", None),
        }
        with atomic_write(folder / "loop.pkl", "wb") as handle:
            pickle.dump(state, handle)
        return folder

    @classmethod
    def load(cls, folder: str | Path, progress: bool = True) -> PbRLLoop:
        """Rebuild a loop from :meth:`save` so that :meth:`run` continues exactly."""
        from stable_baselines3 import SAC

        folder = Path(folder)
        if not (folder / "loop.pkl").is_file():
            raise FileNotFoundError(f"{folder}: no PbRL checkpoint (loop.pkl) here")
        with open(folder / "loop.pkl", "rb") as handle:
            state = pickle.load(handle)
        loop = cls(PbRLConfig(**state["config"]), progress=progress)
        loop.model = SAC.load(folder / "sac.zip", env=loop.env, device="cpu")
        _silence(loop.model)
        loop.model.load_replay_buffer(folder / "replay_buffer.pkl")
        loop.steps, loop.history, loop.labelled = state["steps"], state["history"], state["labelled"]
        loop.ensemble.load_state_dict(state["ensemble"])
        loop.ensemble.rng = state["ensemble_rng"]
        loop.reward_learned, loop.source.mode, loop.rng = state["reward_learned"], state["source_mode"], state["rng"]
        loop.source.shift, loop.source.scale = state.get("source_affine", (0.0, loop.config.reward_scale))
        loop.teacher.budget, loop.teacher.rng = state["teacher"]["budget"], state["teacher"]["rng"]
        loop.env.episodes = deque(state["episodes"])
        loop.env._current, loop.env._obs = state["env_current"], state["env_obs"]
        loop.env.true_returns, loop.env.successes = state["true_returns"], state["successes"]
        _set_env_state(loop.env, state["env_state"])
        _set_env_state(loop.eval_env, state["eval_env_state"])
        torch.set_rng_state(state["torch_rng"])
        np.random.set_state(state["numpy_rng"])
        _set_monitor_state(loop.model, state["monitor"])
        loop.model._last_obs = state["last_obs"]
        if state["last_original_obs"] is not None:
            loop.model._last_original_obs = state["last_original_obs"]
        return loop


def _silence(model: Any) -> None:
    """A logger with no outputs: stable-baselines3's default one makes an empty log folder per ``learn()`` call."""
    from stable_baselines3.common.logger import Logger

    model.set_logger(Logger(folder=None, output_formats=[]))


_MONITOR_FIELDS = ("rewards", "needs_reset", "episode_returns", "episode_lengths", "episode_times", "total_steps")


def _monitor_state(model: Any) -> dict[str, Any]:
    """The episode bookkeeping of stable-baselines3's Monitor around the training env."""
    monitor = model.env.envs[0]
    return {name: getattr(monitor, name) for name in _MONITOR_FIELDS}


def _set_monitor_state(model: Any, state: dict[str, Any]) -> None:
    monitor = model.env.envs[0]
    for name, value in state.items():
        setattr(monitor, name, value)


def _layers(env: gym.Env) -> list[Any]:
    """The wrapper chain from the outermost wrapper to the raw Meta-World env."""
    chain, layer = [], env
    while layer is not None:
        chain.append(layer)
        layer = getattr(layer, "env", None)
    return chain


def _env_state(env: gym.Env) -> dict[str, Any]:
    """Simulator state plus every wrapper's small attributes (step counters, reset flags, random generators)."""
    data = env.unwrapped.data
    return {
        "qpos": data.qpos.copy(),
        "qvel": data.qvel.copy(),
        "mocap_pos": data.mocap_pos.copy(),
        "mocap_quat": data.mocap_quat.copy(),
        "layers": [{k: v for k, v in vars(layer).items() if _plain(v)} for layer in _layers(env)],
    }


def _set_env_state(env: gym.Env, state: dict[str, Any]) -> None:
    import mujoco

    for layer, attributes in zip(_layers(env), state["layers"], strict=True):
        for key, value in attributes.items():
            setattr(layer, key, value)
    unwrapped = env.unwrapped
    unwrapped.data.qpos[:] = state["qpos"]
    unwrapped.data.qvel[:] = state["qvel"]
    unwrapped.data.mocap_pos[:] = state["mocap_pos"]
    unwrapped.data.mocap_quat[:] = state["mocap_quat"]
    mujoco.mj_forward(unwrapped.model, unwrapped.data)


def _plain(value: Any) -> bool:
    """Picklable, small pieces of env state (numbers, arrays, random generators), not models or renderers."""
    plain = (int, float, bool, str, np.ndarray, np.random.Generator, tuple, list, deque)
    return value is None or (isinstance(value, plain) and not isinstance(value, gym.Env))
