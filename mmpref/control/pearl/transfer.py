r"""PEARL cross-task preference transfer: optimal-transport couplings between task segments, transferred labels.

PEARL (Liu et al. 2023, "Zero-Shot Preference Learning for Offline RL via Optimal Transport", §4.1 "Cross
Preference Alignment") couples the segments of a labelled source task with those of an unlabelled target task by
Gromov-Wasserstein optimal transport, which needs only the intra-set distance matrices C_s and C_t, and transfers the
source labels Y along the plan T (eq. 5):

.. math:: \hat y_{jl} = \frac{\sum_{i,k} T_{ij} T_{kl}\, y_{ik}}{\sum_{i,k} T_{ij} T_{kl}}
          = \frac{(T^\top Y T)_{jl}}{(T^\top \mathbf 1)_j (T^\top \mathbf 1)_l}

Plain GW is fragile on Meta-World v3 (measured, ``pearl-notes``): GW is blind to a reflection of the "quality axis"
(drawer-close behaves like a time-reversed drawer-open, and comes out inverted), and the exact solver is
non-convex (13-87 % across initialisations). :func:`robust_coupling` is mmpref's fix, every choice made without target
labels:

1. *fused* GW (Vayer et al. 2019) adds a cross-task cost M_ij between task-agnostic segment features — every
   Meta-World task shares the 39-d observation layout (hand, gripper, object) — so the plan is anchored and a
   reflection costs ⟨M, T⟩;
2. *restarts*: several initial plans, keeping the lowest fused-GW objective;
3. a *direction check*: the target ranking implied by the transferred labels is compared with a reward model fitted
   on the source labels over the same shared features (no target label involved); a negative rank correlation
   means the plan maps the good end of the target onto the bad end of the source, and the labels are flipped.

POT does the optimal transport; with torch tensors on a CUDA device POT's torch backend runs on the GPU
(``device="cuda"``), otherwise numpy on the CPU.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from mmpref.control.pearl.coupling import fused_gw_coupling, import_pot, random_plan
from mmpref.losses import bradley_terry

logger = logging.getLogger(__name__)

CouplingMethod = Literal["random", "nearest", "gw_exact", "gw_entropic", "robust"]
COUPLING_METHODS: tuple[str, ...] = ("random", "nearest", "gw_exact", "gw_entropic", "robust")


# --- labels ------------------------------------------------------------------------------------------------------


def label_matrix(returns: np.ndarray) -> np.ndarray:
    """Source labels from true returns: Y_ik = 1 if R_i > R_k, 0 if R_i < R_k, 0.5 on ties; ``[n]`` → ``[n, n]``."""
    returns = np.asarray(returns, np.float64)
    if returns.ndim != 1:
        raise ValueError(f"returns must be one value per segment [n], got shape {returns.shape}")
    return (returns[:, None] > returns[None]).astype(np.float64) + 0.5 * (returns[:, None] == returns[None])


def transfer_labels(plan: Any, labels: Any, mask: Any | None = None) -> Any:
    r"""Transferred soft labels ŷ = Tᵀ(M⊙Y)T / Tᵀ M T (PEARL eq. 5; M = 1 when every source pair is labelled).

    .. math:: \hat y_{jl} = \frac{\sum_{i,k} T_{ij} T_{kl} M_{ik} y_{ik}}{\sum_{i,k} T_{ij} T_{kl} M_{ik}}

    Target pairs whose coupled source pairs carry no label (denominator 0) get 0.5, "no information".

    Args:
        plan: coupling T, ``[n_s, n_t]`` (numpy or torch, any device).
        labels: source labels Y_ik = P(i ≻ k), ``[n_s, n_s]``.
        mask: optional 0/1 matrix ``[n_s, n_s]`` of labelled source pairs.

    Returns:
        ŷ, ``[n_t, n_t]``, same array type as ``plan``.
    """
    ot = import_pot()
    nx = ot.backend.get_backend(plan, labels)
    n_s = plan.shape[0]
    if labels.shape != (n_s, n_s):
        raise ValueError(
            f"labels must be [n_s, n_s] = [{n_s}, {n_s}] for a plan of shape {tuple(plan.shape)}, got "
            f"{tuple(labels.shape)}"
        )
    if mask is None:
        numerator = nx.dot(nx.dot(plan.T, labels), plan)
        mass = nx.sum(plan, axis=0)
        denominator = mass[:, None] * mass[None, :]
    else:
        if mask.shape != labels.shape:
            raise ValueError(f"mask has shape {tuple(mask.shape)} but labels have {tuple(labels.shape)}")
        numerator = nx.dot(nx.dot(plan.T, mask * labels), plan)
        denominator = nx.dot(nx.dot(plan.T, mask), plan)
    # Arithmetic on the boolean mask (not nx.where) keeps this identical for numpy and torch arrays.
    empty = denominator <= 1e-300
    ratio = numerator / (denominator + empty)
    return ratio * ~empty + 0.5 * empty


def transfer_accuracy(transferred: np.ndarray, returns: np.ndarray, min_gap: float = 0.1) -> float:
    """Accuracy of sign(ŷ − ½) against the true-return order over target pairs with |ΔR| > min_gap·std(R).

    A transferred label of exactly 0.5 counts as half right (chance = 0.5). Target returns are used only here.
    """
    returns = np.asarray(returns, np.float64)
    diff = returns[:, None] - returns[None]
    keep = np.triu(np.abs(diff) > min_gap * returns.std(), 1)
    if not keep.any():
        raise ValueError("no target pair differs by more than min_gap·std(R); lower min_gap")
    y = np.asarray(transferred, np.float64)[keep]
    truth = diff[keep] > 0
    return float(np.mean(np.where(y == 0.5, 0.5, (y > 0.5) == truth)))


def borda(transferred: np.ndarray) -> np.ndarray:
    """Borda score of each target segment from soft pairwise labels: the mean of ŷ_jl over l ≠ j."""
    transferred = np.asarray(transferred, np.float64)
    n = len(transferred)
    return (transferred.sum(1) - np.diag(transferred)) / max(n - 1, 1)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


# --- segment features and costs ----------------------------------------------------------------------------------

SUMMARY_FEATURES: tuple[str, ...] = (
    "hand_displacement",
    "hand_path",
    "action_magnitude",
    "action_change",
    "object_displacement",
    "object_path",
    "hand_object_mean",
    "hand_object_start",
    "hand_object_end",
    "gripper_mean",
)


def summary_features(observations: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """Task-agnostic features of segments ``[S, H, 39]``, ``[S, H, 4]`` → ``[S, 10]`` (:data:`SUMMARY_FEATURES`).

    Every Meta-World v3 observation starts with the hand position (0:3), the gripper opening (3) and the first
    object's position (4:7), so these mean the same thing in every task: how far and how straight the hand and the
    object move, how large and smooth the actions are, how close the hand stays to the object.
    """
    if observations.ndim != 3 or observations.shape[-1] < 7:
        raise ValueError(f"observations must be [S, H, >=7] Meta-World observations, got {observations.shape}")
    hand, gripper, obj = observations[..., 0:3], observations[..., 3], observations[..., 4:7]
    hand_obj = np.linalg.norm(hand - obj, axis=-1)
    return np.stack(
        [
            np.linalg.norm(hand[:, -1] - hand[:, 0], axis=-1),
            np.linalg.norm(np.diff(hand, axis=1), axis=-1).sum(1),
            np.abs(actions).mean((1, 2)),
            np.abs(np.diff(actions, axis=1)).mean((1, 2)),
            np.linalg.norm(obj[:, -1] - obj[:, 0], axis=-1),
            np.linalg.norm(np.diff(obj, axis=1), axis=-1).sum(1),
            hand_obj.mean(1),
            hand_obj[:, 0],
            hand_obj[:, -1],
            gripper.mean(1),
        ],
        axis=1,
    ).astype(np.float64)


def zscore(x: np.ndarray) -> np.ndarray:
    """Z-score every column over the rows of one task (constant columns become 0)."""
    x = np.asarray(x, np.float64)
    std = x.std(0)
    return (x - x.mean(0)) / np.where(std > 1e-12, std, 1.0)


def flat_features(observations: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """Flattened (observation, action) segments ``[S, H·(39 + 4)]``, z-scored per dimension within the task."""
    flat = np.concatenate([observations, actions], -1).reshape(len(observations), -1)
    return zscore(flat)


def distance_matrix(a: np.ndarray, b: np.ndarray | None = None, normalise: bool = True) -> np.ndarray:
    """Euclidean distances between rows (of ``a`` and ``b``, or within ``a``), divided by the maximum if asked."""
    b = a if b is None else b
    sq = (a**2).sum(1)[:, None] + (b**2).sum(1)[None] - 2.0 * a @ b.T
    dist = np.sqrt(np.maximum(sq, 0.0))
    return dist / dist.max() if normalise and dist.max() > 0 else dist


# --- couplings ---------------------------------------------------------------------------------------------------


# --- the shared-feature reward (baseline and direction anchor) ---------------------------------------------------


class FeatureBradleyTerry:
    """A linear Bradley-Terry reward r(σ) = wᵀf(σ) on per-task z-scored summary features, fitted on source labels.

    Applied unchanged to another task it is the "shared-feature baseline" of ``pearl-notes``; in
    :func:`robust_coupling` it only decides the *direction* of a plan. Trained with :func:`mmpref.losses.bradley_terry`
    and L-BFGS, deterministic.

    Args:
        l2: ridge penalty on w.
    """

    def __init__(self, l2: float = 1e-3):
        self.l2 = l2
        self.weight: np.ndarray | None = None

    def fit(
        self, features: np.ndarray, labels: np.ndarray, max_pairs: int = 50_000, seed: int = 0
    ) -> FeatureBradleyTerry:
        """Fit on features ``[n, F]`` and pairwise labels ``[n, n]`` (strict pairs only, at most ``max_pairs``)."""
        i, k = np.nonzero(np.triu(labels != 0.5, 1))
        if len(i) == 0:
            raise ValueError("no strictly ordered source pair to fit a reward on")
        if len(i) > max_pairs:
            chosen = np.random.default_rng(seed).choice(len(i), max_pairs, replace=False)
            i, k = i[chosen], k[chosen]
        better_first = labels[i, k] > 0.5
        w_idx, l_idx = np.where(better_first, i, k), np.where(better_first, k, i)
        x = torch.as_tensor(features, dtype=torch.float64)
        weight = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
        optimiser = torch.optim.LBFGS([weight], max_iter=200, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimiser.zero_grad()
            scores = x @ weight
            loss = bradley_terry(scores[w_idx], scores[l_idx]).mean() + self.l2 * weight.square().sum()
            loss.backward()
            return loss

        optimiser.step(closure)
        self.weight = weight.detach().numpy()
        return self

    def score(self, features: np.ndarray) -> np.ndarray:
        """Rewards of segments ``[n, F]`` → ``[n]``."""
        if self.weight is None:
            raise RuntimeError("call fit() before score()")
        return np.asarray(features, np.float64) @ self.weight

    def pair_labels(self, features: np.ndarray) -> np.ndarray:
        """P(j ≻ l) = σ(r_j − r_l) for every pair, ``[n, n]``."""
        r = self.score(features)
        return 1.0 / (1.0 + np.exp(-(r[:, None] - r[None])))


# --- mmpref's robust transfer ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TransferResult:
    """A coupling and the labels it transfers.

    Attributes:
        labels: transferred labels ŷ ``[n_t, n_t]``.
        plan: the plan ``[n_s, n_t]``.
        objective: the solver's objective (GW or fused GW; NaN for couplings without one).
        objectives: objectives of every restart.
        flipped: whether the direction check flipped the labels.
        agreement: Spearman correlation of the Borda ranking with the direction anchor (before any flip).
    """

    labels: np.ndarray
    plan: np.ndarray
    objective: float = float("nan")
    objectives: tuple[float, ...] = ()
    flipped: bool = False
    agreement: float = float("nan")


def robust_coupling(
    cost_cross: np.ndarray,
    cost_source: np.ndarray,
    cost_target: np.ndarray,
    labels: np.ndarray,
    anchor_target: np.ndarray | None,
    mask: np.ndarray | None = None,
    alpha: float = 0.5,
    epsilon: float | None = 0.01,
    restarts: int = 3,
    seed: int = 0,
    device: str = "cpu",
    max_iter: int = 500,
) -> TransferResult:
    """The mmpref transfer: fused GW with a cross-task cost, restarts by lowest objective, a direction check.

    Args:
        cost_cross: cross-task feature cost ``[n_s, n_t]``.
        cost_source: intra-source distances ``[n_s, n_s]``.
        cost_target: intra-target distances ``[n_t, n_t]``.
        labels: source labels ``[n_s, n_s]``.
        anchor_target: label-free direction anchor: scores of the target segments ``[n_t]`` from a reward fitted on
            source labels over shared features (:class:`FeatureBradleyTerry`); ``None`` skips the check.
        mask: optional labelled-pair mask of the source ``[n_s, n_s]``.
        alpha: weight of the GW term in the fused objective.
        epsilon: entropic ε, or ``None`` for the exact solver.
        restarts: solver runs: the product-of-marginals start, then random plans.
        seed: seed of the random starts.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        max_iter: solver iterations per run.
    """
    if restarts < 1:
        raise ValueError(f"restarts must be >= 1, got {restarts}")
    rng = np.random.default_rng(seed)
    n_s, n_t = cost_cross.shape
    best: tuple[np.ndarray, float] | None = None
    objectives = []
    for r in range(restarts):
        init = None if r == 0 else random_plan(n_s, n_t, rng)
        plan, objective = fused_gw_coupling(
            cost_cross, cost_source, cost_target, alpha, epsilon, init, max_iter=max_iter, device=device
        )
        objectives.append(objective)
        if np.isfinite(objective) and (best is None or objective < best[1]):
            best = (plan, objective)
    if best is None:
        raise RuntimeError(f"fused GW gave no finite objective in {restarts} runs: {objectives}")
    plan, objective = best
    transferred = np.asarray(transfer_labels(plan, labels, mask))
    flipped, agreement = False, float("nan")
    if anchor_target is not None:
        agreement = spearman(borda(transferred), anchor_target)
        if agreement < 0:
            # The plan reflects the quality axis (GW cannot see it); the anchor, fitted on source labels over shared
            # features, says which end is good.
            transferred, flipped = 1.0 - transferred, True
            logger.info("direction check flipped the transferred labels (Spearman %.2f with the anchor)", agreement)
    return TransferResult(transferred, plan, objective, tuple(objectives), flipped, agreement)
