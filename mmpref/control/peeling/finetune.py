r"""Peeling-style two-stage finetuning: behaviour cloning, then preference finetuning against the frozen BC policy.

"How to Peel with a Knife" (2026): stage 1 imitates 50–200 demonstrations; stage 2 learns a reward model that fuses
a quantitative task metric (segment level) with quality ratings (trajectory level) and finetunes the policy with
it. Here the stage-2 update is trajectory DPO on the shared loss core, with the frozen BC policy as the reference:

.. math:: s_\theta(\tau) = \sum_{t} \big[\log \pi_\theta(a_t \mid s_t) - \log \pi_{\mathrm{ref}}(a_t \mid s_t)\big],
          \qquad \ell = -\log \sigma\big(\beta\,(s_\theta(\tau_w) - s_\theta(\tau_l))\big)

(Rafailov et al. 2023, eq. 7, with the sequence log-ratio of a trajectory as the implicit reward; the CPL / DPO row
of the design's score table), where τ_w, τ_l are on-policy rollouts from the *same* start state ranked by the reward
model. Any pairwise loss of :mod:`mmpref.losses` can replace −log σ; a listwise loss (Plackett-Luce, ListNet,
RankList) instead ranks each *whole group* of rollouts from one start state by the reward model and fits the
policy's β-scaled scores s_θ to that order (listwise DPO: for Plackett-Luce with π the reward model's order,
ℓ = −Σ_i [β s_θ(τ_π(i)) − log Σ_{j≥i} exp(β s_θ(τ_π(j)))], Liu et al. 2024, LiPO), so every rollout and every
ordered pair informs the update instead of best-vs-worst pairs only. The objective optionally adds α times the
winners' per-step negative log-likelihood (RPO, Pang et al. 2024): on push-v3 DPO alone (α = 0) left success where BC
had it and widened the policy; with α = 1 success rose on average over 3 seeds, though not on every seed
(``docs/benchmarks/bench_peeling_nll0_cpu.md`` against ``bench_peeling_t1_cpu.md``).

**Window ranking** (``windows`` = W > 1): every rollout of a group is cut into W consecutive windows, and the windows
at the same time of the group's rollouts are ranked by their share of the reward model's score (the fused reward is
a sum of per-step terms, :meth:`FusedTrajectoryScorer.step_scores`); each pair or list is then a window, with s_θ
summed over that window's steps only. A whole-trajectory preference credits all T steps of the winner for what a few
of them did; window preferences put the credit near the steps that earned it (the reward-model analogue of CPL's
segment preferences). The windows of a pair start from different states (the rollouts have diverged), so this is the
partial-return preference model on segments. On push-v3, W = 5 raised the mean-action gain over BC from +15.6 to
+20.0 points on seeds 0-2 but not on fresh seeds: over nine seeds +9.3, level with whole-trajectory ranking (+8.2)
(``docs/benchmarks/bench_peeling_variants_cpu.md``).

**Correlated exploration** (``noise_correlation`` = ρ > 0): the rollouts' deviations from the mean action follow an
AR(1) process (:meth:`~mmpref.control.policies.GaussianPolicy.numpy_policy`), each step still a sample of π(·|s_t).
A window's preference credits the sum of its steps' deviations; with independent per-step noise those average out,
and even a perfect ranker (the true return, ``oracle`` in the pipeline) gave no mean-action gain on push-v3 seeds 3-5;
with ρ = 0.97 a winner deviates the same way for ~30 steps, so the update has a direction. Rollouts that wander
further also clip more actions, whose density under the policy can be tiny (log π of −60 when μ lies far outside
[−1, 1]); the censored clip likelihood (:func:`~mmpref.control.policies.censored_copy`) scores those steps by the
mass beyond the bound instead. With both, windows credited to go (``window_credit``: a window ranked by its share
plus every later window's, :func:`credit_to_go`) and 16 rounds, the push-v3 benchmark's mean-action gain over BC is
+16.1 points over 12 seeds (``docs/benchmarks/bench_peeling_cpu.md``).

**Replay** (``replay_rounds`` = k > 0): each round's objective also takes the ranked groups of the k rounds before
it. A preference between two rollouts holds whatever policy drew them, so older pairs stay valid DPO pairs; on the
known-answer toy of the tests four times the pairs per update bring the mean action far nearer its target, but on
push-v3 (k = 3, seeds 0-5) it gave −2.8 points against the setting (``docs/benchmarks/bench_peeling_replay3_cpu.md``).

**Reward refit** (:class:`RewardRefit`): rate some rollouts of every round and refit the fused reward on all ratings
so far, so the ranking follows the policy off BC's distribution.

**Residual policy** (:class:`~mmpref.control.policies.ResidualPolicy`): the BC network frozen and a small MLP added to
its output, trained by the same objective; the paper's choice. On push-v3 it did worse than finetuning the whole
policy at the learning rate tried.

The quantitative metric is object-to-goal progress, for Meta-World tasks that move an object to a goal (push,
sweep, slide ...): observation slots 4:7 hold the object's position and 36:39 the goal's, so with
d_t = ‖obj_t − goal‖ the per-step metric is

.. math:: m_t = \frac{d_t - d_{t+1}}{d_0} - \lambda \lVert a_t - a_{t-1} \rVert^2

and a segment's metric is Σ_t m_t over its steps: how far the object moved toward the goal (as a fraction of the
initial distance) minus a jerk penalty (how smoothly). The fused reward model (:class:`FusedTrajectoryScorer`) scores a
trajectory as w·Σ_t m_t + mean_t r̂(s_t, a_t), with the weight w and the step reward r̂ learned from trajectory
ratings through :class:`~mmpref.reward.system.RewardModelSystem` (every ordered pair of differently rated
trajectories is a Bradley-Terry pair).
"""

from __future__ import annotations

