r"""Listwise queries for the PbRL loop: a teacher ranks K segments at once; the reward learns from the rankings.

A ranking of K segments implies K(K−1)/2 ordered pairs but is charged as **K − 1 labels** (the comparisons needed to
place each segment next to its neighbour in the final order; a sorted list of K is fixed by K − 1 adjacent
comparisons), so a budget of L labels buys ⌊L / (K − 1)⌋ lists and runs with lists and with pairs (K = 2) can be
compared at the same label cost.

**Scripted list teacher.** The B-Pref teacher (:class:`~mmpref.control.teachers.ScriptedTeacher`) generalised to lists:
with weighted returns R_i = Σ_t γ^(H−1−t) r_t, a perfectly rational teacher (β = ∞) sorts by R (ties keep list
order); a finite β samples the ranking from the Plackett-Luce model

.. math:: P(\pi) = \prod_{i=1}^{K} \frac{\exp(\beta R_{\pi(i)})}{\sum_{j \ge i} \exp(\beta R_{\pi(j)})}

(which for K = 2 is B-Pref's Bradley-Terry label), drawn exactly with the Gumbel-max trick: π = argsort(−(βR + g)),
g ~ Gumbel(0, 1). Mistakes: one pass down the ranking swaps each adjacent pair (i, i+1) with probability ε, so each of
the K − 1 charged comparisons is wrong with probability about ε (for K = 2 exactly B-Pref's flip). Skip: if every
segment's return is below ``skip_threshold`` the list costs its K − 1 labels and gives none. The equal threshold of
pairs has no list analogue here (ties are broken by list order).

**Reward update.** The segment scores s_i = Σ_t r̂(o_t, a_t) of each member enter a listwise loss of the core by name
(``plackett_luce``: −Σ_i [s_π(i) − log Σ_{j≥i} exp s_π(j)]; ``ranklist``; ``listnet``) with targets K − rank,
through the reward LightningModule (:class:`ListwiseEnsembleSystem`), each member weighted by its own Poisson(1)
bootstrap count per list as in PEBBLE's pairwise ensemble.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler

from mmpref.control.segments import cut_segments
from mmpref.control.teachers import ScriptedTeacher
from mmpref.data import Segment
from mmpref.losses import ListwiseLossName, is_listwise
from mmpref.reward.datamodule import DictDataset
from mmpref.reward.system import RewardModelSystem
from mmpref.reward.trainers import quick_trainer

if TYPE_CHECKING:
    from mmpref.control.pbrl.loop import PbRLLoop


def list_label_cost(k: int) -> int:
    """Labels charged for ranking k segments: k − 1 (a pair costs 1)."""
    if k < 2:
        raise ValueError(f"a ranked list needs >= 2 segments, got {k}")
    return k - 1


def lists_within(room: int | float, k: int) -> int:
    """How many k-lists a remaining budget of ``room`` labels pays for: ⌊room / (k − 1)⌋."""
    return 0 if room <= 0 else int(min(room, 10**9) // list_label_cost(k))


@dataclass(frozen=True)
class RankedSegments:
    """K segments and the teacher's ranking of them: ``order[0]`` is the index of the best segment."""

    id: str
    segments: tuple[Segment, ...]
    order: tuple[int, ...]

    def __post_init__(self) -> None:
        if sorted(self.order) != list(range(len(self.segments))):
            raise ValueError(f"{self.id}: order {self.order} is not a permutation of 0..{len(self.segments) - 1}")

    @property
    def targets(self) -> np.ndarray:
        """Per segment (in list order) K − rank: the best gets K − 1 ... the worst 0."""
        k = len(self.segments)
        targets = np.empty(k, np.float32)
        targets[list(self.order)] = np.arange(k - 1, -1, -1, dtype=np.float32)
        return targets


