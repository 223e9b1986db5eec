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
4. **A cohort's own temperature** (:func:`cohort_temperature`, optional): raters unlike the validation raters are
   predicted less well than the model expects, so a temperature fitted on the validation raters leaves them
   over-confident. Enrolled raters' own labels tell how well they are predicted: each enrollment pair is predicted
   from the rater's *other* enrollment pairs (leave-one-out), and T maximises the pooled likelihood of those
   predictions over every rater of the cohort,

   .. math:: T_c = \arg\max_T \sum_u \sum_{i \le n_u}
             \log \sigma\!\Big(\pm\frac{m_{u,-i}}{T\sqrt{1 + \pi v_{u,-i}/8}}\Big)
             - \frac{(\log T - \log T_{val})^2}{2 s^2}

   with (m, v)_{u,−i} the margin's posterior moments after enrolling u from their pairs without i, and a log-normal
   prior around the validation raters' T (s = log 2: a factor of 2 at one standard deviation, set beforehand, not
   tuned), so that a small cohort, whose leave-one-out likelihood is flat, keeps about T_val. No pair beyond the
   enrollment pairs is used. Only a cohort gives enough such predictions; a single rater's 8 pairs do not
   (docs/taste.md: a per-rater temperature shrunk towards the population's was tried and did not help).
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


def tempered_probability(margin: np.ndarray, variance: np.ndarray, temperature: float) -> np.ndarray:
    """σ(m / (T √(1 + π v / 8))), the tempered posterior predictive of :func:`predict_pairs`."""
    return 0.5 * (1 + np.tanh(0.5 * margin / (temperature * np.sqrt(1 + np.pi * variance / 8))))


@torch.no_grad()
def leave_one_out_moments(
    model: PersonalTasteModel, prior: CodePrior, emb_a: torch.Tensor, emb_b: torch.Tensor, labels: torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """Margin mean and variance ``[M]`` of each of a rater's pairs, predicted after enrolling from the other M − 1."""
    margins, variances = np.zeros(len(labels)), np.zeros(len(labels))
    for i in range(len(labels)):
        keep = torch.arange(len(labels)) != i
        profile = enroll(model, prior, emb_a[keep], emb_b[keep], labels[keep])
        m, v = predict_pairs(model, profile, emb_a[i : i + 1], emb_b[i : i + 1], moments=True)
        margins[i], variances[i] = m[0], v[0]
    return margins, variances


COHORT_TEMPERATURES = np.exp(np.linspace(np.log(0.25), np.log(16.0), 61))


@torch.no_grad()
def cohort_temperature(
    model: PersonalTasteModel,
    prior: CodePrior,
    raters: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    min_predictions: int = 40,
    spread: float = float(np.log(2.0)),
    min_pairs: int = 8,
) -> tuple[float, dict]:
    """The temperature that fits a cohort of enrolled raters, from their enrollment pairs alone (leave-one-out).

    Args:
        model: the trained model.
        prior: the enrollment prior (its ``temperature`` is returned when there is too little to go on).
        raters: per rater, the embeddings of their enrollment pairs' items ``[n, D]``, ``[n, D]`` and labels ``[n]``.
        min_predictions: the fewest leave-one-out predictions (summed over the raters used) to fit T from.
        min_pairs: raters with fewer enrollment pairs are not used: predicting one pair from 3 others tells little
            about enrolling from 4 (on the validation raters of the content population, seed 0, leave-one-out at
            n = 4 asked for T 1.41 where 0.92 fitted their held-out pairs).
        spread: s, the standard deviation of log T_c around log T_val (the prior's ``temperature``); ``inf``: none.

    Returns:
        T_c and a report (``temperature``, ``predictions``, ``log_likelihood`` per pair at T_c and at the prior's T).
    """
    used = [(a, b, y) for a, b, y in raters if len(y) >= max(min_pairs, 2)]
    moments = [leave_one_out_moments(model, prior, a, b, y) for a, b, y in used]
    labels = [y.double().numpy() for _, _, y in used]
    count = int(sum(len(y) for y in labels))
    report = {"predictions": count, "raters": len(labels), "temperature": prior.temperature}
    if count < min_predictions:
        log.info("cohort temperature: %d leave-one-out predictions < %d; keeping T = %.2f", count, min_predictions,
                 prior.temperature)  # fmt: skip
        return prior.temperature, report
    m, v, y = (np.concatenate(x) for x in (*zip(*moments, strict=True), labels))
    lls = np.array([_log_likelihood(tempered_probability(m, v, t), y) for t in COHORT_TEMPERATURES])
    penalty = 0.5 * ((np.log(COHORT_TEMPERATURES) - np.log(prior.temperature)) / spread) ** 2
    best_index = int(np.argmax(count * lls - penalty))  # the log-likelihood is a mean: times count to sum
    best = float(COHORT_TEMPERATURES[best_index])
    report.update(
        temperature=best,
        log_likelihood=float(lls[best_index]),
        log_likelihood_prior_temperature=_log_likelihood(tempered_probability(m, v, prior.temperature), y),
    )
    log.info("cohort temperature %.2f from %d leave-one-out predictions (was %.2f)", best, count, prior.temperature)
    return best, report


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

    temperatures = np.exp(np.linspace(np.log(0.25), np.log(8.0), 41))
    search = []
    best = (-np.inf, 1.0, 1.0)
    for s in scales:
        m, v, y = margins(CodePrior(base.mean, base.covariance * s))
        decided = y != 0.5
        accuracy = float(((m > 0) == (y > 0.5))[decided].mean())
        lls = [_log_likelihood(tempered_probability(m, v, t), y) for t in temperatures]
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
