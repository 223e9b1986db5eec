"""Clips of queried segments for people: the simulator states a segment went through, rendered after the fact.

A segment keeps observations, actions and true rewards, not what a camera needs: the arm's joint angles are not in
Meta-World's 39-dim observation, and each task places its objects by editing the *model* at reset
(``model.body("box").pos``, ``model.site("goal").pos``) and its goal markers by writing ``data.site_xpos`` after
every step. So the loop records, only when a human teacher is attached (:class:`SimRecorder`):

* per step, before the action (aligned with the observation): ``qpos ‖ qvel ‖ mocap_pos ‖ mocap_quat``
  (float64, about 40 numbers on the Sawyer tasks: ~6 MB for the loop's 20,000 remembered steps);
* per episode, at reset: ``model.body_pos``, ``model.site_pos`` and the task's target sites.

A queried segment is found in the remembered episodes by its start and observations, and rendered frame by frame:
model arrays set, state set, ``mj_forward``, target sites placed, ``render()``. Nothing is rendered during
rollouts (which would cost a render per step for clips of which only the queried few are ever shown), and nothing
is replayed (replaying actions from a reset would depend on the solver's warm start being reproduced). The test
checks a re-rendered frame against the frame rendered live at that step.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from mmpref.control.segments import Episode
from mmpref.control.video import camera_upside_down
from mmpref.data import Segment

log = logging.getLogger(__name__)

CLIP_WIDTH, CLIP_HEIGHT, CAMERA = 320, 240, "corner"


class SimRecorder:
    """What :class:`~mmpref.control.pbrl.env.PreferenceEnv` records to render later: per-step state, the scene."""

    @staticmethod
    def state(env: gym.Env) -> np.ndarray:
        """``qpos ‖ qvel ‖ mocap_pos ‖ mocap_quat`` of the simulator now, flat float64."""
        data = env.unwrapped.data
        return np.concatenate([data.qpos, data.qvel, data.mocap_pos.ravel(), data.mocap_quat.ravel()])

    @staticmethod
    def scene(env: gym.Env) -> dict[str, Any]:
        """The per-episode model edits of a Meta-World reset: body and site positions, target sites."""
        unwrapped = env.unwrapped
        targets = []
        try:  # Meta-World's goal markers, re-placed in data.site_xpos after every step
            targets = [(name, np.asarray(pos, np.float64).copy()) for name, pos in unwrapped._target_site_config]
        except (AttributeError, AssertionError, TypeError):
            targets = []
        return {
            "body_pos": unwrapped.model.body_pos.copy(),
            "site_pos": unwrapped.model.site_pos.copy(),
            "targets": targets,
        }


def set_sim_state(env: gym.Env, scene: dict[str, Any], state: np.ndarray) -> None:
    """Put ``env`` in a recorded scene and state (what :class:`SimRecorder` recorded), ready to render."""
    import mujoco

    unwrapped = env.unwrapped
    model, data = unwrapped.model, unwrapped.data
    model.body_pos[:] = scene["body_pos"]
    model.site_pos[:] = scene["site_pos"]
    sizes = [model.nq, model.nv, 3 * model.nmocap, 4 * model.nmocap]
    if len(state) != sum(sizes):
        raise ValueError(f"a recorded state has {len(state)} numbers, this env's model needs {sum(sizes)}")
    qpos, qvel, mocap_pos, mocap_quat = np.split(state, np.cumsum(sizes)[:-1])
    data.qpos[:], data.qvel[:] = qpos, qvel
    data.mocap_pos[:] = mocap_pos.reshape(-1, 3)
    data.mocap_quat[:] = mocap_quat.reshape(-1, 4)
    mujoco.mj_forward(model, data)
    for name, pos in scene["targets"]:
        data.site(name).xpos = pos[:3]


def find_segment(segment: Segment, episodes: Sequence[Episode]) -> tuple[Episode, int]:
    """The remembered episode a segment was cut from (its steps ``start..start+T`` have the segment's observations).

    Raises:
        LookupError: no episode with recorded states holds the segment (it was cut from elsewhere, or forgotten).
    """
    start, length = segment.start, len(segment)
    for episode in episodes:
        if episode.states is None or episode.scene is None or len(episode.states) < start + length:
            continue
        if np.array_equal(episode.observations[start : start + length], segment.observations):
            return episode, start
    raise LookupError(f"segment {segment.id!r}: no remembered episode with simulator states holds it")


def segment_digest(segment: Segment) -> str:
    """A content hash of a segment (observations and actions): the clip's name, the same after a resume."""
    digest = hashlib.sha256()
    for array in (segment.observations, segment.actions):
        digest.update(np.ascontiguousarray(array, np.float32).tobytes())
    return digest.hexdigest()[:16]


class ClipRenderer:
    """Renders segments of remembered episodes as MP4 clips (H.264, what browsers play) in ``folder``.

    Args:
        task: the Meta-World task (a render env of it is made on first use).
        folder: where clips go; a clip is named by its segment's content hash and rendered once.
        fps: frames per second of the clip.
        every: one frame per ``every`` environment steps (Meta-World steps at 80 Hz: ``every=2`` at 10 fps shows
            a 50-step segment 4× slowed down, over 2.5 s).
        seed: seed of the render env (its own state is overwritten frame by frame).
    """

    def __init__(self, task: str, folder: str | Path, fps: int = 10, every: int = 2, seed: int = 0):
        self.task, self.folder, self.fps, self.every, self.seed = task, Path(folder), fps, every, seed
        self._env: gym.Env | None = None

    def _render_env(self) -> gym.Env:
        if self._env is None:
            from mmpref.control.envs import make_env

            self._env = make_env(
                self.task,
                seed=self.seed,
                render_mode="rgb_array",
                width=CLIP_WIDTH,
                height=CLIP_HEIGHT,
                camera_name=CAMERA,
            )
            self._env.reset(seed=self.seed)
        return self._env

    def upside_down(self) -> bool:
        """Whether this camera's frames are turned 180° for people (see :func:`camera_upside_down`)."""
        return camera_upside_down(self._render_env(), CAMERA)

    def frames(self, episode: Episode, start: int, length: int) -> list[np.ndarray]:
        """Rendered frames of every ``every``-th step of ``start..start+length`` of a recorded episode."""
        env, turn = self._render_env(), self.upside_down()
        frames = []
        for state in episode.states[start : start + length : self.every]:
            set_sim_state(env, episode.scene, state)
            frame = np.asarray(env.render())
            frames.append((frame[::-1, ::-1] if turn else frame).copy())
        return frames

    def clip(self, segment: Segment, episodes: Sequence[Episode]) -> Path:
        """The clip of a segment (rendered now unless a clip of the same content exists)."""
        from mmpref.data.video import save_video

        path = self.folder / f"segment-{segment_digest(segment)}.mp4"
        if not path.is_file():  # written atomically: a file here is a whole clip
            episode, start = find_segment(segment, episodes)
            save_video(self.frames(episode, start, len(segment)), path, fps=self.fps)
        return path

    def close(self) -> None:
        """Close the render env."""
        if self._env is not None:
            self._env.close()
            self._env = None
