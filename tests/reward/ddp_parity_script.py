"""Train the reward system for a few epochs on 1 process or with strategy="ddp" on 2 CPU processes (gloo).

Usage: python ddp_parity_script.py DEVICES PER_PROCESS_BATCH OUT.pt
Lightning's DDP launcher re-runs this script once per extra process, with the same arguments.
"""

from __future__ import annotations

import sys

import lightning as L
import torch

from mmpref.reward import MLPScorer, RewardModelSystem, SyntheticPreferenceDataModule


def main(devices: int, batch_size: int, out: str) -> None:
    L.seed_everything(0, verbose=False)
    torch.set_num_threads(1)
    # 512 pairs, divisible by the global batch, so the distributed sampler adds no padding; the data module shares
    # one seeded permutation per epoch, so the union of the processes' k-th batches is the single k-th batch.
    data = SyntheticPreferenceDataModule(
        num_features=8, num_train=512, num_val=64, num_test=64, batch_size=batch_size, shuffle=True, seed=3
    )
    system = RewardModelSystem(MLPScorer(8, hidden=[16]), optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2))
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        max_epochs=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    trainer.fit(system, data)
    if trainer.global_rank == 0:
        torch.save(
            {k: v.detach().cpu() for k, v in system.scorer.state_dict().items()}
            | {"_world_size": torch.tensor(trainer.world_size), "_steps": torch.tensor(trainer.global_step)},
            out,
        )


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
