"""The distillation memory options (docs/gpu.md): gradient checkpointing changes neither the loss nor the
gradients, frozen phase-1 blocks get no gradient, no optimizer state and no update, and at their defaults the
options leave every config, identity and version exactly as before they existed."""

import pytest
import torch

from dd3g_core.distill.config import DistillConfig, apply_overrides, load_config
from dd3g_core.distill.memory import (
    SavedTensorBytes,
    fit_line,
    largest_batch,
    out_of_memory_advice,
    static_memory,
    synthetic_batch,
)
from dd3g_core.distill.train import _param_groups, build_student, compute_losses, train
from dd3g_core.model.phase1 import phase1_blocks
from dd3g_core.teacher import TinyTeacher

NEW_FIELDS = ("gradient_checkpointing", "freeze_phase1_blocks")


@pytest.fixture(scope="module")
def teacher():
    return TinyTeacher(seed=0).requires_grad_(False).eval()


def tiny_config(**changes) -> DistillConfig:
    # the ramp at 1 from step 0: explicit and implicit terms both reach the student
    return load_config(preset="tiny").replace(implicit_ramp=(0, 0), render_backend="cpu", **changes)


def student(teacher, cfg):
    """A tiny student whose heads are not zero: at initialisation they block every gradient to the trunk."""
    torch.manual_seed(0)
    model = build_student(cfg, teacher)
    with torch.no_grad():
        for p in model.heads.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


def loss_and_grads(model, teacher, cfg):
    """(loss, gradients by parameter name, bytes autograd kept for the backward) of one step on a fixed batch."""
    batch = synthetic_batch(teacher, 1, seed=3)
    with SavedTensorBytes([*model.parameters(), *teacher.parameters()]) as kept:
        losses = compute_losses(model, teacher, batch, cfg, 10, 0, torch.Generator().manual_seed(0))
    model.zero_grad(set_to_none=True)
    losses["total"].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return losses["total"].detach(), grads, kept.total()


def test_options_at_their_defaults_leave_configs_and_versions_as_they_were():
    for preset in ("tiny", "smoke", "full"):
        cfg = load_config(preset=preset)
        assert not set(NEW_FIELDS) & set(cfg.to_dict()) and not set(NEW_FIELDS) & set(cfg.identity())
        assert DistillConfig.from_dict(cfg.to_dict()) == cfg
    on = apply_overrides(load_config(preset="tiny"), ["gradient_checkpointing=true", "freeze_phase1_blocks=13"])
    assert on.to_dict()["gradient_checkpointing"] is True and on.to_dict()["freeze_phase1_blocks"] == 13
    # freezing changes what is trained (a run must not resume across it); checkpointing only how memory is spent
    assert on.identity()["freeze_phase1_blocks"] == 13 and "gradient_checkpointing" not in on.identity()
    assert on.replace(gradient_checkpointing=False).identity() == on.identity()
    with pytest.raises(ValueError, match="freeze_phase1_blocks must be >= 0"):
        DistillConfig(freeze_phase1_blocks=-1)
    with pytest.raises(ValueError, match="gradient_checkpointing must be true or false"):
        apply_overrides(DistillConfig(), ["gradient_checkpointing=2"])


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(teacher):
    cfg = tiny_config()
    plain = student(teacher, cfg)
    loss, grads, kept = loss_and_grads(plain, teacher, cfg)
    checkpointed = student(teacher, cfg.replace(gradient_checkpointing=True))
    assert checkpointed.gradient_checkpointing and not plain.gradient_checkpointing
    loss_c, grads_c, kept_c = loss_and_grads(checkpointed, teacher, cfg)
    torch.testing.assert_close(loss_c, loss, rtol=1e-6, atol=0)
    assert grads.keys() == grads_c.keys() and any(k.startswith("phase1.input_blocks") for k in grads)
    for name in grads:
        torch.testing.assert_close(grads_c[name], grads[name], rtol=1e-5, atol=1e-7, msg=name)
    assert kept_c < 0.6 * kept, (kept_c, kept)  # what the option is for: far fewer bytes kept for the backward


