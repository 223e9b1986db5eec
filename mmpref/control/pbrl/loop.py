"""Online preference-based RL (PEBBLE-style) as a plain outer loop with named, injectable parts.

rollout (SAC acting in the env) → fragmenter (recent transitions → segments → candidate pairs) → query selection →
teacher (scripted or human) → preference buffer → reward update (the reward ensemble, through the reward
LightningModule) → relabel SAC's whole replay buffer with the new reward → policy update (stable-baselines3 SAC).

Lee, Smith & Abbeel (2021), "PEBBLE": SAC with a learned reward, optional unsupervised pre-training that maximises a
k-nearest-neighbour state-entropy estimate, and relabelling of the replay buffer after every reward update.
:class:`PbRLLoop` checkpoints everything it needs to resume exactly where it stopped (policy, replay buffer, reward
ensemble, preference buffer, teacher budget and random states).

Evaluation (:meth:`PbRLLoop.evaluate`) runs the deterministic policy for one whole episode on each of
``eval_episodes`` distinct goals of the task, fixed by the seed (:func:`evaluation_goals`), and records the success
rate and the mean true return; each history row also carries the parts' diagnostics (RIME's ``rime_*`` counts).
"""

from __future__ import annotations

import pickle
from collections import deque
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmpref.control.envs import goal_count, make_env
from mmpref.control.pbrl.config import PbRLConfig
from mmpref.control.pbrl.env import PreferenceEnv, RewardSource
from mmpref.control.pbrl.evaluation import (
    EVAL_SEED_OFFSET,
    evaluate_on_goals,
    evaluation_goals,
    is_evaluation_step,
)
from mmpref.control.pbrl.parts import build_parts, hook
from mmpref.control.pbrl.state import env_state, monitor_state, set_env_state, set_monitor_state, silence_logger
from mmpref.control.reward import RewardEnsemble, select_queries
from mmpref.control.segments import Episode, cut_segments, random_pairs
from mmpref.control.teachers import Budget, ScriptedTeacher
from mmpref.data import SegmentPair
from mmpref.data.io import atomic_write


