"""The settings of one peeling run, :class:`PeelingConfig` (the fields of a ``mmpref peeling`` recipe)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal

from mmpref.control.peeling.dpo import FinetuneConfig, WindowCredit
from mmpref.control.policies import Squash
from mmpref.recipe import require_at_least
from mmpref.reward.trainers import TrainerSettings

SelectOn = Literal["fused", "metric"]


@dataclass
class PeelingConfig(FinetuneConfig):
    """One pipeline run (a recipe's fields): stage 2's fields and the pipeline's own.

    Stage 2's fields are :class:`~mmpref.control.peeling.dpo.FinetuneConfig`'s (documented there); the defaults below
    differ where push-v3 measured better.

    Args:
        task: a Meta-World v3 task whose object is moved to a goal (the progress metric reads slots 4:7 and 36:39).
        seed: seeds demonstrations, initialisation, rollouts and the environments' goals.
        demos: number of demonstrations (the paper: 50–200).
        noise_low: smallest per-episode action-noise standard deviation of the scripted expert.
        noise_high: largest one.
        squash: policy squashing, ``"clip"`` or ``"tanh"``.
        hidden: policy width.
        bc_epochs: behaviour-cloning epochs.
        pool: fixed-goal training environments for stage 2.
        rated: BC rollouts rated for the fused reward.
        rating_levels: rating scale 1..levels (edges at the quantiles of the rated returns).
        rating_noise: standard deviation of the rater's noise on the return.
        smoothness: jerk weight λ of the metric.
        log_floor: ε of the metric's log-distance form (:func:`~mmpref.control.peeling.metric.progress_steps`; 0:
            linear progress 1 − d_T/d_0). It counts the last centimetres to the goal more, where the success radius is.
        reward_epochs: epochs of the fused reward.
        iterations: finetuning rounds (16: on push-v3 the fused reward's validation score still rose after 8).
        loss: the core loss of stage 2: pairwise (``bradley_terry`` ...: best-vs-worst pairs of each group) or
            listwise (``plackett_luce`` ...: each group's whole ranking).
        explore_temperature: σ multiplier of the finetuning rollouts (1: the policy's own samples; 0.5 measured better
            on push-v3, `docs/benchmarks/peeling_variants/history.md`).
        nll_weight: weight of the winners' NLL (RPO).
        residual_hidden: 0 finetunes the whole BC policy; > 0 freezes it and trains a residual MLP of this width on
            top (:class:`~mmpref.control.policies.ResidualPolicy`), starting exactly at BC.
        windows: rank and pair the rollouts of a group window by window (this many consecutive windows, each scored
            by its share of the fused reward; 1: whole rollouts; 5 measured better on push-v3).
        window_credit: ``"own"`` ranks a window by its own share of the fused reward, ``"to_go"`` by its share plus
            every later window's (measured better on push-v3: a reach pays off in the later windows).
        noise_correlation: ρ of the finetuning rollouts' AR(1) exploration noise (0: independent per step; 0.97,
            ~30 steps, measured better on push-v3).
        censored: finetune with the censored clip likelihood (:func:`~mmpref.control.policies.censored_copy`:
            actions on the ±1 bounds scored by the Gaussian mass beyond them) for the policy and its reference;
            BC itself is trained as before. Ignored with ``squash`` = ``"tanh"`` (it never reaches ±1).
        validation: fixed-goal validation environments (goals differ from the training pool's and the
            evaluation's) on which each round's mean-action policy is scored (``select_on``; 0: none).
        select_on: what scores the validation rollouts: ``"fused"``, the fused reward (task metric + the learned
            rating part), or ``"metric"``, the task metric alone (final progress, :func:`.metric_scores`; the rating
            part is learned from BC rollouts and may not rank a finetuned policy's).
        eval_episodes: held-out goals per evaluation, each a distinct start state (at most 50, the goals a Meta-World
            task draws from; :func:`.evaluate_policy`).
        refit_rated: 0 fits the fused reward once, on rated BC rollouts; > 0 rates this many rollouts of every
            finetuning round with the same teacher and refits the reward on all ratings so far before the next
            round (:class:`~mmpref.control.peeling.fused_reward.RewardRefit`; labels:
            ``rated + iterations · refit_rated``).
        oracle: rank stage 2's rollouts (and choose the round) by the environment's true return instead of the
            fused reward: the upper bound of what a perfect reward model gives, for diagnosing whether the reward or
            the finetuning limits the gain (it reads the simulator's reward, which a human-rated task does not have).
        track_rounds: after every round (and before the first, BC) also roll out the mean-action policy on the
            held-out goals and on ``max(validation, 16)`` validation goals (the first ``validation`` of them are the
            ones the round is chosen on) and keep per goal its success, final progress and (validation) fused score,
            in ``results["rounds"]``. For diagnosis only (how good was each round; how would another rule for
            choosing the round have fared): nothing is chosen on it. Costs about one more rollout per held-out and
            validation goal per round.
        restarts: run stage 2 this many times from the same BC policy and fused reward, each with its own
            exploration (:func:`.restart_seed`), and keep the run whose kept round scores best on the validation
            goals (:func:`.best_restart`; needs ``validation`` >= 1). Costs ``restarts`` times stage 2; what it buys
            is a second chance where one run's few start states per round led it astray.
        first_restart: index of the first restart run (restart r explores with :func:`.restart_seed` (seed, r)), so
            restarts can be split across runs or machines: a run with ``first_restart: 1`` adds restart 1 to an
            earlier run of restart 0, and :func:`.best_restart` over their validation scores keeps what one run with
            ``restarts: 2`` would.
        restart_validation: goals the restarts are chosen on (0: the ``validation`` goals, the kept round's own
            score). With n > 0 each restart's kept policy is rolled out (mean action) on the first n fixed-goal
            validation environments (:func:`.validation_pool`; they start with the ``validation`` ones), scored as
            the rounds are (``select_on``), and :func:`.best_restart` compares those scores: 8 goals chose rounds
            well enough but left restarts whose scores differ by a few hundredths to which goals were drawn.
            Each restart's score is kept in ``results["restarts"]`` (``choice``), so restarts split across runs
            combine as before. Costs n rollouts per restart.
        trainer: Lightning settings of the BC and reward fits (accelerator, devices, precision...); stage 2's
            finetuning is a plain loop on the CPU.
    """

    task: str = "push-v3"
    demos: int = 50
    noise_low: float = 0.1
    noise_high: float = 0.6
    squash: Squash = "clip"
    hidden: int = 256
    bc_epochs: int = 100
    pool: int = 16
    rated: int = 64
    rating_levels: int = 5
    rating_noise: float = 0.0
    smoothness: float = 0.0
    log_floor: float = 0.0
    reward_epochs: int = 30
    iterations: int = 16
    explore_temperature: float = 0.5
    nll_weight: float = 1.0
    windows: int = 5
    residual_hidden: int = 0
    window_credit: WindowCredit = "to_go"
    noise_correlation: float = 0.97
    censored: bool = True
    validation: int = 0
    select_on: SelectOn = "fused"
    eval_episodes: int = 30
    refit_rated: int = 0
    oracle: bool = False
    track_rounds: bool = False
    restarts: int = 1
    first_restart: int = 0
    restart_validation: int = 0
    trainer: TrainerSettings = field(default_factory=TrainerSettings)

    def __post_init__(self) -> None:
        self.trainer = TrainerSettings.of(self.trainer)
        if not 0 <= self.noise_low <= self.noise_high:
            raise ValueError(f"need 0 <= noise_low <= noise_high, got {self.noise_low} and {self.noise_high}")
        counts = ("demos", "max_steps", "bc_epochs", "pool", "reward_epochs", "iterations", "eval_episodes")
        require_at_least(self, (*counts, "restarts"))
        if self.eval_episodes > 50:
            raise ValueError(
                f"eval_episodes must be <= 50 (a Meta-World task has 50 distinct goals), got {self.eval_episodes}"
            )
        if self.log_floor < 0:
            raise ValueError(f"log_floor must be >= 0 (0: linear progress), got {self.log_floor}")
        if self.refit_rated < 0:
            raise ValueError(f"refit_rated must be >= 0 (0: fit the fused reward once), got {self.refit_rated}")
        if self.refit_rated > self.groups * self.group_size:
            raise ValueError(
                f"refit_rated ({self.refit_rated}) cannot exceed a round's rollouts (groups × group_size = "
                f"{self.groups * self.group_size})"
            )
        if self.oracle and self.refit_rated > 0:
            raise ValueError("oracle ranks by the true return: there is no fused reward to refit; set refit_rated=0")
        if self.residual_hidden < 0:
            raise ValueError(f"residual_hidden must be >= 0 (0: finetune BC itself), got {self.residual_hidden}")
        if self.rated < 8:
            raise ValueError(f"rated must be >= 8 (the fused reward trains on lists of 8), got {self.rated}")
        if self.select_on not in ("fused", "metric"):
            raise ValueError(f"select_on must be 'fused' or 'metric', got {self.select_on!r}")
        if self.select_best and self.validation < 1:
            raise ValueError("select_best needs validation >= 1 environments to choose the round on")
        if self.first_restart < 0:
            raise ValueError(f"first_restart must be >= 0 (0: start with the plain run), got {self.first_restart}")
        if self.restarts > 1 and self.validation < 1:
            raise ValueError("restarts > 1 needs validation >= 1 environments to choose the restart on")
        if self.restart_validation < 0:
            raise ValueError(
                f"restart_validation must be >= 0 (0: choose the restart on the validation goals), "
                f"got {self.restart_validation}"
            )
        if self.restarts > 1 and self.refit_rated > 0:
            raise ValueError(
                "restarts > 1 compares the restarts' validation scores, which a refit scores with each restart's own "
                "reward: set refit_rated=0 or restarts=1"
            )
        super().__post_init__()  # the stage-2 fields (loss name, temperature, windows...)
        if self.groups > self.pool:
            raise ValueError(f"groups ({self.groups}) cannot exceed the pool of environments ({self.pool})")

    def finetune(self) -> FinetuneConfig:
        """The stage-2 settings alone: this config's :class:`FinetuneConfig` fields."""
        return FinetuneConfig(**{f.name: getattr(self, f.name) for f in fields(FinetuneConfig)})
