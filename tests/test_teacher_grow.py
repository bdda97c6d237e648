"""Growing the teacher's attention levels preserves its function and feeds training."""

import pytest
import torch

from dd3g_core.teacher import MultiViewUNetConfig, TinyTeacher
from dd3g_core.teacher.training.grow import grow_unet
from dd3g_core.teacher.training.train import TeacherTrainConfig, build_teacher

SMALL = dict(
    model_channels=16,
    channel_mult=(1, 2, 2),
    attention_resolutions=(4,),
    num_res_blocks=1,
    num_head_channels=16,
    context_dim=32,
    resampler_depth=1,
)


def small_teacher(seed=0):
    cfg = MultiViewUNetConfig.preset("tiny").replace(**SMALL)
    t = TinyTeacher(unet_config=cfg, seed=seed).eval()
    with torch.no_grad():  # non-zero everywhere, like a trained net
        for p in t.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return t


def run(unet, teacher, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(10, 3, 32, 32, generator=g)
    cond = teacher.encode_condition(torch.rand(2, 4, 64, 64, generator=g))
    return unet(
        x,
        torch.full((10,), 700.0),
        context=cond.context.repeat_interleave(5, 0),
        camera=teacher.cameras().embedding.repeat(2, 1),
        num_frames=5,
        ip=cond.ip.repeat_interleave(5, 0),
        ip_img=cond.ip_img,
    )


def test_grown_unet_computes_the_same_function():
    t = small_teacher()
    grown = grow_unet(t.unet, (1, 2, 4))
    assert grown.config.attention_resolutions == (1, 2, 4)
    fresh = type(grown)(grown.config)
    assert list(grown.state_dict()) == list(fresh.state_dict())  # the new config's exact key layout
    assert len(grown.state_dict()) > len(t.unet.state_dict())
    with torch.no_grad():
        assert torch.allclose(
            run(t.unet, t), run(grown, t), atol=1e-5, rtol=1e-4
        )  # float rounding: new blocks change tensor layouts
    # and the new blocks are trainable: a gradient reaches their proj_out
    grown.train()
    run(grown, t).square().mean().backward()
    new_block = grown.input_blocks[1][1]
    assert new_block.proj_out.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="cannot remove"):
        grow_unet(t.unet, (2,))


def test_build_teacher_from_a_grown_folder(tmp_path):
    t = small_teacher()
    t.save_pretrained(tmp_path / "small")
    cfg = TeacherTrainConfig(
        unet_overrides={**SMALL, "attention_resolutions": (2, 4)}, init_from=str(tmp_path / "small"), seed=5
    )
    built = build_teacher(cfg).eval()
    assert built.unet.config.attention_resolutions == (2, 4)
    with torch.no_grad():
        assert torch.allclose(
            run(t.unet, t), run(built.unet, built), atol=1e-5, rtol=1e-4
        )  # float rounding: new blocks change tensor layouts
    assert torch.equal(built.null_context, t.null_context)
    bad = TeacherTrainConfig(
        unet_overrides={**SMALL, "model_channels": 32, "num_head_channels": 32}, init_from=str(tmp_path / "small")
    )
    with pytest.raises(ValueError, match="init_from"):
        build_teacher(bad)


def test_image_concatenation_grows_function_preserving_and_then_matters():
    t = small_teacher()
    grown = grow_unet(t.unet, concat_image=True)
    assert grown.config.concat_image and grown.config.attention_resolutions == t.unet.config.attention_resolutions
    stem = grown.input_blocks[0][0].weight
    assert stem.shape[1] == 2 * t.unet.config.in_channels and torch.count_nonzero(stem[:, 3:]) == 0
    with torch.no_grad():
        assert torch.equal(run(t.unet, t), run(grown, t))
        stem[:, 3:].normal_(0, 0.1)  # once the image channels are trained, every view sees the input image
        g = torch.Generator().manual_seed(3)
        x = torch.randn(10, 3, 32, 32, generator=g)
        kw = dict(
            context=torch.zeros(10, 2, 32),
            camera=t.cameras().embedding.repeat(2, 1),
            num_frames=5,
            ip=torch.zeros(10, 64, 64),
        )
        img = torch.rand(2, 3, 32, 32, generator=g)
        a = grown(x, torch.full((10,), 500.0), ip_img=img, **kw)
        b = grown(x, torch.full((10,), 500.0), ip_img=img.flip(-1), **kw)
    assert (a - b)[[0, 1, 2, 3, 5, 6, 7, 8]].abs().amax(dim=(1, 2, 3)).min() > 1e-3  # each generated view
    with pytest.raises(ValueError, match="cannot remove the image concatenation"):
        grow_unet(grown, concat_image=False)