class PbRLLoop:
    """PEBBLE-style online preference learning; parts are injectable (teacher, ensemble, fragmenter).

    Args:
        config: the loop's settings.
        teacher: answers queries (default: the B-Pref teacher with the label budget and ``teacher_eps``, or people
            through the labelling app when ``config.teacher`` is ``"human"``).
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
        base = make_env(config.task, seed=config.seed, goal_variation=config.goal_variation)
        obs_dim, act_dim = base.observation_space.shape[0], base.action_space.shape[0]
        self.ensemble = ensemble or RewardEnsemble(
            obs_dim,
            act_dim,
            members=config.ensemble_size,
            hidden=config.reward_hidden,
            layers=config.reward_layers,
            seed=config.seed,
            use_actions=config.reward_use_actions,
            trainer=config.trainer,
        )
        self.teacher = teacher or ScriptedTeacher(
            seed=config.seed, eps=config.teacher_eps, budget=Budget(limit=config.max_labels)
        )
        self.fragmenter = fragmenter or self._random_pairs
        self.parts = build_parts(config)
        mode = "true" if config.reward == "true" else ("entropy" if config.unsupervised_steps > 0 else "learned")
        self.source = RewardSource(mode, self.ensemble, scale=config.reward_scale, pessimism=config.reward_pessimism)
        self.source.bonus = hook(self.parts, "bonus")
        self.env = PreferenceEnv(base, self.source)
        part_sac = hook(self.parts, "sac_kwargs")
        episode_length = getattr(base.spec, "max_episode_steps", None) or 500
        sac_kwargs = (
            {
                "learning_starts": config.learning_starts,
                "batch_size": 256,
                "train_freq": 1,
                "gradient_steps": 1,
                "policy_kwargs": {"net_arch": [256, 256]},
                "verbose": 0,
                "device": config.device,
            }
            | (part_sac(episode_length) if part_sac else {})
            | config.sac_kwargs
        )
        self.model = SAC("MlpPolicy", self.env, seed=config.seed, **sac_kwargs)
        silence_logger(self.model)
        self.eval_env = make_env(config.task, seed=config.seed + EVAL_SEED_OFFSET)
        self.eval_goals = evaluation_goals(config.seed, config.eval_episodes, goal_count(self.eval_env))
        self.labelled: list[SegmentPair] = []
        self.steps = 0
        self.history: list[dict[str, float]] = []
        self.progress = progress
        self.reward_learned = False
        self.round_due = False  # a feedback round is due at the current step (saved before a human round)
        if config.teacher == "human" and teacher is None:  # people answer through the labelling app's store
            from mmpref.control.pbrl.human import attach_human

            attach_human(self)

    def _random_pairs(self, episodes: list[Episode], n: int, rng: np.random.Generator) -> list[SegmentPair]:
        length = self.config.segment_length
        stored = hook(self.parts, "segment_length")  # SURF stores longer segments than the teacher sees
        segments = cut_segments(episodes, stored(length) if stored else length, stride=length // 2)
        return random_pairs(segments, n, rng) if len(segments) >= 2 else []

    def query_episodes(self) -> list[Episode]:
        """Episodes queries are drawn from: all recent ones, or a part's choice (QPA: the newest N)."""
        episodes = self.env.recent_episodes()
        choose = hook(self.parts, "query_episodes")
        return choose(episodes) if choose else episodes

    # --- the parts of one round -------------------------------------------------------------------------------------

    def feedback_round(self) -> int:
        """Ask a round of queries, update the reward, relabel the replay buffer; returns the labels obtained."""
        whole_round = hook(self.parts, "feedback_round")  # listwise queries replace the pairwise round
        if whole_round:
            return whole_round(self)
        c = self.config
        room = int(min(c.queries_per_round, self.teacher.budget.remaining))
        episodes = self.query_episodes()
        if room <= 0 or not episodes:
            return 0
        candidates = self.fragmenter(episodes, room * 10, self.rng)
        if not candidates:
            return 0
        method = c.query_method if self.reward_learned else "uniform"  # nothing to disagree about yet
        queries = select_queries(candidates, room, method, self.rng, self.ensemble)
        label = hook(self.parts, "label")
        new = label(self, queries) if label else self.teacher.label_pairs(queries)
        self.labelled += new
        if self.labelled:
            update = hook(self.parts, "update_reward")  # SURF, RIME
            if update:
                update(self, new)
            else:
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
        rewards = self.source.affine(raw) + self.source.exploration(obs, actions)
        buffer.rewards[:size] = rewards.reshape(buffer.rewards[:size].shape)

    def evaluate(self) -> dict[str, float]:
        """Success rate and mean true return of the deterministic policy, one episode on each of ``eval_goals``.

        Meta-World v3 resets to the same start state whatever the reset seed (``reset`` ignores it; the goal is frozen
        by the env's task), and the evaluation policy is deterministic, so episodes on one goal are copies of one
        episode: ``eval_episodes`` of them gave a success rate of exactly 0 or 1, measured on a single goal. Instead,
        episode i runs on goal ``eval_goals[i]``, distinct goals among the task's 50 fixed by the seed
        (:func:`evaluation_goals`): the same at every evaluation and in every run with this seed, so variants are
        compared on identical goals and the rate moves in steps of 1 / ``eval_episodes``. The training env keeps its
        own single goal (these goals may include it). Episodes run to the end for the return
        (:func:`evaluate_on_goals`); the result depends on the policy alone, so a resumed run evaluates exactly as an
        uninterrupted one.
        """

        def act(obs: np.ndarray) -> np.ndarray:
            return self.model.predict(obs, deterministic=True)[0]

        return evaluate_on_goals(self.eval_env, act, self.eval_goals)

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
        if self.round_due:  # resumed from the checkpoint written just before a human round
            self._end_chunk(bar, checkpoint)
        while self.steps < until:
            boundaries = [c.eval_every] + ([c.unsupervised_steps] if c.unsupervised_steps else [])
            next_stop = min([until, self._next_feedback_step()] + [(self.steps // b + 1) * b for b in boundaries])
            if c.unsupervised_steps and self.steps < c.unsupervised_steps:
                next_stop = min(next_stop, c.unsupervised_steps)
            self.model.learn(total_timesteps=next_stop - self.steps, reset_num_timesteps=False, progress_bar=False)
            bar.update(next_stop - self.steps)
            self.steps = next_stop
            self.round_due = (
                c.reward == "learned" and self.steps >= c.unsupervised_steps and self._is_feedback_step(self.steps)
            )
            if self.round_due and checkpoint is not None and c.teacher == "human":
                self.save(checkpoint)  # people take long: an interrupted wait resumes at this round (human.py)
            self._end_chunk(bar, checkpoint)
        bar.close()
        return self.history

    def _end_chunk(self, bar: Any, checkpoint: str | Path | None) -> None:
        """After a chunk of steps: the feedback round if one is due, the evaluation if one is due, the checkpoint."""
        c = self.config
        if self.round_due:
            self.feedback_round()
            self.round_due = False
        if is_evaluation_step(self.steps, c.eval_every, c.total_steps):
            row = {"steps": self.steps} | self.evaluate()
            row |= {
                "labels": self.teacher.budget.labelled,
                "queries": self.teacher.budget.asked,
                "train_true_return": float(np.mean(self.env.true_returns[-5:] or [0.0])),
            }
            for part in self.parts.values():  # e.g. RIME's selection statistics of the last reward update
                diagnostics = getattr(part, "diagnostics", None)
                if diagnostics is not None:
                    row |= diagnostics()
            self.history.append(row)
            bar.set_postfix(success=f"{row['success_rate']:.2f}", labels=row["labels"])
        if checkpoint is not None:
            self.save(checkpoint)

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
            "round_due": self.round_due,
            "source_mode": self.source.mode,
            "source_affine": (self.source.shift, self.source.scale),
            "source_steps": self.source.steps,
            "parts": {name: part.state_dict() for name, part in self.parts.items()},
            "rng": self.rng,
            "teacher": {
                "budget": self.teacher.budget,
                "rng": self.teacher.rng,
                "mistakes": getattr(self.teacher, "mistakes", None),  # the scripted teacher's record (diagnostics)
            },
            "episodes": list(self.env.episodes),
            "env_current": self.env._current,
            "env_obs": self.env._obs,
            "true_returns": self.env.true_returns,
            "successes": self.env.successes,
            "env_state": env_state(self.env),
            "eval_env_state": env_state(self.eval_env),
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": np.random.get_state(),
            "monitor": monitor_state(self.model),
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
        import zipfile

        from mmpref.errors import ModelFolderError

        fix = "the checkpoint is damaged (an interrupted copy?): run again without --resume, or restore the folder"
        try:
            with open(folder / "loop.pkl", "rb") as handle:
                state = pickle.load(handle)
            config = PbRLConfig(**state["config"])
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, KeyError, TypeError, IndexError) as err:
            raise ModelFolderError(
                folder / "loop.pkl", f"cannot be read ({err.__class__.__name__}: {err})", fix
            ) from None
        loop = cls(config, progress=progress)
        for name in ("sac.zip", "replay_buffer.pkl"):
            if not (folder / name).is_file():
                raise ModelFolderError(folder / name, "is missing", fix)
        try:
            loop.model = SAC.load(folder / "sac.zip", env=loop.env, device=loop.config.device)
            silence_logger(loop.model)
            loop.model.load_replay_buffer(folder / "replay_buffer.pkl")
        except (pickle.UnpicklingError, EOFError, OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
            what = f"sac.zip or replay_buffer.pkl cannot be read ({err.__class__.__name__})"
            raise ModelFolderError(folder, what, fix) from None
        loop.steps, loop.history, loop.labelled = state["steps"], state["history"], state["labelled"]
        loop.ensemble.load_state_dict(state["ensemble"])
        loop.ensemble.rng = state["ensemble_rng"]
        loop.reward_learned, loop.source.mode, loop.rng = state["reward_learned"], state["source_mode"], state["rng"]
        loop.source.shift, loop.source.scale = state.get("source_affine", (0.0, loop.config.reward_scale))
        loop.source.steps = state.get("source_steps", 0)
        loop.round_due = state.get("round_due", False)
        for name, part_state in state.get("parts", {}).items():
            loop.parts[name].load_state_dict(part_state)
        loop.teacher.budget, loop.teacher.rng = state["teacher"]["budget"], state["teacher"]["rng"]
        if state["teacher"].get("mistakes") is not None and hasattr(loop.teacher, "mistakes"):
            loop.teacher.mistakes = list(state["teacher"]["mistakes"])
        loop.env.episodes = deque(state["episodes"])
        loop.env._current, loop.env._obs = state["env_current"], state["env_obs"]
        loop.env.true_returns, loop.env.successes = state["true_returns"], state["successes"]
        set_env_state(loop.env, state["env_state"])
        set_env_state(loop.eval_env, state["eval_env_state"])
        torch.set_rng_state(state["torch_rng"])
        np.random.set_state(state["numpy_rng"])
        set_monitor_state(loop.model, state["monitor"])
        loop.model._last_obs = state["last_obs"]
        if state["last_original_obs"] is not None:
            loop.model._last_original_obs = state["last_original_obs"]
        return loop
