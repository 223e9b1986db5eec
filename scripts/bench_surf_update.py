"""CPU time of one SURF reward update against PEBBLE's plain update on the same labels (and an older SURF).

500 labelled pairs of random 60-step segments (39-d observations, 4-d actions), a pool of unlabelled pairs, 3 members
of 2 × 128 units, 70 updates of 64 pairs (the suite's round). Prints CPU seconds per update (3 repeats). With
``--old FILE`` (a former ``mmpref/control/pbrl/surf.py``: ``git show 5da0521:mmpref/control/pbrl/surf.py``) it
also times that version and checks the weights come out identical.

Usage: ``OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_surf_update.py [--pool 5000] [--old /tmp/surf_old.py]``
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmpref.control.pbrl import surf  # noqa: E402
from mmpref.control.pbrl.config import PbRLConfig  # noqa: E402
from mmpref.control.reward import RewardEnsemble  # noqa: E402
from mmpref.data import Segment, SegmentPair  # noqa: E402
from mmpref.reward.trainers import quiet_lightning  # noqa: E402

HORIZON, WINDOW = 50, 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=int, default=5000, help="unlabelled pairs in SURF's pool")
    parser.add_argument("--old", default=None, help="an older surf.py to time against")
    args = parser.parse_args()
    torch.set_num_threads(1)
    quiet_lightning()
    rng = np.random.default_rng(0)

    def segment(i: int) -> Segment:
        size = HORIZON + 2 * WINDOW
        obs = rng.standard_normal((size, 39)).astype(np.float32)
        return Segment(f"s{i}", obs, rng.standard_normal((size, 4)).astype(np.float32), None, "bench", 0)

    labelled = [
        SegmentPair(f"p{i}", segment(2 * i), segment(2 * i + 1), float(rng.random() < 0.5)) for i in range(500)
    ]
    pool = [SegmentPair(f"u{i}", segment(2 * i), segment(2 * i + 1), 0.5) for i in range(args.pool)]
    config = PbRLConfig(reward_updates=70, reward_batch_size=64, segment_length=HORIZON)

    def time_surf(module: types.ModuleType) -> tuple[list[float], torch.Tensor]:
        ensemble = RewardEnsemble(39, 4, members=3, hidden=128, layers=2, seed=0)
        loop = types.SimpleNamespace(
            config=config, ensemble=ensemble, labelled=labelled, rng=np.random.default_rng(1),
            fragmenter=lambda episodes, n, r: [], env=types.SimpleNamespace(recent_episodes=lambda: []),
        )  # fmt: skip
        part = module.SURF()
        part.unlabelled = list(pool)
        seconds = []
        for _ in range(3):
            start = time.process_time()
            part.update_reward(loop, [])
            seconds.append(time.process_time() - start)
        return seconds, torch.cat([p.detach().flatten() for p in ensemble.scorer.parameters()])

    new, weights = time_surf(surf)
    print(f"SURF update: {' '.join(f'{s:.2f}' for s in new)} CPU-s")
    if args.old:
        spec = importlib.util.spec_from_file_location("surf_old", args.old)
        old_module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(old_module)
        old, old_weights = time_surf(old_module)
        print(f"older SURF:  {' '.join(f'{s:.2f}' for s in old)} CPU-s; max |weight difference| "
              f"{float((old_weights - weights).abs().max()):.3g}")  # fmt: skip
    ensemble = RewardEnsemble(39, 4, members=3, hidden=128, layers=2, seed=0)
    shown = [
        SegmentPair(p.id, surf.central(p.a, WINDOW, HORIZON), surf.central(p.b, WINDOW, HORIZON), p.label)
        for p in labelled
    ]
    plain = []
    for _ in range(3):
        start = time.process_time()
        ensemble.fit(shown, batch_size=64, updates=70)
        plain.append(time.process_time() - start)
    print(f"PEBBLE's plain update: {' '.join(f'{s:.2f}' for s in plain)} CPU-s")


if __name__ == "__main__":
    main()
