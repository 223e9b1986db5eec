from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import mmpref_envs
from mmpref_envs import DeliveryGrid, DeliveryGridEnv, TabularMDP, policy_iteration, value_iteration

# a hand-made 1x4 corridor: road, brick, road, destination; weights: road −1, brick −3, destination +10, sheep −20
CORRIDOR = DeliveryGrid(cells=np.array([[0, 1, 0, 2]]), weights=np.array([-1.0, -3.0, 10.0, -20.0]), gamma=1.0)


def test_import_from_another_directory_finds_both_packages():
    # the packaging maps envs/mmpref_envs; mmpref and its subpackages must still be found from anywhere
    code = "import mmpref_envs, mmpref.control, mmpref.losses; print(mmpref_envs.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, check=True)
    assert Path(out.stdout.strip()).parent.name == "mmpref_envs"


def test_corridor_values_by_hand():
    mdp = CORRIDOR.mdp()
    v, q = value_iteration(mdp, CORRIDOR.weights)
    # from cell 2: right into the destination = +10; cell 1: road then destination = −1 + 10 = 9
    # cell 0: brick, road, destination = −3 − 1 + 10 = 6
    np.testing.assert_allclose(v, [6.0, 9.0, 10.0, 0.0])
    # Q(0, left) bumps into the wall and stays on a road cell: −1 + V(0) = 5
    np.testing.assert_allclose(q[0], [-1 + 6, -1 + 6, -1 + 6, -3 + 9])  # up, down, left: stay; right: brick


def test_value_iteration_matches_brute_force_path_search():
    rng = np.random.default_rng(0)
    grid = DeliveryGrid.random(rng, height=3, width=3, gamma=0.9)
    mdp = grid.mdp()
    v, _ = value_iteration(mdp, grid.weights)
    r = mdp.rewards(grid.weights)
    for s in grid.start_states:
        best = -np.inf
        # every 7-step plan, V* at the leaves: the 7-step Bellman optimality equation by exhaustive search
        for plan in itertools.product(range(4), repeat=7):
            state, total = s, 0.0
            for t, a in enumerate(plan):
                total += 0.9**t * r[state, a]
                state = mdp.next_state[state, a]
            best = max(best, total + 0.9**7 * v[state])
        assert best == pytest.approx(v[s], abs=1e-8)


def test_policy_iteration_equals_value_iteration_on_random_instances():
    for seed in range(5):
        grid = DeliveryGrid.random(np.random.default_rng(seed))
        mdp = grid.mdp()
        v_vi, _ = value_iteration(mdp, grid.weights)
        _, v_pi = policy_iteration(mdp, grid.weights)
        np.testing.assert_allclose(v_vi, v_pi, atol=1e-8)


def test_env_steps_follow_the_mdp_and_terminate():
    env = gym.make("mmpref_envs/DeliveryGrid-v0", grid=CORRIDOR)
    obs, _ = env.reset(options={"state": 0})
    assert obs == 0
    obs, reward, terminated, truncated, _ = env.step(3)
    assert (obs, reward, terminated) == (1, -3.0, False)
    env.step(3)
    obs, reward, terminated, _, _ = env.step(3)
    assert (obs, reward, terminated) == (3, 10.0, True)
    assert "A" in env.unwrapped.render()


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="weights must have shape"):
        DeliveryGrid(cells=np.zeros((2, 2), int), weights=np.zeros(3))
    with pytest.raises(ValueError, match="non-terminal"):
        DeliveryGrid(cells=np.full((2, 2), 2), weights=np.zeros(4))
    with pytest.raises(ValueError, match="absorbing"):
        TabularMDP(next_state=np.array([[1], [0]]), features=np.zeros((2, 1, 1)), terminal=np.array([False, True]))
    env = DeliveryGridEnv(CORRIDOR)
    with pytest.raises(ValueError, match="not a non-terminal cell"):
        env.reset(options={"state": 3})
    with pytest.raises(ValueError, match="action must be"):
        env.step(7)


def test_random_instances_differ_and_have_a_destination():
    a, b = (DeliveryGrid.random(np.random.default_rng(s)) for s in (1, 2))
    assert not np.array_equal(a.cells, b.cells) and not np.allclose(a.weights, b.weights)
    assert (a.cells == 2).sum() == 1
    assert mmpref_envs.FEATURES[2] == "destination"
