r"""The default training path of the personal taste model: early stopping, a learned code prior, calibrated enrollment.

1. **Fit** :class:`~mmpref.vision.taste.system.PersonalTasteSystem` with AdamW (weight decay) and stop on the
   training users' held-out pairs (``val/loss``), keeping the best epoch's weights: the model over-fits a few
   thousand pairs within a handful of epochs, so a fixed epoch count is the wrong default.
2. **The user space's prior** N(μ₀, Σ₀) is the mean and covariance of the trained users' codes
   (:meth:`CodePrior.from_model`).
3. **Empirical Bayes on validation raters** (raters held out of training entirely): the prior's strength — a scale
   s on Σ₀ — and a temperature T on the personal probabilities are chosen to maximise the validation raters'
   held-out log-likelihood after enrolling each from n ∈ ``calibration_counts`` pairs:

   .. math:: P(a \succ b) = \sigma\!\Big(\frac{m}{T\sqrt{1 + \pi v / 8}}\Big),\quad m = s_a - s_b,\;
             v = x^\top \Sigma_{post}\, x,\; x = B^\top(\phi(a) - \phi(b))

   (the probit approximation of the Laplace posterior predictive, so probabilities are moderated by how little a
   user has told us, then tempered).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import lightning as L
import numpy as np
import torch

from mmpref.reward.trainers import quick_trainer
from mmpref.vision.taste.model import CodePrior, PersonalTasteModel, enroll, predict_pairs
from mmpref.vision.taste.system import PersonalTasteSystem, _TasteDataModule

log = logging.getLogger(__name__)


@dataclass
class TasteRecipe:
    """The default settings (chosen on the content-taste population's validation raters, see docs/taste.md)."""

    rank: int = 8
    hidden: int = 64
    dropout: float = 0.1
    lr: float = 3e-3
    weight_decay: float = 1e-2
    code_weight: float = 0.01
    max_epochs: int = 60
    patience: int = 4
    early_stopping: bool = True
    prior_shrinkage: float | str = 0.0
    prior_scales: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
    calibrate: bool = True
    calibration_counts: Sequence[int] = (4, 8, 16)
    extra: dict = field(default_factory=dict)


class _KeepBest(L.Callback):
    """Keeps the weights of the epoch with the lowest ``val/loss`` and restores them when training ends."""

    def __init__(self) -> None:
        self.best, self.state, self.epoch, self.history = float("inf"), None, -1, []

    def on_validation_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking or "val/loss" not in trainer.callback_metrics:
            return
        loss = float(trainer.callback_metrics["val/loss"])
        self.history.append(loss)
        if loss < self.best:
            self.best, self.epoch = loss, trainer.current_epoch
            self.state = copy.deepcopy(module.state_dict())

    def on_fit_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self.state is not None:
            module.load_state_dict(self.state)


def fit_taste_model(
    data: _TasteDataModule, num_users: int, recipe: TasteRecipe | None = None, seed: int = 0
) -> tuple[PersonalTasteModel, dict]:
    """Train on the data module's users; returns the model (best epoch) and a summary of the run."""
    from lightning.pytorch.callbacks import EarlyStopping

    recipe = recipe or TasteRecipe()
    L.seed_everything(seed, verbose=False)
    data.setup()
    model = PersonalTasteModel(
        data.embeddings.shape[1], num_users, rank=recipe.rank, hidden=recipe.hidden, dropout=recipe.dropout
    )
    system = PersonalTasteSystem(
        model,
        code_weight=recipe.code_weight,
        optimizer=lambda p: torch.optim.AdamW(p, lr=recipe.lr, weight_decay=recipe.weight_decay),
    )
    keep = _KeepBest()
    callbacks: list[L.Callback] = []
    has_val = len(data.val_pairs) > 0
    if recipe.early_stopping and has_val:
        callbacks = [keep, EarlyStopping("val/loss", patience=recipe.patience, mode="min")]
    trainer = quick_trainer(recipe.max_epochs, num_sanity_val_steps=0, callbacks=callbacks)
    trainer.fit(system, data)
    summary = {"epochs_run": trainer.current_epoch, "best_epoch": keep.epoch, "val_loss_history": keep.history}
    return model.eval(), summary


@dataclass(frozen=True)
class CalibrationUser:
    """A validation rater: enrollment pairs and separate test pairs, as embeddings and labels."""

    enroll_a: torch.Tensor
    enroll_b: torch.Tensor
    enroll_label: torch.Tensor
    test_a: torch.Tensor
    test_b: torch.Tensor
    test_label: torch.Tensor


def _log_likelihood(prob: np.ndarray, label: np.ndarray) -> float:
    prob = np.clip(prob, 1e-6, 1 - 1e-6)
    return float(np.mean(label * np.log(prob) + (1 - label) * np.log(1 - prob)))


@torch.no_grad()
def calibrate_enrollment(
    model: PersonalTasteModel,
    prior: CodePrior,
    users: Sequence[CalibrationUser],
    scales: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0),
    counts: Sequence[int] = (4, 8, 16),
) -> tuple[CodePrior, dict]:
    """Choose the prior's scale, then a temperature, by the validation raters' held-out log-likelihood.

    Returns:
        The prior with its covariance scaled and ``temperature`` set, and a report of the search.
    """
    base = CodePrior(prior.mean, prior.covariance, 1.0)

    def margins(scaled: CodePrior) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        m, v, y = [], [], []
        for user in users:
            for n in counts:
                n = min(n, len(user.enroll_label))
                profile = enroll(model, scaled, user.enroll_a[:n], user.enroll_b[:n], user.enroll_label[:n])
                mu, var = predict_pairs(model, profile, user.test_a, user.test_b, moments=True)
                m.append(mu), v.append(var), y.append(user.test_label.double().numpy())
        return np.concatenate(m), np.concatenate(v), np.concatenate(y)

    def prob(m: np.ndarray, v: np.ndarray, t: float) -> np.ndarray:
        return 0.5 * (1 + np.tanh(0.5 * m / (t * np.sqrt(1 + np.pi * v / 8))))

    temperatures = np.exp(np.linspace(np.log(0.25), np.log(8.0), 41))
    search = []
    best = (-np.inf, 1.0, 1.0)
    for s in scales:
        m, v, y = margins(CodePrior(base.mean, base.covariance * s))
        decided = y != 0.5
        accuracy = float(((m > 0) == (y > 0.5))[decided].mean())
        lls = [_log_likelihood(prob(m, v, t), y) for t in temperatures]
        t_best = float(temperatures[int(np.argmax(lls))])
        search.append(
            {"scale": float(s), "accuracy": accuracy, "log_likelihood": float(max(lls)), "temperature": t_best}
        )
        # The scale is chosen by accuracy first (what enrollment is for), likelihood breaking near-ties.
        key = accuracy + 1e-3 * max(lls)
        if key > best[0]:
            best = (key, float(s), t_best)
    _, scale, temperature = best
    report = {"prior_scale": scale, "temperature": temperature, "search": search, "users": len(users)}
    log.info(
        "enrollment calibrated on %d validation raters: prior scale %.2f, temperature %.2f",
        len(users),
        scale,
        temperature,
    )
    return CodePrior(base.mean, base.covariance * scale, temperature), report


