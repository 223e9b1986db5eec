"""On-policy DPO rounds on a real pipeline folder (mmpref.vision.diffusion.online_pipeline, ``mmpref dpo-online``)."""

from __future__ import annotations

import json

import pytest
import torch

from mmpref.cli import main
from mmpref.reward.networks import MLPScorer
from mmpref.reward.system import RewardModelSystem
from mmpref.vision.diffusion.online_pipeline import (
    SEED_STRIDE,
    OnlineSettings,
    load_sampler,
    run_online,
    sample_images,
)
from mmpref.vision.diffusion.pipelines import PipelineDPOConfig, load_family, make_system
from mmpref.vision.diffusion.rewards import save_reward_checkpoint
from mmpref.vision.diffusion.tiny import tiny_sd3_pipeline, tiny_sd_pipeline

pytest.importorskip("peft")
PROMPTS = ["a red square", "a blue circle"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("online-pipelines")
    tiny_sd_pipeline(0).save_pretrained(root / "sd")
    tiny_sd3_pipeline(0).save_pretrained(root / "sd3")
    torch.manual_seed(0)
    reward = RewardModelSystem(MLPScorer(3 * 8 * 8, hidden=[8]))  # a pixel reward model (untrained: any scorer)
    save_reward_checkpoint(reward, root / "reward.ckpt", {"kind": "pixels", "channels": 3, "size": 8})
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n\n")
    return root


def _adapter_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters() if "lora_" in k}