class ListTeacher:
    """Ranks K segments with a B-Pref teacher's parameters and budget (see the module docstring).

    Args:
        teacher: the pairwise scripted teacher whose β, γ, ε, skip threshold, generator and budget are used.
    """

    def __init__(self, teacher: ScriptedTeacher):
        self.teacher = teacher

    def rank(self, segments: tuple[Segment, ...]) -> tuple[int, ...] | None:
        """The ranking (indices best first), or ``None`` when skipped; charges K − 1 labels."""
        t, k = self.teacher, len(segments)
        cost = list_label_cost(k)
        if any(s.rewards is None for s in segments):
            raise ValueError("a scripted list teacher needs segments with their true rewards")
        if t.budget.remaining < cost:
            raise RuntimeError(
                f"label budget of {t.budget.limit} has {t.budget.remaining} left, a {k}-list costs {cost}"
            )
        t.budget.asked += cost
        if max(float(np.sum(s.rewards)) for s in segments) < t.skip_threshold:
            t.budget.skipped += cost
            return None
        weighted = np.array([t.weighted_return(s.rewards) for s in segments])
        if math.isinf(t.beta):
            order = list(np.argsort(-weighted, kind="stable"))
        else:  # Gumbel-max: an exact Plackett-Luce sample with utilities β·R
            order = list(np.argsort(-(t.beta * weighted + t.rng.gumbel(size=k)), kind="stable"))
        for i in range(k - 1):  # mistakes: each adjacent comparison flipped with probability ε
            if t.rng.random() < t.eps:
                order[i], order[i + 1] = order[i + 1], order[i]
        t.budget.labelled += cost
        return tuple(int(i) for i in order)


def sample_lists(segments: list[Segment], n: int, k: int, rng: np.random.Generator) -> list[tuple[Segment, ...]]:
    """N lists of k distinct segments drawn uniformly."""
    if len(segments) < k:
        return []
    return [tuple(segments[i] for i in rng.choice(len(segments), k, replace=False)) for _ in range(n)]


class ListwiseEnsembleSystem(RewardModelSystem):
    """The reward LightningModule for ranked lists scored by an ensemble: one listwise loss per member.

    Batches: ``x [B, K, H, D]``, ``targets [B, K]``, ``weight [B, M]`` (bootstrap counts).
    """

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Σ over members of each member's weighted mean listwise loss (averaged over members)."""
        scores = self.scorer(batch["x"])  # [M, B, K]
        members, size, k = scores.shape
        targets = batch["targets"].to(scores.dtype).expand(members, size, k)
        per_list = self.loss_fn(scores.reshape(-1, k), targets.reshape(-1, k), beta=self.beta, **self.loss_kwargs)
        per_list = per_list.reshape(members, size)
        weight = batch["weight"].T.to(per_list.dtype)
        loss = ((per_list * weight).sum(-1) / weight.sum(-1).clamp_min(1e-12)).mean()
        self.log("train/loss", loss, batch_size=size)
        return loss


