from __future__ import annotations

import copy
import json

import lightning as L
import pytest
import torch

from mmpref.losses import LISTWISE_LOSSES, PAIRWISE_LOSSES
from mmpref.reward import ManifestFeatureDataModule, MLPScorer, RewardModelSystem, SyntheticPreferenceDataModule

LOSS_KWARGS = {"ipo": {}, "margin": {"margin": 0.5}, "robust": {"eps": 0.1}}


def _pair_batch(b=16, d=6):
    gen = torch.Generator().manual_seed(0)
    label = torch.tensor([1.0, 0.0, 0.5, 1.0] * (b // 4))
    return {"x_a": torch.randn(b, d, generator=gen), "x_b": torch.randn(b, d, generator=gen), "label": label}


def _list_batch(b=8, k=5, d=6):
    gen = torch.Generator().manual_seed(1)
    mask = torch.ones(b, k, dtype=torch.bool)
    mask[0, 3:] = False
    return {"x": torch.randn(b, k, d, generator=gen), "targets": torch.randn(b, k, generator=gen), "mask": mask}


@pytest.mark.parametrize("loss", sorted({**PAIRWISE_LOSSES, **LISTWISE_LOSSES}))
@pytest.mark.parametrize("layout", ["pairs", "lists"])
def test_one_step_gives_finite_loss_and_moves_parameters(loss, layout):
    torch.manual_seed(0)
    system = RewardModelSystem(
        MLPScorer(6, hidden=[8]), loss=loss, beta=0.5 if loss == "ipo" else 1.0, loss_kwargs=LOSS_KWARGS.get(loss)
    )
    before = copy.deepcopy(system.scorer.state_dict())
    optimizer = system.configure_optimizers()
    batch = _pair_batch() if layout == "pairs" else _list_batch()
    with _no_logging(system):
        loss_value = system.training_step(batch, 0)
    assert loss_value.ndim == 0 and torch.isfinite(loss_value)
    loss_value.backward()
    optimizer.step()
    moved = [k for k, v in system.scorer.state_dict().items() if not torch.equal(v, before[k])]
    assert moved, "no parameter changed after one optimiser step"


class _no_logging:
    """Run a step outside a Trainer: self.log needs one, so silence it for this unit test."""

    def __init__(self, system):
        self.system = system

    def __enter__(self):
        self.system.log = lambda *a, **k: None
        return self

    def __exit__(self, *exc):
        del self.system.log


def test_soft_labels_and_list_expansion_match_the_loss_core():
    from mmpref.losses import bradley_terry, soft_bradley_terry

    torch.manual_seed(0)
    system = RewardModelSystem(MLPScorer(6, hidden=[]), loss="bradley_terry")
    system.log = lambda *a, **k: None
    pairs = _pair_batch()
    want = soft_bradley_terry(system(pairs["x_a"]), system(pairs["x_b"]), pairs["label"]).mean()
    torch.testing.assert_close(system.training_step(pairs, 0), want)
    # A pairwise loss on a list = the sum over every strictly ordered pair of valid items, averaged over lists.
    lists = _list_batch()
    scores = system(lists["x"])
    total = []
    for row in range(scores.shape[0]):
        valid = lists["mask"][row].nonzero().flatten().tolist()
        total.append(
            sum(
                bradley_terry(scores[row, i : i + 1], scores[row, j : j + 1]).sum()
                for i in valid
                for j in valid
                if lists["targets"][row, i] > lists["targets"][row, j]
            )
        )
    torch.testing.assert_close(system.training_step(lists, 0), torch.stack(total).mean())


def test_unknown_loss_and_bad_batch_are_explained():
    with pytest.raises(ValueError, match="unknown loss 'bt'.*valid pairwise losses"):
        RewardModelSystem(MLPScorer(4), loss="bt")
    system = RewardModelSystem(MLPScorer(4))
    with pytest.raises(KeyError, match="neither a pair batch"):
        system.training_step({"features": torch.zeros(2, 4)}, 0)
    with pytest.raises(ValueError, match="scorer expects 4 features but got shape"):
        system(torch.zeros(2, 5))


def _trainer(**kwargs):
    defaults = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    return L.Trainer(**(defaults | kwargs))


def test_manifest_feature_data_module_trains(tmp_path):
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(4, generator=gen)
    lines = []
    for i in range(64):
        a, b = torch.randn(4, generator=gen), torch.randn(4, generator=gen)
        lines.append(json.dumps({"id": f"p{i}", "a": a.tolist(), "b": b.tolist(), "label": float(a @ w > b @ w)}))
    (tmp_path / "train.jsonl").write_text("\n".join(lines))
    lists = [
        json.dumps(
            {
                "type": "list",
                "id": f"l{i}",
                "items": torch.randn(3 + i % 2, 4, generator=gen).tolist(),
                "scores": list(range(3 + i % 2)),
            }
        )
        for i in range(8)
    ]
    (tmp_path / "val.jsonl").write_text("\n".join(lists))
    data = ManifestFeatureDataModule(train=tmp_path / "train.jsonl", val=tmp_path / "val.jsonl", batch_size=16)
    system = RewardModelSystem(MLPScorer(4, hidden=[8]))
    trainer = _trainer(max_epochs=2, default_root_dir=tmp_path)
    trainer.fit(system, data)
    assert trainer.global_step == 8
    assert data.val_set.tensors["mask"].shape == (8, 4) and not data.val_set.tensors["mask"][0, 3]
    (tmp_path / "ratings.jsonl").write_text(json.dumps({"type": "rating", "id": "r", "item": [1.0], "rating": 3}))
    with pytest.raises(Exception, match="only pairs or only lists"):
        ManifestFeatureDataModule(train=tmp_path / "ratings.jsonl").setup()


def test_interrupted_training_resumes_exactly(tmp_path):
    def run(max_epochs, ckpt=None, root=None):
        L.seed_everything(0, verbose=False)
        data = SyntheticPreferenceDataModule(num_features=8, num_train=256, num_val=32, num_test=32, batch_size=32)
        system = RewardModelSystem(MLPScorer(8, hidden=[16]))
        trainer = _trainer(
            max_epochs=max_epochs, default_root_dir=root or tmp_path, enable_checkpointing=True, num_sanity_val_steps=0
        )
        trainer.fit(system, data, ckpt_path=ckpt)
        return system, trainer

    straight, _ = run(4, root=tmp_path / "straight")
    _, first = run(2, root=tmp_path / "interrupted")
    ckpt = first.checkpoint_callback.best_model_path or first.checkpoint_callback.last_model_path
    resumed, second = run(4, ckpt=ckpt, root=tmp_path / "interrupted")
    assert second.global_step == 4 * 8
    for name, value in straight.scorer.state_dict().items():
        torch.testing.assert_close(resumed.scorer.state_dict()[name], value, rtol=0, atol=0)
