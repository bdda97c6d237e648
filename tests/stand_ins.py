"""Tiny random stand-ins for every real component of the full profile, built offline in a test:
an SDXL pipeline (diffusers), u2net-shaped ONNX models for rembg and an ImageDream folder (CLIP text and
image encoders, VAE, DDIM scheduler and our multi-view U-Net). Same classes and file layouts as the real
weights, toy sizes; nothing is downloaded."""

import json
import warnings
from pathlib import Path

import torch

from dd3g_core.teacher import MultiViewUNet, MultiViewUNetConfig
from dd3g_core.teacher.imagedream import RELEASE_SCHEDULER_CONFIG

TEXT_DIM = VISION_DIM = 32


def _bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def build_tiny_sdxl(folder: Path, plain: bool = False) -> Path:
    """A random, tiny StableDiffusionXLPipeline saved with save_pretrained; the CLIP tokenizers
    are built from hand-written byte-level vocab/merges files (no hub). ``plain``: the VAE decoder
    paints a near-constant light image (as SDXL prompted for a plain white backdrop), so the
    rembg stage's plain-background filter accepts its images."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(0)
    tok_dir = folder / "_tokenizer_src"
    tok_dir.mkdir(parents=True)
    chars = _bytes_to_unicode()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    (tok_dir / "vocab.json").write_text(json.dumps(vocab))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=16)
    V = len(tok)
    tcfg = CLIPTextConfig(
        bos_token_id=V - 2,
        eos_token_id=V - 1,
        pad_token_id=V - 1,
        hidden_size=16,
        intermediate_size=32,
        num_attention_heads=2,
        num_hidden_layers=2,
        vocab_size=V,
        max_position_embeddings=16,
        projection_dim=16,
        hidden_act="gelu",
    )
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        cross_attention_dim=32,
        norm_num_groups=4,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 16,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=4,
        sample_size=32,
    )
    if plain:
        with torch.no_grad():
            vae.decoder.conv_out.weight.mul_(0.02)
            vae.decoder.conv_out.bias.fill_(0.8)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading"
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=CLIPTextModel(tcfg),
        text_encoder_2=CLIPTextModelWithProjection(tcfg),
        tokenizer=tok,
        tokenizer_2=tok,
        unet=unet,
        scheduler=scheduler,
    )
    out = folder / "sdxl"
    pipe.save_pretrained(out)
    return out


def build_stub_onnx(path: Path) -> Path:
    """1x3x320x320 -> 1x1x320x320 sigmoid 'u2net': foreground = far from white (after rembg's
    ImageNet normalisation white sums to ~7.3 over the channels)."""
    import onnx
    import torch

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 1, 1), torch.nn.Sigmoid())
    with torch.no_grad():
        model[0].weight.fill_(-8.0)
        model[0].bias.fill_(8.0 * 6.6)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(1, 3, 320, 320),),
            str(path),
            input_names=["input"],
            output_names=["output"],
            dynamo=False,
        )
    onnx.checker.check_model(onnx.load(str(path)))
    return path


def build_disc_onnx(path: Path, radius: float = 0.3) -> Path:
    """A u2net-shaped ONNX model (1x3x320x320 -> 1x1x320x320) that mattes a centred disc whatever the image:
    the rembg stand-in of the full profile's CPU test (random SDXL weights paint no object to cut out)."""
    import onnx
    import torch

    yy, xx = torch.meshgrid(torch.arange(320) + 0.5, torch.arange(320) + 0.5, indexing="ij")
    disc = (((yy - 160) ** 2 + (xx - 160) ** 2) <= (radius * 320) ** 2).float()[None, None]

    class Disc(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("disc", disc)

        def forward(self, x):
            return x[:, :1] * 0.0 + self.disc

    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Disc(),
            (torch.zeros(1, 3, 320, 320),),
            str(path),
            input_names=["input"],
            output_names=["output"],
            dynamo=False,
        )
    onnx.checker.check_model(onnx.load(str(path)))
    return path


def tiny_unet_config(latent: int = 16) -> MultiViewUNetConfig:
    """The tiny U-Net preset in ImageDream's latent space (4 channels) at ``latent`` x ``latent``."""
    return MultiViewUNetConfig.preset("tiny").replace(
        in_channels=4, out_channels=4, context_dim=TEXT_DIM, ip_embed_dim=VISION_DIM, image_size=latent
    )


def write_unet(folder: Path, cfg: MultiViewUNetConfig, state_dict=None) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    cfg.save(folder / "config.json")
    if state_dict is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            state_dict = MultiViewUNet(cfg).state_dict()
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(folder / "diffusion_pytorch_model.safetensors"))


