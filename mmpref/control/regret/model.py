r"""The regret preference model (Knox et al.): regret and partial-return scores, teachers, and reward learning.

Knox et al. (2022/2024), "Models of human preference for learning reward functions", eq. 3-6. For a segment
σ = (s_0, a_0, …, s_T) and discount γ:

.. math::
    \text{partial return}\quad R(\sigma) = \sum_{t<T} \gamma^t r(s_t, a_t)

    \text{regret}(\sigma) = \sum_{t<T} \gamma^t \big[V^*(s_t) - Q^*(s_t, a_t)\big]
        = V^*(s_0) - R(\sigma) - \gamma^T V^*(s_T) \quad\text{(deterministic transitions)}

    P(\sigma_a \succ \sigma_b) = \sigma\big(\beta\,[\text{score}(\sigma_a) - \text{score}(\sigma_b)]\big),
    \qquad \text{score} = -\text{regret} \text{ (regret model) or } R \text{ (partial-return model)}.

Learning a reward under the regret model needs V*/Q* of the *learned* reward as a differentiable function of its
weights. On the tabular gridworld (``mmpref_envs``) the reward is linear, r = w·φ, and :func:`optimal_values` uses
the exact optimum: policy iteration (no gradient) finds π* for the current w, then V* = ψ^{π*} w with the successor
features ψ of π* (Barreto et al. 2017). By the envelope theorem ∂V*/∂w = ψ^{π*} wherever π* is unique, so this
gradient equals autograd through the max of value iteration — exact, not a soft-max relaxation. Knox et al. instead
approximate V* with successor features of a fixed set of policies (their §5.2); with 36-cell grids the exact optimum
is cheap, so we use it.

On continuous control (Meta-World) V* is unknown; :class:`SegmentRegretTeacher` takes any value estimate V(s) at a
segment's first state and the state after its last action, e.g. the scripted expert's Monte-Carlo return from the
restored simulator state (:class:`ExpertValueOracle`): score = R(σ) + γ^T V(s_T) − V(s_0) = −regret(σ) under V.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from mmpref.losses import soft_bradley_terry
from mmpref_envs.tabular import (
    TabularMDP,
    greedy_policy,
    policy_iteration,
    policy_values,
    successor_features,
    value_iteration,
)

PreferenceModel = Literal["regret", "partial_return"]
PREFERENCE_MODELS: tuple[str, ...] = ("regret", "partial_return")


def _check_model(model: str) -> str:
    if model not in PREFERENCE_MODELS:
        raise ValueError(f"unknown preference model {model!r}; valid: {', '.join(PREFERENCE_MODELS)}")
    return model


@dataclass(frozen=True)
class TabularSegments:
    """N segments of T steps on a tabular MDP.

    Attributes:
        states: ``[N, T + 1]`` int, s_0 … s_T (s_T: the state after the last action).
        actions: ``[N, T]`` int, a_0 … a_{T−1}.
    """

    states: np.ndarray
    actions: np.ndarray

    def __post_init__(self) -> None:
        states, actions = np.asarray(self.states), np.asarray(self.actions)
        if states.ndim != 2 or actions.ndim != 2 or states.shape != (actions.shape[0], actions.shape[1] + 1):
            raise ValueError(
                f"TabularSegments: states must be [N, T+1] and actions [N, T], got {states.shape} and {actions.shape}"
            )
        object.__setattr__(self, "states", states.astype(np.int64))
        object.__setattr__(self, "actions", actions.astype(np.int64))

    def __len__(self) -> int:
        return self.actions.shape[0]

    def check(self, mdp: TabularMDP) -> None:
        """Raise unless every transition s_{t+1} = next_state[s_t, a_t] holds in ``mdp``."""
        if self.states.max() >= mdp.n_states or self.actions.max() >= mdp.n_actions:
            raise ValueError("TabularSegments: state or action index outside the MDP")
        if (mdp.next_state[self.states[:, :-1], self.actions] != self.states[:, 1:]).any():
            raise ValueError("TabularSegments: some s_{t+1} is not next_state[s_t, a_t] of this MDP")


def sample_segments(
    mdp: TabularMDP, start_states: np.ndarray, n: int, length: int, rng: np.random.Generator
) -> TabularSegments:
    """N segments: uniform start among ``start_states``, uniformly random actions (after a terminal, it stays)."""
    if length < 1 or n < 1:
        raise ValueError(f"need n >= 1 segments of length >= 1, got n={n}, length={length}")
    states = np.zeros((n, length + 1), np.int64)
    actions = rng.integers(mdp.n_actions, size=(n, length))
    states[:, 0] = rng.choice(np.asarray(start_states), size=n)
    for t in range(length):
        states[:, t + 1] = mdp.next_state[states[:, t], actions[:, t]]
    return TabularSegments(states, actions)


def _discounts(mdp: TabularMDP, length: int, like: torch.Tensor | None = None) -> torch.Tensor | np.ndarray:
    powers = mdp.gamma ** np.arange(length)
    return powers if like is None else torch.as_tensor(powers, dtype=like.dtype, device=like.device)


def partial_return(mdp: TabularMDP, weights: np.ndarray, segments: TabularSegments) -> np.ndarray:
    """R(σ) = Σ_t γ^t w·φ(s_t, a_t), ``[N]`` (numpy, for teachers)."""
    r = mdp.rewards(weights)[segments.states[:, :-1], segments.actions]
    return r @ _discounts(mdp, r.shape[1])


def regret(mdp: TabularMDP, q: np.ndarray, segments: TabularSegments) -> np.ndarray:
    """Segment regrets Σ_t γ^t [V*(s_t) − Q*(s_t, a_t)] = −Σ_t γ^t A*(s_t, a_t), ``[N]``, from Q* ``[S, A]``."""
    s, a = segments.states[:, :-1], segments.actions
    advantage = q[s, a] - q.max(axis=1)[s]
    advantage = np.where(mdp.terminal[s], 0.0, advantage)  # V(terminal) = 0: absorbing steps carry no regret
    return -(advantage @ _discounts(mdp, s.shape[1]))


def optimal_values(
    mdp: TabularMDP, weights: torch.Tensor, policy: np.ndarray | None = None, cache: dict | None = None
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Exact V* and Q* of r = w·φ, differentiable in w (envelope theorem through successor features).

    Policy iteration without gradient finds π* for the current w (evaluating each policy through its successor
    features ψ^π, so V^π = ψ^π w); then V* = ψ^{π*} w and Q* = Φ w + γ V*(s') keep the gradient.

    Args:
        mdp: the tabular MDP (γ < 1).
        weights: ``[K]`` reward weights (may require grad).
        policy: a starting policy for policy iteration (the previous optimum makes it one evaluation).
        cache: optional dict policy-bytes → ψ^π, reused across calls while w changes a little.

    Returns:
        ``(V* [S], Q* [S, A], π* [S])``.
    """
    if mdp.gamma >= 1:
        raise ValueError("optimal_values needs gamma < 1 (a learned reward may make endless loops worthwhile)")
    cache = {} if cache is None else cache
    w_np = weights.detach().cpu().double().numpy()
    policy = np.zeros(mdp.n_states, np.int64) if policy is None else np.asarray(policy, np.int64)
    states = np.arange(mdp.n_states)
    for _ in range(1_000):
        key = policy.tobytes()
        if key not in cache:
            cache[key] = successor_features(mdp, policy)
        q_np = mdp.q_from_v(w_np, cache[key] @ w_np)
        best, current = q_np.max(axis=1), q_np[states, policy]
        improve = best > current + 1e-12 * (1 + np.abs(best))  # strict, so ties cannot make it cycle
        if not improve.any():
            break
        policy = np.where(improve, q_np.argmax(axis=1), policy)
    else:
        raise RuntimeError("policy iteration did not converge in 1000 steps")
    psi = torch.as_tensor(cache[policy.tobytes()], dtype=weights.dtype, device=weights.device)
    phi = torch.as_tensor(mdp.features, dtype=weights.dtype, device=weights.device)
    v = psi @ weights
    q = phi @ weights + mdp.gamma * v[torch.as_tensor(mdp.next_state, device=weights.device)]
    return v, q, policy


