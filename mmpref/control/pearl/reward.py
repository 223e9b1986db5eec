r"""PEARL robust reward learning (RRL): a Gaussian step reward trained on (transferred) soft segment labels.

Each step's reward is Gaussian, r_t ~ N(μ(o_t, a_t), σ²(o_t, a_t)), so a segment's return is N(Σμ, Σσ²)
(:func:`mmpref.losses.gaussian_segment_return`); the loss is the Bradley-Terry cross-entropy on the Gaussian returns
(:func:`mmpref.losses.gaussian_bradley_terry`, reparameterised samples as PEARL trains, or the probit closed form)
plus λ·KL(N(μ, σ²) ‖ N(0, 1)) per step (:func:`mmpref.losses.gaussian_kl_standard`), Liu et al. 2023 §4.2. Pairs
whose transferred labels contradict the rest can be absorbed by the variance instead of bending the mean.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from mmpref.control.bc import behaviour_cloning
from mmpref.control.policies import GaussianPolicy
from mmpref.losses import gaussian_bradley_terry, gaussian_kl_standard, gaussian_segment_return
from mmpref.reward.datamodule import pair_dataset
from mmpref.reward.metrics import pairwise_accuracy
from mmpref.reward.networks import mlp_blocks
from mmpref.reward.trainers import quick_trainer


class GaussianStepReward(nn.Module):
    """(μ, log σ²) of the reward of a step from its concatenated (observation, action) ``[..., D]``.

    The log-variance is squashed smoothly into [``logvar_min``, ``logvar_max``] so the KL and the sampled returns
    stay finite.

    Args:
        in_features: D = observation size + action size.
        hidden: width of the hidden layers.
        layers: number of hidden layers.
        logvar_min: lower bound of log σ².
        logvar_max: upper bound of log σ² (equal bounds fix σ², e.g. a near-deterministic reward as an ablation).
    """

    def __init__(
        self, in_features: int, hidden: int = 128, layers: int = 2, logvar_min: float = -10.0, logvar_max: float = 2.0
    ):
        super().__init__()
        if logvar_min > logvar_max:
            raise ValueError(f"need logvar_min <= logvar_max, got {logvar_min} and {logvar_max}")
        self.trunk = nn.Sequential(*mlp_blocks(in_features, [hidden] * layers, nn.LeakyReLU))
        self.head = nn.Linear(hidden if layers else in_features, 2)
        self.logvar_min, self.logvar_max = logvar_min, logvar_max

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[..., D]`` → (mean ``[...]``, log-variance ``[...]``)."""
        mean, raw = self.head(self.trunk(x)).unbind(-1)
        logvar = self.logvar_min + 0.5 * (self.logvar_max - self.logvar_min) * (torch.tanh(raw) + 1.0)
        return mean, logvar


