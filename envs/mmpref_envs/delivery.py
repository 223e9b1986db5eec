"""A delivery gridworld in the spirit of Knox et al.'s delivery domain, with random layouts and reward weights.

Knox et al. (2022/2024), "Models of human preference for learning reward functions", §5: an agent on a grid drives
to a destination; cells are plain road (a step cost), brick road (a larger cost), the destination (terminal, a
bonus) or a sheep (terminal, a penalty). Here every instance draws its own layout *and* its own weights w, so the
reward r(s, a) = w·φ(s, a) (φ: one-hot type of the cell entered) differs per instance; the preference-learning
experiment (``scripts/bench_regret.py``) learns w from segment preferences on many instances.

Moves: up, down, left, right; bumping into the border stays in place (and pays the current cell's step cost).
Entering a destination or sheep cell ends the episode; those cells are absorbing in the tabular MDP.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from mmpref_envs.tabular import TabularMDP

FEATURES = ("road", "brick", "destination", "sheep")
TERMINAL_TYPES = (2, 3)
MOVES = ((-1, 0), (1, 0), (0, -1), (0, 1))  # up, down, left, right


@dataclass(frozen=True)
class DeliveryGrid:
    """One gridworld instance: a layout of cell types and the true reward weights.

    Attributes:
        cells: ``[H, W]`` int cell types, indices into :data:`FEATURES`.
        weights: ``[K]`` true reward weight per feature (the reward for entering a cell of that type).
        gamma: discount of the instance's MDP.
    """

    cells: np.ndarray
    weights: np.ndarray
    gamma: float = 0.95

    def __post_init__(self) -> None:
        cells = np.asarray(self.cells)
        if cells.ndim != 2 or cells.min() < 0 or cells.max() >= len(FEATURES):
            raise ValueError(f"DeliveryGrid: cells must be [H, W] ints in [0, {len(FEATURES)}), got {cells.shape}")
        if np.asarray(self.weights).shape != (len(FEATURES),):
            raise ValueError(f"DeliveryGrid: weights must have shape ({len(FEATURES)},) for {FEATURES}")
        if np.isin(cells, TERMINAL_TYPES).all():
            raise ValueError("DeliveryGrid: needs at least one non-terminal cell to start from")
        object.__setattr__(self, "cells", cells.astype(np.int64))
        object.__setattr__(self, "weights", np.asarray(self.weights, np.float64))

    @classmethod
    def random(
        cls,
        rng: np.random.Generator,
        height: int = 6,
        width: int = 6,
        p_brick: float = 0.25,
        p_sheep: float = 0.1,
        n_destinations: int = 1,
        gamma: float = 0.95,
    ) -> DeliveryGrid:
        """A random instance: cell types drawn per cell, then ``n_destinations`` destination cells.

        Weights: road −1 (the unit of reward), brick U(−5, −1), destination U(5, 25), sheep U(−25, −5); so the best
        route trades distance, bricks and sheep differently on every instance.
        """
        cells = rng.choice(3, size=(height, width), p=[1 - p_brick - p_sheep, p_brick, p_sheep])
        cells = np.where(cells == 2, 3, cells)  # the third draw is a sheep
        flat = rng.choice(height * width, size=n_destinations, replace=False)
        cells.reshape(-1)[flat] = 2
        if np.isin(cells, TERMINAL_TYPES).all():
            cells[0, 0] = 0
        weights = np.array([-1.0, rng.uniform(-5, -1), rng.uniform(5, 25), rng.uniform(-25, -5)])
        return cls(cells=cells, weights=weights, gamma=gamma)

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W)."""
        return self.cells.shape

    @property
    def terminal(self) -> np.ndarray:
        """``[S]`` bool over flattened cells (row-major)."""
        return np.isin(self.cells.reshape(-1), TERMINAL_TYPES)

    @property
    def start_states(self) -> np.ndarray:
        """The non-terminal cells (flattened indices), where episodes and segments start."""
        return np.flatnonzero(~self.terminal)

    def mdp(self) -> TabularMDP:
        """The instance as a :class:`TabularMDP` (states = flattened cells, actions = :data:`MOVES`)."""
        h, w = self.shape
        n, k = h * w, len(FEATURES)
        next_state = np.zeros((n, len(MOVES)), np.int64)
        features = np.zeros((n, len(MOVES), k))
        terminal = self.terminal
        for s in range(n):
            row, col = divmod(s, w)
            for a, (dr, dc) in enumerate(MOVES):
                if terminal[s]:
                    next_state[s, a] = s
                    continue
                r2, c2 = min(max(row + dr, 0), h - 1), min(max(col + dc, 0), w - 1)
                s2 = r2 * w + c2
                next_state[s, a] = s2
                features[s, a, self.cells[r2, c2]] = 1.0
        return TabularMDP(next_state=next_state, features=features, terminal=terminal, gamma=self.gamma)


class DeliveryGridEnv(gym.Env):
    """Gymnasium env over a :class:`DeliveryGrid`: observation = flattened cell index, 4 discrete moves.

    ``reset`` starts in a uniformly drawn non-terminal cell (or ``options={"state": s}``); ``step`` returns
    w·φ(s, a) and ``terminated=True`` on entering a destination or sheep; ``max_steps`` truncates.
    """

    metadata = {"render_modes": ["ansi"]}

    def __init__(self, grid: DeliveryGrid | None = None, seed: int = 0, max_steps: int = 100):
        self.grid = grid if grid is not None else DeliveryGrid.random(np.random.default_rng(seed))
        self.tabular = self.grid.mdp()
        self.max_steps = max_steps
        self.observation_space = gym.spaces.Discrete(self.tabular.n_states)
        self.action_space = gym.spaces.Discrete(len(MOVES))
        self.render_mode = "ansi"
        self._state = int(self.grid.start_states[0])
        self._steps = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[int, dict]:
        """Start in a random non-terminal cell, or in ``options["state"]``."""
        super().reset(seed=seed)
        if options and "state" in options:
            state = int(options["state"])
            if state not in set(self.grid.start_states.tolist()):
                raise ValueError(f"reset option 'state'={state} is not a non-terminal cell of this grid")
        else:
            state = int(self.np_random.choice(self.grid.start_states))
        self._state, self._steps = state, 0
        return state, {}

    def step(self, action: int) -> tuple[int, float, bool, bool, dict]:
        """Move; the reward is the weight of the entered cell's type."""
        if not self.action_space.contains(action):
            raise ValueError(f"action must be an int in [0, {len(MOVES)}), got {action!r}")
        s = self._state
        reward = float(self.tabular.features[s, action] @ self.grid.weights)
        self._state = int(self.tabular.next_state[s, action])
        self._steps += 1
        terminated = bool(self.tabular.terminal[self._state])
        return self._state, reward, terminated, self._steps >= self.max_steps, {}

    def render(self) -> str:
        """The grid as text: . road, # brick, D destination, S sheep, A agent."""
        chars = np.array([".", "#", "D", "S"])[self.grid.cells]
        row, col = divmod(self._state, self.grid.shape[1])
        chars[row, col] = "A"
        return "\n".join("".join(line) for line in chars)
