"""Trajectory DPO against the frozen BC policy: the scores, the pairwise and listwise losses and one round's objective.

s_θ(τ) = Σ_t [log π_θ(a_t | s_t) − log π_ref(a_t | s_t)] and ℓ = −log σ(β (s_θ(τ_w) − s_θ(τ_l))) (Rafailov et al.
2023, eq. 7), or a listwise loss of the core on a whole ranked group; :class:`FinetuneConfig` holds stage 2's settings
and :func:`round_objective` turns a round's ranked groups into the loss (:mod:`mmpref.control.peeling.finetune` runs
the rounds).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from mmpref.control.peeling.metric import window_episodes
from mmpref.control.policies import GaussianPolicy, copy_policy
from mmpref.control.segments import Episode
from mmpref.losses import LISTWISE_LOSSES, PAIRWISE_LOSSES, LossName, PairwiseLossName, is_listwise

WindowCredit = Literal["own", "to_go"]


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
