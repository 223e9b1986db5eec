"""Plain baselines for personal taste on frozen features (no mmpref model): the yardsticks of scripts/bench_taste.py.

(a) **Per-user ridge correction**: a population logistic model w₀ on all training raters' pairs, then per user
    w = w₀ + δ with δ ~ N(0, λ⁻¹ I) fitted on their pairs (ridge logistic regression on the residual; solved in its
    representer form δ = Xᵀa, so 1,280-d features cost an n × n system).
(b) **Low-rank user space**: each training rater's own ridge-logistic weights, their mean w̄ and top-k (k = 8)
    right singular vectors V; a new user w = w̄ + V z with z ~ N(0, c · diag(s²/(U − 1))) fitted by MAP.

Features are standardised per dimension and scaled by 1/√D.
"""

from __future__ import annotations

import numpy as np

from mmpref.vision.demo_data import UserPairs
from mmpref.vision.taste.population import logistic_map


def sigmoid(x: np.ndarray) -> np.ndarray:
    """σ(x), overflow-free."""
    return 0.5 * (1 + np.tanh(0.5 * x))


def kernel_logistic(k: np.ndarray, y: np.ndarray, offset: np.ndarray, lam: float) -> np.ndarray:
    """Ridge logistic regression in its representer form: δ = Xᵀa; minimises loss(o + K a) + λ/2 aᵀK a."""
    n = len(y)
    a = np.zeros(n)
    jitter = 1e-8 * np.eye(n)

    def objective(a: np.ndarray) -> float:
        f = offset + k @ a
        return float(np.sum(np.logaddexp(0, f) - y * f) + 0.5 * lam * a @ k @ a)

    value = objective(a)
    for _ in range(40):
        p = sigmoid(offset + k @ a)
        grad = k @ (p - y) + lam * (k @ a)
        hess = k @ (k * (p * (1 - p))[:, None]) + lam * k + jitter
        step = np.linalg.lstsq(hess, grad, rcond=None)[0]
        size = 1.0
        while size > 1e-4 and objective(a - size * step) > value + 1e-12:
            size *= 0.5
        a = a - size * step
        new = objective(a)
        if abs(value - new) < 1e-10:
            break
        value = new
    return a


class Baselines:
    """Frozen standardised EfficientNet-Lite0 features; population ridge-logistic model; two personal baselines."""

    def __init__(self, emb: np.ndarray, train: list[UserPairs], rank: int = 8):
        self.x = (emb - emb.mean(0)) / (emb.std(0) + 1e-6) / np.sqrt(emb.shape[1])
        self.rank = rank
        self.train = train

    def diff(self, pairs: UserPairs, n: int | None = None) -> np.ndarray:
        """Feature differences x(a) − x(b) of the first n pairs."""
        return self.x[pairs.a[:n]] - self.x[pairs.b[:n]]

    def fit_population(self, lam: float) -> None:
        """The population logistic model w₀ on every training rater's pairs (ridge λ)."""
        x = np.concatenate([self.diff(p) for p in self.train])
        y = np.concatenate([p.label for p in self.train]).astype(np.float64)
        d = x.shape[1]
        self.w0 = logistic_map(x, y, np.zeros(len(y)), lam * np.eye(d), np.zeros(d))

    def fit_user_space(self, lam_user: float) -> None:
        """Per-rater ridge-logistic weights (offset w₀), their mean and top-k SVD directions."""
        weights = []
        for p in self.train:
            x = self.diff(p)
            a = kernel_logistic(x @ x.T, p.label.astype(np.float64), x @ self.w0, lam_user)
            weights.append(self.w0 + x.T @ a)
        w = np.stack(weights)
        self.w_mean = w.mean(0)
        _, s, vt = np.linalg.svd(w - self.w_mean, full_matrices=False)
        self.basis = vt[: self.rank].T  # [D, k]
        self.space_var = s[: self.rank] ** 2 / (len(w) - 1)

    def ridge_predict(self, enroll_pairs: UserPairs, n: int, test: UserPairs, lam: float) -> np.ndarray:
        """Baseline (a): P(a ≻ b) on ``test`` after a ridge correction fitted on n pairs."""
        xt = self.diff(test)
        if n == 0:
            return sigmoid(xt @ self.w0)
        x = self.diff(enroll_pairs, n)
        a = kernel_logistic(x @ x.T, enroll_pairs.label[:n].astype(np.float64), x @ self.w0, lam)
        return sigmoid(xt @ (self.w0 + x.T @ a))

    def lowrank_predict(self, enroll_pairs: UserPairs, n: int, test: UserPairs, scale: float) -> np.ndarray:
        """Baseline (b): P(a ≻ b) on ``test`` after a MAP fit of z on n pairs (prior scale c)."""
        xt = self.diff(test)
        prior_precision = np.diag(1.0 / (scale * self.space_var))
        z = np.zeros(self.rank)
        if n:
            x = self.diff(enroll_pairs, n)
            z = logistic_map(
                x @ self.basis, enroll_pairs.label[:n].astype(np.float64), x @ self.w_mean, prior_precision, z
            )
        return sigmoid(xt @ (self.w_mean + self.basis @ z))
