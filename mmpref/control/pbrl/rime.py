r"""RIME: robust reward learning from noisy preferences, as a part of the PbRL loop.

Cheng, Xiong, Dai, Miao, Lv & Wang (2024), "RIME: Robust Preference-based Reinforcement Learning with Noisy
Preferences" (ICML 2024), §4.

**Denoising discriminator** (§4.1). Before each reward update, every labelled pair gets the KL divergence between its
(possibly wrong) label ỹ and the ensemble's mean prediction P_ψ; for a hard label this is the cross-entropy

.. math:: D_{KL}(\tilde y \,\|\, P_\psi) = -\tilde y \ln P_\psi(\sigma^0 \succ \sigma^1)
   - (1 - \tilde y) \ln P_\psi(\sigma^1 \succ \sigma^0).

If the clean samples' KL is at most ρ, the prediction on a clean pair is at least e^{−ρ}, so a pair whose label is
flipped has KL ≥ −ln(1 − e^{−ρ}) = −ln ρ + ρ/2 + O(ρ²) (the paper's Theorem 4.1). The trusted set is

.. math:: \mathcal D_t = \{ D_{KL} < \tau_{\text{lower}} \}, \quad
   \tau_{\text{lower}} = \underbrace{-\ln\rho + \alpha\rho}_{\tau_{\text{base}}}
   + \underbrace{\beta_t \, s_{KL}}_{\tau_{\text{unc}}}, \quad
   \beta_t = \max(\beta_{\min}, \beta_{\max} - k t)

with ρ the largest KL among the trusted pairs of the previous updates (an exponential moving average with weight 0.1
that starts at 0, as in the authors' code), s_KL the spread of the trusted KLs (the uncertainty term, which lets more
pairs in while the reward model is still poor), α the coefficient of the expansion (≈ ½), t the number of reward
updates so far and k = (β_max − β_min) / ``decay_updates``. Pairs with very large KL are taken to be flipped and are
**flipped back** for this update: 𝒟_f = {D_KL > τ_upper}, τ_upper = −ln(0.001) = 3 ln 10 (the prediction gives the
label < 0.1 %). The reward is trained on 𝒟_t ∪ 𝒟_f (flipped labels are not stored: the next update judges every pair
afresh). At the first update there are no statistics yet and every pair is trusted. Defaults: α = 0.5, β_max = 3, β_min
= 1, ``decay_updates`` = 30 (the authors' code; the paper tunes these per domain). The authors' code uses, where the
paper writes s_KL, the running variance of every trusted KL so far with β_t · var capped at 3: the default here
(``uncertainty="var"``); ``"std"`` takes the standard deviation of the last trusted set.

**When the selection runs.** The authors' code judges every labelled pair again at the start of every reward epoch
(one pass over the trusted pairs), and ρ and the KL statistics move at each of these selections: within a round ρ
follows the reward model as it fits the trusted set, so the threshold it sets is that of a fitted model, not of one
that has not yet seen the round's new labels. That is the default here (``select_every="epoch"``): a round's
``reward_updates`` minibatch updates are split into epochs of ⌈|trusted ∪ flipped| / batch⌉ updates, each after a new
selection (with ``reward_updates`` unset, ``reward_epochs`` selections of one pass each). ``select_every="update"``
selects once per feedback round (ρ then moves 15 times in the suite's 30k-step runs instead of 110-131). β_t decays
with the feedback rounds in both (t counts reward updates, as in the authors' code, whose epochs per round are fixed).

**Warm start** (§4.2). During PEBBLE's unsupervised phase the reward model is fitted by regression to the intrinsic
(state-entropy) reward the policy is trained on, r̂_ψ(s, a) ≈ r̃_int(s), so that the switch to the learned reward does
not change the policy's reward abruptly and the first trusted set is chosen by a reward model that is not random.
Intrinsic rewards are mapped to r̂'s range [−1, 1] (min-max over the replay buffer) before the regression, which is a
plain MSE fit with Adam (a pre-training step outside the preference loss).

**Diagnostics.** Every reward update appends a record to :attr:`RIME.log` (kept in the checkpoint) of its last
selection: the step, the labelled pairs, how many were trusted, flipped back and dropped (neither), the τ_lower that
selected them, ρ after the update and the number of selections in the round. With a scripted teacher that records its ε
mistakes (``ScriptedTeacher.mistakes``, one entry per label, aligned with the loop's labelled pairs) the record also
says how many labels were corrupted, how many of those were trusted anyway, how many of the dropped pairs were
corrupted and how many flip-backs restored a corrupted label: the precision and recall of the discriminator, which the
learning curve alone cannot show. The last record, prefixed ``rime_``, goes into the loop's evaluation rows
(:meth:`RIME.diagnostics`). The cost is a few counts over the labelled pairs per update.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from mmpref.data import SegmentPair

if TYPE_CHECKING:
    from mmpref.control.pbrl.loop import PbRLLoop

log = logging.getLogger(__name__)

TAU_UPPER = -math.log(1e-3)  # = 3 ln 10


def preference_kl(prob: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """D_KL(ỹ ‖ P) = −ỹ ln P − (1 − ỹ) ln(1 − P) for P = P(a ≻ b) and labels ỹ ∈ [0, 1] (``[N]`` each).

    >>> preference_kl(np.array([0.9, 0.9]), np.array([1.0, 0.0])).round(4)
    array([0.1054, 2.3026])
    """
    p = np.clip(np.asarray(prob, np.float64), 1e-7, 1 - 1e-7)
    y = np.asarray(labels, np.float64)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def rime_beta(step: int, beta_max: float, beta_min: float, decay_updates: int) -> float:
    """β_t = max(β_min, β_max − (β_max − β_min) · t / decay_updates).

    >>> rime_beta(15, 3.0, 1.0, 30), rime_beta(45, 3.0, 1.0, 30)
    (2.0, 1.0)
    """
    return max(beta_min, beta_max - (beta_max - beta_min) * step / decay_updates)


def rime_lower_threshold(rho: float, alpha: float, beta: float, spread: float) -> float:
    """τ_lower = −ln ρ + α ρ + β_t s_KL.

    >>> round(rime_lower_threshold(0.5, 0.5, 2.0, 0.1), 4)  # ln 2 + 0.25 + 0.2
    1.1431
    """
    return -math.log(max(rho, 1e-8)) + alpha * rho + beta * spread


def select_and_flip(kl: np.ndarray, tau_lower: float, tau_upper: float = TAU_UPPER) -> tuple[np.ndarray, np.ndarray]:
    """RIME's selection: (trusted, flipped) boolean masks; a pair above τ_upper is flipped, never also trusted.

    >>> select_and_flip(np.array([0.1, 1.5, 3.0, 8.0]), tau_lower=2.0)
    (array([ True,  True, False, False]), array([False, False, False,  True]))
    """
    flipped = kl > tau_upper
    return (kl < tau_lower) & ~flipped, flipped


class RIME:
    """The RIME part: the denoising discriminator before every reward update and the warm start.

    Args:
        alpha: α of τ_base.
        beta_max: β at the first update.
        beta_min: the floor of β_t.
        decay_updates: reward updates over which β_t falls from β_max to β_min.
        tau_upper: the flip threshold (default 3 ln 10).
        ema: weight of the newest maximum in ρ's moving average.
        uncertainty: ``"var"`` (the authors' code: β_t times the running variance of every trusted KL so far,
            capped at 3) or ``"std"`` (the paper's s_KL read as the standard deviation of the last trusted set; on
            Meta-World it fed back on itself: a low threshold leaves a narrow trusted set, whose small spread keeps
            the threshold low).
        warm_start_updates: Adam steps of the warm-start regression (0 disables the warm start).
        warm_start_batch: transitions per warm-start step.
        select_every: ``"epoch"`` (the authors' code: a new selection before every pass over the trusted pairs) or
            ``"update"`` (one selection per reward update).
    """

    name = "rime"

    def __init__(
        self,
        alpha: float = 0.5,
        beta_max: float = 3.0,
        beta_min: float = 1.0,
        decay_updates: int = 30,
        tau_upper: float = TAU_UPPER,
        ema: float = 0.1,
        uncertainty: Literal["std", "var"] = "var",
        warm_start_updates: int = 500,
        warm_start_batch: int = 256,
        select_every: Literal["epoch", "update"] = "epoch",
    ):
        if beta_min > beta_max or beta_min < 0 or decay_updates < 1:
            raise ValueError(
                f"rime needs 0 <= rime_beta_min <= rime_beta_max and rime_decay_updates >= 1, got {beta_min}, "
                f"{beta_max}, {decay_updates}"
            )
        if uncertainty not in ("std", "var"):
            raise ValueError(f"rime uncertainty must be 'std' or 'var', got {uncertainty!r}")
        if select_every not in ("epoch", "update"):
            raise ValueError(f"rime_select_every must be 'epoch' or 'update', got {select_every!r}")
        self.select_every = select_every
        self.alpha, self.beta_max, self.beta_min, self.decay_updates = alpha, beta_max, beta_min, decay_updates
        self.tau_upper, self.ema, self.uncertainty = tau_upper, ema, uncertainty
        self.warm_start_updates, self.warm_start_batch = warm_start_updates, warm_start_batch
        self.rho: float | None = None  # EMA of the largest trusted KL
        self.spread = 0.0  # s_KL of the last trusted set
        # running count, mean and variance of every trusted KL so far (the authors' uncertainty statistic)
        self.kl_count, self.kl_mean, self.kl_var = 0, 0.0, 0.0
        self.updates = 0  # reward updates (feedback rounds) so far: the t of β_t
        self.selections = 0  # selections so far (one per epoch by default)
        self.warm_started = False
        self.last: dict[str, float] = {}  # the newest record of ``log``
        self.log: list[dict[str, float]] = []  # one record per reward update (see the module's Diagnostics)

    def threshold(self) -> float:
        """τ_lower for the next update (∞ before any statistics exist)."""
        if self.rho is None:
            return math.inf
        beta = rime_beta(self.updates, self.beta_max, self.beta_min, self.decay_updates)
        spread = self.spread if self.uncertainty == "std" else min(self.kl_var, 3.0 / max(beta, 1e-12))
        return rime_lower_threshold(self.rho, self.alpha, beta, spread)

    def discriminate(self, prob: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Judge every labelled pair and update ρ and the KL statistics; returns (trusted, flipped, kl).

        t (the reward updates behind β_t) moves in :meth:`update_reward`, once per round, not here.
        """
        kl = preference_kl(prob, labels)
        trusted, flipped = select_and_flip(kl, self.threshold(), self.tau_upper)
        if trusted.any():
            values = kl[trusted]
            previous = 0.0 if self.rho is None else self.rho  # the moving average starts at 0 (the authors' code)
            self.rho = previous + self.ema * (float(values.max()) - previous)
            self.spread = float(values.std())
            self._merge_variance(values)
        self.selections += 1
        return trusted, flipped, kl

    def _merge_variance(self, values: np.ndarray) -> None:
        """Fold a trusted set's KLs into the running count, mean and variance (Chan et al.'s pairwise merge)."""
        n, total = len(values), self.kl_count + len(values)
        delta = float(values.mean()) - self.kl_mean
        merged = self.kl_var * self.kl_count + float(values.var()) * n + delta**2 * self.kl_count * n / total
        self.kl_var, self.kl_mean, self.kl_count = merged / total, self.kl_mean + delta * n / total, total

    def warm_start(self, loop: PbRLLoop) -> None:
        """Regress every member's r̂(s, a) on the buffer's intrinsic rewards mapped to [−1, 1] (MSE, Adam)."""
        self.warm_started = True
        buffer = loop.model.replay_buffer
        size = buffer.buffer_size if buffer.full else buffer.pos
        if self.warm_start_updates <= 0 or loop.config.unsupervised_steps <= 0 or size < 2:
            return
        ensemble = loop.ensemble
        obs = buffer.observations[:size].reshape(size, -1)
        parts = [obs, buffer.actions[:size].reshape(size, -1)] if ensemble.use_actions else [obs]
        x = torch.from_numpy(np.concatenate(parts, -1, dtype=np.float32))
        intrinsic = buffer.rewards[:size].reshape(-1).astype(np.float32)
        low, high = float(intrinsic.min()), float(intrinsic.max())
        target = torch.from_numpy(2 * (intrinsic - low) / max(high - low, 1e-8) - 1)
        network = ensemble.scorer.step_reward
        optimiser = torch.optim.Adam(network.parameters(), lr=3e-4)
        generator = torch.Generator().manual_seed(int(ensemble.rng.integers(2**62)))
        for _ in range(self.warm_start_updates):
            rows = torch.randint(size, (self.warm_start_batch,), generator=generator)
            loss = ((network(x[rows]) - target[rows]) ** 2).mean()  # [M, B] vs [B]: every member regressed
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        log.info("RIME warm start: %d updates, final MSE %.4f", self.warm_start_updates, loss.item())

    def update_reward(self, loop: PbRLLoop, new: list[SegmentPair]) -> None:
        """Warm start (once); then per epoch (or once) judge every labelled pair, fit on the trusted and flipped."""
        if not self.warm_started:
            self.warm_start(loop)
        c, pairs, ensemble = loop.config, loop.labelled, loop.ensemble
        labels = np.array([p.label for p in pairs])
        mistakes = getattr(getattr(loop, "teacher", None), "mistakes", None)
        selections = 0

        def select() -> tuple[list[SegmentPair], np.ndarray]:
            nonlocal selections
            tau_lower = self.threshold()  # the threshold this selection uses (discriminate moves ρ for the next)
            trusted, flipped, _ = self.discriminate(ensemble.pair_probabilities(pairs).mean(0), labels)
            selections += 1
            self.last = {"step": float(getattr(loop, "steps", math.nan))}
            self.last |= selection_record(trusted, flipped, tau_lower, self.rho, mistakes)
            self.last["selections"] = float(selections)
            used = [
                SegmentPair(id=p.id, a=p.a, b=p.b, label=1.0 - p.label, teacher=p.teacher) if f else p
                for p, f in zip(pairs, flipped, strict=True)
            ]
            return used, np.flatnonzero(trusted | flipped)

        batch = c.reward_batch_size
        if self.select_every == "update":
            used, rows = select()
            if len(rows):  # nothing trusted: keep the reward as it is rather than learn from nothing
                ensemble.fit(used, epochs=c.reward_epochs, batch_size=batch, updates=c.reward_updates, rows=rows)
        else:
            for_each_epoch(select, ensemble.fit, batch, c.reward_updates, c.reward_epochs)
        self.updates += 1
        self.log.append(self.last)

    def diagnostics(self) -> dict[str, float]:
        """The last update's record with keys prefixed ``rime_`` (empty before the first update), for history rows."""
        return {f"rime_{key}": value for key, value in self.last.items()}

    def state_dict(self) -> dict[str, Any]:
        """ρ, s_KL, the update count, whether the warm start ran and the per-update records."""
        return {
            "rho": self.rho,
            "spread": self.spread,
            "kl_stats": (self.kl_count, self.kl_mean, self.kl_var),
            "updates": self.updates,
            "selections": self.selections,
            "warm_started": self.warm_started,
            "log": [dict(record) for record in self.log],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the discriminator's statistics."""
        self.rho, self.spread = state["rho"], state["spread"]
        self.kl_count, self.kl_mean, self.kl_var = state.get("kl_stats", (0, 0.0, 0.0))
        self.updates, self.warm_started = state["updates"], state["warm_started"]
        self.selections = state.get("selections", self.updates)  # older checkpoints selected once per update
        self.log = [dict(record) for record in state.get("log", [])]  # checkpoints before the records had none
        self.last = self.log[-1] if self.log else {}


def for_each_epoch(
    select: Callable[[], tuple[list[SegmentPair], np.ndarray]],
    fit: Callable[..., None],
    batch_size: int,
    updates: int | None,
    epochs: int,
) -> int:
    """Split a reward update into epochs, each after a new ``select()`` → (pairs, rows to train on); returns the count.

    With ``updates`` minibatch updates in all, an epoch is ⌈len(rows) / batch_size⌉ of them (the last one cut to
    what is left); without, ``epochs`` passes of one epoch each. A selection that keeps no row ends the update: with
    nothing to train on, the next selection would be the same (the reward is kept as it is).

    >>> sizes = []
    >>> for_each_epoch(lambda: ([], np.arange(5)), lambda p, **k: sizes.append(k["updates"]), 2, 7, 1), sizes
    (3, [3, 3, 1])
    """
    count, left = 0, updates if updates is not None else epochs
    while left > 0:
        pairs, rows = select()
        count += 1
        if len(rows) == 0:
            break
        if updates is None:
            fit(pairs, epochs=1, batch_size=batch_size, rows=rows)
            left -= 1
        else:
            size = min(left, -(-len(rows) // batch_size))
            fit(pairs, batch_size=batch_size, updates=size, rows=rows)
            left -= size
    return count


def selection_record(
    trusted: np.ndarray,
    flipped: np.ndarray,
    tau_lower: float,
    rho: float | None,
    mistakes: list[bool] | None = None,
) -> dict[str, float]:
    """Counts of one RIME selection, and, given the teacher's ``mistakes`` (aligned with the pairs), its accuracy.

    ``labelled``, ``trusted``, ``flipped`` (flipped back) and ``dropped`` (neither: left out of this update) are pair
    counts; ``tau_lower`` is the threshold used (∞ at the first update: all trusted) and ``rho`` ρ after the update
    (NaN until a pair was trusted). With ``mistakes`` of the same length: ``corrupted`` (labels the teacher flipped),
    ``trusted_corrupted`` (of them, trusted with the wrong label), ``dropped_corrupted`` (of the dropped pairs, how
    many were corrupted) and ``flipped_correct`` (flip-backs that restored a corrupted label; the others corrupted a
    correct one). Mistakes of another length (a teacher that labels otherwise, e.g. people) are ignored.

    >>> r = selection_record(np.array([1, 1, 0, 0], bool), np.array([0, 0, 0, 1], bool), 2.0, 0.5,
    ...                      [False, True, True, True])
    >>> [r[k] for k in ("trusted", "flipped", "dropped", "corrupted", "trusted_corrupted", "dropped_corrupted",
    ...                 "flipped_correct")]
    [2.0, 1.0, 1.0, 3.0, 1.0, 1.0, 1.0]
    """
    trusted, flipped = np.asarray(trusted, bool), np.asarray(flipped, bool)
    dropped = ~trusted & ~flipped
    record = {
        "labelled": float(len(trusted)),
        "trusted": float(trusted.sum()),
        "flipped": float(flipped.sum()),
        "dropped": float(dropped.sum()),
        "tau_lower": float(tau_lower),
        "rho": math.nan if rho is None else float(rho),
    }
    if mistakes is not None and len(mistakes) == len(trusted):
        wrong = np.asarray(mistakes, bool)
        record |= {
            "corrupted": float(wrong.sum()),
            "trusted_corrupted": float((wrong & trusted).sum()),
            "dropped_corrupted": float((wrong & dropped).sum()),
            "flipped_correct": float((wrong & flipped).sum()),
        }
    return record