def test_frozen_blocks_get_no_gradient_and_do_not_change(teacher):
    k = len(teacher.unet.input_blocks) + 1  # the U-Net's encoder and middle block (the gpu_check option)
    # phase 1 with decoder blocks after the frozen ones, as in the full profile (the tiny profile keeps none)
    decoder = {**load_config(preset="tiny").model_overrides, "phase1_output_blocks": 3, "gaussian_grid": 4}
    cfg = tiny_config(freeze_phase1_blocks=k, model_overrides=decoder)
    model = student(teacher, cfg)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    expected = {
        f"phase1.{n}"
        for n, _ in model.phase1.named_parameters()
        if n.split(".")[0] in ("time_embed", "camera_embed", "image_embed")
    }
    expected |= {
        f"phase1.{n}" for n, _ in model.phase1.named_parameters() if n.startswith(("input_blocks.", "middle_block."))
    }
    assert frozen == expected
    groups = _param_groups(model, cfg)
    in_optimizer = {id(p) for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert not in_optimizer & {id(named[n]) for n in frozen}
    unfrozen = student(teacher, tiny_config(model_overrides=decoder))
    assert static_memory(model)["optimizer"] < static_memory(unfrozen)["optimizer"]
    before = {n: named[n].detach().clone() for n in named}
    opt = torch.optim.AdamW(groups, lr=1e-2, weight_decay=0.1)
    _, grads, _ = loss_and_grads(model, teacher, cfg)  # the CPU GroupNorm of the first trained block must not crash
    opt.step()
    assert not frozen & set(grads)
    assert all(torch.equal(named[n], before[n]) for n in frozen)
    trained = [n for n in named if n.startswith("phase1.output_blocks.0.")]
    assert any(not torch.equal(named[n], before[n]) for n in trained)
    # checkpointing and freezing together: the same gradients as freezing alone
    both = student(teacher, cfg.replace(gradient_checkpointing=True))
    _, grads_both, _ = loss_and_grads(both, teacher, cfg)
    assert grads_both.keys() == grads.keys()
    for name in grads:
        torch.testing.assert_close(grads_both[name], grads[name], rtol=1e-5, atol=1e-7, msg=name)


def test_freezing_more_blocks_than_phase1_has_is_refused(teacher):
    blocks = len(phase1_blocks(student(teacher, tiny_config()).phase1))
    with pytest.raises(ValueError, match=rf"freeze_phase1_blocks must be in \[0, {blocks}\]"):
        build_student(tiny_config(freeze_phase1_blocks=blocks + 1), teacher)


def test_memory_fit_helpers():
    static, per_sample = fit_line([(1, 12.0), (2, 15.0), (4, 21.0)])
    assert (static, per_sample) == pytest.approx((9.0, 3.0))
    assert largest_batch(static, per_sample, 80.0) == 23 and largest_batch(static, per_sample, 10.0) == 0
    with pytest.raises(ValueError, match="two or more distinct batch sizes"):
        fit_line([(2, 1.0), (2, 2.0)])


def test_checkpointing_the_teachers_vae_encoder_keeps_the_sds_gradient(tmp_path):
    """The SDS term backpropagates through ImageDream's VAE encoder: checkpointed (as ``gradient_checkpointing``
    does in train()), the renders get the same gradient."""
    from dd3g_core.cameras import ViewLayout
    from dd3g_core.distill.losses import implicit_verification_loss
    from dd3g_core.distill.memory import set_encoder_checkpointing
    from dd3g_core.teacher.imagedream import ImageDreamTeacher

    from stand_ins import write_tiny_imagedream

    teacher = ImageDreamTeacher.from_pretrained(
        write_tiny_imagedream(tmp_path / "id"), layout=ViewLayout(resolution=64)
    )
    assert not set_encoder_checkpointing(TinyTeacher(seed=0), True)  # pixel space: nothing to checkpoint
    images = torch.rand(1, 4, 64, 64)
    condition = teacher.encode_condition(images)
    cams = teacher.cameras()
    noise = torch.randn(1, 4, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    grads = []
    for enabled in (False, True):
        assert set_encoder_checkpointing(teacher, enabled)
        renders = torch.rand(1, 4, 3, 64, 64, generator=torch.Generator().manual_seed(1)).requires_grad_()
        loss = implicit_verification_loss(teacher, renders, condition, cams.embedding, torch.tensor([500]), noise)
        loss["sds"].backward()
        grads.append(renders.grad)
    assert teacher.vae.encoder.gradient_checkpointing
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-9)
    assert grads[0].abs().sum() > 0


def test_out_of_memory_names_the_memory_options_and_a_smaller_batch():
    msg = out_of_memory_advice(load_config(preset="full"))
    assert "batch_size=4" in msg and "gradient_checkpointing=true" in msg and "freeze_phase1_blocks" in msg
    assert "--set batch_size=2 --set grad_accum=8" in msg  # the same effective batch (4 x 4)
    on = out_of_memory_advice(load_config(preset="full").replace(gradient_checkpointing=True, batch_size=1))
    assert "gradient_checkpointing" not in on and "batch_size=1:" in on and "--set batch_size" not in on


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CUDA-less message")
def test_gsplat_without_cuda_is_one_message_before_any_work(tmp_path):
    cfg = load_config(preset="tiny").replace(
        render_backend="gsplat", trajectories=str(tmp_path / "traj"), out=str(tmp_path / "run")
    )
    with pytest.raises(ValueError, match="render_backend='gsplat' needs a CUDA GPU.*render_backend=auto"):
        train(cfg)
    assert not (tmp_path / "run").exists()  # nothing written