@torch.no_grad()
def widen_user_space(model: PersonalTasteModel, prior: CodePrior, tau: float) -> tuple[PersonalTasteModel, CodePrior]:
    r"""Add a full-rank residual to the user space: w_u = w₀ + B z_u + δ_u, δ_u ~ N(0, τ² I_h).

    The learned basis B spans the directions in which the *training* users differ; raters unlike them differ
    elsewhere too (on the content-taste population the rank-8 span explains 57 % of the held-out raters' utility
    variance while the trunk's features explain 88 %). Enrollment then is Bayesian logistic regression on the whole
    feature space with the prior covariance B Σ₀ Bᵀ + τ² I — implemented as a model of rank r + h whose basis is
    [B, I_h], codes [z, δ], prior N([μ₀, 0], diag(Σ₀, τ² I)). τ = 0 returns the inputs unchanged.
    """
    if tau <= 0:
        return model, prior
    h, r = model.hidden, model.rank
    wide = PersonalTasteModel(model.embedding_dim, model.user_codes.num_embeddings, rank=r + h, hidden=h)
    state = model.state_dict()
    state["basis"] = torch.cat([model.basis, torch.eye(h)], 1)
    state["user_codes.weight"] = torch.cat([model.user_codes.weight, torch.zeros(len(model.user_codes.weight), h)], 1)
    wide.load_state_dict(state)
    cov = np.zeros((r + h, r + h))
    cov[:r, :r] = prior.covariance
    cov[r:, r:] = tau**2 * np.eye(h)
    return wide.eval(), CodePrior(np.concatenate([prior.mean, np.zeros(h)]), cov, prior.temperature)
