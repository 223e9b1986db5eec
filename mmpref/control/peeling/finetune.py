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
(``docs/benchmarks/peeling_variants/bench_peeling_nll0_cpu.md`` against ``bench_peeling_t1_cpu.md``).

**Window ranking** (``windows`` = W > 1): every rollout of a group is cut into W consecutive windows, and the windows
at the same time of the group's rollouts are ranked by their share of the reward model's score (the fused reward is
a sum of per-step terms, :meth:`FusedTrajectoryScorer.step_scores`); each pair or list is then a window, with s_θ
summed over that window's steps only. A whole-trajectory preference credits all T steps of the winner for what a few
of them did; window preferences put the credit near the steps that earned it (the reward-model analogue of CPL's
segment preferences). The windows of a pair start from different states (the rollouts have diverged), so this is the
partial-return preference model on segments. On push-v3, W = 5 raised the mean-action gain over BC from +15.6 to
+20.0 points on seeds 0-2 but not on fresh seeds: over nine seeds +9.3, level with whole-trajectory ranking (+8.2)
(``docs/benchmarks/peeling_variants/history.md``).

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
push-v3 (k = 3, seeds 0-5) it gave −2.8 points against the setting
(``docs/benchmarks/peeling_variants/bench_peeling_replay3_cpu.md``).

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

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from mmpref.control.peeling.dpo import FinetuneConfig, credit_to_go, ranked_scores, round_objective, trajectory_totals
from mmpref.control.policies import GaussianPolicy, copy_policy
from mmpref.control.segments import Episode, rollout

logger = logging.getLogger(__name__)


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