def segment_scores(
    model: PreferenceModel,
    mdp: TabularMDP,
    weights: torch.Tensor,
    segments: TabularSegments,
    optimum: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Scores under a preference model: −regret(σ) (regret) or R(σ) (partial return), ``[N]``, differentiable in w.

    Args:
        model: ``"regret"`` or ``"partial_return"``.
        mdp: the tabular MDP.
        weights: ``[K]`` reward weights.
        segments: the segments to score.
        optimum: ``(V*, Q*)`` of ``weights`` from :func:`optimal_values`, to share one solve between batches
            (computed here when omitted; unused by the partial-return model).
    """
    _check_model(model)
    s = torch.as_tensor(segments.states[:, :-1], device=weights.device)
    a = torch.as_tensor(segments.actions, device=weights.device)
    disc = _discounts(mdp, s.shape[1], like=weights)
    if model == "partial_return":
        phi = torch.as_tensor(mdp.features, dtype=weights.dtype, device=weights.device)
        return (phi[s, a] @ weights) @ disc
    v, q = optimum if optimum is not None else optimal_values(mdp, weights)[:2]
    return (q[s, a] - v[s]) @ disc  # Σ γ^t A(s_t, a_t); A = 0 in absorbing terminal states


@dataclass
class TabularTeacher:
    """A simulated labeller on the gridworld that prefers by regret or by partial return under the TRUE reward.

    Args:
        model: ``"regret"`` (Knox et al.'s model of humans) or ``"partial_return"`` (the usual assumption).
        beta: inverse temperature of P(a ≻ b) = σ(β (score_a − score_b)); ``math.inf`` prefers the better one
            deterministically (exact ties → 0.5).
        seed: seed of the label draws.
    """

    model: PreferenceModel = "regret"
    beta: float = 1.0
    seed: int = 0
    rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        _check_model(self.model)
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0 (math.inf for a noiseless teacher), got {self.beta}")
        self.rng = np.random.default_rng(self.seed)

    def scores(self, mdp: TabularMDP, weights: np.ndarray, segments: TabularSegments) -> np.ndarray:
        """True scores of segments: −regret or partial return, ``[N]``."""
        if self.model == "partial_return":
            return partial_return(mdp, weights, segments)
        return -regret(mdp, value_iteration(mdp, weights)[1], segments)

    def label(self, mdp: TabularMDP, weights: np.ndarray, a: TabularSegments, b: TabularSegments) -> np.ndarray:
        """Labels P(a ≻ b) ∈ {0, 0.5, 1}, ``[N]``."""
        a.check(mdp)
        b.check(mdp)
        diff = self.scores(mdp, weights, a) - self.scores(mdp, weights, b)
        if math.isinf(self.beta):
            return np.where(np.abs(diff) < 1e-9, 0.5, (diff > 0).astype(np.float64))
        p = 0.5 * (1.0 + np.tanh(0.5 * self.beta * diff))
        return (self.rng.random(len(diff)) < p).astype(np.float64)


def fit_reward_weights(
    model: PreferenceModel,
    mdp: TabularMDP,
    a: TabularSegments,
    b: TabularSegments,
    labels: np.ndarray,
    steps: int = 300,
    lr: float = 0.3,
    l2: float = 1e-6,
    init: np.ndarray | None = None,
) -> np.ndarray:
    """Learn linear reward weights w from labelled segment pairs by maximum likelihood under a preference model.

    Loss: mean soft Bradley-Terry (the loss core's :func:`~mmpref.losses.soft_bradley_terry`) on the model's scores
    plus ``l2``·‖w‖² (tiny by default: it only keeps w finite when the labels are separable; a larger one
    shrinks the large terminal weights and biases the comparison), full batch, Adam from w = 0.

    Returns:
        The learned weights ``[K]``.
    """
    _check_model(model)
    if len(a) != len(b) or len(labels) != len(a):
        raise ValueError(f"need as many labels as pairs: {len(a)} and {len(b)} segments, {len(labels)} labels")
    w = torch.zeros(mdp.n_features, dtype=torch.float64) if init is None else torch.as_tensor(init).double().clone()
    w.requires_grad_(True)
    target = torch.as_tensor(labels, dtype=torch.float64)
    optimiser = torch.optim.Adam([w], lr=lr)
    policy, cache = None, {}
    for _ in range(steps):
        optimum = None
        if model == "regret":  # one exact solve per step, shared by both sides of every pair
            v, q, policy = optimal_values(mdp, w, policy, cache)
            optimum = (v, q)
        score_a = segment_scores(model, mdp, w, a, optimum)
        score_b = segment_scores(model, mdp, w, b, optimum)
        loss = soft_bradley_terry(score_a, score_b, target).mean() + l2 * (w * w).sum()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return w.detach().numpy()


def policy_quality(
    mdp: TabularMDP, true_weights: np.ndarray, learned_weights: np.ndarray, starts: np.ndarray
) -> float:
    """Normalised true return of the learned reward's optimal policy: 1 = optimal, 0 = uniformly random policy.

    (mean_s V^π̂(s) − mean_s V^unif(s)) / (mean_s V*(s) − mean_s V^unif(s)) over the start states, all under the
    true reward; π̂ is greedy in the learned reward's Q* (ties: lowest action index).
    """
    v_star = value_iteration(mdp, true_weights)[0][starts].mean()
    learned_policy = greedy_policy(mdp.q_from_v(learned_weights, policy_iteration(mdp, learned_weights)[1]))
    v_hat = policy_values(mdp, learned_policy, true_weights)[starts].mean()
    r = mdp.rewards(true_weights).mean(axis=1)  # the uniform policy: average reward, average next state
    p = np.zeros((mdp.n_states, mdp.n_states))
    np.add.at(p, (np.repeat(np.arange(mdp.n_states), mdp.n_actions), mdp.next_state.reshape(-1)), 1 / mdp.n_actions)
    p[mdp.terminal] = 0.0
    v_unif = np.linalg.solve(np.eye(mdp.n_states) - mdp.gamma * p, r)[starts].mean()
    if v_star - v_unif < 1e-9:
        return 1.0
    return float((v_hat - v_unif) / (v_star - v_unif))


# --- continuous control: regret under a value estimate ------------------------------------------------------------
