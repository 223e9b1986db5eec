"""Couplings of source and target segments for PEARL's label transfer: random, nearest, (fused) Gromov-Wasserstein.

POT does the optimal transport; with torch tensors on a CUDA device POT's torch backend runs on the GPU
(``device="cuda"`` or ``"auto"`` with a GPU), otherwise numpy on the CPU (:func:`resolve_device`).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch


def import_pot() -> Any:
    """The POT module (imported on first use: an optional dependency of the control extra)."""
    try:
        import ot
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("PEARL transfer needs POT: pip install 'mmpref[control]'") from error
    return ot


def random_coupling(n_source: int, n_target: int, rng: np.random.Generator) -> np.ndarray:
    """Each target segment coupled to one random source segment (mass 1/n_t): the chance-level baseline."""
    plan = np.zeros((n_source, n_target))
    plan[rng.integers(0, n_source, n_target), np.arange(n_target)] = 1.0 / n_target
    return plan


def nearest_coupling(cost: np.ndarray) -> np.ndarray:
    """Each target segment coupled to its nearest source segment under a cross-task cost ``[n_s, n_t]``."""
    n_source, n_target = cost.shape
    plan = np.zeros((n_source, n_target))
    plan[cost.argmin(0), np.arange(n_target)] = 1.0 / n_target
    return plan


def _to_backend(arrays: list[np.ndarray], device: str) -> list[Any]:
    if device == "cpu":
        return arrays
    return [torch.as_tensor(a, dtype=torch.float64, device=device) for a in arrays]


def _to_numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def resolve_device(device: str) -> str:
    """``"auto"`` → ``"cuda"`` when available, else ``"cpu"``; other values pass through.

    ``"cpu"`` runs POT's numpy backend; any other torch device string runs its torch backend on that device
    (``"cuda"``, ``"cuda:1"``; ``"cpu:0"`` is the torch backend on the CPU, which the tests use to check that path).
    """
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def gw_coupling(
    cost_source: np.ndarray,
    cost_target: np.ndarray,
    method: Literal["exact", "entropic"] = "entropic",
    epsilon: float = 0.01,
    init: np.ndarray | None = None,
    max_iter: int = 500,
    device: str = "cpu",
) -> tuple[np.ndarray, float]:
    """Plain Gromov-Wasserstein plan between two segment sets (PEARL's CPA), uniform marginals, square loss.

    Args:
        cost_source: intra-source distances ``[n_s, n_s]``.
        cost_target: intra-target distances ``[n_t, n_t]``.
        method: ``"exact"`` (conditional gradient, ``ot.gromov.gromov_wasserstein``) or ``"entropic"`` (projected
            gradient with entropy ε, ``ot.gromov.entropic_gromov_wasserstein``).
        epsilon: entropic regularisation ε (on max-normalised costs, 0.01 was fast and best in ``pearl-notes``).
        init: initial plan ``[n_s, n_t]`` (default: the product of the marginals).
        max_iter: solver iterations.
        device: ``"cpu"`` (numpy), ``"cuda"`` (POT's torch backend) or ``"auto"``.

    Returns:
        The plan ``[n_s, n_t]`` as numpy and the GW objective.
    """
    ot = import_pot()
    device = resolve_device(device)
    c1, c2 = _to_backend([cost_source, cost_target], device)
    g0 = None if init is None else _to_backend([init], device)[0]
    if method == "exact":
        plan, log = ot.gromov.gromov_wasserstein(c1, c2, G0=g0, max_iter=max_iter, log=True)
    elif method == "entropic":
        plan, log = ot.gromov.entropic_gromov_wasserstein(c1, c2, epsilon=epsilon, G0=g0, max_iter=max_iter, log=True)
    else:
        raise ValueError(f"unknown GW method {method!r}; valid: exact, entropic")
    return _to_numpy(plan), float(_to_numpy(log["gw_dist"]))


def fused_gw_coupling(
    cost_cross: np.ndarray,
    cost_source: np.ndarray,
    cost_target: np.ndarray,
    alpha: float = 0.5,
    epsilon: float | None = 0.01,
    init: np.ndarray | None = None,
    max_iter: int = 500,
    device: str = "cpu",
) -> tuple[np.ndarray, float]:
    r"""Fused Gromov-Wasserstein plan (Vayer et al. 2019): a feature cost across tasks plus the GW structure term.

    .. math:: \min_T\ (1-\alpha)\sum_{ij} M_{ij}T_{ij} + \alpha\sum_{ijkl}(C^s_{ik} - C^t_{jl})^2 T_{ij}T_{kl}
              \ [-\ \varepsilon H(T)]

    Args:
        cost_cross: cross-task feature cost M ``[n_s, n_t]``.
        cost_source: intra-source distances ``[n_s, n_s]``.
        cost_target: intra-target distances ``[n_t, n_t]``.
        alpha: weight α ∈ [0, 1] of the structure (GW) term.
        epsilon: entropic ε (``ot.gromov.entropic_fused_gromov_wasserstein``); ``None`` for the exact solver.
        init: initial plan ``[n_s, n_t]``.
        max_iter: solver iterations.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.

    Returns:
        The plan (numpy) and the fused objective.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha weights the GW term and must lie in [0, 1], got {alpha}")
    ot = import_pot()
    device = resolve_device(device)
    m, c1, c2 = _to_backend([cost_cross, cost_source, cost_target], device)
    g0 = None if init is None else _to_backend([init], device)[0]
    if epsilon is None:
        plan, log = ot.gromov.fused_gromov_wasserstein(m, c1, c2, alpha=alpha, G0=g0, max_iter=max_iter, log=True)
    else:
        plan, log = ot.gromov.entropic_fused_gromov_wasserstein(
            m, c1, c2, epsilon=epsilon, alpha=alpha, G0=g0, max_iter=max_iter, log=True
        )
    return _to_numpy(plan), float(_to_numpy(log["fgw_dist"]))


def random_plan(n_source: int, n_target: int, rng: np.random.Generator) -> np.ndarray:
    """A random initial plan with uniform marginals (a random permutation when n_s = n_t, else Sinkhorn-balanced)."""
    if n_source == n_target:
        plan = np.zeros((n_source, n_target))
        plan[rng.permutation(n_source), np.arange(n_target)] = 1.0 / n_target
        return plan
    plan = rng.random((n_source, n_target))
    for _ in range(200):
        plan *= (1.0 / n_source) / plan.sum(1, keepdims=True)
        plan *= (1.0 / n_target) / plan.sum(0, keepdims=True)
    return plan