class Listwise:
    """The listwise part: each round asks for rankings of K segments and trains the reward on them.

    Args:
        k: segments per list (2 = pairs through the list path).
        loss: a listwise loss of the core by name.
        query_method: ``uniform``, or ``disagreement``: among 10× candidate lists, those whose members disagree most
            on the pairwise preferences inside the list (mean over pairs of the std of σ(s_i − s_j)).
    """

    name = "listwise"

    def __init__(self, k: int = 4, loss: ListwiseLossName = "plackett_luce", query_method: str = "disagreement"):
        list_label_cost(k)
        if not is_listwise(loss):
            raise ValueError(f"listwise_loss must be a listwise loss of the core, got {loss!r}")
        if query_method not in ("uniform", "disagreement"):
            raise ValueError(f"listwise query method must be uniform or disagreement, got {query_method!r}")
        self.k, self.loss, self.query_method = k, loss, query_method
        self.lists: list[RankedSegments] = []
        self.bootstrap = np.zeros((0, 0), np.float32)
        self.asked = 0

    def _scores(self, loop: PbRLLoop, lists: list[tuple[Segment, ...]]) -> np.ndarray:
        """Member segment returns ``[M, n, K]``."""
        x = np.stack([self._features(loop, segs) for segs in lists])
        with torch.inference_mode():
            return loop.ensemble.scorer(torch.from_numpy(x)).numpy()

    @staticmethod
    def _features(loop: PbRLLoop, segments: tuple[Segment, ...]) -> np.ndarray:
        parts = [(s.observations, s.actions) for s in segments]
        use = loop.ensemble.use_actions
        return np.stack([np.concatenate(p if use else p[:1], -1) for p in parts]).astype(np.float32)

    def choose(self, loop: PbRLLoop, candidates: list[tuple[Segment, ...]], n: int) -> list[tuple[Segment, ...]]:
        """Uniform, or the n candidate lists with the largest mean pairwise disagreement."""
        if self.query_method == "uniform" or not loop.reward_learned:
            return candidates[:n]
        scores = self._scores(loop, candidates)  # [M, n, K]
        prob = 1.0 / (1.0 + np.exp(-(scores[:, :, :, None] - scores[:, :, None, :])))  # [M, n, K, K]
        spread = prob.std(0).mean((-1, -2))
        return [candidates[i] for i in np.argsort(-spread, kind="stable")[:n]]

    def feedback_round(self, loop: PbRLLoop) -> int:
        """Ask ⌊room / (K − 1)⌋ lists, train the reward on all rankings so far, relabel; returns labels obtained."""
        c = loop.config
        room = min(c.queries_per_round, loop.teacher.budget.remaining)
        n = lists_within(room, self.k)
        episodes = loop.query_episodes()
        if n == 0 or not episodes:
            return 0
        segments = cut_segments(episodes, c.segment_length, stride=c.segment_length // 2)
        candidates = sample_lists(segments, n * 10, self.k, loop.rng)
        if not candidates:
            return 0
        teacher = ListTeacher(loop.teacher)
        before = loop.teacher.budget.labelled
        for segs in self.choose(loop, candidates, n):
            order = teacher.rank(segs)
            if order is not None:
                self.lists.append(RankedSegments(f"list{self.asked}", segs, order))
            self.asked += 1
        if self.lists:
            self.fit(loop)
            loop.reward_learned = True
            loop.source.mode = "learned"
            loop.relabel()
        return loop.teacher.budget.labelled - before

    def fit(self, loop: PbRLLoop) -> None:
        """Train every member on the rankings with the chosen listwise loss (warm-started, bootstrap-weighted)."""
        c, ensemble = loop.config, loop.ensemble
        new = len(self.lists) - len(self.bootstrap)
        if new > 0:
            draws = ensemble.rng.poisson(1.0, (new, ensemble.members)).astype(np.float32)
            self.bootstrap = draws if len(self.bootstrap) == 0 else np.concatenate([self.bootstrap, draws])
        dataset = DictDataset(
            x=torch.from_numpy(np.stack([self._features(loop, r.segments) for r in self.lists])),
            targets=torch.from_numpy(np.stack([r.targets for r in self.lists])),
            weight=torch.from_numpy(self.bootstrap[: len(self.lists)]),
        )
        generator = torch.Generator().manual_seed(int(ensemble.rng.integers(2**62)))
        # the same number of segment comparisons per update as the pair path: a K-list holds K − 1 of them
        batch = max(1, c.reward_batch_size // list_label_cost(self.k))
        if c.reward_updates is None:
            sampler, epochs = RandomSampler(dataset, generator=generator), c.reward_epochs
        else:
            sampler = RandomSampler(
                dataset, replacement=True, num_samples=c.reward_updates * batch, generator=generator
            )
            epochs = 1
        system = ListwiseEnsembleSystem(
            ensemble.scorer, loss=self.loss, optimizer=lambda p: torch.optim.Adam(p, lr=3e-4)
        )
        quick_trainer(epochs, c.trainer).fit(system, DataLoader(dataset, batch_size=batch, sampler=sampler))

    def state_dict(self) -> dict[str, Any]:
        """The rankings, their bootstrap counts and the list counter."""
        return {"lists": self.lists, "bootstrap": self.bootstrap, "asked": self.asked}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the rankings."""
        self.lists, self.bootstrap, self.asked = state["lists"], state["bootstrap"], state["asked"]
