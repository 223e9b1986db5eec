"""Diffusion-DPO: score oracle, one system step (policy moves, reference bit-identical), LoRA holds one UNet."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F

from mmpref.losses import PAIRWISE_LOSSES
from mmpref.vision.diffusion.guard import CollapseGuard, CollapseWarning
from mmpref.vision.diffusion.scores import denoising_error, diffusion_dpo_scores
from mmpref.vision.diffusion.system import DiffusionDPOSystem


def _opt_step(system: DiffusionDPOSystem, batch: dict) -> torch.Tensor:
    optimizer = system.configure_optimizers()
    loss = system._step(batch, "train")
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss


def _unets(system: DiffusionDPOSystem) -> int:
    from diffusers import UNet2DConditionModel

    return sum(isinstance(m, UNet2DConditionModel) for m in system.modules())


def test_scores_match_hand_values():
    pred = torch.tensor([[[[1.0, 2.0]]], [[[0.0, 0.0]]]])
    target = torch.tensor([[[[0.0, 0.0]]], [[[1.0, 1.0]]]])
    assert torch.allclose(denoising_error(pred, target), torch.tensor([2.5, 1.0]))
    assert torch.allclose(
        diffusion_dpo_scores(torch.tensor([0.2, 0.5]), torch.tensor([0.3, 0.1])), torch.tensor([0.1, -0.4])
    )
    with pytest.raises(ValueError, match="must match"):
        diffusion_dpo_scores(torch.zeros(2), torch.zeros(3))


def test_bradley_terry_on_scores_equals_official_formula(tiny_unet, scheduler, pair_batch):
    """The folded constant: loss = −log σ(−½β[(e^w_θ − e^w_ref) − (e^l_θ − e^l_ref)]), written out naively."""
    system = DiffusionDPOSystem(copy.deepcopy(tiny_unet), scheduler, beta=300.0)
    with torch.no_grad():  # make the policy differ from the reference so the margin is not zero
        for p in system.unet.parameters():
            p.add_(0.01 * torch.randn_like(p))
    batch = pair_batch()
    torch.manual_seed(3)
    loss = system._step(batch, "train")
    torch.manual_seed(3)
    b = len(batch["x_w"])
    noise = torch.randn_like(batch["x_w"])
    t = torch.randint(0, 100, (b,))
    terms = []
    for i in range(b):
        errs = {}
        for name in ("x_w", "x_l"):
            xt = scheduler.add_noise(batch[name][i : i + 1], noise[i : i + 1], t[i : i + 1])
            for who, net in (("pol", system.unet), ("ref", system.ref_unet)):
                out = net(xt, t[i : i + 1], encoder_hidden_states=batch["cond"][i : i + 1]).sample
                errs[name, who] = ((out - noise[i : i + 1]) ** 2).mean()
        inside = -0.5 * 300.0 * ((errs["x_w", "pol"] - errs["x_w", "ref"]) - (errs["x_l", "pol"] - errs["x_l", "ref"]))
        terms.append(-F.logsigmoid(inside))
    assert torch.allclose(loss, torch.stack(terms).mean(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_one_step_moves_policy_and_leaves_reference_bit_identical(tiny_unet, pair_batch, prediction_type):
    from mmpref.vision.diffusion.base import make_noise_scheduler

    system = DiffusionDPOSystem(tiny_unet, make_noise_scheduler(prediction_type, 100), beta=100.0, lr=1e-3)
    ref_before = {k: v.clone() for k, v in system.ref_unet.state_dict().items()}
    pol_before = {k: v.clone() for k, v in system.unet.state_dict().items()}
    loss = _opt_step(system, pair_batch())
    assert torch.isfinite(loss)
    assert all(torch.equal(v, system.ref_unet.state_dict()[k]) for k, v in ref_before.items())
    assert any(not torch.equal(v, system.unet.state_dict()[k]) for k, v in pol_before.items())
    assert _unets(system) == 2


def test_lora_reference_holds_one_unet_and_adapters_disabled_is_the_base(tiny_unet, scheduler, pair_batch):
    base = copy.deepcopy(tiny_unet)
    system = DiffusionDPOSystem(tiny_unet, scheduler, reference="lora", lora_rank=4, beta=100.0, lr=1e-2)
    assert system.ref_unet is None and _unets(system) == 1
    assert all("lora" in n for n, p in system.named_parameters() if p.requires_grad)
    batch = pair_batch()
    x, t, c = batch["x_w"], torch.tensor([5, 50, 70, 99]), batch["cond"]
    before = system.unet(x, t, encoder_hidden_states=c).sample.detach()
    for _ in range(2):
        _opt_step(system, batch)
    after = system.unet(x, t, encoder_hidden_states=c).sample.detach()
    assert not torch.allclose(before, after), "the LoRA step did not change the policy"
    with system.reference_mode() as ref:
        ref_out = ref(x, t, encoder_hidden_states=c).sample.detach()
    assert torch.equal(ref_out, base(x, t, encoder_hidden_states=c).sample.detach())
    assert not system.unet._hf_peft_config_loaded or system.unet.active_adapters()  # re-enabled after the block


@pytest.mark.parametrize("loss", sorted(PAIRWISE_LOSSES))
def test_every_pairwise_loss_trains_end_to_end(tiny_unet, scheduler, pair_batch, loss):
    kwargs = {"margin": 1e-4} if loss == "margin" else {}
    system = DiffusionDPOSystem(tiny_unet, scheduler, loss=loss, beta=100.0, lr=1e-3, loss_kwargs=kwargs)
    assert torch.isfinite(_opt_step(system, pair_batch()))


def test_listwise_k2_equals_pairwise_and_k3_runs(tiny_unet, scheduler, pair_batch):
    batch = pair_batch()
    pairwise = DiffusionDPOSystem(copy.deepcopy(tiny_unet), scheduler, beta=200.0)
    listwise = DiffusionDPOSystem(copy.deepcopy(tiny_unet), scheduler, loss="plackett_luce", beta=200.0)
    for s in (pairwise, listwise):
        with torch.no_grad():
            torch.manual_seed(1)
            for p in s.unet.parameters():
                p.add_(0.01 * torch.randn_like(p))
    torch.manual_seed(7)
    pair_loss = pairwise._step(batch, "train")
    lists = {
        "x": torch.stack([batch["x_w"], batch["x_l"]], 1),
        "targets": torch.tensor([[1.0, 0.0]] * 4),
        "cond": batch["cond"],
    }
    torch.manual_seed(7)
    list_loss = listwise._step(lists, "train")
    assert torch.allclose(pair_loss, list_loss, rtol=1e-5)
    three = {
        "x": torch.rand(2, 3, 1, 8, 8) * 2 - 1,
        "targets": torch.tensor([[0.1, 0.9, 0.5], [1.0, 0.0, 2.0]]),
        "mask": torch.tensor([[True, True, True], [True, True, False]]),
        "cond": torch.randn(2, 1, 12),
    }
    for name in ("plackett_luce", "ranklist"):
        system = DiffusionDPOSystem(copy.deepcopy(tiny_unet), scheduler, loss=name, beta=100.0, lr=1e-3)
        assert torch.isfinite(_opt_step(system, three))


def test_personalized_user_vector_starts_at_base_and_learns(tiny_unet, scheduler, pair_batch):
    system = DiffusionDPOSystem(tiny_unet, scheduler, beta=100.0, lr=1e-3, num_users=2, user_lr=1e-2)
    batch = pair_batch() | {"user": torch.tensor([0, 1, 0, 1])}
    s_w, s_l, _ = system.pair_scores(batch)
    assert torch.allclose(s_w, torch.zeros_like(s_w)) and torch.allclose(s_l, torch.zeros_like(s_l))
    _opt_step(system, batch)
    assert system.user_embeddings.weight.abs().sum(1).gt(0).all()
    system.fit_new_user_only(1)
    unet_before = {k: v.clone() for k, v in system.unet.state_dict().items()}
    row0 = system.user_embeddings.weight[0].detach().clone()
    _opt_step(system, batch)
    assert all(torch.equal(v, system.unet.state_dict()[k]) for k, v in unet_before.items())
    assert torch.equal(row0, system.user_embeddings.weight[0])


def test_collapse_guard_warns_stops_and_restores(tiny_unet, scheduler):
    system = DiffusionDPOSystem(tiny_unet, scheduler, beta=100.0)

    class FakeTrainer:
        global_step = 0
        should_stop = False

    trainer = FakeTrainer()
    guard = CollapseGuard(threshold=0.05, smoothing=0.0, stop=True, snapshot_every=1)
    system.log_dict = lambda *a, **k: None
    guard.on_train_start(trainer, system)
    good = system.trainable_state()
    system.last_error_gaps = (0.01, 0.2)  # winners fine: healthy
    guard.on_train_batch_end(trainer, system, None, None, 0)
    assert not trainer.should_stop
    with torch.no_grad():
        for p in system.unet.parameters():
            p.add_(1.0)
    system.last_error_gaps = (0.3, 0.4)
    trainer.global_step = 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        guard.on_train_batch_end(trainer, system, None, None, 1)
    assert any(issubclass(w.category, CollapseWarning) for w in caught)
    assert trainer.should_stop and guard.collapsed_at == 1
    assert all(torch.equal(v, system.trainable_state()[k]) for k, v in good.items())


def test_bad_arguments_are_named(tiny_unet, scheduler):
    with pytest.raises(ValueError, match="reference must be"):
        DiffusionDPOSystem(tiny_unet, scheduler, reference="twin")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown loss"):
        DiffusionDPOSystem(tiny_unet, scheduler, loss="dpo++")


def test_kto_step_matches_its_equation_and_trains_only_the_policy(tiny_unet, scheduler, pair_batch):
    """Diffusion-KTO on pairs read as unpaired data: winners liked, losers disliked, each with its own ε and t."""
    import torch.nn.functional as F

    from mmpref.vision.diffusion.system import DiffusionDPOSystem

    system = DiffusionDPOSystem(tiny_unet, scheduler, loss="kto", beta=1000.0, lr=1e-2)
    with torch.no_grad():
        for p in system.unet.parameters():
            p.add_(0.01 * torch.randn_like(p))
    batch = pair_batch(b=3)
    torch.manual_seed(5)
    loss = system._step(batch, "train")

    torch.manual_seed(5)  # the system's draws, in its order: ε for all 2B images, then their timesteps
    x = torch.cat([batch["x_w"], batch["x_l"]])
    noise, t = torch.randn_like(x), torch.randint(0, 100, (6,))
    cond = torch.cat([batch["cond"]] * 2)
    xt = scheduler.add_noise(x, noise, t)
    with torch.no_grad():
        err = [
            (m(xt, t, encoder_hidden_states=cond).sample - noise).pow(2).mean((1, 2, 3))
            for m in (system.unet, system.ref_unet)
        ]
        s = -(err[0] - err[1])
        z0 = s.mean().clamp(min=0)
        sign = torch.tensor([1.0, 1, 1, -1, -1, -1])
        expected = (1 - F.sigmoid(sign * 500.0 * (s - z0))).mean()
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-4, atol=1e-6)

    ref_before = {k: v.clone() for k, v in system.ref_unet.state_dict().items()}
    policy_before = [p.clone() for p in system.unet.parameters()]
    optimizer = system.configure_optimizers()
    system._step(batch, "train").backward()
    optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(policy_before, system.unet.parameters(), strict=True))
    assert all(torch.equal(v, system.ref_unet.state_dict()[k]) for k, v in ref_before.items())
