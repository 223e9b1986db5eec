r"""Gaussian MLP policies for Meta-World (39-d observations → 4-d actions in [-1, 1]) and behaviour cloning.

:class:`GaussianPolicy` is a diagonal Gaussian with a state-dependent standard deviation, either *tanh-squashed*
(SAC's parameterisation, Haarnoja et al. 2018, appendix C, eq. 21) or *clipped*:

- ``squash="tanh"``: u ~ N(μ(s), σ(s)²), a = tanh(u), and

  .. math:: \log \pi(a \mid s) = \sum_i \Big[\log \mathcal N(\operatorname{atanh} a_i;\ \mu_i, \sigma_i^2)
            - \log(1 - a_i^2)\Big]

  Actions on the boundary (a scripted expert's ±1) have infinite atanh, so they are pulled inside to
  ±(1 − ``action_eps``) first; the density is exact everywhere inside that band.
- ``squash="clip"``: a = clip(u, −1, 1) and log π(a|s) is the Gaussian density of u = a (the mass that clipping
  puts on ±1 is ignored, the usual choice in behaviour cloning).

Per-step log-probabilities are what every policy score of the loss core is built from: the segment score of CPL and
trajectory DPO is Σ_t log π(a_t|s_t) (:meth:`GaussianPolicy.segment_log_prob`). Observations are standardised by
buffers (``obs_mean``, ``obs_std``), set from demonstrations by :func:`behaviour_cloning` and saved with the weights.

:func:`behaviour_cloning` maximises the demonstrations' log-likelihood, E_(s,a)~D[−log π(a|s)] (Pomerleau 1989;
the BC stage of CPL, Hejna et al. 2024, and of peeling-style finetuning) through the small Lightning module
:class:`BehaviourCloning`. :func:`save_policy` / :func:`load_policy` keep a policy in one safetensors file with its
constructor arguments in the metadata.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from mmpref.data import DataError, atomic_write
from mmpref.reward.networks import mlp_blocks

Squash = Literal["tanh", "clip"]
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
logger = logging.getLogger(__name__)


class GaussianPolicy(nn.Module):
    """π(a|s): an MLP giving the mean and log standard deviation of a diagonal Gaussian, squashed or clipped.

    Args:
        obs_dim: observation size (Meta-World: 39).
        act_dim: action size (Meta-World: 4).
        hidden: width of each hidden layer.
        layers: number of hidden layers.
        squash: ``"tanh"`` (a = tanh(u)) or ``"clip"`` (a = clip(u, −1, 1)).
        log_std_min: lower bound of log σ (keeps log-likelihoods finite).
        log_std_max: upper bound of log σ.
        action_eps: with ``"tanh"``, actions are clamped to ±(1 − action_eps) before atanh.
        censored: with ``"clip"``, score an action on a bound by the probability mass the Gaussian puts beyond it
            (a censored Gaussian: log P(u ≥ 1) = log Φ((μ − 1)/σ), log P(u ≤ −1) = log Φ((−1 − μ)/σ)) instead of the
            density at the bound. An action clipped to ±1 came from anywhere beyond the bound; the density there
            can be vanishingly small when μ lies far outside [−1, 1] (log-likelihoods of −60 and below on push-v3
            rollouts), and such steps then dominate a sequence score or a likelihood term. False: the density
            (how every policy was trained before this option). Sampling and acting do not change.
    """

    def __init__(
        self,
        obs_dim: int = 39,
        act_dim: int = 4,
        hidden: int = 256,
        layers: int = 2,
        squash: Squash = "tanh",
        log_std_min: float = -5.0,
        log_std_max: float = 1.0,
        action_eps: float = 1e-3,
        censored: bool = False,
    ):
        super().__init__()
        if squash not in ("tanh", "clip"):
            raise ValueError(f"squash must be 'tanh' or 'clip', got {squash!r}")
        if censored and squash != "clip":
            raise ValueError("censored applies to squash='clip' only (tanh never reaches ±1)")
        if not log_std_min < log_std_max:
            raise ValueError(f"need log_std_min < log_std_max, got {log_std_min} and {log_std_max}")
        if not 0 < action_eps < 1:
            raise ValueError(f"action_eps must lie in (0, 1), got {action_eps}")
        if obs_dim < 1 or act_dim < 1 or hidden < 1 or layers < 1:
            raise ValueError(f"obs_dim, act_dim, hidden, layers must be >= 1, got {obs_dim, act_dim, hidden, layers}")
        self.config: dict[str, Any] = {
            "obs_dim": obs_dim,
            "act_dim": act_dim,
            "hidden": hidden,
            "layers": layers,
            "squash": squash,
            "log_std_min": log_std_min,
            "log_std_max": log_std_max,
            "action_eps": action_eps,
            "censored": censored,
        }
        self.obs_dim, self.act_dim, self.squash, self.censored = obs_dim, act_dim, squash, censored
        self.log_std_min, self.log_std_max, self.action_eps = log_std_min, log_std_max, action_eps
        self.trunk = nn.Sequential(*mlp_blocks(obs_dim, [hidden] * layers, nn.ReLU))
        self.head = nn.Linear(hidden if layers else obs_dim, 2 * act_dim)
        self.register_buffer("obs_mean", torch.zeros(obs_dim))
        self.register_buffer("obs_std", torch.ones(obs_dim))

    def set_normalizer(self, observations: np.ndarray | torch.Tensor, min_std: float = 1e-3) -> None:
        """Standardise inputs by the mean and standard deviation of ``observations`` ``[N, o]``."""
        obs = torch.as_tensor(np.asarray(observations), dtype=torch.float32).reshape(-1, self.obs_dim)
        self.obs_mean.copy_(obs.mean(0))
        self.obs_std.copy_(obs.std(0).clamp_min(min_std) if len(obs) > 1 else torch.ones(self.obs_dim))

    def _check(self, name: str, x: torch.Tensor, size: int) -> None:
        if x.shape[-1] != size:
            raise ValueError(f"{name} must end in size {size}, got shape {tuple(x.shape)}")

    def standardise(self, obs: torch.Tensor) -> torch.Tensor:
        """(obs − obs_mean) / obs_std: the input every network of the policy sees."""
        return (obs - self.obs_mean) / self.obs_std

    def raw(self, obs: torch.Tensor) -> torch.Tensor:
        """The network's output ``[..., 2·act_dim]``: μ(s) and the unbounded log σ(s) before its squash."""
        return self.head(self.trunk(self.standardise(obs)))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean μ(s) and log σ(s) of the (pre-squash) Gaussian, each ``[..., act_dim]``, for ``obs`` ``[..., o]``."""
        self._check("obs", obs, self.obs_dim)
        mean, log_std = self.raw(obs).chunk(2, dim=-1)
        # a smooth squash into [min, max] keeps gradients alive at the bounds (hard clamping would zero them)
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (torch.tanh(log_std) + 1)
        return mean, log_std

    def log_prob(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Per-step log π(a|s), summed over action dimensions: ``[..., o]``, ``[..., a]`` → ``[...]``."""
        self._check("actions", actions, self.act_dim)
        if obs.shape[:-1] != actions.shape[:-1]:
            raise ValueError(f"obs {tuple(obs.shape)} and actions {tuple(actions.shape)} differ in leading shape")
        mean, log_std = self(obs)
        actions = actions.to(mean.dtype)
        if self.squash == "tanh":
            bound = 1.0 - self.action_eps
            actions = actions.clamp(-bound, bound)
            u = torch.atanh(actions)
            jacobian = torch.log1p(-actions.pow(2))
        else:
            u = actions
            jacobian = torch.zeros_like(actions)
        std = log_std.exp()
        gaussian = -0.5 * ((u - mean) / std).pow(2) - log_std - _LOG_SQRT_2PI
        if self.censored:  # clip(u) = ±1 exactly on the bounds (how act() and the env record them)
            upper = torch.special.log_ndtr((mean - 1.0) / std)
            lower = torch.special.log_ndtr((-1.0 - mean) / std)
            gaussian = torch.where(actions >= 1.0, upper, torch.where(actions <= -1.0, lower, gaussian))
        return (gaussian - jacobian).sum(-1)

    def segment_log_prob(
        self, obs: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        r"""Σ_t log π(a_t|s_t) over segments: ``[B, T, o]``, ``[B, T, a]`` (, mask ``[B, T]``) → ``[B]``.

        The CPL / trajectory-DPO segment score before its α or β (Hejna et al. 2024, eq. 5; the reference policy's
        is subtracted by the caller for DPO). Steps where ``mask`` is False (padding) count 0.
        """
        if obs.dim() != 3:
            raise ValueError(f"segment observations must be [B, T, o], got shape {tuple(obs.shape)}")
        per_step = self.log_prob(obs, actions)
        if mask is not None:
            if mask.shape != per_step.shape:
                raise ValueError(f"mask {tuple(mask.shape)} must match segments {tuple(per_step.shape)}")
            per_step = per_step * mask.to(per_step.dtype)
        return per_step.sum(-1)

    def act(
        self,
        obs: torch.Tensor | np.ndarray,
        deterministic: bool = False,
        generator: torch.Generator | None = None,
        temperature: float = 1.0,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor | np.ndarray:
        """Actions in [-1, 1] for ``obs`` ``[..., o]``: the squashed mean if ``deterministic``, else a sample.

        ``temperature`` scales σ of the sample (u = μ + temperature·σ·ε; 1 samples the policy itself, smaller values
        explore closer to the mean action). ``noise``: the standard-normal ε to use (shape of the mean) instead of a
        fresh draw from ``generator``. NumPy in gives NumPy out (float32); no gradient flows.
        """
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        is_numpy = isinstance(obs, np.ndarray)
        x = torch.as_tensor(obs, dtype=torch.float32) if is_numpy else obs
        with torch.no_grad():
            mean, log_std = self(x)
            u = mean
            if not deterministic:
                if noise is None:
                    noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
                u = mean + temperature * log_std.exp() * noise
            action = torch.tanh(u) if self.squash == "tanh" else u.clamp(-1.0, 1.0)
        return action.numpy() if is_numpy else action

    def numpy_policy(
        self, deterministic: bool = False, seed: int = 0, temperature: float = 1.0, correlation: float = 0.0
    ) -> Callable[[np.ndarray], np.ndarray]:
        r"""A ``obs → action`` callable for :func:`mmpref.control.segments.rollout` (own seeded generator).

        ``correlation`` ρ ∈ [0, 1) makes the sampling noise an AR(1) process over successive calls,
        ε_t = ρ ε_{t−1} + √(1 − ρ²) ξ_t with ξ_t ~ N(0, I) (ε_0 = ξ_0): each ε_t is still standard normal, so every
        action is still a sample of π(·|s_t), but successive deviations from the mean point the same way for about
        1/(1 − ρ) steps (colored exploration noise; 0: independent per step). The process runs on across the
        episodes one callable acts in.
        """
        if not 0.0 <= correlation < 1.0:
            raise ValueError(f"correlation must lie in [0, 1), got {correlation}")
        generator = torch.Generator().manual_seed(seed)
        state: list[torch.Tensor] = []  # the previous ε

        def policy(obs: np.ndarray) -> np.ndarray:
            x = np.asarray(obs, np.float32)
            noise = None
            if not deterministic and correlation > 0:
                fresh = torch.randn((*x.shape[:-1], self.act_dim), generator=generator)
                noise = fresh if not state else correlation * state[0] + math.sqrt(1 - correlation**2) * fresh
                state[:] = [noise]
            return self.act(x, deterministic, generator, temperature, noise).astype(np.float64)

        return policy


class ResidualPolicy(GaussianPolicy):
    r"""A residual policy on a frozen base: the base's output plus a small trainable MLP's.

    .. math:: [\mu(s), \tilde\sigma(s)] = f_{\mathrm{base}}(s) + g_\phi(s)

    where f_base (this class's ``trunk`` and ``head``) is the frozen BC network and g_φ (``residual``) is trained; μ
    is the pre-squash mean and σ̃ the unbounded log σ (squashed into [``log_std_min``, ``log_std_max``] as in
    :class:`GaussianPolicy`). g_φ's last layer starts at zero, so the policy starts as the base exactly, and the
    base's weights and normaliser never change (the residual policy of peeling-style finetuning: the preference stage
    corrects the imitation policy instead of rewriting it).

    Args:
        residual_hidden: width of g_φ's hidden layers.
        residual_layers: number of them.
        config: the base's constructor arguments (:attr:`GaussianPolicy.config`).
    """

    def __init__(self, residual_hidden: int = 64, residual_layers: int = 2, **config: Any):
        super().__init__(**config)
        if residual_hidden < 1 or residual_layers < 1:
            raise ValueError(
                f"residual_hidden and residual_layers must be >= 1, got {residual_hidden} and {residual_layers}"
            )
        self.config |= {"residual_hidden": residual_hidden, "residual_layers": residual_layers}
        self.trunk.requires_grad_(False)
        self.head.requires_grad_(False)
        last = nn.Linear(residual_hidden, 2 * self.act_dim)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.residual = nn.Sequential(*mlp_blocks(self.obs_dim, [residual_hidden] * residual_layers, nn.ReLU), last)

    @classmethod
    def on(cls, base: GaussianPolicy, residual_hidden: int = 64, residual_layers: int = 2) -> ResidualPolicy:
        """A residual policy whose frozen part copies ``base`` (weights and normaliser); ``base`` is untouched."""
        if isinstance(base, ResidualPolicy):
            raise ValueError("base is already a ResidualPolicy; stack residuals by training one, not by nesting")
        policy = cls(residual_hidden, residual_layers, **base.config)
        missing, unexpected = policy.load_state_dict(base.state_dict(), strict=False)
        assert not unexpected and all(k.startswith("residual.") for k in missing)
        return policy

    def set_normalizer(self, observations: np.ndarray | torch.Tensor, min_std: float = 1e-3) -> None:
        """Refused: the normaliser is part of the frozen base (set it on the base before :meth:`on`)."""
        raise TypeError("a ResidualPolicy keeps its base's normaliser; set it on the base before ResidualPolicy.on")

    def raw(self, obs: torch.Tensor) -> torch.Tensor:
        """f_base(s) + g_φ(s), both on the base's standardised observation."""
        x = self.standardise(obs)
        return self.head(self.trunk(x)) + self.residual(x)


def policy_format(policy: GaussianPolicy) -> str:
    """The ``format`` metadata of a saved policy: which class rebuilds it."""
    return f"mmpref.{type(policy).__name__}"


_POLICY_CLASSES: dict[str, type[GaussianPolicy]] = {
    "mmpref.GaussianPolicy": GaussianPolicy,
    "mmpref.ResidualPolicy": ResidualPolicy,
}


def save_policy(policy: GaussianPolicy, path: str | Path) -> Path:
    """Write a policy's weights and normaliser to one safetensors file (constructor arguments in the metadata)."""
    from safetensors.torch import save

    if policy_format(policy) not in _POLICY_CLASSES:
        raise TypeError(f"cannot save a {type(policy).__name__}; known: {', '.join(_POLICY_CLASSES)}")
    state = {k: v.detach().contiguous().cpu() for k, v in policy.state_dict().items()}
    data = save(state, metadata={"format": policy_format(policy), "config": json.dumps(policy.config)})
    with atomic_write(path, "wb") as handle:
        handle.write(data)
    return Path(path)


def copy_policy(policy: GaussianPolicy, **changes: Any) -> GaussianPolicy:
    """A copy of ``policy``: same class, weights, normaliser and trainable parts, constructor ``changes`` applied."""
    copy = type(policy)(**(policy.config | changes))
    copy.load_state_dict(policy.state_dict())
    for mine, theirs in zip(copy.parameters(), policy.parameters(), strict=True):
        mine.requires_grad_(theirs.requires_grad)
    return copy


def censored_copy(policy: GaussianPolicy) -> GaussianPolicy:
    """A copy of ``policy`` (same class, weights and normaliser) whose clip likelihood is censored.

    Acting is unchanged; only :meth:`GaussianPolicy.log_prob` of actions on the bounds differs. ``policy`` must clip.
    """
    return copy_policy(policy, censored=True)


def load_policy(path: str | Path) -> GaussianPolicy:
    """Rebuild a policy written by :func:`save_policy`, its class read from the metadata.

    A ``DataError`` names the file and what is wrong.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise DataError(path, ["file not found; check the path"])
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        state = load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for damaged files
        raise DataError(path, [f"not a readable safetensors file ({err}); re-write it with save_policy"]) from None
    if metadata.get("format") not in _POLICY_CLASSES or "config" not in metadata:
        raise DataError(path, ["metadata field 'config' missing: not written by mmpref.control.policies.save_policy"])
    try:
        policy = _POLICY_CLASSES[metadata["format"]](**json.loads(metadata["config"]))
    except (ValueError, TypeError) as err:  # not JSON, unknown or mistyped fields
        raise DataError(path, [f"metadata field 'config' is unusable ({err}); re-write it with save_policy"]) from None
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise DataError(path, [f"tensor(s) {bad[:5]} hold NaN/inf weights; retrain the policy"])
    try:
        policy.load_state_dict(state)
    except RuntimeError as err:
        raise DataError(path, [f"weights do not fit the stored config ({err})"]) from None
    return policy
