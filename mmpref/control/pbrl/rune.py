r"""RUNE: exploration from the reward ensemble's disagreement, as a part of the PbRL loop.

Liang, Shu, Lee & Abbeel (2022), "Reward Uncertainty for Exploration in Preference-based Reinforcement Learning"
(ICLR 2022), §4 (Eqs. 3-4). The intrinsic reward of a transition is the ensemble's epistemic uncertainty, the
standard deviation of its members' predictions, and the policy is trained on

.. math:: r^{\text{total}}_t = \hat r(s_t, a_t) + \beta_t \cdot r^{\text{int}}(s_t, a_t), \qquad
   r^{\text{int}}(s_t, a_t) = \operatorname{std}_m\big[\hat r_m(s_t, a_t)\big], \qquad
   \beta_t = \beta_0 (1 - \rho)^t

with r̂ the members' mean (PEBBLE's reward), t the environment step and ρ the decay rate, so exploration towards
where the reward is uncertain fades as training goes on. Defaults: β₀ = 0.05, ρ = 10⁻⁵ (the authors' public
configuration; their code also offers a linear decay, the paper's schedule is the exponential one above). The std is
the population std over the M members.

In the loop the bonus is added after the learned reward's affine map (standardisation), in the same units:
``(r̂ − shift) · scale + β_t · scale · r_int``, both for the reward of each new step and when the replay buffer is
relabelled (then with β of the current step for every stored transition).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from mmpref.control.reward import RewardEnsemble


def rune_beta(beta0: float, decay: float, step: int | np.ndarray) -> float | np.ndarray:
    """β_t = β₀ (1 − ρ)^t.

    >>> round(rune_beta(0.05, 1e-3, 1000), 6)  # 0.05 · 0.999^1000
    0.018385
    """
    return beta0 * np.power(1.0 - decay, step)


@torch.inference_mode()
def member_std(ensemble: RewardEnsemble, observations: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """r_int: the population standard deviation of the members' step rewards, ``[N, o]``, ``[N, a]`` → ``[N]``."""
    parts = [observations, actions] if ensemble.use_actions else [observations]
    rewards = ensemble.scorer.step_reward(torch.from_numpy(np.concatenate(parts, -1, dtype=np.float32)))  # [M, N]
    if rewards.shape[0] == 1:
        return np.zeros(rewards.shape[1], np.float32)
    return rewards.std(0, correction=0).numpy()


class RUNE:
    """The RUNE part: the exploration bonus β_t · std_m r̂_m added to the policy's learned reward.

    Args:
        beta0: the initial weight β₀.
        decay: the decay rate ρ ∈ [0, 1) per environment step.
    """

    name = "rune"

    def __init__(self, beta0: float = 0.05, decay: float = 1e-5):
        if beta0 < 0 or not 0 <= decay < 1:
            raise ValueError(f"rune_beta0 must be >= 0 and rune_decay in [0, 1), got {beta0} and {decay}")
        self.beta0, self.decay = beta0, decay

    def beta(self, step: int) -> float:
        """β_t at environment step t."""
        return float(rune_beta(self.beta0, self.decay, step))

    def bonus(self, ensemble: RewardEnsemble, observations: np.ndarray, actions: np.ndarray, step: int) -> np.ndarray:
        """β_t · r_int for transitions ``[N, o]``, ``[N, a]`` → ``[N]`` (before the affine map's scale)."""
        beta = self.beta(step)
        if beta == 0.0 or math.isclose(beta, 0.0):
            return np.zeros(len(observations), np.float32)
        return beta * member_std(ensemble, observations, actions)

    def state_dict(self) -> dict:
        """RUNE keeps no state of its own (t is the loop's step count)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Nothing to restore."""
