"""Offscreen rendering of policies to MP4 (MUJOCO_GL=egl, low-quality settings) and success-curve plots."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from mmpref.control.envs import make_env
from mmpref.data.io import atomic_write


def camera_upside_down(env: object, camera: str = "corner") -> bool:
    """Whether a Meta-World camera's image "up" points down in the world, so its frames need a 180° turn for people.

    Meta-World's ``corner`` camera has ``xyaxes`` whose y-axis has world z = −1: its image is rolled, not mirrored,
    so a 180° turn (``frame[::-1, ::-1]``, not a vertical flip) puts the table at the bottom the right way round.
    """
    import mujoco

    unwrapped = env.unwrapped  # type: ignore[attr-defined]
    index = mujoco.mj_name2id(unwrapped.model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
    return bool(unwrapped.data.cam_xmat[index].reshape(3, 3)[2, 1] < 0)


def record_policy(
    policy: Callable[[np.ndarray], np.ndarray],
    task: str,
    path: str | Path,
    seed: int = 0,
    max_steps: int = 500,
    width: int = 240,
    height: int = 180,
    every: int = 2,
    stop_on_success: bool = True,
) -> dict[str, float]:
    """Roll a policy out once with rendering and write an MP4 (every ``every``-th frame); returns its outcome."""
    from mmpref.data.video import save_video

    env = make_env(task, seed=seed, render_mode="rgb_array", width=width, height=height)
    try:
        obs, _ = env.reset(seed=seed)
        turn = camera_upside_down(env)

        def render() -> np.ndarray:
            frame = np.asarray(env.render())
            return frame[::-1, ::-1].copy() if turn else frame

        frames, total, success, steps = [render()], 0.0, False, 0
        for steps in range(1, max_steps + 1):  # noqa: B007
            obs, reward, terminated, truncated, info = env.step(policy(obs))
            total += float(reward)
            success = success or info.get("success", 0.0) > 0
            if steps % every == 0:
                frames.append(render())
            if terminated or truncated or (success and stop_on_success and steps % every == 0):
                break
        save_video(frames, path, fps=max(1, int(round(40 / every))))
    finally:
        env.close()
    return {"return": total, "success": float(success), "steps": steps}


def plot_success_curve(history: Sequence[dict[str, float]], path: str | Path, title: str = "") -> Path:
    """Success rate (and labels used) against environment steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["steps"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(steps, [h["success_rate"] for h in history], "o-", label="success rate")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("success rate")
    ax.set_ylim(-0.05, 1.05)
    if any("labels" in h for h in history):
        twin = ax.twinx()
        twin.plot(steps, [h.get("labels", 0) for h in history], "s--", color="tab:orange", label="labels used")
        twin.set_ylabel("labels used")
    ax.set_title(title)
    fig.tight_layout()
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110)
    plt.close(fig)
    return Path(path)
