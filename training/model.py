"""Light-SERNet (Aftab et al., ICASSP 2022) in PyTorch, as published.

Input (B, T, F) features (184 x 40 MFCCs for 3 s). Three parallel paths -- time (11x1),
frequency (1x9) and 3x3 convolutions, 32 filters each, BN, ReLU, 2x2 average pooling -- are
concatenated (96 channels), then local feature learning blocks (LFLB) of 3x3 convolutions
with 64, 96, 128, 160 filters (pooling 2x2, 2x2, 2x1, 2x1) and a 1x1 block of 320, global
average pooling, dropout 0.3 and a dense layer. ``forward`` returns logits; the exported
graph appends softmax (``Probabilities``).

``input_norm="cmn"`` (off by default, not in the paper) subtracts each window's mean over time
from every coefficient first: cepstral mean normalisation, the classic removal of a fixed
microphone/channel and of part of the speaker's timbre. It is two graph ops (ReduceMean, Sub),
so the frontend and the worker stay as they are.

Pooling uses ``ceil_mode`` like Keras ``padding='same'`` (23 frames -> 12).
"""

from __future__ import annotations

import torch
from torch import nn

from training.config import INPUT_NORMS


def conv_bn_relu(cin: int, cout: int, kernel: tuple[int, int]) -> list[nn.Module]:
    padding = (kernel[0] // 2, kernel[1] // 2)
    return [nn.Conv2d(cin, cout, kernel, padding=padding, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True)]


def pool(kernel: tuple[int, int]) -> nn.Module:
    return nn.AvgPool2d(kernel, stride=kernel, ceil_mode=True)


class LightSERNet(nn.Module):
    PATH_KERNELS = ((11, 1), (1, 9), (3, 3))
    LFLB = ((64, (3, 3), (2, 2)), (96, (3, 3), (2, 2)), (128, (3, 3), (2, 1)),
            (160, (3, 3), (2, 1)), (320, (1, 1), None))

    def __init__(self, num_classes: int = 7, path_filters: int = 32, dropout: float = 0.3,
                 input_norm: str = "none") -> None:
        super().__init__()
        if input_norm not in INPUT_NORMS:
            raise ValueError(f"input_norm must be one of {', '.join(INPUT_NORMS)}, not {input_norm!r}")
        self.input_norm = input_norm
        self.paths = nn.ModuleList(
            nn.Sequential(*conv_bn_relu(1, path_filters, k), pool((2, 2))) for k in self.PATH_KERNELS)
        layers: list[nn.Module] = []
        cin = path_filters * len(self.PATH_KERNELS)
        for cout, kernel, pooling in self.LFLB:
            layers += conv_bn_relu(cin, cout, kernel)
            if pooling:
                layers.append(pool(pooling))
            cin = cout
        self.body = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.input_norm == "cmn":
            features = features - features.mean(dim=1, keepdim=True)
        x = features.unsqueeze(1)  # (B, 1, T, F)
        x = torch.cat([path(x) for path in self.paths], dim=1)
        x = self.body(x)
        x = x.mean(dim=(2, 3))
        return self.classifier(self.dropout(x))


class Probabilities(nn.Module):
    """The exported graph: features in, softmax scores out."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(features), dim=-1)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_mflops(model: nn.Module, input_shape: tuple[int, int] = (184, 40)) -> float:
    """Multiply-adds x 2 of convolutions and the dense layer for one window (MFLOPs)."""
    flops = 0

    def conv_hook(module: nn.Conv2d, _inp, out: torch.Tensor) -> None:
        nonlocal flops
        k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
        flops += 2 * k * out.numel()

    def linear_hook(module: nn.Linear, _inp, out: torch.Tensor) -> None:
        nonlocal flops
        flops += 2 * module.in_features * out.numel()

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, *input_shape))
    model.train(was_training)
    for h in hooks:
        h.remove()
    return flops / 1e6
