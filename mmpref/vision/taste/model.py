r"""PAMELA-style personal taste model with a low-rank pluralistic core, and few-shot enrollment of new users.

Score of item x for user u (x given by its encoder embedding e(x)):

.. math:: s(x, u) = \phi(e(x))^\top (w_0 + B z_u)

with a shared trunk φ (LayerNorm → MLP, ℝ^D → ℝ^h), a population direction w₀ ∈ ℝ^h, a user basis
B ∈ ℝ^{h×r} and a per-user code z_u ∈ ℝ^r. z = 0 is the population model. This is the low-rank user-weight
family (LoRe: a shared basis, per-user weights; PAL's ideal-point mixtures are the special case of codes on a
simplex). It is chosen over a mixture of prototypes because enrollment then is Bayesian logistic regression in r
dimensions: a new user's code has a closed-form Laplace posterior from a handful of pairs, fitted in milliseconds,
with a covariance that shrinks as labels arrive (PAMELA personalises a reward model from one person's ratings; VPL
infers a per-user latent from a few labelled pairs).

Enrollment (:func:`enroll`): prior z ~ N(μ₀, Σ₀) from the training users' codes; each labelled pair (a, b, y)
contributes the likelihood σ(o + z·x)^y (1 − σ(o + z·x))^{1−y} with o = φ_ab·w₀, x = Bᵀφ_ab, φ_ab = φ(a) − φ(b);
Newton's method finds the MAP code and the inverse Hessian is its posterior covariance.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mmpref.data.io import atomic_write

log = logging.getLogger(__name__)


class PersonalTasteModel(nn.Module):
    """s(x, u) = φ(e(x))ᵀ(w₀ + B z_u) with a table of training users' codes.

    Args:
        embedding_dim: size D of the item embeddings.
        num_users: number of training users (rows of the code table); ``None`` (the default in a recipe): counted
            from the data when training starts (:meth:`size_user_table`, called by the training system).
        rank: size r of a user code.
        hidden: size h of the trunk's output.
        dropout: dropout inside the trunk.
    """

    def __init__(
        self, embedding_dim: int, num_users: int | None = None, rank: int = 8, hidden: int = 64, dropout: float = 0.1
    ):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.LayerNorm(embedding_dim),
            nn.Linear(embedding_dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
        )
        self.population = nn.Parameter(torch.zeros(hidden))
        self.basis = nn.Parameter(torch.randn(hidden, rank) / hidden**0.5)
        self.user_codes = nn.Embedding(num_users or 0, rank)
        nn.init.normal_(self.user_codes.weight, std=0.1)
        self.embedding_dim, self.rank, self.hidden = embedding_dim, rank, hidden
        self.num_users_given = num_users is not None

    def size_user_table(self, count: int) -> None:
        """Make the code table hold ``count`` users: built now if ``num_users`` was left out, else checked.

        Raises:
            MmprefError: ``num_users`` was given and is smaller than ``count`` (training would index past the
                table); the message names the field and the count.
        """
        from mmpref.errors import MmprefError

        have = self.user_codes.num_embeddings
        if not self.num_users_given:
            if have != count:
                self.user_codes = nn.Embedding(count, self.rank).to(self.basis.device)
                nn.init.normal_(self.user_codes.weight, std=0.1)
            return
        if have < count:
            raise MmprefError(
                f"PersonalTasteModel field 'num_users' (in a recipe: model.init_args.model.init_args.num_users) is "
                f"{have} but the data has {count} users; leave num_users out (it is counted from the data) or set "
                f"it to {count}"
            )
        if have > count:
            log.warning(
                "num_users is %d but the data has %d users: %d code rows are never trained", have, count, have - count
            )

    def features(self, embeddings: torch.Tensor) -> torch.Tensor:
        """φ(e): ``[..., D]`` → ``[..., h]``."""
        return self.trunk(embeddings)

    def user_weights(self, codes: torch.Tensor | None) -> torch.Tensor:
        """w₀ + B z for codes ``[..., r]`` (``None`` = the population, z = 0)."""
        if codes is None:
            return self.population
        return self.population + codes @ self.basis.T

    def score(self, embeddings: torch.Tensor, codes: torch.Tensor | None = None) -> torch.Tensor:
        """Scores ``[...]`` of items ``[..., D]`` for users with codes broadcastable to ``[..., r]``."""
        return (self.features(embeddings) * self.user_weights(codes)).sum(-1)

    def forward(self, embeddings: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        """Scores of items for training users (indices broadcastable to the items' batch shape), or the population."""
        codes = None if users is None else self.user_codes(users)
        return self.score(embeddings, codes)


@dataclass(frozen=True)
class UserProfile:
    """A user's taste: the posterior mean and covariance of their code, and how many labels it rests on."""

    user_id: str
    code: np.ndarray
    covariance: np.ndarray
    num_labels: int

    @property
    def uncertainty(self) -> float:
        """Total posterior standard deviation of the code, sqrt(trace Σ); it shrinks as labels arrive."""
        return float(np.sqrt(np.trace(self.covariance)))

    def save(self, path: str | Path) -> Path:
        """Write the profile as JSON, atomically."""
        payload = {
            "user_id": self.user_id,
            "code": self.code.tolist(),
            "covariance": self.covariance.tolist(),
            "num_labels": self.num_labels,
            "format": "mmpref-user-profile-1",
        }
        with atomic_write(path, "w") as handle:
            json.dump(payload, handle, indent=1)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> UserProfile:
        """Read a profile written by :meth:`save`."""
        path = Path(path)
        try:
            payload = json.loads(path.read_text())
            return cls(
                str(payload["user_id"]),
                np.asarray(payload["code"], np.float64),
                np.asarray(payload["covariance"], np.float64),
                int(payload["num_labels"]),
            )
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no such user profile; create one with `mmpref enroll`") from None
        except (KeyError, ValueError, TypeError) as err:
            raise ValueError(
                f"{path}: not an mmpref user profile ({err}); re-create it with `mmpref enroll`"
            ) from None


@dataclass(frozen=True)
class CodePrior:
    """Gaussian prior N(mean, covariance) over user codes, estimated from the training users.

    ``temperature`` divides the personal margins when they are turned into probabilities (:func:`predict_pairs`);
    it is fitted on validation raters (:func:`mmpref.vision.taste.train.calibrate_enrollment`), 1 when not.
    """

    mean: np.ndarray
    covariance: np.ndarray
    temperature: float = 1.0

    @classmethod
    def from_model(cls, model: PersonalTasteModel, ridge: float = 1e-3, shrinkage: float | str = 0.0) -> CodePrior:
        r"""Mean and covariance (plus a small ridge) of the trained users' codes, optionally shrunk to isotropic.

        With ``shrinkage`` α the covariance is (1 − α) S + α (tr S / r) I; ``"ledoit-wolf"`` sets α from the codes
        (Ledoit & Wolf 2004: α = min(1, Σ_u ‖z_u z_uᵀ − S‖²_F / (U² ‖S − (tr S / r) I‖²_F))). A handful of
        training users pins down few directions of their code space; shrinking keeps some prior mass on the others,
        where users unlike the training ones differ.
        """
        codes = model.user_codes.weight.detach().double().cpu().numpy()
        return cls.from_codes(codes, ridge, shrinkage)

    @classmethod
    def from_codes(cls, codes: np.ndarray, ridge: float = 1e-3, shrinkage: float | str = 0.0) -> CodePrior:
        """:meth:`from_model` for a code table ``[U, r]``."""
        mean = codes.mean(0)
        centred = codes - mean
        cov = centred.T @ centred / max(len(codes) - 1, 1)
        r = codes.shape[1]
        target = np.trace(cov) / r * np.eye(r)
        if shrinkage == "ledoit-wolf":
            outer = np.einsum("ur,us->urs", centred, centred)
            spread = ((outer - cov) ** 2).sum() / len(codes) ** 2
            distance = ((cov - target) ** 2).sum()
            alpha = float(min(1.0, spread / distance)) if distance > 0 else 1.0
        else:
            alpha = float(shrinkage)
        return cls(mean, (1 - alpha) * cov + alpha * target + ridge * np.eye(r))


@torch.no_grad()
def enroll(
    model: PersonalTasteModel,
    prior: CodePrior,
    emb_a: torch.Tensor,
    emb_b: torch.Tensor,
    labels: torch.Tensor,
    user_id: str = "new-user",
    iterations: int = 25,
) -> UserProfile:
    """Fit a new user's code from labelled pairs, keeping every model weight frozen (Laplace approximation).

    Args:
        model: a trained personal taste model.
        prior: the prior over codes (:meth:`CodePrior.from_model`).
        emb_a: embeddings of the first items ``[M, D]``.
        emb_b: embeddings of the second items ``[M, D]``.
        labels: P(a ≻ b) per pair, ``[M]`` (0.5 = tie).
        user_id: the new user's id.
        iterations: Newton steps (the objective is strictly convex; ~5-10 are usually enough).

    Returns:
        The user's profile: MAP code and posterior covariance (the prior itself for M = 0).
    """
    model.eval()
    prior_precision = np.linalg.inv(prior.covariance)
    if len(labels) == 0:
        return UserProfile(user_id, prior.mean.copy(), prior.covariance.copy(), 0)
    diff = (model.features(emb_a) - model.features(emb_b)).double()  # φ_ab, [M, h]
    offset = (diff @ model.population.double()).numpy()  # o = φ_ab·w₀
    x = (diff @ model.basis.double()).numpy()  # Bᵀφ_ab, [M, r]
    y = labels.double().numpy()

    def objective(code: np.ndarray) -> float:
        f = offset + x @ code
        d = code - prior.mean
        return float(np.sum(np.logaddexp(0.0, f) - y * f) + 0.5 * d @ prior_precision @ d)

    z = prior.mean.copy()
    value = objective(z)
    for _ in range(iterations):
        p = 0.5 * (1.0 + np.tanh(0.5 * (offset + x @ z)))
        gradient = x.T @ (p - y) + prior_precision @ (z - prior.mean)
        hessian = (x * (p * (1 - p))[:, None]).T @ x + prior_precision
        step = np.linalg.solve(hessian, gradient)
        size = 1.0
        while size > 1e-4 and objective(z - size * step) > value + 1e-12:
            size *= 0.5  # damped: a full Newton step can overshoot when a few pairs are nearly separable
        z = z - size * step
        new_value = objective(z)
        if np.abs(size * step).max() < 1e-8 or value - new_value < 1e-12:
            break
        value = new_value
    p = 0.5 * (1.0 + np.tanh(0.5 * (offset + x @ z)))
    hessian = (x * (p * (1 - p))[:, None]).T @ x + prior_precision
    return UserProfile(user_id, z, np.linalg.inv(hessian), int(len(y)))


@torch.no_grad()
def predict_pairs(
    model: PersonalTasteModel,
    profile: UserProfile,
    emb_a: torch.Tensor,
    emb_b: torch.Tensor,
    temperature: float = 1.0,
    moments: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    r"""P(a ≻ b) for a user: the Laplace posterior predictive (probit approximation), tempered.

    .. math:: P = \sigma\big(m / (T\sqrt{1 + \pi v/8})\big),\quad m = \phi_{ab}^\top(w_0 + B\mu),\;
              v = x^\top\Sigma x,\; x = B^\top\phi_{ab}

    Args:
        model: the trained model.
        profile: the user's posterior (code mean and covariance).
        emb_a: embeddings of the first items ``[M, D]``.
        emb_b: embeddings of the second items ``[M, D]``.
        temperature: T (from the model folder's prior).
        moments: return the margin's posterior mean m and variance v ``[M]`` instead of probabilities.
    """
    diff = (model.features(emb_a) - model.features(emb_b)).double()
    code = torch.from_numpy(np.asarray(profile.code, np.float64))
    margin = (diff @ (model.population.double() + model.basis.double() @ code)).numpy()
    x = (diff @ model.basis.double()).numpy()
    variance = np.einsum("mr,rs,ms->m", x, profile.covariance, x)
    if moments:
        return margin, variance
    return 0.5 * (1.0 + np.tanh(0.5 * margin / (temperature * np.sqrt(1.0 + np.pi * variance / 8.0))))


def ratings_to_pairs(ratings: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs (i, j), i < j, of one user's rated items with their label: 1 if i rated higher, 0.5 if equal."""
    i, j = np.triu_indices(len(ratings), k=1)
    label = np.where(ratings[i] > ratings[j], 1.0, np.where(ratings[i] < ratings[j], 0.0, 0.5))
    return i, j, label.astype(np.float32)


MODEL_FORMAT = "mmpref-personal-taste-1"


def save_taste_model(model: PersonalTasteModel, prior: CodePrior, encoder_id: str, folder: str | Path) -> Path:
    """Write a trained model as ``config.json`` + ``model.safetensors`` + ``prior.json`` (each atomically)."""
    from safetensors.torch import save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "format": MODEL_FORMAT,
        "embedding_dim": model.embedding_dim,
        "num_users": model.user_codes.num_embeddings,
        "rank": model.rank,
        "hidden": model.hidden,
        "encoder_id": encoder_id,
    }
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_write(folder / "model.safetensors", "wb") as handle:
        handle.write(save(state))
    with atomic_write(folder / "prior.json", "w") as handle:
        json.dump(
            {"mean": prior.mean.tolist(), "covariance": prior.covariance.tolist(), "temperature": prior.temperature},
            handle,
        )
    with atomic_write(folder / "config.json", "w") as handle:
        json.dump(config, handle, indent=1)
    return folder


_REBUILD = (
    "re-train and save the model (`mmpref demo --job taste`, or save_taste_model()), or copy the whole folder again"
)


def load_taste_model(folder: str | Path) -> tuple[PersonalTasteModel, CodePrior, dict]:
    """Read a model folder written by :func:`save_taste_model`, checking every file before building anything.

    Raises:
        FileNotFoundError: the folder or one of its three files is missing (the message lists them).
        ModelFolderError: a damaged file (not JSON, truncated safetensors, NaN weights, fields that disagree with
            the weights' shapes), naming the file, the field and how to rebuild it.
    """
    from mmpref.errors import ModelFolderError
    from mmpref.modelfiles import (
        check_shapes,
        float_list,
        int_field,
        load_safetensors,
        positive_float,
        read_json_object,
        require_files,
    )

    folder = require_files(
        folder, ("config.json", "model.safetensors", "prior.json"), "a personal taste model", _REBUILD
    )
    config_path, prior_path = folder / "config.json", folder / "prior.json"
    config = read_json_object(config_path, _REBUILD)
    if config.get("format") != MODEL_FORMAT:
        raise ModelFolderError(
            config_path, f"field 'format' is {config.get('format')!r}, expected {MODEL_FORMAT!r}", _REBUILD
        )
    if not isinstance(config.get("encoder_id"), str) or not config["encoder_id"]:
        raise ModelFolderError(
            config_path, f"field 'encoder_id' = {config.get('encoder_id')!r}, expected a name", _REBUILD
        )
    dim, users, rank, hidden = (
        int_field(config, config_path, k, _REBUILD) for k in ("embedding_dim", "num_users", "rank", "hidden")
    )
    state = load_safetensors(folder / "model.safetensors", _REBUILD)
    with torch.device("meta"):  # shapes only: a wrong config cannot allocate a huge model before the check
        expected = {k: tuple(v.shape) for k, v in PersonalTasteModel(dim, users, rank, hidden).state_dict().items()}
    reason = f"the config ({config_path}) and the weights come from different models; {_REBUILD}"
    check_shapes(folder / "model.safetensors", state, expected, reason)
    model = PersonalTasteModel(dim, users, rank=rank, hidden=hidden)
    model.load_state_dict(state)
    prior_data = read_json_object(prior_path, _REBUILD)
    prior = CodePrior(
        float_list(prior_data, prior_path, "mean", (rank,), _REBUILD),
        float_list(prior_data, prior_path, "covariance", (rank, rank), _REBUILD),
        positive_float(prior_data, prior_path, "temperature", 1.0, _REBUILD),
    )
    if not np.allclose(prior.covariance, prior.covariance.T) or np.linalg.eigvalsh(prior.covariance).min() <= 0:
        raise ModelFolderError(prior_path, "field 'covariance' is not symmetric positive definite", _REBUILD)
    return model.eval(), prior, config
