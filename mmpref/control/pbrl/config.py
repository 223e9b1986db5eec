"""The settings of the PbRL loop, :class:`PbRLConfig` (the fields of a ``mmpref pbrl`` recipe; the parts' too)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from mmpref.control.pbrl.parts import PartName, validate_parts
from mmpref.control.reward import QueryMethod
from mmpref.losses import ListwiseLossName
from mmpref.recipe import require_at_least
from mmpref.reward.trainers import TrainerSettings


@dataclass
class PbRLConfig:
    """The loop's settings (PEBBLE's defaults where they apply; budgets scaled to Meta-World v3 on a CPU).

    Args:
        task: Meta-World v3 task.
        goal_variation: the training env draws a new goal of the task's 50 at every reset (B-Pref's Meta-World
            setting: object and goal positions vary between episodes); off, it keeps the one goal drawn from the seed.
            Evaluation is over ``eval_episodes`` distinct goals either way, so with it off success also measures how
            far a policy trained on one goal carries to others.
        seed: seed of the env, SAC, the teacher, the reward ensemble and the query sampler.
        total_steps: environment steps in all.
        reward: ``"learned"`` (preferences), ``"true"`` (SAC on the task reward: the baseline).
        unsupervised_steps: PEBBLE's state-entropy pre-training steps (0 disables).
        learning_starts: random-action steps before SAC updates.
        feedback_every: steps between preference rounds.
        feedback_start: step of the first preference round (0: the first round is at ``feedback_every``); later
            rounds follow every ``feedback_every`` steps.
        queries_per_round: labels asked per round.
        max_labels: the total label budget.
        segment_length: steps per segment (PEBBLE: 50).
        query_method: uniform, disagreement or entropy.
        ensemble_size: reward models in the ensemble (PEBBLE: 3).
        reward_epochs: epochs over all labels per reward update (when ``reward_updates`` is None).
        reward_updates: if set, a fixed number of minibatch updates per reward update instead of epochs, so a
            round costs the same however many labels exist (members are warm-started from the last round).
        reward_batch_size: labelled pairs per reward minibatch.
        reward_hidden: width of each member's step-reward MLP (PEBBLE: 256).
        reward_layers: hidden layers of each member's step-reward MLP (PEBBLE: 3).
        reward_scale: the learned reward given to SAC is multiplied by this (PEBBLE: 1, a tanh-bounded reward).
        reward_normalize: standardise the learned reward over the replay buffer after every reward update (mean 0,
            std ``reward_scale``). A Bradley-Terry reward has no scale of its own, while SAC's entropy temperature
            starts at a fixed value: standardising gives every reward update the same scale relative to it.
        reward_pessimism: λ ≥ 0; the policy's reward is the members' mean − λ · their standard deviation (0: the
            mean, as in PEBBLE), so transitions the ensemble disagrees on earn less.
        reward_use_actions: learn r̂(o, a) (PEBBLE) or a state-only r̂(o).
        eval_every: steps between success-rate evaluations.
        eval_episodes: episodes per evaluation, each on a different goal of the task's 50 (1 to 50): the same goals
            at every evaluation and in every run with this seed (``PbRLLoop.evaluate``; Meta-World v3 resets to one
            start state per goal and the evaluation policy is deterministic, so repeating a goal repeats an episode).
        sac_kwargs: extra arguments of stable-baselines3's SAC.
        device: stable-baselines3's device for SAC: ``"auto"`` (CUDA when there is a GPU), ``"cpu"``, ``"cuda"``.
        trainer: Lightning settings of the reward updates (accelerator, devices, precision...).
        teacher_eps: the scripted teacher's mistake rate ε (B-Pref: each label flipped with probability ε).
        teacher: who answers queries: ``"scripted"`` (B-Pref, from the true reward) or ``"human"`` (people, in the
            labelling app over the store ``db``: each queried pair becomes a pair task of two clips;
            :mod:`mmpref.control.pbrl.human`).
        db: the label store the app serves (a SQLite file or a SQLAlchemy URL), needed by ``teacher: human``; it
            must exist (``mmpref label --db labels.sqlite annotator NAME`` creates it).
        clips_dir: where the human teacher's clips go (default: ``<db name>_clips/`` next to a SQLite ``db``).
        human_timeout_s: how long a round waits for answers before dropping the unanswered queries (null: until
            every query is answered).
        human_poll_s: seconds between looks at the store for new answers.
        human_clip_fps: frames per second of the clips (one frame per ``human_clip_every`` environment steps).
        human_clip_every: render every k-th step of a segment.
        human_prompt: the question shown with every pair (default: ``"<task>: which robot does the task better?"``).
        parts: optional parts by name (:mod:`mmpref.control.pbrl.parts`): ``surf``, ``rune``, ``rime``, ``qpa``,
            ``listwise``; none by default (plain PEBBLE). ``surf``, ``rime`` and ``listwise`` exclude each other.
        surf_tau: SURF's confidence threshold τ for pseudo-labels.
        surf_lambda: SURF's weight λ of the pseudo-label loss.
        surf_mu: SURF's unlabelled pairs per labelled pair in a minibatch.
        surf_unlabelled_ratio: SURF's unlabelled pairs gathered per label asked.
        surf_window: SURF's margin w: stored segments are ``segment_length + 2w`` steps.
        surf_crop: SURF's crop range c: crops are ``segment_length ± c`` steps.
        rune_beta0: RUNE's initial bonus weight β₀.
        rune_decay: RUNE's decay ρ per environment step (β_t = β₀(1 − ρ)^t).
        rime_alpha: RIME's α in τ_lower = −ln ρ + αρ + β_t s_KL.
        rime_beta_max: RIME's β_t at the first reward update.
        rime_beta_min: RIME's floor of β_t.
        rime_decay_updates: reward updates (feedback rounds) over which RIME's β_t falls from max to min.
        rime_select_every: ``"epoch"`` (RIME judges the labelled pairs again before every pass over the trusted ones,
            as in the authors' code) or ``"update"`` (once per feedback round).
        rime_warm_start_updates: RIME's warm-start regression steps after pre-training (needs unsupervised_steps).
        qpa_recent_episodes: QPA's N: queries come from the N most recent episodes.
        qpa_hybrid_ratio: QPA's ω: share of each SAC minibatch from those episodes' transitions (0: off).
        list_size: K, segments per listwise query (costs K − 1 labels).
        listwise_loss: the listwise loss of the core for ``listwise``.
    """

    task: str = "reach-v3"
    goal_variation: bool = False
    seed: int = 0
    total_steps: int = 20_000
    reward: Literal["learned", "true"] = "learned"
    unsupervised_steps: int = 0
    learning_starts: int = 1_000
    feedback_every: int = 2_000
    feedback_start: int = 0
    queries_per_round: int = 100
    max_labels: int = 1_000
    segment_length: int = 50
    query_method: QueryMethod = "disagreement"
    ensemble_size: int = 3
    reward_epochs: int = 20
    reward_updates: int | None = None
    reward_batch_size: int = 128
    reward_hidden: int = 256
    reward_layers: int = 3
    reward_scale: float = 1.0
    reward_normalize: bool = False
    reward_pessimism: float = 0.0
    reward_use_actions: bool = True
    eval_every: int = 5_000
    eval_episodes: int = 10
    sac_kwargs: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    trainer: TrainerSettings = field(default_factory=TrainerSettings)
    teacher_eps: float = 0.0
    teacher: Literal["scripted", "human"] = "scripted"
    db: str | None = None
    clips_dir: str | None = None
    human_timeout_s: float | None = None
    human_poll_s: float = 1.0
    human_clip_fps: int = 10
    human_clip_every: int = 2
    human_prompt: str | None = None
    parts: list[PartName] = field(default_factory=list)
    surf_tau: float = 0.95
    surf_lambda: float = 1.0
    surf_mu: int = 1
    surf_unlabelled_ratio: int = 10
    surf_window: int = 5
    surf_crop: int = 5
    rune_beta0: float = 0.05
    rune_decay: float = 1e-5
    rime_alpha: float = 0.5
    rime_beta_max: float = 3.0
    rime_beta_min: float = 1.0
    rime_decay_updates: int = 30
    rime_select_every: Literal["epoch", "update"] = "epoch"
    rime_warm_start_updates: int = 500
    qpa_recent_episodes: int = 10
    qpa_hybrid_ratio: float = 0.5
    list_size: int = 4
    listwise_loss: ListwiseLossName = "plackett_luce"

    def __post_init__(self) -> None:
        self.parts = list(self.parts)
        self.trainer = TrainerSettings.of(self.trainer)  # a mapping when read back from a checkpoint
        validate_parts(self.parts)
        require_at_least(
            self,
            ("total_steps", "queries_per_round", "segment_length", "ensemble_size", "reward_epochs")
            + ("reward_batch_size", "reward_hidden", "eval_every"),
        )
        require_at_least(self, ("unsupervised_steps", "learning_starts", "reward_layers"), minimum=0)
        if not 0 <= self.teacher_eps <= 1:
            raise ValueError(f"teacher_eps is a mistake probability and must lie in [0, 1], got {self.teacher_eps}")
        self._check_teacher()
        if self.reward == "learned" and self.max_labels < 1:
            raise ValueError(
                f"max_labels is the label budget and must be >= 1 for a learned reward, got {self.max_labels}"
            )
        if self.feedback_every < 1 or self.feedback_start < 0:
            raise ValueError(
                f"feedback_every must be >= 1 and feedback_start >= 0, got {self.feedback_every} and "
                f"{self.feedback_start}"
            )
        if not 1 <= self.eval_episodes <= 50:
            raise ValueError(
                f"eval_episodes must lie in [1, 50] (one episode per goal; a Meta-World task has 50), got "
                f"{self.eval_episodes}"
            )
        if self.reward_pessimism < 0:
            raise ValueError(f"reward_pessimism must be >= 0, got {self.reward_pessimism}")
        if not self.reward_scale > 0:
            raise ValueError(f"reward_scale must be > 0, got {self.reward_scale}")
        if self.reward_updates is not None and self.reward_updates < 1:
            raise ValueError(f"reward_updates must be >= 1 (or null for epochs), got {self.reward_updates}")

    def _check_teacher(self) -> None:
        """The human teacher's settings: a store to post to, a place for clips, parts that label through it."""
        if self.teacher not in ("scripted", "human"):
            raise ValueError(f"teacher must be 'scripted' or 'human', got {self.teacher!r}")
        if self.teacher != "human":
            return
        if not self.db:
            raise ValueError(
                "teacher: human needs db, the label store the labelling app serves: add --db labels.sqlite "
                "(create it with `mmpref label --db labels.sqlite annotator NAME`)"
            )
        if "://" in self.db and not self.clips_dir:
            raise ValueError(f"db {self.db!r} is a URL: set clips_dir, the folder where the clips of queries go")
        if "listwise" in self.parts:
            raise ValueError("parts: listwise asks for rankings, which the human teacher does not post; drop it")
        if self.human_timeout_s is not None and not self.human_timeout_s > 0:
            raise ValueError(f"human_timeout_s must be > 0 (or null: no limit), got {self.human_timeout_s}")
        if not self.human_poll_s > 0 or self.human_clip_fps < 1 or self.human_clip_every < 1:
            raise ValueError(
                f"human_poll_s must be > 0 and human_clip_fps, human_clip_every >= 1, got {self.human_poll_s}, "
                f"{self.human_clip_fps}, {self.human_clip_every}"
            )