class GaussianRewardSystem(L.LightningModule):
    r"""Robust reward learning on segment pairs ``{"x_a", "x_b": [B, H, D], "label": [B]}`` with soft labels.

    .. math:: \mathcal L = \mathbb E_{(a,b,p)}\big[\ell_{\text{Gauss-BT}}(R_a, R_b; p)\big]
              + \lambda\,\mathbb E_{t}\big[\mathrm{KL}(\mathcal N(\mu_t, \sigma_t^2) \| \mathcal N(0,1))\big]

    Args:
        network: the Gaussian step reward.
        kl_weight: λ of the KL regulariser.
        samples: reparameterised return samples per pair (PEARL); 0 uses the probit closed form.
        beta: inverse temperature of the Bradley-Terry likelihood.
        lr: Adam learning rate.
    """

    def __init__(
        self,
        network: GaussianStepReward,
        kl_weight: float = 0.01,
        samples: int = 4,
        beta: float = 1.0,
        lr: float = 1e-3,
    ):
        super().__init__()
        if kl_weight < 0 or samples < 0:
            raise ValueError(f"kl_weight and samples must be >= 0, got {kl_weight} and {samples}")
        self.save_hyperparameters(ignore=["network"])
        self.network = network
        self.kl_weight, self.samples, self.beta, self.lr = kl_weight, samples, beta, lr

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Segments ``[B, H, D]`` → return mean and variance, each ``[B]``."""
        return gaussian_segment_return(*self.network(x))

    def _loss(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        (mean_a, logvar_a), (mean_b, logvar_b) = self.network(batch["x_a"]), self.network(batch["x_b"])
        ret_a, var_a = gaussian_segment_return(mean_a, logvar_a)
        ret_b, var_b = gaussian_segment_return(mean_b, logvar_b)
        label = batch["label"].to(ret_a.dtype)
        noise = None
        if self.samples > 0 and stage == "train":
            noise = torch.randn(self.samples, 2, *ret_a.shape, device=ret_a.device, dtype=ret_a.dtype)
        preference = gaussian_bradley_terry(ret_a, var_a, ret_b, var_b, label, self.beta, noise).mean()
        kl = torch.cat([gaussian_kl_standard(mean_a, logvar_a), gaussian_kl_standard(mean_b, logvar_b)]).mean()
        loss = preference + self.kl_weight * kl
        size = int(label.shape[0])
        prob = torch.sigmoid(self.beta * (ret_a - ret_b)).detach()
        self.log(f"{stage}/loss", loss, batch_size=size)
        self.log(f"{stage}/accuracy", pairwise_accuracy(prob, label).mean(), batch_size=size)
        self.log(f"{stage}/pearl/kl", kl.detach(), batch_size=size)
        self.log(f"{stage}/pearl/return_std", (var_a.detach().sqrt().mean()), batch_size=size)
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Loss on a batch of pairs, metrics under ``train/``."""
        return self._loss(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Metrics under ``val/`` (closed form, no sampling)."""
        self._loss(batch, "val")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam."""
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def sample_pairs(labels: np.ndarray, n_pairs: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n_pairs`` random pairs (j, l), j ≠ l, of a label matrix ``[n, n]`` → indices ``[n_pairs]`` each."""
    n = len(labels)
    if n < 2:
        raise ValueError("need at least two segments to draw pairs from")
    first = rng.integers(0, n, n_pairs)
    second = (first + rng.integers(1, n, n_pairs)) % n  # never equal to first
    return first, second


def fit_gaussian_reward(
    segments: np.ndarray,
    labels: np.ndarray,
    n_pairs: int = 20_000,
    epochs: int = 10,
    batch_size: int = 256,
    kl_weight: float = 0.01,
    samples: int = 4,
    hidden: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    logvar_bounds: tuple[float, float] = (-10.0, 2.0),
) -> GaussianRewardSystem:
    """Train a robust Gaussian reward on segments ``[n, H, D]`` from a soft label matrix ``[n, n]`` (ŷ or true).

    ``n_pairs`` pairs are drawn uniformly (labels exactly 0.5 carry no order and are still used: they pull the two
    returns together). ``logvar_bounds`` bound log σ² per step (equal bounds: a fixed variance). Deterministic for a
    seed.
    """
    if segments.ndim != 3 or labels.shape != (len(segments), len(segments)):
        raise ValueError(f"need segments [n, H, D] and labels [n, n], got {segments.shape} and {labels.shape}")
    rng = np.random.default_rng(seed)
    first, second = sample_pairs(labels, n_pairs, rng)
    torch.manual_seed(seed)
    network = GaussianStepReward(segments.shape[-1], hidden, logvar_min=logvar_bounds[0], logvar_max=logvar_bounds[1])
    system = GaussianRewardSystem(network, kl_weight=kl_weight, samples=samples, lr=lr)
    data = pair_dataset(segments[first], segments[second], labels[first, second])
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    quick_trainer(epochs).fit(system, train_dataloaders=loader)
    return system


@torch.no_grad()
def predicted_returns(system: GaussianRewardSystem, segments: np.ndarray, chunk: int = 512) -> np.ndarray:
    """Mean predicted return Σ_t μ_t of segments or whole trajectories ``[n, H, D]`` → ``[n]``."""
    system.eval()
    out = [
        system(torch.as_tensor(segments[i : i + chunk], dtype=torch.float32))[0]
        for i in range(0, len(segments), chunk)
    ]
    return torch.cat(out).numpy()


def reward_filtered_bc(
    system: GaussianRewardSystem,
    observations: np.ndarray,
    actions: np.ndarray,
    top_fraction: float = 0.2,
    epochs: int = 30,
    seed: int = 0,
) -> tuple[GaussianPolicy, np.ndarray]:
    """A policy by behaviour cloning on the trajectories the learned reward ranks highest (filtered BC).

    Trajectories ``[N, T, o]``, ``[N, T, a]`` (the target task's unlabelled data) are ranked by their predicted
    return Σ_t μ(o_t, a_t); the top ``top_fraction`` are cloned with :func:`mmpref.control.bc.behaviour_cloning`.

    Returns:
        The policy and the indices of the chosen trajectories.
    """
    if not 0 < top_fraction <= 1:
        raise ValueError(f"top_fraction must lie in (0, 1], got {top_fraction}")
    x = np.concatenate([observations, actions], -1).astype(np.float32)
    scores = predicted_returns(system, x)
    keep = max(1, round(top_fraction * len(x)))
    chosen = np.argsort(-scores, kind="stable")[:keep]
    return clone_trajectories(observations, actions, chosen, epochs, seed), chosen


def clone_trajectories(
    observations: np.ndarray, actions: np.ndarray, chosen: np.ndarray, epochs: int = 30, seed: int = 0
) -> GaussianPolicy:
    """Behaviour cloning on the trajectories ``chosen`` of ``[N, T, o]``, ``[N, T, a]``, as filtered BC does.

    The cloning step of :func:`reward_filtered_bc` on its own, so that baselines (a random subset of the same size,
    all trajectories) are cloned with exactly the same policy, epochs and seeds as the reward-filtered subset.
    """
    chosen = np.asarray(chosen)
    if chosen.ndim != 1 or len(chosen) == 0:
        raise ValueError(f"need a non-empty 1-D index array of trajectories, got shape {chosen.shape}")
    torch.manual_seed(seed)
    policy = GaussianPolicy(observations.shape[-1], actions.shape[-1])
    behaviour_cloning(
        policy,
        observations[chosen].reshape(-1, observations.shape[-1]),
        actions[chosen].reshape(-1, actions.shape[-1]),
        epochs=epochs,
        seed=seed,
    )
    return policy
