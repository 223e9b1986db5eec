"""Model families (SD ε/v, SDXL, SD3 flow) on tiny random pipelines saved by the test; the Flow-DPO loss oracle."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmpref.vision.diffusion.families import FAMILIES, PipelineError, load_family
from mmpref.vision.diffusion.pipelines import PipelineDPOConfig, save_finetuned, train
from mmpref.vision.diffusion.tiny import tiny_pickapic_parquet as write_pairs
from mmpref.vision.diffusion.tiny import tiny_sd3_pipeline, tiny_sd_pipeline, tiny_sdxl_pipeline

BUILDERS = {
    "sd-epsilon": lambda: tiny_sd_pipeline(prediction_type="epsilon"),
    "sd-v": lambda: tiny_sd_pipeline(prediction_type="v_prediction"),
    "sdxl": tiny_sdxl_pipeline,
    "sd3": tiny_sd3_pipeline,
}


def _probe(family, seed: int = 1):
    """A fixed denoiser input of the family: latents, training indices and conditioning."""
    g = torch.Generator().manual_seed(seed)
    cond = family.encode_prompts(["a cat", "a dog"])
    xt = torch.randn(2, 4, 8, 8, generator=g)
    return xt, torch.tensor([10, 700]), cond


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_one_dpo_step_changes_policy_keeps_reference_and_lora_loads_in_diffusers(kind, tmp_path):
    folder = tmp_path / "pipe"
    BUILDERS[kind]().save_pretrained(folder)
    pairs = write_pairs(tmp_path / "pairs.parquet")
    cfg = PipelineDPOConfig(pipeline=str(folder), pairs=str(pairs), ties="drop", steps=1, batch_size=3, lr=1e-2)
    family, system, report = train(cfg)
    assert report["steps"] == 1 and np.isfinite(report["metrics"]["train/loss"])
    assert system.ref_unet is None  # LoRA holds one denoiser: the reference is the base with adapters disabled

    fresh = load_family(folder)
    xt, t, cond = _probe(fresh)
    with torch.no_grad():
        base = fresh.predict(fresh.denoiser, xt, t, cond)
        tuned = family.predict(system.unet, xt, t, cond)
        with system.reference_mode() as ref:
            reference = family.predict(ref, xt, t, cond)
    assert torch.equal(reference, base)  # the reference is bit-identical to the saved base
    assert (tuned - base).abs().max() > 1e-6  # the step moved the policy

    out = save_finetuned(family, system, "lora", tmp_path / "lora")
    fresh.pipe.load_lora_weights(out)  # diffusers' own loader, unchanged
    with torch.no_grad():
        loaded = fresh.predict(fresh.denoiser, xt, t, cond)
    torch.testing.assert_close(loaded, tuned, rtol=1e-5, atol=1e-6)


def test_sd3_full_finetune_writes_a_pipeline_diffusers_loads(tmp_path):
    from diffusers import StableDiffusion3Pipeline

    folder = tmp_path / "pipe"
    tiny_sd3_pipeline().save_pretrained(folder)
    pairs = write_pairs(tmp_path / "pairs.parquet", n=4)
    cfg = PipelineDPOConfig(pipeline=str(folder), pairs=str(pairs), ties="drop", mode="full", steps=1, lr=1e-3)
    family, system, _ = train(cfg)
    assert system.ref_unet is not None  # full: a frozen copy is the reference
    out = save_finetuned(family, system, "full", tmp_path / "full", folder)
    tuned = StableDiffusion3Pipeline.from_pretrained(out, text_encoder_3=None, tokenizer_3=None)
    base = load_family(folder).denoiser
    assert any(not torch.equal(a, b) for a, b in zip(tuned.transformer.parameters(), base.parameters(), strict=True))
    image = tuned(["a cat"], num_inference_steps=2, height=16, width=16, output_type="np").images
    assert image.shape == (1, 16, 16, 3)


def test_unknown_family_is_named(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(PipelineError, match=r"_class_name 'FluxPipeline' is not a supported family; supported: "):
        load_family(tmp_path)
    (tmp_path / "unet").mkdir()
    assert set(FAMILIES) == {"StableDiffusionPipeline", "StableDiffusionXLPipeline", "StableDiffusion3Pipeline"}
    with pytest.raises(PipelineError, match="missing model_index.json"):
        load_family(tmp_path / "unet")  # a folder without model_index.json


def test_flow_dpo_loss_matches_its_equation():
    """L = −log σ(−β/2 [(‖v^w − v_θ(x^w_t)‖² − ‖v^w − v_ref(x^w_t)‖²) − (same for l)]).

    With x_t = (1−σ)x₀ + σε and v = ε − x₀ (Flow-DPO, constant β), computed here without the system.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler

    from mmpref.vision.diffusion.families import SD3Family
    from mmpref.vision.diffusion.system import DiffusionDPOSystem

    pipe = tiny_sd3_pipeline()
    family = SD3Family(pipe=pipe, train_scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))
    beta = 2000.0
    system = DiffusionDPOSystem(pipe.transformer, family.train_scheduler, beta=beta, reference="copy", family=family)
    with torch.no_grad():  # make the policy differ from the reference
        for p in system.unet.parameters():
            p.add_(0.02 * torch.randn_like(p))
    g = torch.Generator().manual_seed(3)
    cond = family.encode_prompts(["a cat", "a dog", "a cow"])
    batch = {"x_w": torch.randn(3, 4, 8, 8, generator=g), "x_l": torch.randn(3, 4, 8, 8, generator=g), "cond": cond}

    torch.manual_seed(11)
    loss = system._step(batch, "train")

    torch.manual_seed(11)  # the same draws, in the system's order: one ε per pair, then one index per pair
    noise = torch.randn_like(batch["x_w"])
    t = torch.randint(0, 1000, (3,))
    sigma = FlowMatchEulerDiscreteScheduler(shift=3.0).sigmas[t].view(-1, 1, 1, 1)

    def error(model, x0):
        xt = (1 - sigma) * x0 + sigma * noise
        out = model(
            hidden_states=xt,
            timestep=sigma.flatten() * 1000,
            encoder_hidden_states=cond["prompt_embeds"],
            pooled_projections=cond["pooled"],
        ).sample
        return ((noise - x0) - out).pow(2).mean(dim=(1, 2, 3))

    with torch.no_grad():
        inner = (error(system.unet, batch["x_w"]) - error(system.ref_unet, batch["x_w"])) - (
            error(system.unet, batch["x_l"]) - error(system.ref_unet, batch["x_l"])
        )
        expected = -F.logsigmoid(-beta / 2 * inner).mean()
    assert abs(inner).max() > 1e-5  # a non-trivial case
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-4, atol=1e-6)