@pytest.mark.parametrize("family", ["sd", "sd3"])
def test_two_rounds_through_the_job_chain_their_lora_weights(folders, family, tmp_path, capsys):
    out = tmp_path / "online"
    code = main(
        [
            "dpo-online",
            "--pipeline", str(folders / family),
            "--reward", str(folders / "reward.ckpt"),
            "--prompts", str(folders / "prompts.txt"),
            "--rounds", "2", "--per-prompt", "3", "--sample-steps", "2",
            "--steps", "1", "--batch_size", "2", "--lr", "1e-3", "--logger", "none",
            "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    stdout = capsys.readouterr().out
    assert "RewardModelSystem" in stdout or "pixels" in stdout
    report = json.loads((out / "report.json").read_text())
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    assert report["rounds"][0]["started_from"] == "base"
    assert report["rounds"][1]["started_from"] == str(out / "round-1" / "lora")
    import pyarrow.parquet as pq

    for rnd in (1, 2):
        table = pq.read_table(out / f"round-{rnd}" / "pairs.parquet").to_pydict()
        assert len(table["caption"]) == 2  # best vs worst of each prompt's 3 samples
        assert sorted(table["caption"]) == sorted(PROMPTS)
        assert table["label_0"] == [1.0, 1.0]
        assert all(w > lose for w, lose in zip(table["score_0"], table["score_1"], strict=True))
        assert (out / f"round-{rnd}" / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert all(isinstance(r["mean_reward"], float) for r in report["rounds"])

    # every round's LoRA loads in diffusers, and tuned samples differ from the base's under the same seed
    base = sample_images(load_sampler(folders / family), PROMPTS, 2, seed=5, steps=2, guidance=5.0)
    tuned = sample_images(load_sampler(folders / family, out / "round-1" / "lora"), PROMPTS, 2, 5, 2, 5.0)
    again = sample_images(load_sampler(folders / family), PROMPTS, 2, seed=5, steps=2, guidance=5.0)
    assert torch.equal(base, again)  # fixed seeds: sampling itself is deterministic
    assert (tuned - base).abs().max() > 1e-4

    # round 2's adapters start exactly at round 1's weights (init_lora), not at a fresh initialisation
    cfg = PipelineDPOConfig(
        pipeline=str(folders / family), pairs="-", ties="drop", init_lora=str(out / "round-1" / "lora")
    )
    started = _adapter_state(make_system(cfg, load_family(folders / family)).unet)
    fresh = _adapter_state(make_system(PipelineDPOConfig(cfg.pipeline, "-", "drop"), load_family(cfg.pipeline)).unet)
    from safetensors.torch import load_file

    saved = load_file(out / "round-1" / "lora" / "pytorch_lora_weights.safetensors")
    assert len(started) == len(saved) > 0
    saved_values = sorted(float(v.double().sum()) for v in saved.values())
    assert saved_values == pytest.approx(sorted(float(v.double().sum()) for v in started.values()), abs=1e-5)
    assert any(not torch.equal(started[k], fresh[k]) for k in started)


def test_the_scorer_sees_the_pipelines_samples(folders, tmp_path):
    seen: list[torch.Tensor] = []

    def scorer(images: torch.Tensor) -> torch.Tensor:
        seen.append(images.clone())
        return images.mean((1, 2, 3))

    cfg = PipelineDPOConfig(pipeline=str(folders / "sd"), pairs="-", ties="drop", steps=1, batch_size=2, logger="none")
    settings = OnlineSettings(rounds=1, per_prompt=2, sample_steps=2, seed=3)
    report = run_online(cfg, PROMPTS, scorer, settings, tmp_path / "out")
    assert len(seen) == 2  # round 1's samples, then the final model's
    expected = sample_images(load_sampler(folders / "sd"), PROMPTS, 2, 3 + SEED_STRIDE, 2, settings.guidance)
    assert seen[0].shape == (4, 3, 16, 16)
    assert torch.allclose(seen[0], expected.reshape(4, 3, 16, 16))
    assert seen[0].min() >= -1 and seen[0].max() <= 1
    assert report["rounds"][0]["mean_reward"] == pytest.approx(float(seen[0].mean((1, 2, 3)).mean()), abs=1e-6)


def test_bad_reward_path_or_prompts_file_exit_2_naming_the_file(folders, tmp_path, capsys):
    common = ["dpo-online", "--pipeline", str(folders / "sd"), "--out", str(tmp_path / "o")]
    missing = tmp_path / "nope.ckpt"
    assert main([*common, "--reward", str(missing), "--prompts", str(folders / "prompts.txt")]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "Traceback" not in err
    prompts = tmp_path / "prompts-missing.txt"
    assert main([*common, "--reward", str(folders / "reward.ckpt"), "--prompts", str(prompts)]) == 2
    err = capsys.readouterr().err
    assert str(prompts) in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_a_lora_of_another_rank_is_refused_naming_init_lora(folders, tmp_path):
    from mmpref.vision.diffusion.families import PipelineError
    from mmpref.vision.diffusion.pipelines import save_finetuned

    family = load_family(folders / "sd")
    cfg = PipelineDPOConfig(pipeline=str(folders / "sd"), pairs="-", ties="drop", lora_rank=2)
    save_finetuned(family, make_system(cfg, family), "lora", tmp_path / "r2")
    bad = PipelineDPOConfig(pipeline=str(folders / "sd"), pairs="-", ties="drop", init_lora=str(tmp_path / "r2"))
    with pytest.raises(PipelineError, match="init_lora"):
        make_system(bad, load_family(folders / "sd"))


def test_a_missing_init_lora_or_no_pair_left_is_an_error_naming_the_file(folders, tmp_path):
    from mmpref.vision.diffusion.online_pipeline import OnlineError

    settings = OnlineSettings(rounds=1, per_prompt=2, sample_steps=1)
    cfg = PipelineDPOConfig(pipeline=str(folders / "sd"), pairs="-", ties="drop", init_lora=str(tmp_path / "none"))
    with pytest.raises(OnlineError, match=str(tmp_path / "none")):
        run_online(cfg, PROMPTS, lambda x: x.mean((1, 2, 3)), settings, tmp_path / "a")
    cfg = PipelineDPOConfig(pipeline=str(folders / "sd"), pairs="-", ties="drop")
    with pytest.raises(OnlineError, match="pairs.parquet: no pair passed"):  # a constant scorer ties every pair
        run_online(cfg, PROMPTS, lambda x: torch.zeros(len(x)), settings, tmp_path / "b")
    assert not (tmp_path / "b" / "round-1" / "pairs.parquet").exists()


def test_a_lora_of_another_family_is_refused_naming_init_lora(folders, tmp_path):
    from mmpref.vision.diffusion.families import PipelineError
    from mmpref.vision.diffusion.pipelines import save_finetuned

    family = load_family(folders / "sd")
    cfg = PipelineDPOConfig(pipeline=str(folders / "sd"), pairs="-", ties="drop")
    save_finetuned(family, make_system(cfg, family), "lora", tmp_path / "sd-lora")
    bad = PipelineDPOConfig(pipeline=str(folders / "sd3"), pairs="-", ties="drop", init_lora=str(tmp_path / "sd-lora"))
    with pytest.raises(PipelineError, match="0 transformer LoRA tensors"):
        make_system(bad, load_family(folders / "sd3"))


def test_help_leaves_out_the_fields_the_loop_fills_in(capsys):
    assert main(["dpo-online", "--help"]) == 0
    printed = capsys.readouterr().out
    assert "--pipeline" in printed and "--rounds" in printed
    assert "--pairs" not in printed and "--ties" not in printed
    assert main(["dpo-online", "--pairs", "x.parquet"]) == 2
    assert "--pairs is not an option here" in capsys.readouterr().err
