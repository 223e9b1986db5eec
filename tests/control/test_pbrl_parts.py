"""Oracles for the PbRL loop's optional parts: SURF, RUNE, RIME, QPA and listwise queries, against hand values."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mmpref.control.pbrl.env import RewardSource
from mmpref.control.pbrl.listwise import (
    ListTeacher,
    ListwiseEnsembleSystem,
    RankedSegments,
    list_label_cost,
    lists_within,
)
from mmpref.control.pbrl.loop import PbRLConfig
from mmpref.control.pbrl.parts import validate_parts
from mmpref.control.pbrl.qpa import QPA, HybridReplayBuffer, hybrid_indices, policy_aligned
from mmpref.control.pbrl.rime import (
    RIME,
    TAU_UPPER,
    for_each_epoch,
    preference_kl,
    rime_beta,
    rime_lower_threshold,
    select_and_flip,
)
from mmpref.control.pbrl.rune import RUNE, member_std, rune_beta
from mmpref.control.pbrl.surf import SURF, crop_masks, pseudo_labels
from mmpref.control.reward import RewardEnsemble
from mmpref.control.segments import Episode
from mmpref.control.teachers import Budget, ScriptedTeacher
from mmpref.data import Segment, SegmentPair
from mmpref.losses import plackett_luce


def seg(rewards, name="s", obs_dim=2):
    rewards = np.asarray(rewards, np.float32)
    n = len(rewards)
    return Segment(
        id=name,
        observations=np.arange(n * obs_dim, dtype=np.float32).reshape(n, obs_dim),
        actions=np.zeros((n, 1), np.float32),
        rewards=rewards,
    )


# --- SURF ------------------------------------------------------------------------------------------------------------


def test_surf_pseudo_label_rule_hand_values():
    prob = torch.tensor([0.99, 0.951, 0.949, 0.5, 0.05, 0.04, 0.3])
    labels, mask = pseudo_labels(prob, tau=0.95)
    # ŷ = 1[P > ½]; kept iff max(P, 1 − P) ≥ τ
    assert labels.tolist() == [1, 1, 1, 0, 0, 0, 0]
    assert mask.tolist() == [True, True, False, False, True, True, False]
    _, strict = pseudo_labels(prob, tau=1.0)
    assert not strict.any()


def test_surf_crop_has_one_common_length_in_range_and_independent_offsets():
    horizon, window, crop = 10, 3, 3
    mask_a, mask_b, lengths = crop_masks(4000, horizon, window, crop, torch.Generator().manual_seed(0))
    assert mask_a.shape == (4000, horizon + 2 * window)
    # both segments of a pair: exactly H' contiguous steps, H' ∈ [H − c, H + c], every value drawn
    assert torch.equal(mask_a.sum(1), lengths) and torch.equal(mask_b.sum(1), lengths)
    assert set(lengths.tolist()) == set(range(horizon - crop, horizon + crop + 1))
    for mask in (mask_a, mask_b):
        first = mask.float().argmax(1)
        steps = torch.arange(horizon + 2 * window)
        rebuilt = (steps >= first[:, None]) & (steps < (first + lengths)[:, None])
        assert torch.equal(rebuilt, mask)  # contiguous, inside the stored window
    starts_a, starts_b = mask_a.float().argmax(1), mask_b.float().argmax(1)
    assert (starts_a != starts_b).float().mean() > 0.5  # different times, not one shared offset
    # the longest crop (H + c = 13 of 16) starts anywhere in 0..3
    longest = lengths == horizon + crop
    assert set(starts_a[longest].tolist()) == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="surf_crop"):
        crop_masks(2, horizon, window=1, crop=3, generator=torch.Generator())


def test_surf_teacher_judges_the_central_window_and_the_pair_keeps_the_margins():
    part = SURF(window=2, crop=2)
    # a is better in the central 4 steps, b is better over the whole 8 steps (its margins are large)
    a = seg([0, 0, 1, 1, 1, 1, 0, 0], "a")
    b = seg([9, 9, 0, 0, 0, 0, 9, 9], "b")
    teacher = ScriptedTeacher(budget=Budget(limit=10))
    loop = SimpleNamespace(config=SimpleNamespace(segment_length=4), teacher=teacher)
    (labelled,) = part.label(loop, [SegmentPair(id="q", a=a, b=b, label=0.5)])
    assert labelled.label == 1.0 and labelled.a is a and len(labelled.a.rewards) == 8
    assert teacher.budget.asked == 1
    assert part.segment_length(4) == 8 and SURF().segment_length(50) == 60


# --- RUNE ------------------------------------------------------------------------------------------------------------


def test_rune_bonus_schedule_hand_values():
    assert rune_beta(0.05, 1e-3, 0) == pytest.approx(0.05)
    assert rune_beta(0.05, 1e-3, 1000) == pytest.approx(0.05 * 0.999**1000)  # 0.018385
    assert rune_beta(0.05, 1e-3, 1000) == pytest.approx(0.0183848, abs=1e-7)
    assert rune_beta(0.05, 0.0, 10**6) == 0.05
    with pytest.raises(ValueError, match="rune_decay"):
        RUNE(decay=1.0)


def test_rune_reward_is_mean_plus_decayed_std_after_the_affine_map():
    ensemble = RewardEnsemble(3, 2, members=4, hidden=8, layers=1, seed=0)
    rng = np.random.default_rng(0)
    obs, act = rng.normal(size=(5, 3)).astype(np.float32), rng.normal(size=(5, 2)).astype(np.float32)
    with torch.no_grad():
        members = ensemble.scorer.step_reward(torch.from_numpy(np.concatenate([obs, act], -1))).numpy()  # [M, N]
    np.testing.assert_allclose(member_std(ensemble, obs, act), members.std(0), rtol=1e-5, atol=1e-7)
    source = RewardSource("learned", ensemble)
    source.shift, source.scale = 0.1, 2.0
    source.bonus = RUNE(beta0=0.5, decay=0.01).bonus
    source.steps = 100
    want = (members.mean(0) - 0.1) * 2.0 + 2.0 * 0.5 * 0.99**100 * members.std(0)
    np.testing.assert_allclose(source.learned(obs, act), want, rtol=1e-5, atol=1e-6)


# --- RIME ------------------------------------------------------------------------------------------------------------


def test_rime_kl_threshold_and_beta_hand_values():
    np.testing.assert_allclose(
        preference_kl([0.9, 0.9, 0.5], [1.0, 0.0, 1.0]), [-math.log(0.9), -math.log(0.1), math.log(2)]
    )
    # β_t = max(β_min, β_max − (β_max − β_min) t / k): 3 → 1 over 30 updates
    assert [rime_beta(t, 3.0, 1.0, 30) for t in (0, 15, 30, 100)] == [3.0, 2.0, 1.0, 1.0]
    # τ_lower = −ln ρ + αρ + β s:  ρ = 0.2, α = 0.5, β = 2, s = 0.3 → 1.609438 + 0.1 + 0.6
    assert rime_lower_threshold(0.2, 0.5, 2.0, 0.3) == pytest.approx(math.log(5) + 0.7)
    assert TAU_UPPER == pytest.approx(3 * math.log(10))


def test_rime_selection_and_flip_rule():
    kl = np.array([0.05, 0.9, 1.2, 5.0, 7.0])
    trusted, flipped = select_and_flip(kl, tau_lower=1.0)
    assert trusted.tolist() == [True, True, False, False, False]
    assert flipped.tolist() == [False, False, False, False, True]  # only KL > 3 ln 10 ≈ 6.91 is flipped back
    # with a lower bound above the upper one, a flipped pair is not also trusted
    trusted, flipped = select_and_flip(kl, tau_lower=100.0)
    assert trusted.tolist() == [True, True, True, True, False] and flipped[-1]


def test_rime_discriminator_statistics_follow_the_paper_updates():
    rime = RIME(alpha=0.5, beta_max=3.0, beta_min=1.0, decay_updates=30, ema=0.1, uncertainty="std")
    assert rime.threshold() == math.inf  # no statistics yet: everything is trusted
    prob = np.array([0.9, 0.8, 0.6, 0.3, 0.0005])
    labels = np.array([1.0, 1.0, 1.0, 1.0, 1.0])
    kl = -np.log(prob)
    trusted, flipped, got = rime.discriminate(prob, labels)
    np.testing.assert_allclose(got, kl, rtol=1e-6)
    assert trusted.tolist() == [True, True, True, True, False] and flipped.tolist() == [False] * 4 + [True]
    # ρ's moving average starts at 0 (the authors' code): ρ_1 = 0 + 0.1 (max_trusted − 0)
    rho, spread = 0.1 * kl[:4].max(), kl[:4].std()
    assert rime.rho == pytest.approx(rho) and rime.spread == pytest.approx(spread) and rime.selections == 1
    assert rime.updates == 0  # t (of β_t) counts reward updates, which update_reward ends, not selections
    rime.updates = 1
    # second update: β_1 = 3 − 2/30; τ_lower = −ln ρ + α ρ + β_1 s_KL; then ρ ← ρ + 0.1 (max_trusted − ρ)
    want = -math.log(rho) + 0.5 * rho + (3.0 - 2.0 / 30) * spread
    assert rime.threshold() == pytest.approx(want)
    new_kl = -np.log([0.99, 0.2])
    trusted, _, _ = rime.discriminate(np.array([0.99, 0.2]), np.array([1.0, 1.0]))
    assert trusted.tolist() == (new_kl < want).tolist()
    assert rime.rho == pytest.approx(rho + 0.1 * (new_kl[trusted].max() - rho))
    assert rime.spread == pytest.approx(new_kl[trusted].std())


def test_rime_default_uncertainty_is_the_running_variance_of_all_trusted_kls_capped():
    rime = RIME(alpha=0.5, beta_max=3.0, beta_min=1.0, decay_updates=30, ema=0.1)  # uncertainty="var"
    first = np.array([0.9, 0.8, 0.6, 0.3])
    rime.discriminate(first, np.ones(4))
    second = np.array([0.99, 0.95, 0.7])
    rime.discriminate(second, np.ones(3))
    rime.updates = 2
    trusted_kls = -np.log(np.concatenate([first, second]))  # all trusted (the second threshold is about 4.5)
    assert rime.kl_count == 7 and rime.kl_var == pytest.approx(trusted_kls.var())  # the pooled variance, exactly
    rho = 0.1 * trusted_kls[:4].max()
    rho += 0.1 * (trusted_kls[4:].max() - rho)
    beta = 3.0 - 2.0 * 2 / 30
    assert rime.threshold() == pytest.approx(-math.log(rho) + 0.5 * rho + min(beta * trusted_kls.var(), 3.0))
    rime.kl_var = 10.0  # a wide spread: β_t · var is capped at 3
    assert rime.threshold() == pytest.approx(-math.log(rho) + 0.5 * rho + 3.0)
    restored = RIME()
    restored.load_state_dict(rime.state_dict())
    assert (restored.kl_count, restored.kl_mean, restored.kl_var) == (rime.kl_count, rime.kl_mean, rime.kl_var)


def test_rime_update_fits_only_trusted_and_flipped_back_pairs():
    calls = {}

    class Ensemble:
        def pair_probabilities(self, pairs):
            return np.array([[0.9, 0.9, 0.0001]])

        def fit(self, pairs, **kwargs):
            calls.update(pairs=pairs, **kwargs)

    rime = RIME(select_every="update")
    rime.rho, rime.spread, rime.warm_started = 0.2, 0.0, True  # τ_lower = −ln 0.2 + 0.1 ≈ 1.71
    pairs = [SegmentPair(id=str(i), a=seg([1]), b=seg([0]), label=y) for i, y in enumerate([1.0, 0.0, 1.0])]
    loop = SimpleNamespace(
        config=SimpleNamespace(reward_epochs=1, reward_batch_size=2, reward_updates=3),
        labelled=pairs,
        ensemble=Ensemble(),
    )
    rime.update_reward(loop, [])
    # pair 0 agrees (KL 0.105: trusted); pair 1 has KL −ln 0.1 = 2.30 (dropped); pair 2 has KL 9.2 (flipped back)
    assert calls["rows"].tolist() == [0, 2]
    assert [p.label for p in calls["pairs"]] == [1.0, 0.0, 0.0] and pairs[2].label == 1.0  # stored label unchanged


def test_rime_selects_again_before_every_epoch_of_a_reward_update():
    """The default (the authors' code): the round's updates are cut into epochs of ⌈|rows| / batch⌉ updates, each
    after a new selection whose ρ and KL statistics follow the reward as it fits."""
    fits = []

    class Ensemble:  # its prediction on pair 1 (label 1) improves with every fit: 0.1, 0.5, 0.9, ...
        def pair_probabilities(self, pairs):
            return np.array([[0.9, min(0.1 + 0.4 * len(fits), 0.95), 0.9, 0.9]])

        def fit(self, pairs, **kwargs):
            fits.append(kwargs)

    rime = RIME(alpha=0.5, beta_max=3.0, beta_min=1.0, decay_updates=30, ema=0.1)
    rime.rho, rime.warm_started = 0.2, True
    pairs = [SegmentPair(id=str(i), a=seg([1]), b=seg([0]), label=1.0) for i in range(4)]
    loop = SimpleNamespace(
        config=SimpleNamespace(reward_epochs=1, reward_batch_size=2, reward_updates=5),
        labelled=pairs,
        ensemble=Ensemble(),
        steps=1000,
    )
    rime.update_reward(loop, [])
    # selection 1: τ = −ln 0.2 + 0.1 = 1.709 (no KL statistics yet); pair 1 has KL −ln 0.1 = 2.303: dropped.
    # 3 rows / batch 2 → an epoch of 2 updates. Selection 2: pair 1 at −ln 0.5 = 0.693 < τ: all 4 rows, 2 updates.
    # Selection 3: one update is left.
    assert [f["updates"] for f in fits] == [2, 2, 1]
    assert [f["rows"].tolist() for f in fits] == [[0, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3]]
    kl = -np.log(0.9)
    rho = 0.2 + 0.1 * (kl - 0.2)  # after selection 1
    rho += 0.1 * (-math.log(0.5) - rho)  # after selection 2
    rho += 0.1 * (-math.log(0.9) - rho)  # after selection 3 (pair 1 is at 0.9 now)
    assert rime.rho == pytest.approx(rho)
    assert rime.selections == 3 and rime.updates == 1 and len(rime.log) == 1  # one record per reward update
    assert rime.log[-1]["selections"] == 3.0 and rime.log[-1]["trusted"] == 4.0
    # without a fixed number of updates: reward_epochs selections of one pass each
    fits.clear()
    loop.config = SimpleNamespace(reward_epochs=3, reward_batch_size=2, reward_updates=None)
    rime.update_reward(loop, [])
    assert [f["epochs"] for f in fits] == [1, 1, 1] and rime.selections == 6 and rime.updates == 2
    # a selection that keeps nothing ends the update without training
    assert for_each_epoch(lambda: ([], np.array([], int)), lambda *a, **k: fits.append(k), 2, 5, 1) == 1


def test_rime_records_each_selection_and_scores_it_against_the_teachers_mistakes():
    class Ensemble:
        def pair_probabilities(self, pairs):
            return np.array([[0.9, 0.9, 0.0001, 0.9]])  # KLs 0.105 (trusted), 2.30 (dropped), 9.2 (flipped), 0.105

        def fit(self, pairs, **kwargs):
            pass

    rime = RIME(select_every="update")
    rime.rho, rime.spread, rime.warm_started = 0.2, 0.0, True
    tau = -math.log(0.2) + 0.5 * 0.2  # τ_lower of this update (ρ moves after it)
    pairs = [SegmentPair(id=str(i), a=seg([1]), b=seg([0]), label=y) for i, y in enumerate([1.0, 0.0, 1.0, 1.0])]
    # the teacher corrupted pairs 1 (dropped: caught), 2 (flipped back: restored) and 3 (trusted: missed)
    teacher = SimpleNamespace(mistakes=[False, True, True, True])
    loop = SimpleNamespace(
        config=SimpleNamespace(reward_epochs=1, reward_batch_size=2, reward_updates=3),
        labelled=pairs,
        ensemble=Ensemble(),
        teacher=teacher,
        steps=4000,
    )
    rime.update_reward(loop, [])
    want = {"step": 4000.0, "labelled": 4.0, "trusted": 2.0, "flipped": 1.0, "dropped": 1.0}
    want |= {"corrupted": 3.0, "trusted_corrupted": 1.0, "dropped_corrupted": 1.0, "flipped_correct": 1.0}
    record = rime.log[-1]
    assert {k: record[k] for k in want} == want and record["tau_lower"] == pytest.approx(tau)
    assert record["rho"] == pytest.approx(rime.rho) and rime.rho != 0.2  # ρ after the update
    assert rime.diagnostics() == {f"rime_{k}": v for k, v in record.items()}
    # a second update without a usable record of mistakes (another teacher): counts only; both kept and restored
    loop.teacher = SimpleNamespace(mistakes=[False])
    rime.update_reward(loop, [])
    assert len(rime.log) == 2 and "corrupted" not in rime.log[-1] and rime.log[-1]["tau_lower"] != tau
    restored = RIME()
    restored.load_state_dict(rime.state_dict())
    assert restored.log == rime.log and restored.diagnostics() == rime.diagnostics()
    # the first update of a fresh RIME trusts everything under an infinite threshold, ρ undefined before it
    first = RIME(select_every="update")
    first.warm_started = True
    loop.teacher = teacher
    first.update_reward(loop, [])
    assert first.last["tau_lower"] == math.inf and first.last["trusted"] == 3.0 and first.last["flipped"] == 1.0


# --- QPA -------------------------------------------------------------------------------------------------------------


def test_qpa_sampling_window_hand_values():
    zeros = np.zeros((3, 1), np.float32)
    episodes = [Episode(zeros, zeros, np.full(3, i, np.float32), zeros, np.zeros(3, np.float32)) for i in range(7)]
    assert [int(e.rewards[0]) for e in policy_aligned(episodes, 3)] == [4, 5, 6]
    assert len(policy_aligned(episodes, 10)) == 7
    # ring buffer of 10 rows, wrapped, next write at 3: the 5 newest rows are 2, 1, 0, 9, 8
    rows = hybrid_indices(64, pos=3, size=10, capacity=10, window=5, ratio=0.5, rng=np.random.RandomState(0))
    assert len(rows) == 64 and set(rows[:32].tolist()) == {2, 1, 0, 9, 8}
    assert set(rows[32:].tolist()) == set(range(10))
    # not wrapped: 4 rows filled, window 5 is clipped to them
    rows = hybrid_indices(40, pos=4, size=4, capacity=10, window=5, ratio=0.25, rng=np.random.RandomState(1))
    assert set(rows.tolist()) <= {0, 1, 2, 3} and len(rows) == 40
    assert QPA(recent_episodes=10).sac_kwargs(500)["replay_buffer_kwargs"] == {"window": 5000, "ratio": 0.5}
    assert QPA(hybrid_ratio=0.0).sac_kwargs(500) == {}


def test_hybrid_replay_buffer_draws_half_of_each_batch_from_the_newest_transitions():
    import gymnasium as gym

    buffer = HybridReplayBuffer(
        100, gym.spaces.Box(-1, 1, (1,)), gym.spaces.Box(-1, 1, (1,)), device="cpu", window=10, ratio=0.5
    )
    for i in range(60):
        buffer.add(np.array([[i]]), np.array([[i]]), np.array([[0.0]]), np.array([i]), np.array([False]), [{}])
    np.random.seed(0)
    batch = buffer.sample(200)
    ages = 59 - batch.observations[:, 0].numpy()
    assert (ages[:100] < 10).all() and (ages[100:] >= 10).mean() > 0.7  # uniform half: 50 of 60 rows are older


# --- listwise --------------------------------------------------------------------------------------------------------


def test_listwise_label_counting():
    assert [list_label_cost(k) for k in (2, 3, 4, 8)] == [1, 2, 3, 7]
    assert lists_within(500, 4) == 166 and lists_within(500, 2) == 500 and lists_within(2, 4) == 0
    assert lists_within(math.inf, 3) > 0
    teacher = ScriptedTeacher(budget=Budget(limit=7))
    ranker = ListTeacher(teacher)
    segments = (seg([1], "a"), seg([3], "b"), seg([2], "c"), seg([0], "d"))
    assert ranker.rank(segments) == (1, 2, 0, 3)  # by return, best first
    assert (teacher.budget.asked, teacher.budget.labelled) == (3, 3)
    ranker.rank(segments)
    with pytest.raises(RuntimeError, match="a 4-list costs 3"):
        ranker.rank(segments)  # 1 label left
    with pytest.raises(ValueError):
        list_label_cost(1)


def test_list_teacher_mistakes_swap_adjacent_comparisons_and_finite_beta_is_plackett_luce():
    segments = (seg([3], "a"), seg([2], "b"), seg([1], "c"), seg([0], "d"))
    # ε = 1: the pass swaps (0,1), then (1,2), then (2,3) of the running order: a,b,c,d → b,a,c,d → b,c,a,d → b,c,d,a
    assert ListTeacher(ScriptedTeacher(eps=1.0)).rank(segments) == (1, 2, 3, 0)
    # β finite, K = 2: P(a first) = σ(β (R_a − R_b)), B-Pref's Bradley-Terry label
    ranker = ListTeacher(ScriptedTeacher(beta=1.0, seed=0))
    pair = (seg([1.0], "a"), seg([0.0], "b"))
    share = np.mean([ranker.rank(pair)[0] == 0 for _ in range(20_000)])
    assert share == pytest.approx(1 / (1 + math.exp(-1.0)), abs=0.01)
    ranked = RankedSegments("l", segments, (1, 2, 0, 3))
    assert ranked.targets.tolist() == [1.0, 3.0, 2.0, 0.0]  # K − rank per segment in list order


def test_listwise_ensemble_loss_is_each_members_plackett_luce():
    ensemble = RewardEnsemble(2, 1, members=2, hidden=4, layers=1, seed=0)
    system = ListwiseEnsembleSystem(ensemble.scorer, loss="plackett_luce")
    x = torch.randn(3, 4, 5, 3, generator=torch.Generator().manual_seed(0))  # [B, K, H, o + a]
    targets = torch.tensor([[3.0, 2, 1, 0], [0, 1, 2, 3], [1, 3, 0, 2]])
    weight = torch.tensor([[1.0, 0.0], [2.0, 1.0], [1.0, 1.0]])
    system.log = lambda *args, **kwargs: None
    loss = system.training_step({"x": x, "targets": targets, "weight": weight}, 0)
    scores = ensemble.scorer(x)  # [M, B, K]
    want = []
    for m in range(2):
        per_list = plackett_luce(scores[m], targets)
        want.append((per_list * weight[:, m]).sum() / weight[:, m].sum())
    torch.testing.assert_close(loss, torch.stack(want).mean())


# --- the loop's configuration ----------------------------------------------------------------------------------------


def test_parts_are_named_in_the_config_and_bad_combinations_are_refused():
    assert PbRLConfig().parts == [] and PbRLConfig().teacher_eps == 0.0
    validate_parts(["surf", "rune", "qpa"])
    with pytest.raises(ValueError, match="unknown PbRL part 'pebbles'.*valid parts: surf, rune, rime, qpa, listwise"):
        PbRLConfig(parts=["pebbles"])
    with pytest.raises(ValueError, match="choose one"):
        PbRLConfig(parts=["surf", "rime"])
    with pytest.raises(ValueError, match="twice"):
        PbRLConfig(parts=["rune", "rune"])
    with pytest.raises(ValueError, match="teacher_eps"):
        PbRLConfig(teacher_eps=1.5)
    with pytest.raises(ValueError, match="surf_tau"):
        SURF(tau=0.4)


def test_rime_warm_start_regresses_the_reward_on_the_intrinsic_reward():
    rng = np.random.default_rng(0)
    obs = rng.uniform(-1, 1, size=(2000, 1, 3)).astype(np.float32)
    act = rng.uniform(-1, 1, size=(2000, 1, 2)).astype(np.float32)
    intrinsic = (5.0 + 3.0 * obs[:, :, 0]).astype(np.float32)  # a state-entropy-like reward, not in [−1, 1]
    buffer = SimpleNamespace(observations=obs, actions=act, rewards=intrinsic, full=False, pos=2000, buffer_size=4000)
    ensemble = RewardEnsemble(3, 2, members=2, hidden=32, layers=1, seed=0)
    loop = SimpleNamespace(model=SimpleNamespace(replay_buffer=buffer), config=SimpleNamespace(unsupervised_steps=1))
    loop.ensemble = ensemble
    target = obs[:, 0, 0]  # the intrinsic reward mapped to [−1, 1] by min-max
    before = np.corrcoef(ensemble.step_reward(obs[:, 0], act[:, 0]), target)[0, 1]
    rime = RIME(warm_start_updates=300)
    rime.warm_start(loop)
    assert rime.warm_started
    after = np.corrcoef(ensemble.step_reward(obs[:, 0], act[:, 0]), target)[0, 1]
    assert abs(before) < 0.6 and after > 0.95  # from an unrelated random reward to the intrinsic one's ordering