def write_tiny_imagedream(root: Path, vae_factor: int = 4, latent: int = 16) -> Path:
    """A complete, tiny, random ImageDream folder with the real layout (model_index + 7 subfolders).

    ``vae_factor`` 4 (3 VAE levels) suits a 64 px test layout; 8 (4 levels, as the real VAE) with
    ``latent`` 32 gives the real 256 px ImageDream layout, which the pipeline uses."""
    from diffusers import AutoencoderKL, DDIMScheduler
    from transformers import (
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTokenizer,
        CLIPVisionConfig,
        CLIPVisionModel,
    )

    levels = {4: 3, 8: 4}[vae_factor]
    root.mkdir(parents=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
        for c in "abcdefghijklmnopqrstuvwxyz":
            vocab[c] = len(vocab)
            vocab[c + "</w>"] = len(vocab)
        raw = root.parent / "raw_tokenizer"
        raw.mkdir()
        (raw / "vocab.json").write_text(json.dumps(vocab))
        (raw / "merges.txt").write_text("#version: 0.2\n")
        CLIPTokenizer(str(raw / "vocab.json"), str(raw / "merges.txt"), model_max_length=77).save_pretrained(
            root / "tokenizer"
        )
        CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(vocab),
                hidden_size=TEXT_DIM,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                max_position_embeddings=77,
                bos_token_id=0,
                eos_token_id=1,
                pad_token_id=1,
            )
        ).save_pretrained(root / "text_encoder")
        CLIPVisionModel(
            CLIPVisionConfig(
                hidden_size=VISION_DIM,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                image_size=32,
                patch_size=8,
            )
        ).save_pretrained(root / "image_encoder")
        CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
            root / "feature_extractor"
        )
        AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=["DownEncoderBlock2D"] * levels,
            up_block_types=["UpDecoderBlock2D"] * levels,
            block_out_channels=[8] * levels,
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=4,
            sample_size=64,
            scaling_factor=0.18215,
        ).save_pretrained(root / "vae")
        DDIMScheduler(**RELEASE_SCHEDULER_CONFIG).save_pretrained(root / "scheduler")
        write_unet(root / "unet", tiny_unet_config(latent))
    (root / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "MVDreamPipeline",
                "_diffusers_version": "0.25.0",
                "unet": ["mv_unet", "MultiViewUNetModel"],
                "vae": ["diffusers", "AutoencoderKL"],
                "text_encoder": ["transformers", "CLIPTextModel"],
                "tokenizer": ["transformers", "CLIPTokenizer"],
                "image_encoder": ["transformers", "CLIPVisionModel"],
                "feature_extractor": ["transformers", "CLIPImageProcessor"],
                "scheduler": ["diffusers", "DDIMScheduler"],
            }
        )
    )
    return root


def write_eval_folder(root: Path, seeds=(21, 22), side: int = 64, azimuths=(0.0, 90.0, 180.0, 270.0)) -> Path:
    """A GSO-style evaluation folder (docs/evaluation_folder.md) of procedural objects: RGBA input at the
    input camera, RGBA views at ``azimuths`` (elevation 0) given by angles, on the layout's orbit."""
    import numpy as np
    from PIL import Image

    from dd3g_core.render.views import render_rgba
    from dd3g_core.world import sample_object

    for seed in seeds:
        g = sample_object(seed, 800)
        folder = root / f"object_{seed}"
        (folder / "views").mkdir(parents=True)
        Image.fromarray(render_rgba(g, 0.0, 0.0, 1.5, 49.1, side)).save(folder / "input.png")
        views = []
        for i, az in enumerate(azimuths):
            Image.fromarray(np.asarray(render_rgba(g, az, 0.0, 1.5, 49.1, side))).save(folder / f"views/{i:03d}.png")
            views.append({"file": f"views/{i:03d}.png", "azimuth_deg": az, "elevation_deg": 0.0})
        (folder / "cameras.json").write_text(json.dumps({"fov_deg": 49.1, "radius": 1.5, "views": views}))
    return root


def write_tiny_clip(path: Path) -> Path:
    """A random CLIP (transformers) folder at toy sizes, safetensors + image processor config."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    small = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2)
    text = dict(small, vocab_size=99, max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    config = CLIPConfig(text_config=text, vision_config=dict(small, image_size=32, patch_size=8), projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(config).eval().save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return path


class RecordingReporter:
    """A trainer reporter (what Dagster Pipes gets from ``dd3g_core.distill.train``) that keeps its log lines."""

    def __init__(self):
        self.lines: list[str] = []

    def log(self, message: str) -> None:
        self.lines.append(message)

    def materialize(self, metadata, data_version) -> None:
        pass
