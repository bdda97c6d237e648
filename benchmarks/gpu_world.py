"""Models, scenes and clocks shared by ``gpu_check.py`` and ``memory_table.py`` (no weights are downloaded).

* :func:`random_imagedream` — ImageDream (ipmv) at full size with random weights, in the released classes
  and sizes (reference ``imagedream.md`` §1): our ``MultiViewUNet`` (preset ``imagedream``, 941.7 M), the
  OpenCLIP ViT-H/14 text tower (23 layers) and CLIP ViT-H/14 vision tower in transformers' classes, SD 2.1's
  VAE, the release's DDIM scheduler, a tokenizer made from a hand-written vocabulary (the teacher only
  ever encodes the empty prompt). Speed and memory depend on the sizes, not on the values.
* :func:`student_for` — the trainer's own ``build_student`` for a teacher (phase 1 from its U-Net).
* :func:`blob_scene` — object-like Gaussians: clusters inside a unit-size blob, as the student makes.
* :func:`best_time` / :class:`PartTimer` — wall clocks that synchronise CUDA before reading the time.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn

from dd3g_core.distill.config import DistillConfig
from dd3g_core.distill.train import build_student
from dd3g_core.gaussians import Gaussians
from dd3g_core.model import PEPD
from dd3g_core.teacher.imagedream import RELEASE_SCHEDULER_CONFIG

TEXT_TOWER = dict(  # SD 2.1's OpenCLIP ViT-H/14 text encoder as diffusers converts it
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=23,
    num_attention_heads=16,
    max_position_embeddings=77,
    vocab_size=49408,
    hidden_act="gelu",
)
VISION_TOWER = dict(  # laion/CLIP-ViT-H-14: the image encoder whose hidden_states[-2] ImageDream reads
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=16,
    image_size=224,
    patch_size=14,
    hidden_act="gelu",
    layer_norm_eps=1e-5,
)
VAE = dict(  # SD 2.1's VAE (latents 4 x 32 x 32 for 256 px views)
    in_channels=3,
    out_channels=3,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=256,
    scaling_factor=0.18215,
)


def _tokenizer():
    """A CLIPTokenizer over a few letters (files in a temp folder): enough to encode the empty prompt."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "vocab.json").write_text(json.dumps(vocab))
        (Path(d) / "merges.txt").write_text("#version: 0.2\n")
        return CLIPTokenizer(str(Path(d) / "vocab.json"), str(Path(d) / "merges.txt"), model_max_length=77)


def random_imagedream(device: torch.device | str = "cpu", dtype: torch.dtype = torch.bfloat16, seed: int = 0):
    """A frozen ImageDreamTeacher at full size with random weights, as ``load_teacher`` returns one
    (eval, no gradients, channels-last U-Net). Built on the CPU (a few seconds per billion weights), then moved."""
    from diffusers import AutoencoderKL, DDIMScheduler
    from transformers import CLIPImageProcessor, CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel

    from dd3g_core.teacher.imagedream import ImageDreamTeacher
    from dd3g_core.teacher.unet import MultiViewUNet

    builders = {
        "unet": lambda: MultiViewUNet("imagedream"),
        "vae": lambda: AutoencoderKL(**VAE),
        "text_encoder": lambda: CLIPTextModel(CLIPTextConfig(**TEXT_TOWER, bos_token_id=0, eos_token_id=1)),
        "image_encoder": lambda: CLIPVisionModel(CLIPVisionConfig(**VISION_TOWER)),
    }
    parts = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name, build in builders.items():  # cast each on the CPU as it is made: one fp32 model at a time
            parts[name] = build().to(dtype)
    teacher = ImageDreamTeacher(
        **parts,
        tokenizer=_tokenizer(),
        feature_extractor=CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}),
        scheduler=DDIMScheduler(**RELEASE_SCHEDULER_CONFIG),
    )
    teacher.requires_grad_(False)
    teacher.unet.to(memory_format=torch.channels_last)  # as load_teacher does
    return teacher.to(device).eval()


def student_for(teacher, cfg: DistillConfig, device: torch.device | str, dtype: torch.dtype = torch.float32) -> PEPD:
    """``build_student(cfg, teacher)`` (phase 1 = the teacher's U-Net and weights, memory options applied) on
    ``device`` in ``dtype`` (fp32 master weights for training, bf16 for inference)."""
    return build_student(cfg, teacher).to(device=device, dtype=dtype)


def blob_scene(n: int, seed: int = 0) -> Gaussians:  # unbatched, N = n, SH degree 0 (the student's output)
    """Gaussians clustered in a blob: 12 sub-clusters inside a radius-0.4 ball (an object in the orbit's
    centre), scales log-uniform in [0.005, 0.04], random rotations, opacities in [0.05, 0.95], random colours."""
    g = torch.Generator().manual_seed(seed)
    centres = (
        torch.nn.functional.normalize(torch.randn(12, 3, generator=g), dim=-1) * 0.3 * torch.rand(12, 1, generator=g)
    )
    member = torch.randint(0, 12, (n,), generator=g)
    means = centres[member] + 0.08 * torch.randn(n, 3, generator=g)
    scales = torch.exp(torch.empty(n, 3).uniform_(math.log(0.005), math.log(0.04), generator=g))
    quats = torch.randn(n, 4, generator=g)
    opacities = torch.empty(n).uniform_(0.05, 0.95, generator=g)
    return Gaussians.from_activated(means, quats, scales, opacities, torch.rand(n, 3, generator=g))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Fastest of ``repeats`` wall times (seconds) after ``warmup`` untimed calls; CUDA work is waited for."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return min(times)


class PartTimer:
    """Wall time spent inside labelled modules (forward hooks that synchronise CUDA), for a breakdown of one
    call: ``with PartTimer(device, {"phase 1": blocks, ...}) as t: fn()`` -> ``t.seconds``. The hooks' own
    synchronisation makes the parts add up to slightly more than an unhooked call."""

    def __init__(self, device: torch.device, parts: dict[str, Iterable[nn.Module]]):
        self.device, self.parts = device, parts
        self.seconds: dict[str, float] = defaultdict(float)

    def __enter__(self) -> PartTimer:
        self._handles = []
        for label, modules in self.parts.items():
            for m in modules:
                self._handles += self._clock(m, label)
        return self

    def _clock(self, module: nn.Module, label: str) -> list:
        start = [0.0]

        def pre(*_):
            synchronize(self.device)
            start[0] = time.perf_counter()

        def post(*_):
            synchronize(self.device)
            self.seconds[label] += time.perf_counter() - start[0]

        return [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
