r"""Active enrollment: which pairs of a new user's images to ask about, by expected information about their code.

Under the Laplace posterior N(μ, Σ) of a user's code, a candidate pair (a, b) has margin m = o + xᵀμ with
x = Bᵀ(φ(a) − φ(b)), o = w₀ᵀ(φ(a) − φ(b)), margin variance v = xᵀΣx and predictive p = σ(m / √(1 + πv/8)).
Labelling it adds p(1 − p)·xxᵀ to the posterior precision, which shrinks the posterior volume by

.. math:: \mathrm{gain}(a, b) = \tfrac12 \log\big(1 + p(1-p)\, x^\top \Sigma x\big)

nats — the information the answer carries about the code under the Gaussian approximation (D-optimal design).
Pairs whose outcome the model already knows (p near 0 or 1) or that do not move the code (v ≈ 0) gain nothing.
Pairs are chosen greedily: with the user's answers (``answer``) the posterior is refitted after each one; without,
only the covariance is updated (rank one, with p at the current mean), which is the batch form.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mmpref.vision.taste.model import CodePrior, PersonalTasteModel, enroll


@dataclass(frozen=True)
class ChosenPairs:
    """Pairs to ask, as item indices into the pool's embeddings, with the answers when they were given."""

    a: np.ndarray
    b: np.ndarray
    gain: np.ndarray
    label: np.ndarray | None


@torch.no_grad()
def choose_pairs(
    model: PersonalTasteModel,
    prior: CodePrior,
    embeddings: torch.Tensor,
    items: Sequence[int] | np.ndarray,
    n: int,
    answer: Callable[[int, int], float] | None = None,
    known: tuple[Sequence[int], Sequence[int], Sequence[float]] | None = None,
) -> ChosenPairs:
    """Choose ``n`` pairs among ``items`` (indices into ``embeddings``) by expected information about the code.

    Args:
        model: the trained taste model.
        prior: the code prior (the model folder's).
        embeddings: item embeddings ``[N, D]``.
        items: the user's pool (indices); every unordered pair among them is a candidate.
        n: how many pairs to ask.
        answer: ``answer(a, b)`` → P(a ≻ b) given by the user (1, 0 or 0.5); called after each choice, so the
            next choice uses the updated posterior. ``None``: choose all n up front (batch form).
        known: pairs the user already labelled (a, b, label), folded into the posterior first.

    Returns:
        The chosen pairs in asking order, their gains (nats) and the answers (``None`` in batch form).
    """
    items = np.asarray(items, dtype=np.int64)
    if len(items) < 2:
        raise ValueError(f"active enrollment needs a pool of at least 2 images, got {len(items)}")
    i, j = np.triu_indices(len(items), k=1)
    cand_a, cand_b = items[i], items[j]
    phi = model.features(embeddings[torch.from_numpy(items)]).double()
    diff = phi[torch.from_numpy(i)] - phi[torch.from_numpy(j)]
    offset = (diff @ model.population.double()).numpy()
    x = (diff @ model.basis.double()).numpy()  # [P, r]
    asked_a, asked_b, labels = list(known[0]) if known else [], list(known[1]) if known else [], []
    known_labels = list(known[2]) if known else []

    def posterior() -> tuple[np.ndarray, np.ndarray]:
        if not asked_a:
            return prior.mean, prior.covariance
        profile = enroll(
            model,
            prior,
            embeddings[torch.tensor(asked_a)],
            embeddings[torch.tensor(asked_b)],
            torch.tensor(known_labels + labels, dtype=torch.float32),
        )
        return profile.code, profile.covariance

    mean, cov = posterior()
    available = np.ones(len(cand_a), dtype=bool)
    chosen, gains = [], []
    for _ in range(min(n, len(cand_a))):
        margin = offset + x @ mean
        variance = np.einsum("pr,rs,ps->p", x, cov, x)
        p = 0.5 * (1 + np.tanh(0.5 * margin / np.sqrt(1 + np.pi * variance / 8)))
        gain = 0.5 * np.log1p(p * (1 - p) * variance)
        gain[~available] = -np.inf
        best = int(np.argmax(gain))
        available[best] = False
        chosen.append(best)
        gains.append(float(gain[best]))
        a, b = int(cand_a[best]), int(cand_b[best])
        asked_a.append(a), asked_b.append(b)
        if answer is not None:
            labels.append(float(answer(a, b)))
            mean, cov = posterior()
        else:  # Σ ← Σ − w Σx xᵀΣ / (1 + w xᵀΣx), w = p(1 − p): the precision gains w xxᵀ
            sx = cov @ x[best]
            w = p[best] * (1 - p[best])
            cov = cov - w * np.outer(sx, sx) / (1 + w * x[best] @ sx)
    index = np.asarray(chosen, dtype=np.int64)
    return ChosenPairs(
        cand_a[index], cand_b[index], np.asarray(gains), np.asarray(labels, np.float32) if answer else None
    )