import copy
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from mmpref.control.policies import GaussianPolicy, copy_policy
from mmpref.control.reward import StepReward
from mmpref.control.segments import Episode, rollout
from mmpref.control.teachers import RatingTeacher
from mmpref.losses import LISTWISE_LOSSES, PAIRWISE_LOSSES, LossName, PairwiseLossName, is_listwise
from mmpref.reward.datamodule import list_dataset
from mmpref.reward.system import RewardModelSystem
from mmpref.reward.trainers import quick_trainer, quiet_lightning

logger = logging.getLogger(__name__)
WindowCredit = Literal["own", "to_go"]
OBJECT_SLICE, GOAL_SLICE = slice(4, 7), slice(36, 39)


# --- the quantitative metric ---------------------------------------------------------------------------------------


def progress_steps(
    observations: np.ndarray,
    next_observations: np.ndarray,
    actions: np.ndarray,
    smoothness: float = 0.0,
    log_floor: float = 0.0,
) -> np.ndarray:
    r"""Per-step metric m_t = (d_t − d_{t+1}) / d_0 − λ‖a_t − a_{t−1}‖² of one trajectory.

    With ``log_floor`` ε > 0 the distance is measured on a log scale instead,
    m_t = [log(d_t + ε) − log(d_{t+1} + ε)] / log((d_0 + ε) / ε) − λ‖a_t − a_{t−1}‖²: the sum is still 0 for no
    progress and 1 for the object on the goal, but a centimetre near the goal counts (d_0 + ε)/(d + ε) times what it
    counts at the start, so the metric tells "just outside the success radius" from "inside it" more sharply.

    Args:
        observations: ``[T, 39]`` observations before each action (step 0 starts the trajectory).
        next_observations: ``[T, 39]`` observations after each action.
        actions: ``[T, a]`` actions (a_{−1} = a_0, so step 0 has no jerk).
        smoothness: jerk weight λ ≥ 0.
        log_floor: ε of the log-distance form (0: linear progress); in the units of the observation (metres).

    Returns:
        ``[T]``; summing it over the trajectory gives the fraction of the initial distance covered (linear or log)
        minus λ·jerk.
    """
    if observations.ndim != 2 or observations.shape[-1] < GOAL_SLICE.stop:
        raise ValueError(
            f"need Meta-World observations [T, 39] (object at 4:7, goal at 36:39), got {observations.shape}"
        )
    if next_observations.shape != observations.shape or len(actions) != len(observations):
        raise ValueError(
            f"observations {observations.shape}, next_observations {next_observations.shape} and actions "
            f"{actions.shape} must share T"
        )
    if log_floor < 0:
        raise ValueError(f"log_floor must be >= 0 (0: linear progress), got {log_floor}")
    goal = observations[0, GOAL_SLICE]
    d_before = np.linalg.norm(observations[:, OBJECT_SLICE] - goal, axis=-1)
    d_after = np.linalg.norm(next_observations[:, OBJECT_SLICE] - goal, axis=-1)
    if log_floor > 0:
        # the whole way from d_0 to the goal spans log((d_0 + ε) / ε); a start on the goal has nothing to cover
        span = max(float(np.log((d_before[0] + log_floor) / log_floor)), 1e-6)
        steps = (np.log(d_before + log_floor) - np.log(d_after + log_floor)) / span
    else:
        steps = (d_before - d_after) / max(float(d_before[0]), 1e-6)
    if smoothness > 0:
        previous = np.concatenate([actions[:1], actions[:-1]])
        steps = steps - smoothness * ((actions - previous) ** 2).sum(-1)
    return steps.astype(np.float32)


def segment_metric(episode: Episode, length: int, smoothness: float = 0.0, log_floor: float = 0.0) -> np.ndarray:
    """The metric of each non-overlapping ``length``-step segment of an episode, ``[T // length]``."""
    steps = progress_steps(episode.observations, episode.next_observations, episode.actions, smoothness, log_floor)
    usable = len(steps) // length * length
    return steps[:usable].reshape(-1, length).sum(-1)


@dataclass(frozen=True)
class Outcome:
    """How one evaluated episode ended: success, final progress 1 − d_T/d_0, mean squared action change."""

    success: bool
    progress: float
    jerk: float


def outcome(episode: Episode) -> Outcome:
    """Success (``info["success"]`` at any step), final progress and jerk of an episode."""
    goal = episode.observations[0, GOAL_SLICE]
    d0 = max(float(np.linalg.norm(episode.observations[0, OBJECT_SLICE] - goal)), 1e-6)
    d_end = float(np.linalg.norm(episode.next_observations[-1, OBJECT_SLICE] - goal))
    jerk = float(((np.diff(episode.actions, axis=0)) ** 2).sum(-1).mean()) if len(episode) > 1 else 0.0
    return Outcome(episode.succeeded, 1.0 - d_end / d0, jerk)


# --- the fused reward model ----------------------------------------------------------------------------------------


class FusedTrajectoryScorer(nn.Module):
    r"""s(τ) = w·Σ_t m_t + (1/T)·Σ_t r̂(s_t, a_t) on features ``[B, T, o + a + 1]`` (last channel: m_t).

    The metric's weight w (initialised to ``metric_weight``) and the step reward r̂ are learned from the labels, so
    the ratings decide how much the hand-written metric counts and r̂ supplies what the metric misses.
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 64, metric_weight: float = 1.0):
        super().__init__()
        self.step_reward = StepReward(obs_dim + act_dim, hidden, layers=2)
        self.metric_weight = nn.Parameter(torch.tensor(float(metric_weight)))
        self.in_features = obs_dim + act_dim + 1

    def step_scores(self, x: torch.Tensor) -> torch.Tensor:
        """The per-step terms w·m_t + r̂(s_t, a_t)/T, ``[..., T, o + a + 1]`` → ``[..., T]`` (they sum to s(τ))."""
        if x.shape[-1] != self.in_features:
            raise ValueError(f"features must end in size {self.in_features} (obs, action, metric), got {x.shape}")
        return self.metric_weight * x[..., -1] + self.step_reward(x[..., :-1]) / x.shape[-2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., T, o + a + 1]`` → ``[...]``."""
        return self.step_scores(x).sum(-1)


