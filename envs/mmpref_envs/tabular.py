"""Exact dynamic programming on small deterministic MDPs: value iteration, policy evaluation, Q*, greedy policies.

A :class:`TabularMDP` has S states, A actions, deterministic transitions ``next_state[s, a]``, reward features
``features[s, a] ∈ R^K`` and terminal states. The reward is linear in the features, r(s, a) = w·φ(s, a), so one
layout serves many reward functions (Knox et al. 2022, "Models of human preference for learning reward functions",
§5: the delivery domain's reward is a weighted sum of cell features). Terminal states are absorbing: every action
stays, with zero features, so V(terminal) = 0 for any w and any γ ∈ (0, 1].

Bellman optimality (Sutton & Barto 2018, eq. 3.20): Q*(s, a) = r(s, a) + γ V*(s'), V*(s) = max_a Q*(s, a).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TabularMDP:
    """A deterministic MDP with linear reward features.

    Attributes:
        next_state: ``[S, A]`` int, the state reached by taking a in s.
        features: ``[S, A, K]`` float, φ(s, a); zero in terminal states.
        terminal: ``[S]`` bool, absorbing states (every action stays, zero reward).
        gamma: discount γ ∈ (0, 1]; γ = 1 needs every policy of interest to reach a terminal state.
    """

    next_state: np.ndarray
    features: np.ndarray
    terminal: np.ndarray
    gamma: float = 0.95

    def __post_init__(self) -> None:
        nxt, phi, term = np.asarray(self.next_state), np.asarray(self.features, np.float64), np.asarray(self.terminal)
        if nxt.ndim != 2 or phi.ndim != 3 or phi.shape[:2] != nxt.shape or term.shape != nxt.shape[:1]:
            raise ValueError(
                f"TabularMDP: next_state must be [S, A], features [S, A, K] and terminal [S]; got {nxt.shape}, "
                f"{phi.shape} and {term.shape}"
            )
        if nxt.min() < 0 or nxt.max() >= nxt.shape[0]:
            raise ValueError(f"TabularMDP: next_state holds indices outside [0, {nxt.shape[0]})")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"TabularMDP: gamma must lie in (0, 1], got {self.gamma}")
        s_term = np.flatnonzero(term)
        if (nxt[s_term] != s_term[:, None]).any() or np.abs(phi[s_term]).max(initial=0.0) > 0:
            raise ValueError("TabularMDP: terminal states must be absorbing (every action stays) with zero features")
        object.__setattr__(self, "next_state", nxt.astype(np.int64))
        object.__setattr__(self, "features", phi)
        object.__setattr__(self, "terminal", term.astype(bool))

    @property
    def n_states(self) -> int:
        """S."""
        return self.next_state.shape[0]

    @property
    def n_actions(self) -> int:
        """A."""
        return self.next_state.shape[1]

    @property
    def n_features(self) -> int:
        """K."""
        return self.features.shape[2]

    def rewards(self, weights: np.ndarray) -> np.ndarray:
        """r(s, a) = w·φ(s, a), ``[S, A]``."""
        return self.features @ np.asarray(weights, np.float64)

    def q_from_v(self, weights: np.ndarray, values: np.ndarray) -> np.ndarray:
        """One Bellman backup: Q(s, a) = r(s, a) + γ V(s'), ``[S, A]``."""
        return self.rewards(weights) + self.gamma * np.asarray(values)[self.next_state]


def value_iteration(
    mdp: TabularMDP, weights: np.ndarray, tol: float = 1e-10, max_iter: int = 100_000
) -> tuple[np.ndarray, np.ndarray]:
    """Optimal values by value iteration: V ← max_a [r + γ V(s')] until the change is below ``tol``.

    Returns:
        ``(V*, Q*)`` of shapes ``[S]`` and ``[S, A]``.

    Raises:
        RuntimeError: when it has not converged after ``max_iter`` sweeps (e.g. γ = 1 with a reward that makes
            looping forever worthwhile).
    """
    r = mdp.rewards(weights)
    v = np.zeros(mdp.n_states)
    for _ in range(max_iter):
        q = r + mdp.gamma * v[mdp.next_state]
        new = np.where(mdp.terminal, 0.0, q.max(axis=1))
        if np.abs(new - v).max() < tol:
            return new, r + mdp.gamma * new[mdp.next_state]
        v = new
    raise RuntimeError(f"value iteration did not converge in {max_iter} sweeps (gamma={mdp.gamma})")


def policy_transition(mdp: TabularMDP, policy: np.ndarray) -> np.ndarray:
    """The ``[S, S]`` transition matrix of a deterministic policy, with terminal rows zeroed (V(terminal) = 0)."""
    s = np.arange(mdp.n_states)
    p = np.zeros((mdp.n_states, mdp.n_states))
    p[s, mdp.next_state[s, policy]] = 1.0
    p[mdp.terminal] = 0.0
    return p


def successor_features(mdp: TabularMDP, policy: np.ndarray) -> np.ndarray:
    """ψ^π(s) = Σ_t γ^t φ(s_t, π(s_t)) from s, ``[S, K]``: the solution of (I − γ P_π) ψ = Φ_π.

    V^π = ψ^π w for every w (Barreto et al. 2017, successor features), which is what makes the regret of a learned
    reward differentiable in w (see :func:`mmpref.control.regret.model.optimal_values`).
    """
    s = np.arange(mdp.n_states)
    phi = mdp.features[s, policy]
    return np.linalg.solve(np.eye(mdp.n_states) - mdp.gamma * policy_transition(mdp, policy), phi)


def policy_values(mdp: TabularMDP, policy: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """V^π of a deterministic policy ``[S]`` (action index per state) under reward weights w, ``[S]``."""
    return successor_features(mdp, policy) @ np.asarray(weights, np.float64)


def greedy_policy(q: np.ndarray) -> np.ndarray:
    """argmax_a Q(s, a) per state (ties: the lowest action index), ``[S]``."""
    return np.asarray(q).argmax(axis=1)


def policy_iteration(
    mdp: TabularMDP, weights: np.ndarray, policy: np.ndarray | None = None, max_iter: int = 1_000
) -> tuple[np.ndarray, np.ndarray]:
    """Optimal policy and values by policy iteration (exact linear solves; needs γ < 1 for arbitrary rewards).

    Starting from a good ``policy`` (e.g. the previous optimum while w changes a little) it usually stops after one
    or two solves, which is why reward learning uses it instead of value iteration.

    Returns:
        ``(π*, V*)`` of shapes ``[S]`` and ``[S]``.
    """
    if mdp.gamma >= 1:
        raise ValueError("policy iteration needs gamma < 1 (use value_iteration for episodic gamma = 1)")
    policy = np.zeros(mdp.n_states, np.int64) if policy is None else np.asarray(policy, np.int64)
    for _ in range(max_iter):
        v = policy_values(mdp, policy, weights)
        q = mdp.q_from_v(weights, v)
        best = q.max(axis=1)
        # keep the current action unless another is strictly better, so ties cannot make the loop cycle
        current = q[np.arange(mdp.n_states), policy]
        improve = best > current + 1e-12 * (1 + np.abs(best))
        if not improve.any():
            return policy, v
        policy = np.where(improve, q.argmax(axis=1), policy)
    raise RuntimeError(f"policy iteration did not converge in {max_iter} steps")
