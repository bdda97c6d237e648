"""LPIPS-style perceptual distance from *local* VGG16 weights (the explicit term's optional part).

Nothing is downloaded: ``PerceptualLoss.from_file(path)`` reads a safetensors file with
torchvision's VGG16 ``features.*`` tensors (e.g. exported once with
``safetensors.torch.save_file(torchvision.models.vgg16(weights="DEFAULT").features.state_dict(), …)``
after prefixing ``features.``) and, optionally, LPIPS's learned channel weights as
``lin{0..4}.weight`` [1, C_k, 1, 1]. Without them every channel weighs 1 (the "baseline" LPIPS
variant). Distance (Zhang et al. 2018, eq. 1):

    d(x, y) = sum_k mean_hw || w_k * (f_k(x) / |f_k(x)| - f_k(y) / |f_k(y)|) ||^2

over the relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 activations of ImageNet-normalised inputs.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["PerceptualLoss", "vgg16_features"]

VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
TAPS = (3, 8, 15, 22, 29)  # indices of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 in ``features``
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def vgg16_features() -> nn.Sequential:
    """torchvision's ``vgg16().features`` layer for layer (same state-dict keys), up to relu5_3."""
    layers: list[nn.Module] = []
    c = 3
    for v in VGG16:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c, int(v), 3, padding=1), nn.ReLU(inplace=False)]
            c = int(v)
    return nn.Sequential(*layers)


class PerceptualLoss(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = vgg16_features()
        chans = [64, 128, 256, 512, 512]
        self.lin = nn.ParameterList([nn.Parameter(torch.ones(1, ch, 1, 1)) for ch in chans])
        self.register_buffer("mean", torch.tensor(MEAN).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).reshape(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)

    @classmethod
    def from_file(cls, path: str | Path) -> PerceptualLoss:
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"perceptual weights {path} do not exist: export torchvision's VGG16 features "
                f"to safetensors (see dd3g_core/perceptual.py) or set perceptual_weight=0"
            )
        sd = load_file(str(path))
        m = cls()
        feats = {k[len("features.") :]: v for k, v in sd.items() if k.startswith("features.")}
        missing = sorted(set(m.features.state_dict()) - set(feats))
        if missing:
            raise ValueError(f"{path} lacks VGG16 tensors {['features.' + k for k in missing[:6]]}")
        m.features.load_state_dict({k: feats[k] for k in m.features.state_dict()})
        for i, p in enumerate(m.lin):
            if f"lin{i}.weight" in sd:
                p.data.copy_(sd[f"lin{i}.weight"].reshape(p.shape))
        return m.eval()

    def forward(self, x: Tensor, y: Tensor) -> Tensor:  # [N, 3, H, W] in [0, 1] x2 -> scalar
        return self.distance(x, y).mean()

    def distance(self, x: Tensor, y: Tensor) -> Tensor:  # [N, 3, H, W] in [0, 1] x2 -> [N]
        h = torch.cat([x, y]).sub(self.mean).div(self.std)
        total = h.new_zeros(x.shape[0])
        k = 0
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in TAPS:
                fx, fy = h.chunk(2)
                nx = fx / (fx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                ny = fy / (fy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                total = total + (self.lin[k] * (nx - ny).pow(2)).sum(1).mean((1, 2))
                k += 1
                if k == len(TAPS):
                    break
        return total
