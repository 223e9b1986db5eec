"""PEARL transfer: the transferred-label formula against naive loops on hand-made plans, couplings on toy geometry
with a known answer, the direction check, the shared-feature reward, and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmpref.control.pearl.coupling import fused_gw_coupling, gw_coupling, nearest_coupling, random_coupling
from mmpref.control.pearl.transfer import (
    FeatureBradleyTerry,
    borda,
    distance_matrix,
    label_matrix,
    robust_coupling,
    summary_features,
    transfer_accuracy,
    transfer_labels,
)


def _naive_transfer(plan: np.ndarray, labels: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    # ŷ_jl = Σ_ik T_ij T_kl M_ik y_ik / Σ_ik T_ij T_kl M_ik, four explicit loops (PEARL eq. 5).
    n_s, n_t = plan.shape
    mask = np.ones((n_s, n_s)) if mask is None else mask
    out = np.zeros((n_t, n_t))
    for j in range(n_t):
        for l in range(n_t):  # noqa: E741
            num = den = 0.0
            for i in range(n_s):
                for k in range(n_s):
                    w = plan[i, j] * plan[k, l] * mask[i, k]
                    num += w * labels[i, k]
                    den += w
            out[j, l] = num / den if den > 0 else 0.5
    return out


def test_transfer_labels_hand_made_plan():
    # Target 0 is source 0; target 1 is half source 1, half source 2.
    plan = np.array([[0.5, 0.0], [0.0, 0.25], [0.0, 0.25]])
    labels = np.array([[0.5, 1.0, 0.0], [0.0, 0.5, 1.0], [1.0, 0.0, 0.5]])
    got = transfer_labels(plan, labels)
    # ŷ_01 = (y_01 + y_02)/2 = 0.5, ŷ_10 = (y_10 + y_20)/2 = 0.5, ŷ_11 = (y_11 + y_12 + y_21 + y_22)/4 = 0.5.
    np.testing.assert_allclose(got, [[0.5, 0.5], [0.5, 0.5]])
    labels2 = np.array([[0.5, 1.0, 1.0], [0.0, 0.5, 0.0], [0.0, 1.0, 0.5]])
    np.testing.assert_allclose(transfer_labels(plan, labels2), [[0.5, 1.0], [0.0, 0.5]])


def test_transfer_labels_matches_naive_loops_with_and_without_mask():
    rng = np.random.default_rng(0)
    plan = rng.random((5, 4))
    labels = rng.random((5, 5))
    mask = (rng.random((5, 5)) < 0.4).astype(float)
    np.testing.assert_allclose(transfer_labels(plan, labels), _naive_transfer(plan, labels), atol=1e-12)
    np.testing.assert_allclose(transfer_labels(plan, labels, mask), _naive_transfer(plan, labels, mask), atol=1e-12)
    torch_got = transfer_labels(torch.from_numpy(plan), torch.from_numpy(labels), torch.from_numpy(mask))
    assert isinstance(torch_got, torch.Tensor)
    np.testing.assert_allclose(torch_got.numpy(), _naive_transfer(plan, labels, mask), atol=1e-12)


def test_permutation_plan_permutes_labels_and_empty_mask_gives_half():
    rng = np.random.default_rng(1)
    perm = rng.permutation(6)
    plan = np.zeros((6, 6))
    plan[perm, np.arange(6)] = 1 / 6
    labels = label_matrix(rng.normal(size=6))
    np.testing.assert_allclose(transfer_labels(plan, labels), labels[np.ix_(perm, perm)])
    np.testing.assert_allclose(transfer_labels(plan, labels, np.zeros((6, 6))), np.full((6, 6), 0.5))


def test_label_matrix_and_accuracy_hand_values():
    np.testing.assert_array_equal(label_matrix(np.array([2.0, 1.0, 2.0])), [[0.5, 1, 0.5], [0, 0.5, 0], [0.5, 1, 0.5]])
    returns = np.array([0.0, 1.0, 2.0, 3.0])
    assert transfer_accuracy(label_matrix(returns), returns) == 1.0
    assert transfer_accuracy(1 - label_matrix(returns), returns) == 0.0
    assert transfer_accuracy(np.full((4, 4), 0.5), returns) == 0.5
    # Pairs (0, 2), (1, 3), (0, 3) differ by more than 1.2·std = 1.34; flipping (0, 3) leaves two of three right.
    guess = label_matrix(returns)
    guess[0, 3] = 1.0
    assert transfer_accuracy(guess, returns, min_gap=1.2) == pytest.approx(2 / 3)


def test_random_and_nearest_couplings():
    rng = np.random.default_rng(2)
    plan = random_coupling(7, 5, rng)
    np.testing.assert_allclose(plan.sum(0), np.full(5, 1 / 5))
    cost = np.array([[0.0, 5.0], [1.0, 0.1], [3.0, 3.0]])
    np.testing.assert_array_equal(nearest_coupling(cost) > 0, [[True, False], [False, True], [False, False]])


def _line_problem(n: int = 24, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    # Source segments lie on a 1-D quality line; the target is a noisy, shuffled, rescaled copy of it.
    rng = np.random.default_rng(seed)
    x_s = np.sort(rng.uniform(0, 1, n))
    perm = rng.permutation(n)
    x_t = 3.0 * x_s[perm] + rng.normal(0, 0.01, n)
    return x_s, x_t, label_matrix(x_s), perm


def test_gw_on_a_line_recovers_the_order_up_to_reflection():
    x_s, x_t, labels, _ = _line_problem()
    c_s, c_t = distance_matrix(x_s[:, None]), distance_matrix(x_t[:, None])
    for method in ("exact", "entropic"):
        plan, objective = gw_coupling(c_s, c_t, method=method, epsilon=0.005, max_iter=50)
        assert np.isfinite(objective)
        accuracy = transfer_accuracy(transfer_labels(plan, labels), x_t)
        # GW sees only distances: the identity and the reflection are equally good, so either extreme is right.
        assert max(accuracy, 1 - accuracy) > 0.9, (method, accuracy)


def test_fused_gw_with_a_feature_cost_fixes_the_direction():
    x_s, x_t, labels, _ = _line_problem()
    c_s, c_t = distance_matrix(x_s[:, None]), distance_matrix(x_t[:, None])
    cross = distance_matrix(x_s[:, None], x_t[:, None] / 3.0)  # a shared feature in the same units
    for epsilon in (None, 0.005):
        plan, _ = fused_gw_coupling(cross, c_s, c_t, alpha=0.5, epsilon=epsilon, max_iter=50)
        assert transfer_accuracy(transfer_labels(plan, labels), x_t) > 0.9, epsilon


def test_direction_check_flips_a_reflected_plan_and_keeps_a_right_one():
    x_s, x_t, labels, _ = _line_problem()
    c_s, c_t = distance_matrix(x_s[:, None]), distance_matrix(x_t[:, None])
    # A cross cost that pulls towards the reflection (source low ↔ target high) makes the fused plan inverted.
    reflected = distance_matrix(x_s[:, None], 1.0 - x_t[:, None] / 3.0)
    plain = robust_coupling(reflected, c_s, c_t, labels, anchor_target=None, epsilon=0.01, restarts=1, max_iter=50)
    assert transfer_accuracy(plain.labels, x_t) < 0.1
    checked = robust_coupling(reflected, c_s, c_t, labels, anchor_target=x_t, epsilon=0.01, restarts=1, max_iter=50)
    assert checked.flipped and checked.agreement < 0
    assert transfer_accuracy(checked.labels, x_t) > 0.9
    right = robust_coupling(
        distance_matrix(x_s[:, None], x_t[:, None] / 3), c_s, c_t, labels, x_t, epsilon=0.01, restarts=1, max_iter=50
    )
    assert not right.flipped and transfer_accuracy(right.labels, x_t) > 0.9


def test_restarts_keep_the_lowest_objective():
    x_s, x_t, labels, _ = _line_problem(seed=3)
    c_s, c_t = distance_matrix(x_s[:, None]), distance_matrix(x_t[:, None])
    cross = distance_matrix(x_s[:, None], x_t[:, None] / 3.0)
    result = robust_coupling(cross, c_s, c_t, labels, None, epsilon=None, restarts=4, seed=1, max_iter=50)
    assert len(result.objectives) == 4
    assert result.objective == min(result.objectives)


def test_borda_ranks_like_the_labels():
    scores = np.array([0.3, -1.0, 2.0, 0.0])
    np.testing.assert_array_equal(np.argsort(borda(label_matrix(scores))), np.argsort(scores))


def test_feature_bradley_terry_learns_a_linear_reward_and_transfers():
    rng = np.random.default_rng(4)
    w = np.array([1.0, -2.0, 0.5])
    source, target = rng.normal(size=(200, 3)), rng.normal(size=(150, 3))
    model = FeatureBradleyTerry().fit(source, label_matrix(source @ w))
    assert transfer_accuracy(model.pair_labels(target), target @ w) > 0.95


def test_summary_features_on_hand_made_segment():
    obs = np.zeros((1, 3, 39))
    obs[0, :, 0] = [0.0, 1.0, 1.0]  # hand moves 1 along x, then stays
    obs[0, :, 4] = [2.0, 2.0, 2.0]  # object still, 2 away at the start
    obs[0, :, 3] = [1.0, 0.0, 0.5]
    act = np.array([[[1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]])
    f = summary_features(obs, act)[0]
    # hand disp 1, path 1, mean|a| 6/12, mean|Δa| (2 + 4)/8, obj disp 0, path 0, hand-obj mean 4/3, start 2, end 1,
    # gripper mean 0.5.
    np.testing.assert_allclose(f, [1, 1, 0.5, 0.75, 0, 0, 4 / 3, 2, 1, 0.5])


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"labels must be \[n_s, n_s\]"):
        transfer_labels(np.ones((3, 2)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="mask has shape"):
        transfer_labels(np.ones((3, 2)), np.ones((3, 3)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="alpha"):
        fused_gw_coupling(np.ones((2, 2)), np.ones((2, 2)), np.ones((2, 2)), alpha=1.5)
    with pytest.raises(ValueError, match="valid: exact, entropic"):
        gw_coupling(np.ones((2, 2)), np.ones((2, 2)), method="sinkhorn")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="observations must be"):
        summary_features(np.ones((2, 3)), np.ones((2, 3)))


@pytest.mark.slow
def test_robust_transfer_learns_window_open_to_window_close(tmp_path):
    # Real Meta-World rollouts (7 behaviours × 6 trajectories per task); source labels from the source's returns, the
    # target's returns only score. pearl-notes: WO→WC is the one pair plain GW also handles, so this is a floor.
    from mmpref.control.pearl.data import load_or_generate, segment_arrays
    from mmpref.control.pearl.transfer import flat_features, zscore

    torch.set_num_threads(1)
    source = segment_arrays(load_or_generate("window-open-v3", tmp_path, 6, 200, 0))
    target = segment_arrays(load_or_generate("window-close-v3", tmp_path, 6, 200, 1))
    f_s = zscore(summary_features(source["obs"], source["act"]))
    f_t = zscore(summary_features(target["obs"], target["act"]))
    labels = label_matrix(source["ret"])
    anchor = FeatureBradleyTerry().fit(f_s, labels).score(f_t)
    result = robust_coupling(
        distance_matrix(f_s, f_t),
        distance_matrix(flat_features(source["obs"], source["act"])),
        distance_matrix(flat_features(target["obs"], target["act"])),
        labels,
        anchor,
        alpha=0.9,
        restarts=2,
    )
    accuracy = transfer_accuracy(result.labels, target["ret"])
    chance = transfer_accuracy(
        transfer_labels(random_coupling(168, 168, np.random.default_rng(0)), labels), target["ret"]
    )
    assert accuracy >= 0.8, accuracy
    assert chance < 0.65


@pytest.mark.parametrize(
    "device",
    [
        "cpu:0",
        pytest.param(
            "cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")]
        ),
    ],
)
def test_torch_backend_matches_numpy(device):
    # "cpu:0" runs POT's torch backend on the CPU: the same code path as CUDA, checkable without a GPU.
    x_s, x_t, labels, _ = _line_problem(n=16)
    c_s, c_t = distance_matrix(x_s[:, None]), distance_matrix(x_t[:, None])
    cross = distance_matrix(x_s[:, None], x_t[:, None] / 3.0)
    # Few iterations: the two backends must agree step by step, convergence is not what is checked here.
    plan_np, obj_np = fused_gw_coupling(cross, c_s, c_t, alpha=0.5, epsilon=0.01, max_iter=3)
    plan_t, obj_t = fused_gw_coupling(cross, c_s, c_t, alpha=0.5, epsilon=0.01, max_iter=3, device=device)
    np.testing.assert_allclose(plan_t, plan_np, atol=1e-8)
    assert obj_t == pytest.approx(obj_np, abs=1e-8)
    gw_np, _ = gw_coupling(c_s, c_t, "entropic", 0.01, max_iter=3)
    gw_t, _ = gw_coupling(c_s, c_t, "entropic", 0.01, max_iter=3, device=device)
    np.testing.assert_allclose(gw_t, gw_np, atol=1e-8)
    yhat = transfer_labels(torch.as_tensor(plan_np, device=device), torch.as_tensor(labels, device=device))
    np.testing.assert_allclose(yhat.cpu().numpy(), transfer_labels(plan_np, labels), atol=1e-12)