def trajectory_features(episodes: Sequence[Episode], smoothness: float = 0.0, log_floor: float = 0.0) -> np.ndarray:
    """Stack equal-length episodes into ``[N, T, o + a + 1]`` (observation, action, per-step metric)."""
    lengths = {len(e) for e in episodes}
    if len(lengths) != 1:
        raise ValueError(
            f"trajectories must share one length (roll out with a fixed max_steps), got {sorted(lengths)}"
        )
    return np.stack(
        [
            np.concatenate(
                [
                    e.observations,
                    e.actions,
                    progress_steps(e.observations, e.next_observations, e.actions, smoothness, log_floor)[:, None],
                ],
                -1,
            )
            for e in episodes
        ]
    ).astype(np.float32)


def fit_fused_reward(
    episodes: Sequence[Episode],
    ratings: Sequence[int],
    smoothness: float = 0.0,
    list_size: int = 8,
    epochs: int = 30,
    hidden: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    log_floor: float = 0.0,
) -> RewardModelSystem:
    """Learn the fused reward from trajectory ratings (Bradley-Terry on rated lists).

    Random lists of ``list_size`` rated trajectories; every ordered pair of differently rated trajectories of a list
    is a Bradley-Terry pair (ties give no pair).

    Returns:
        The trained system (call it on :func:`trajectory_features` to score trajectories).
    """
    if len(episodes) != len(ratings):
        raise ValueError(f"{len(episodes)} trajectories but {len(ratings)} ratings")
    if len(episodes) < list_size or list_size < 2:
        raise ValueError(f"need >= list_size >= 2 rated trajectories, got {len(episodes)} and list_size {list_size}")
    features = trajectory_features(episodes, smoothness, log_floor)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    n_lists = max(1, 4 * len(episodes) // list_size)  # each trajectory appears in ~4 lists
    index = np.stack([rng.choice(len(episodes), list_size, replace=False) for _ in range(n_lists)])
    targets = np.asarray(ratings, np.float32)[index]
    scorer = FusedTrajectoryScorer(episodes[0].observations.shape[-1], episodes[0].actions.shape[-1], hidden)
    system = RewardModelSystem(scorer, loss="bradley_terry", optimizer=lambda p: torch.optim.Adam(p, lr=lr))
    loader = DataLoader(
        list_dataset(features[index], targets),
        batch_size=16,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    quiet_lightning()
    quick_trainer(epochs).fit(system, train_dataloaders=loader)
    system.eval()
    return system


def window_edges(length: int, windows: int) -> np.ndarray:
    """Boundaries of ``windows`` consecutive near-equal windows of ``length`` steps, ``[windows + 1]``."""
    if not 1 <= windows <= length:
        raise ValueError(f"need 1 <= windows <= trajectory length {length}, got windows={windows}")
    return np.linspace(0, length, windows + 1).round().astype(int)


def window_episodes(episode: Episode, windows: int) -> list[Episode]:
    """An episode cut into ``windows`` consecutive windows (the boundaries of :func:`window_edges`)."""
    edges = window_edges(len(episode), windows)
    return [
        Episode(
            episode.observations[a:b],
            episode.actions[a:b],
            episode.rewards[a:b],
            episode.next_observations[a:b],
            episode.success[a:b],
            episode.source,
        )
        for a, b in zip(edges[:-1], edges[1:], strict=True)
    ]


def score_trajectories(
    system: RewardModelSystem,
    episodes: Sequence[Episode],
    smoothness: float = 0.0,
    windows: int = 1,
    log_floor: float = 0.0,
) -> np.ndarray:
    """The fused reward of each trajectory, ``[N]``; with ``windows`` > 1 each window's share, ``[N, windows]``.

    A window's share is the sum of the scorer's per-step terms over its steps
    (:meth:`FusedTrajectoryScorer.step_scores`), so the shares of a trajectory add up to its score.
    """
    features = torch.from_numpy(trajectory_features(episodes, smoothness, log_floor))
    with torch.no_grad():
        if windows == 1:
            return system(features).numpy()
        steps = system.scorer.step_scores(features).numpy()
    edges = window_edges(steps.shape[-1], windows)
    return np.stack([steps[:, a:b].sum(-1) for a, b in zip(edges[:-1], edges[1:], strict=True)], -1)


@dataclass
class RewardRefit:
    """Rate some rollouts of every finetuning round and refit the fused reward on all ratings so far.

    The fused reward is first fit on rated rollouts of the BC policy; finetuning moves the policy off that
    distribution, where the reward's ranking can go wrong unseen (on push-v3 its validation score kept rising on
    seeds whose held-out success fell). Calling the refit with a round's rollouts rates ``per_round`` of them (a
    random choice) with the same ``teacher``, adds them to the rated set and fits a fresh fused reward on the whole
    set (:func:`fit_fused_reward`, seeded by ``seed`` + the number of fits), so the next round is ranked by a reward
    that has seen the current policy's behaviour.

    Args:
        teacher: rates a trajectory 1..levels on its return (its scale stays fixed: the same rater throughout).
        episodes: the rated set so far (equal-length trajectories); grows in place.
        ratings: their ratings; grows in place.
        per_round: rollouts rated per call.
        smoothness: jerk weight λ of the metric.
        windows: the score returned per trajectory (1) or per window (> 1), as :func:`score_trajectories`.
        epochs: epochs of every fit.
        seed: seeds the choice of rated rollouts and the fits.
        log_floor: ε of the metric's log-distance form (0: linear progress; :func:`progress_steps`).
    """

    teacher: RatingTeacher
    episodes: list[Episode]
    ratings: list[int]
    per_round: int
    smoothness: float = 0.0
    windows: int = 1
    epochs: int = 30
    seed: int = 0
    log_floor: float = 0.0
    fits: int = 0

    def __post_init__(self) -> None:
        if self.per_round < 1:
            raise ValueError(f"per_round must be >= 1 rollouts rated per round, got {self.per_round}")
        if len(self.episodes) != len(self.ratings):
            raise ValueError(f"{len(self.episodes)} rated trajectories but {len(self.ratings)} ratings")
        self.rng = np.random.default_rng(self.seed)

    def __call__(self, rollouts: Sequence[Episode]) -> Callable[[Sequence[Episode]], np.ndarray]:
        """Rate ``per_round`` of ``rollouts``, refit, and return the new ranking function (episodes → scores)."""
        chosen = self.rng.choice(len(rollouts), min(self.per_round, len(rollouts)), replace=False)
        for i in chosen:
            self.episodes.append(rollouts[i])
            self.ratings.append(self.teacher.rate(rollouts[i].rewards))
        self.fits += 1
        system = fit_fused_reward(
            self.episodes,
            self.ratings,
            self.smoothness,
            epochs=self.epochs,
            seed=self.seed + self.fits,
            log_floor=self.log_floor,
        )
        return lambda episodes: score_trajectories(system, episodes, self.smoothness, self.windows, self.log_floor)


def true_return_scores(episodes: Sequence[Episode], windows: int = 1) -> np.ndarray:
    """The environment's own return of each trajectory, ``[N]``; with ``windows`` > 1 per window, ``[N, windows]``.

    The signal the rating teacher reads: ranking by it instead of a learned reward is the oracle upper bound of
    stage 2 (what finetuning reaches when the reward model is perfect).
    """
    rewards = np.stack([e.rewards for e in episodes]).astype(np.float64)
    if windows == 1:
        return rewards.sum(-1)
    edges = window_edges(rewards.shape[-1], windows)
    return np.stack([rewards[:, a:b].sum(-1) for a, b in zip(edges[:-1], edges[1:], strict=True)], -1)


def metric_scores(episodes: Sequence[Episode], smoothness: float = 0.0, log_floor: float = 0.0) -> np.ndarray:
    """The task metric alone for each trajectory, ``[N]``: Σ_t m_t of :func:`progress_steps`.

    That is the final progress 1 − d_T/d_0 (with ``log_floor`` ε > 0: log((d_0 + ε)/(d_T + ε)) / log((d_0 + ε)/ε))
    minus λ·jerk: the fused reward without its learned (rating) part, e.g. to choose a round on.
    """
    return np.array(
        [
            float(progress_steps(e.observations, e.next_observations, e.actions, smoothness, log_floor).sum())
            for e in episodes
        ]
    )


# --- trajectory DPO ------------------------------------------------------------------------------------------------


def trajectory_score(
    policy: GaussianPolicy,
    reference: GaussianPolicy,
    observations: torch.Tensor,
    actions: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""s_θ(τ) = Σ_t [log π_θ(a_t|s_t) − log π_ref(a_t|s_t)] over ``[B, T, o]``, ``[B, T, a]`` → ``[B]``.

    The reference is evaluated without gradient: it is a constant of the DPO objective.
    """
    with torch.no_grad():
        ref = reference.segment_log_prob(observations, actions, mask)
    return policy.segment_log_prob(observations, actions, mask) - ref


def trajectory_dpo_loss(
    policy: GaussianPolicy,
    reference: GaussianPolicy,
    winner: tuple[torch.Tensor, torch.Tensor],
    loser: tuple[torch.Tensor, torch.Tensor],
    beta: float = 0.1,
    loss: PairwiseLossName = "bradley_terry",
    **loss_kwargs: float,
) -> torch.Tensor:
    """The unreduced trajectory-DPO loss ``[B]``: a core pairwise loss on the winners' and losers' scores.

    Args:
        policy: the policy being finetuned.
        reference: the frozen reference (the BC policy).
        winner: (observations ``[B, T, o]``, actions ``[B, T, a]``) of the preferred trajectories.
        loser: the same for the rejected trajectories.
        beta: β of the loss (the KL strength of DPO).
        loss: a pairwise loss of :mod:`mmpref.losses` by name.
        loss_kwargs: extra arguments of the loss (e.g. ``eps`` for ``robust``).
    """
    if loss not in PAIRWISE_LOSSES:
        raise ValueError(f"unknown pairwise loss {loss!r}; valid: {', '.join(PAIRWISE_LOSSES)}")
    score_w = trajectory_score(policy, reference, *winner)
    score_l = trajectory_score(policy, reference, *loser)
    return PAIRWISE_LOSSES[loss](score_w, score_l, beta=beta, **loss_kwargs)


def group_dpo_loss(
    policy: GaussianPolicy,
    reference: GaussianPolicy,
    observations: torch.Tensor,
    actions: torch.Tensor,
    targets: torch.Tensor,
    beta: float = 0.1,
    loss: str = "plackett_luce",
    **loss_kwargs: float,
) -> torch.Tensor:
    """The unreduced listwise DPO loss ``[G]``: a core listwise loss on each group's trajectory scores s_θ.

    Args:
        policy: the policy being finetuned.
        reference: the frozen reference (the BC policy).
        observations: ``[G, K, T, o]``, K trajectories from each of G start states.
        actions: ``[G, K, T, a]``.
        targets: ``[G, K]`` the reward model's scores (higher = better); only their order within a group matters
            for Plackett-Luce and RankList, ListNet also uses their spread.
        beta: β of the loss.
        loss: a listwise loss of :mod:`mmpref.losses` by name.
        loss_kwargs: extra arguments of the loss (e.g. ``skip`` for ``ranklist``).
    """
    if loss not in LISTWISE_LOSSES:
        raise ValueError(f"unknown listwise loss {loss!r}; valid: {', '.join(LISTWISE_LOSSES)}")
    if observations.dim() != 4 or actions.shape[:3] != observations.shape[:3]:
        raise ValueError(
            f"need observations [G, K, T, o] and actions [G, K, T, a], got {tuple(observations.shape)} and "
            f"{tuple(actions.shape)}"
        )
    if targets.shape != observations.shape[:2]:
        raise ValueError(f"targets must be [G, K] = {tuple(observations.shape[:2])}, got {tuple(targets.shape)}")
    groups, k = targets.shape
    scores = trajectory_score(policy, reference, observations.flatten(0, 1), actions.flatten(0, 1))
    return LISTWISE_LOSSES[loss](scores.view(groups, k), targets, beta=beta, **loss_kwargs)


def frozen_copy(policy: GaussianPolicy) -> GaussianPolicy:
    """A detached copy of ``policy`` (same class) with gradients off, for the DPO reference."""
    reference = copy_policy(policy)
    reference.requires_grad_(False)
    return reference.eval()


@dataclass
class FinetuneConfig:
    """Stage-2 settings.

    Args:
        iterations: rounds of (roll out → rank → DPO update).
        groups: start states (fixed-goal environments) per round.
        group_size: stochastic rollouts per start state; winners and losers come from the same group.
        max_steps: steps per rollout (all rollouts share it, so scores sum the same number of terms).
        beta: DPO β.
        loss: a loss of the core by name: pairwise (best-vs-worst pairs of each group) or listwise (each group's
            whole ranking, :func:`group_dpo_loss`).
        lr: Adam learning rate.
        epochs: passes over a round's pairs.
        min_gap: keep a pair only if the reward-model scores differ by at least this much (listwise: keep a group
            only if its scores spread at least this much).
        nll_weight: weight α of the winners' mean per-step negative log-likelihood added to the DPO loss (RPO,
            Pang et al. 2024, eq. 1): DPO alone may lower the winners' likelihood along with the losers', which for
            a Gaussian policy shows up as a growing σ.
        select_best: keep the round (BC included, as round 0) whose mean-action rollouts from the validation
            environments score best under the reward model, instead of the last round: online DPO rounds are
            noisy (few start states each), and the reward model, not the true reward, picks the round.
        explore_temperature: σ multiplier of the rollouts that are ranked (1: the policy's own samples; smaller
            values explore nearer the mean action, the policy that is evaluated). The loss always uses π_θ itself.
        demo_weight: weight of an offline term added to every update: the demonstrations, ranked once by the
            reward model, as one more group (best against worst for a pairwise loss, the whole ranking for a
            listwise one; with the same NLL term). The demonstrations come from different start states, so their
            pairs are cruder than the on-policy groups; they pull the policy toward the better demonstrations it
            was cloned from. 0: off.
        windows: cut every rollout into this many consecutive windows and rank the windows at the same time of one
            group's rollouts by their share of the reward model's score (the reward callable then returns
            ``[N, windows]``, :func:`score_trajectories`); each pair or list is then a window of the rollouts, so the
            preference lands on the part of a rollout that earned it instead of all 150 steps. 1: whole rollouts.
        window_credit: with ``windows`` > 1, what a window is ranked by: ``"own"``, its own share of the score, or
            ``"to_go"``, the sum of its share and every later window's (:func:`credit_to_go`): a window's actions
            also shape what follows (a reach in the first 30 steps is what lets the push in the next 60 succeed),
            and its own share does not see that.
        noise_correlation: ρ of the rollouts' AR(1) exploration noise (:meth:`GaussianPolicy.numpy_policy`): with
            independent per-step noise a rollout's deviations from the mean average out over a window and the
            preference says little about which way the mean should move; with correlated noise a winner deviates
            one way for ~1/(1 − ρ) steps. 0: independent.
        replay_rounds: each round's objective also takes the ranked groups of the previous ``replay_rounds``
            rounds (0: the round's own groups only). A preference between two rollouts holds whichever policy drew
            them, so older pairs stay valid DPO pairs (off-policy, like the offline DPO of the paper); they average
            out the noise of a round's few start states, which can otherwise carry the policy off for good. With a
            refit the replayed groups are ranked again by each new reward.
        lr_decay: the learning rate is multiplied by this after every round (1: constant; lr_k = lr·γ^k in round
            k = 0, 1, ...): later rounds, which start from a policy already moved by the earlier ones, take smaller
            steps, so a round whose few start states mislead it moves the policy less.
        round_average: λ of an exponential average of the rounds' weights, which is what is validated, chosen and
            returned instead of each round's own weights (0: off). After round k ≥ 1 the average is
            θ̄_k = Σ_{j=1..k} λ^(k−j) θ_j / Σ_{j=1..k} λ^(k−j) (θ_j: the weights after round j; BC, round 0, is not
            in it and stays a candidate of its own). Training is unchanged: the rollouts come from θ_k, so the
            average only filters what a round's few start states add as noise (Polyak-Ruppert averaging of the
            iterates); its mean age is about λ/(1 − λ) rounds.
        seed: seeds the choice of start states and the rollouts.
    """

    iterations: int = 10
    groups: int = 4
    group_size: int = 8
    max_steps: int = 150
    beta: float = 0.1
    loss: LossName = "bradley_terry"
    lr: float = 1e-4
    epochs: int = 4
    min_gap: float = 0.0
    nll_weight: float = 0.0
    select_best: bool = False
    explore_temperature: float = 1.0
    demo_weight: float = 0.0
    windows: int = 1
    window_credit: WindowCredit = "own"
    noise_correlation: float = 0.0
    replay_rounds: int = 0
    lr_decay: float = 1.0
    round_average: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        is_listwise(self.loss)  # raises, listing the valid names, for an unknown loss
        if self.explore_temperature <= 0:
            raise ValueError(f"explore_temperature must be > 0, got {self.explore_temperature}")
        if self.demo_weight < 0:
            raise ValueError(f"demo_weight must be >= 0, got {self.demo_weight}")
        if self.window_credit not in ("own", "to_go"):
            raise ValueError(f"window_credit must be 'own' or 'to_go', got {self.window_credit!r}")
        if not 0.0 <= self.noise_correlation < 1.0:
            raise ValueError(f"noise_correlation must lie in [0, 1), got {self.noise_correlation}")
        if not 1 <= self.windows <= self.max_steps:
            raise ValueError(f"windows must lie in [1, max_steps={self.max_steps}], got {self.windows}")
        if self.replay_rounds < 0:
            raise ValueError(f"replay_rounds must be >= 0 (0: no replay), got {self.replay_rounds}")
        if not 0.0 < self.lr_decay <= 1.0:
            raise ValueError(f"lr_decay must lie in (0, 1] (1: a constant learning rate), got {self.lr_decay}")
        if not 0.0 <= self.round_average < 1.0:
            raise ValueError(f"round_average must lie in [0, 1) (0: no averaging), got {self.round_average}")


@dataclass
class FinetuneLog:
    """Per round: mean fused reward of the rollouts, success rate, comparisons used, final DPO loss.

    Comparisons are the pairs of a pairwise round or a listwise round's ordered pairs of unequal score (with
    ``replay_rounds`` those of the replayed groups included).

    With validation environments also: the mean reward-model score of the mean-action rollouts before any update
    (``validation[0]``, the BC policy) and after each round, and the round kept (0 = the BC policy); with a reward
    refit, how many refits ran.
    """

    reward: list[float] = field(default_factory=list)
    success: list[float] = field(default_factory=list)
    pairs: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    validation: list[float] = field(default_factory=list)
    kept_round: int | None = None
    demo_comparisons: int = 0
    refits: int = 0


class RoundAverage:
    """The exponential average of the rounds' weights, θ̄_k = Σ_{j ≤ k} λ^(k−j) θ_j / Σ_{j ≤ k} λ^(k−j).

    Kept as the running pair (θ̄, W) with W_k = λ W_(k−1) + 1 and θ̄_k = (λ W_(k−1) θ̄_(k−1) + θ_k) / W_k, which
    is that sum exactly. Buffers that are not floating point (none in a Gaussian policy) are taken from θ_k.
    """

    def __init__(self, decay: float) -> None:
        self.decay = decay
        self.total = 0.0
        self.state: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def add(self, policy: nn.Module) -> dict[str, torch.Tensor]:
        """Fold in ``policy``'s weights as the newest round; returns the average (a fresh state dict)."""
        previous, self.total = self.decay * self.total, self.decay * self.total + 1.0
        current = policy.state_dict()
        self.state = {
            key: (previous * self.state[key] + value) / self.total
            if self.state and value.is_floating_point()
            else value.detach().clone()
            for key, value in current.items()
        }
        return {key: value.clone() for key, value in self.state.items()}


def validation_rollouts(policy: GaussianPolicy, envs: Sequence[gym.Env], max_steps: int) -> list[Episode]:
    """One mean-action rollout from each (fixed-goal) validation environment."""
    act = policy.numpy_policy(deterministic=True)
    return [rollout(env, act, max_steps=max_steps) for env in envs]


def validation_score(
    policy: GaussianPolicy,
    envs: Sequence[gym.Env],
    reward: Callable[[Sequence[Episode]], np.ndarray],
    max_steps: int,
) -> float:
    """Mean reward-model score of one mean-action rollout from each (fixed-goal) validation environment."""
    return mean_total(reward, validation_rollouts(policy, envs, max_steps))


def mean_total(reward: Callable[[Sequence[Episode]], np.ndarray], episodes: Sequence[Episode]) -> float:
    """The mean over ``episodes`` of their whole-trajectory scores under ``reward`` (window scores summed)."""
    return float(np.mean(trajectory_totals(reward(episodes))))


def trajectory_totals(scores: np.ndarray) -> np.ndarray:
    """Per-trajectory scores ``[N]`` from a reward's output, ``[N]`` or per window ``[N, W]`` (summed)."""
    scores = np.asarray(scores, np.float64)
    return scores.sum(-1) if scores.ndim == 2 else scores


def ranked_scores(
    reward: Callable[[Sequence[Episode]], np.ndarray], episodes: Sequence[Episode], windows: int
) -> np.ndarray:
    """``reward(episodes)`` checked to be ``[N]`` (``windows`` = 1) or ``[N, windows]``."""
    scores = np.asarray(reward(episodes), np.float64)
    expected = (len(episodes),) if windows == 1 else (len(episodes), windows)
    if scores.shape != expected:
        raise ValueError(
            f"the reward returned scores of shape {scores.shape} for {len(episodes)} trajectories and windows="
            f"{windows}; expected {expected} (score_trajectories(..., windows={windows}) gives that)"
        )
    return scores


def credit_to_go(scores: np.ndarray) -> np.ndarray:
    """Per-window scores ``[N, W]`` → the score to go from each window, ``out[:, w] = Σ_{v ≥ w} scores[:, v]``.

    Whole-trajectory scores ``[N]`` pass through unchanged.
    """
    scores = np.asarray(scores, np.float64)
    return np.flip(np.cumsum(np.flip(scores, -1), -1), -1).copy() if scores.ndim == 2 else scores


def by_window(groups: Sequence[tuple[Sequence[Episode], np.ndarray]]) -> list[tuple[list[Episode], np.ndarray]]:
    """Groups with per-window scores ``[K, W]`` → W groups of windows each (window w of every rollout, scores[:, w]).

    Groups with one score per rollout ``[K]`` pass through unchanged.
    """
    out: list[tuple[list[Episode], np.ndarray]] = []
    for group, scores in groups:
        if scores.ndim == 1:
            out.append((list(group), scores))
            continue
        cut = [window_episodes(e, scores.shape[1]) for e in group]
        out += [([c[w] for c in cut], scores[:, w]) for w in range(scores.shape[1])]
    return out


def finetune_loss(
    policy: GaussianPolicy,
    reference: GaussianPolicy,
    winner: tuple[torch.Tensor, torch.Tensor],
    loser: tuple[torch.Tensor, torch.Tensor],
    config: FinetuneConfig,
) -> torch.Tensor:
    """The scalar stage-2 objective of a pairwise loss: mean trajectory-DPO loss + α · winners' mean step NLL."""
    name: PairwiseLossName = config.loss  # type: ignore[assignment]
    loss = trajectory_dpo_loss(policy, reference, winner, loser, config.beta, name).mean()
    if config.nll_weight > 0:
        loss = loss - config.nll_weight * policy.log_prob(*winner).mean()
    return loss


def group_finetune_loss(
    policy: GaussianPolicy,
    reference: GaussianPolicy,
    observations: torch.Tensor,
    actions: torch.Tensor,
    targets: torch.Tensor,
    config: FinetuneConfig,
) -> torch.Tensor:
    """The scalar stage-2 objective of a listwise loss: mean :func:`group_dpo_loss` + α · mean step NLL of the top.

    The top is the upper half of every group by ``targets`` (the trajectories a pairwise round calls winners).
    """
    loss = group_dpo_loss(policy, reference, observations, actions, targets, config.beta, config.loss).mean()
    if config.nll_weight > 0:
        top = torch.argsort(targets, dim=-1, descending=True, stable=True)[:, : targets.shape[1] // 2]
        rows = torch.arange(len(targets))[:, None]
        loss = loss - config.nll_weight * policy.log_prob(observations[rows, top], actions[rows, top]).mean()
    return loss


def _stack(episodes: Sequence[Episode], key: str) -> torch.Tensor:
    return torch.from_numpy(np.stack([getattr(e, key) for e in episodes]))


def round_objective(
    groups: Sequence[tuple[Sequence[Episode], np.ndarray]], config: FinetuneConfig
) -> tuple[Callable[[GaussianPolicy, GaussianPolicy], torch.Tensor] | None, int]:
    """One round's objective from its ranked groups (rollouts of one start state, reward-model scores).

    Returns:
        ``(loss(policy, reference) → scalar, comparisons)``; the loss is ``None`` when no group yields a
        comparison. A pairwise loss compares best with worst, second best with second worst ... (gap ≥
        ``min_gap``); a listwise loss uses every group whole (comparisons: its ordered pairs of unequal score).
        Scores ``[K, W]`` rank each window separately (:func:`by_window`).
    """
    groups = by_window(groups)
    if is_listwise(config.loss):
        kept = [(g, s) for g, s in groups if np.ptp(s) > 0 and np.ptp(s) >= config.min_gap]
        if not kept:
            return None, 0
        obs = torch.stack([_stack(g, "observations") for g, _ in kept])
        act = torch.stack([_stack(g, "actions") for g, _ in kept])
        targets = torch.from_numpy(np.stack([s for _, s in kept]).astype(np.float32))
        comparisons = int(sum((s[:, None] > s[None, :]).sum() for _, s in kept))
        return (lambda policy, ref: group_finetune_loss(policy, ref, obs, act, targets, config)), comparisons
    winners: list[Episode] = []
    losers: list[Episode] = []
    for group, scores in groups:
        for best, worst in rank_pairs(scores, config.min_gap):
            winners.append(group[best])
            losers.append(group[worst])
    if not winners:
        return None, 0
    winner = (_stack(winners, "observations"), _stack(winners, "actions"))
    loser = (_stack(losers, "observations"), _stack(losers, "actions"))
    return (lambda policy, ref: finetune_loss(policy, ref, winner, loser, config)), len(winners)


def rank_pairs(scores: np.ndarray, min_gap: float = 0.0) -> list[tuple[int, int]]:
    """(winner, loser) indices within one group: the k-th best against the k-th worst, if the gap is ≥ min_gap."""
    order = np.argsort(-scores, kind="stable")
    half = len(order) // 2
    return [
        (int(order[k]), int(order[-1 - k]))
        for k in range(half)
        if scores[order[k]] - scores[order[-1 - k]] >= min_gap and scores[order[k]] > scores[order[-1 - k]]
    ]


def preference_finetune(
    policy: GaussianPolicy,
    reference: GaussianPolicy,
    envs: Sequence[gym.Env],
    reward: Callable[[Sequence[Episode]], np.ndarray],
    config: FinetuneConfig,
    validation: Sequence[gym.Env] = (),
    demonstrations: Sequence[Episode] = (),
    refit: Callable[[Sequence[Episode]], Callable[[Sequence[Episode]], np.ndarray]] | None = None,
    on_round: Callable[[int, GaussianPolicy], None] | None = None,
    validation_reward: Callable[[Sequence[Episode]], np.ndarray] | None = None,
) -> FinetuneLog:
    """Stage 2: online trajectory DPO of ``policy`` against the frozen ``reference``, in place.

    Each round draws ``config.groups`` of the fixed-goal ``envs``, rolls out ``group_size`` stochastic episodes of
    the current policy (σ scaled by ``explore_temperature``) from each, ranks every group with ``reward``
    (trajectories → scores), and takes ``epochs`` passes of Adam on :func:`round_objective` (best-vs-worst pairs for
    a pairwise loss, whole groups for a listwise one; plus α times the winners' NLL when ``nll_weight`` > 0).
    The reference never changes. With ``validation`` environments each round's policy is scored there by ``reward``
    (mean action); with ``config.select_best`` the best-scoring round's weights are restored at the end. With
    ``config.demo_weight`` > 0 the ``demonstrations`` (all of ``max_steps`` steps), ranked once by ``reward``, add
    ``demo_weight`` times their own :func:`round_objective` to every update.

    With ``refit`` (e.g. a :class:`RewardRefit`), after each round's update it is called with that round's rollouts
    and returns the reward that ranks the next round. The rounds' validation scores then come from different
    models, so the validation rollouts of every round are kept and scored again, all by the last reward, before the
    round is chosen (``log.validation`` holds those final scores).

    With ``config.replay_rounds`` = k > 0 each round's objective also holds the ranked groups of the k rounds before
    it (with a refit, ranked again by the current reward).

    ``validation_reward``, when given, scores the validation rollouts instead of ``reward`` (e.g. the task metric
    alone, :func:`metric_scores`); it is fixed, so with a refit nothing needs rescoring.

    ``on_round(round_index, policy)``, when given, is called with the policy before the first update (round 0) and
    after every round's update (and validation): a hook for logging or diagnosis that sees the weights of every
    round; it must not change them. With ``config.round_average`` > 0 what is validated, kept and returned is the
    rounds' weight average (:class:`RoundAverage`) and the hook sees that average (a copy; training goes on from
    the round's own weights).
    """
    if config.select_best and not validation:
        raise ValueError("select_best needs validation environments (the round is chosen on them)")
    if len(envs) < config.groups:
        raise ValueError(f"need >= {config.groups} environments (config.groups), got {len(envs)}")
    if config.group_size < 2:
        raise ValueError(f"group_size must be >= 2 to form pairs, got {config.group_size}")
    rng = np.random.default_rng(config.seed)
    credited = credit_to_go if config.window_credit == "to_go" else np.asarray
    # a residual policy's frozen base has no gradient: only what trains is handed to Adam
    optimizer = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=config.lr)
    log = FinetuneLog()
    demo_objective = None
    if config.demo_weight > 0:
        if len(demonstrations) < 2:
            raise ValueError(f"demo_weight > 0 needs >= 2 demonstrations, got {len(demonstrations)}")
        demos = list(demonstrations)
        demo_scores = credited(ranked_scores(reward, demos, config.windows))
        demo_objective, log.demo_comparisons = round_objective([(demos, demo_scores)], config)
    best_state = None
    # with a refit, every round's validation rollouts and weights are kept to be scored by the last reward
    kept_rollouts: list[list[Episode]] = []
    kept_states: list[dict[str, torch.Tensor]] = []
    # the ranked groups of the last replay_rounds rounds (maxlen 0 keeps none)
    replayed: deque[list[tuple[list[Episode], np.ndarray]]] = deque(maxlen=config.replay_rounds)
    # with round_average, `evaluated` holds the rounds' weight average: it is what is validated, kept and returned
    average = RoundAverage(config.round_average) if config.round_average > 0 else None
    evaluated = copy_policy(policy) if average is not None else policy

    def validate(round_index: int) -> None:
        nonlocal best_state
        episodes = validation_rollouts(evaluated, validation, config.max_steps)
        log.validation.append(mean_total(validation_reward or reward, episodes))
        if refit is not None:
            kept_rollouts.append(episodes)
            kept_states.append(copy.deepcopy(evaluated.state_dict()))
        elif round_index == 0 or log.validation[-1] > log.validation[log.kept_round]:
            best_state, log.kept_round = copy.deepcopy(evaluated.state_dict()), round_index

    if validation:
        validate(0)
    if on_round is not None:
        on_round(0, evaluated)
    for it in range(config.iterations):
        groups: list[tuple[list[Episode], np.ndarray]] = []
        rewards: list[float] = []  # the groups' mean scores, before any credit to go
        for g in rng.choice(len(envs), config.groups, replace=False):
            act = policy.numpy_policy(
                deterministic=False,
                seed=int(rng.integers(2**31)),
                temperature=config.explore_temperature,
                correlation=config.noise_correlation,
            )
            group = [rollout(envs[g], act, max_steps=config.max_steps) for _ in range(config.group_size)]
            scores = ranked_scores(reward, group, config.windows)
            groups.append((group, credited(scores)))
            rewards.append(float(trajectory_totals(scores).mean()))
        successes = [e.succeeded for group, _ in groups for e in group]
        objective, comparisons = round_objective(groups + [g for past in replayed for g in past], config)
        replayed.append(groups)
        last = float("nan")
        if objective is not None or demo_objective is not None:
            for _ in range(config.epochs):  # full batch: a round holds only groups × group_size rollouts
                loss = objective(policy, reference) if objective is not None else torch.zeros(())
                if demo_objective is not None:
                    loss = loss + config.demo_weight * demo_objective(policy, reference)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                last = loss.item()
        for param_group in optimizer.param_groups:
            param_group["lr"] *= config.lr_decay
        log.reward.append(float(np.mean(rewards)))
        log.success.append(float(np.mean(successes)))
        log.pairs.append(comparisons)
        log.loss.append(last)
        if refit is not None:
            reward = refit([e for group, _ in groups for e in group])
            log.refits += 1
            for past in replayed:  # the next round's objective ranks every replayed group by the new reward
                past[:] = [(g, credited(ranked_scores(reward, g, config.windows))) for g, _ in past]
        if average is not None:
            evaluated.load_state_dict(average.add(policy))
        if validation:
            validate(it + 1)
        if on_round is not None:
            on_round(it + 1, evaluated)
        logger.info(
            "round %d: reward %.3f, success %.2f, %d comparisons, DPO loss %.4f",
            it,
            log.reward[-1],
            log.success[-1],
            comparisons,
            last,
        )
    if refit is not None and validation:
        log.validation = [mean_total(validation_reward or reward, episodes) for episodes in kept_rollouts]
        log.kept_round = int(np.argmax(log.validation))  # the first of equal scores, as without a refit
        best_state = kept_states[log.kept_round]
    if config.select_best and best_state is not None:
        policy.load_state_dict(best_state)
    else:
        if average is not None:
            policy.load_state_dict(evaluated.state_dict())
        if validation:
            log.kept_round = config.iterations
    return log
