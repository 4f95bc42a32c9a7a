"""Quantization-aware agreement fine-tuning: make a trained model's int8 twin agree with it.

Post-training int8 (``training.export.quantize_model``) leaves every activation rounded to one
of 256 levels; a window whose two best classes are close can flip (measured: 1-3 windows of
46-118 per speaker in 4 of 10 CV folds, almost all of it from activation rounding, not from the
int8 weights). This step fine-tunes the finished fp32 model for a few epochs so that its output
barely moves under that rounding:

1. BatchNorm is folded into the convolutions first (as onnxruntime's quantizer does), so the
   simulated int8 weights are the ones that will ship;
2. :class:`QuantSim` simulates onnxruntime's QDQ graph in torch: per-channel symmetric int8
   weights for every convolution it quantizes and the dense layer, uint8 per-tensor activations
   (running min/max) at each tensor the int8 graph rounds; the three input convolutions stay
   fp32, as in the shipped int8 recipe;
3. the loss keeps the fine-tuned model's fp32 output close to the original model's
   probabilities (KL divergence) and pulls its simulated-int8 logits onto its fp32 logits
   (mean squared difference, weight ``mismatch``), on the training windows only. Labels are
   not used: the step changes how the model computes, not what it predicts.

The returned model's weights lie on the int8 grid (per-channel scale max|w|/127), so
onnxruntime's weight quantization reproduces them exactly; what remains is activation
rounding, which the model has learned to tolerate.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from training.config import INT8_RECIPES, TrainConfig
from training.export import int8_recipe
from training.features import FeatureSet
from training.model import LightSERNet


def fold_batchnorm(model: LightSERNet) -> LightSERNet:
    """A copy of ``model`` with each BatchNorm's scale folded into the convolution before it;
    the BatchNorm is left as a fixed per-channel bias (weight 1, mean 0, variance 1 - eps)."""
    model = copy.deepcopy(model).eval()
    modules = list(model.paths) + [model.body]
    for seq in modules:
        layers = list(seq)
        for conv, bn in zip(layers, layers[1:]):
            if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)):
                continue
            with torch.no_grad():
                std = torch.sqrt(bn.running_var + bn.eps)
                gain = bn.weight / std
                conv.weight.mul_(gain[:, None, None, None])
                bn.bias.copy_(bn.bias - bn.running_mean * gain)
                bn.weight.fill_(1.0)
                bn.running_mean.zero_()
                bn.running_var.fill_(1.0 - bn.eps)
            bn.weight.requires_grad_(False)
    return model


class WeightInt8(nn.Module):
    """Per-output-channel symmetric int8 fake quantization (straight-through gradient)."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        scale = (w.detach().abs().flatten(1).amax(1) / 127.0).clamp_min(1e-12)
        zero = torch.zeros_like(scale, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -127, 127)


class ActivationUint8(nn.Module):
    """Per-tensor asymmetric uint8 fake quantization with a running min/max range."""

    def __init__(self, momentum: float = 0.05) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("lo", torch.tensor(0.0))
        self.register_buffer("hi", torch.tensor(0.0))
        self.register_buffer("seen", torch.tensor(False))
        self.observing = True
        self.enabled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            lo, hi = x.detach().min().clamp_max(0.0), x.detach().max().clamp_min(0.0)
            if not bool(self.seen):
                self.lo.copy_(lo), self.hi.copy_(hi), self.seen.fill_(True)
            else:
                self.lo.lerp_(lo, self.momentum), self.hi.lerp_(hi, self.momentum)
        if not self.enabled or not bool(self.seen):
            return x
        scale = float(max(self.hi - self.lo, 1e-8) / 255.0)
        zero = int(min(255, max(0, round(-float(self.lo) / scale))))
        return torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, 255)


class QuantSim:
    """Hooks that make a BN-folded :class:`LightSERNet` compute like its onnxruntime int8 graph
    (``recipe``: :data:`training.config.INT8_RECIPES`).

    ``input-stage-fp32`` and ``input-convs-fp32`` round every convolution's output, each ReLU's
    and each pooling's, the input paths' ReLU and pooling outputs included (for
    ``input-stage-fp32`` a little more rounding than its graph has, which keeps its shipped
    fine-tuning reproducible). The fused-ReLU recipes round exactly where their graph does: the
    input paths stay fp32 up to the concatenation, and a convolution followed by a ReLU is
    rounded once, at the ReLU's output."""

    def __init__(self, model: LightSERNet, recipe: str = INT8_RECIPES[0]) -> None:
        fused = int8_recipe(recipe).fused_relu
        self.model = model
        self.quantizers: list[ActivationUint8] = []
        self.handles = []
        self.weighted: list[nn.Module] = []

        def after(module: nn.Module) -> None:
            q = self._new()
            self.handles.append(module.register_forward_hook(lambda _m, _i, out: q(out)))

        def before(module: nn.Module) -> None:
            q = self._new()
            self.handles.append(module.register_forward_pre_hook(lambda _m, args: (q(args[0]),)))

        for path in model.paths if not fused else ():  # input conv + BN + ReLU stay fp32
            relu, pooling = path[2], path[3]
            after(relu)
            after(pooling)
        body = list(model.body)
        for i, layer in enumerate(body):
            if isinstance(layer, nn.Conv2d):
                before(layer)  # the concatenation (first conv), else already quantized
                self._weights(layer)
            elif isinstance(layer, nn.BatchNorm2d) and fused and i + 1 < len(body) \
                    and isinstance(body[i + 1], nn.ReLU):
                continue  # the convolution's output is rounded after its ReLU only
            elif isinstance(layer, (nn.BatchNorm2d, nn.ReLU, nn.AvgPool2d)):
                after(layer)  # conv output (with its folded bias), activation, pooling
        before(model.classifier)  # global average pooling's output
        self._weights(model.classifier)
        after(model.classifier)

    def _new(self) -> ActivationUint8:
        q = ActivationUint8()
        self.quantizers.append(q)
        return q

    def _weights(self, module: nn.Module) -> None:
        parametrize.register_parametrization(module, "weight", WeightInt8())
        self.weighted.append(module)

    def enable(self, on: bool) -> None:
        for q in self.quantizers:
            q.enabled = on

    def observe(self, on: bool) -> None:
        for q in self.quantizers:
            q.observing = on

    def remove(self) -> LightSERNet:
        """Drop the hooks; the weights keep their int8-grid values."""
        for h in self.handles:
            h.remove()
        for module in self.weighted:
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        return self.model


def _kl(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.kl_div(F.log_softmax(logits, dim=-1), target, reduction="batchmean")


def agreement_finetune(model: LightSERNet, features: np.ndarray, epochs: int = 4,
                       lr: float = 3e-5, batch_size: int = 64, windows_per_epoch: int = 4096,
                       seed: int = 0, mismatch: float = 1.0, recipe: str = INT8_RECIPES[0],
                       on_epoch: Callable[[int, dict], None] | None = None) -> LightSERNet:
    """Fine-tune ``model`` (unchanged) on ``features`` (N, T, F) training windows; returns the
    BN-folded copy whose int8 twin agrees with it (module docstring)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    teacher = copy.deepcopy(model).eval()
    student = fold_batchnorm(model)
    sim = QuantSim(student, recipe)
    student.eval()  # no dropout, fixed BN; gradients still flow
    with torch.no_grad():  # ranges from a first pass, like calibration
        for i in range(0, min(len(features), 512), batch_size):
            student(torch.from_numpy(features[i : i + batch_size].astype(np.float32)))
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    n = min(windows_per_epoch, len(features))
    for epoch in range(epochs):
        rows = np.sort(rng.choice(len(features), size=n, replace=False))
        rng.shuffle(rows)
        total = 0.0
        for b in range(math.ceil(n / batch_size)):
            x = torch.from_numpy(features[np.sort(rows[b * batch_size : (b + 1) * batch_size])]
                                 .astype(np.float32))
            with torch.no_grad():
                target = torch.softmax(teacher(x), dim=-1)
            sim.enable(True)
            logits_q = student(x)
            sim.enable(False)
            sim.observe(False)
            logits_f = student(x)
            sim.observe(True)
            loss = _kl(logits_f, target) + mismatch * F.mse_loss(logits_q, logits_f)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(x)
        if on_epoch:
            on_epoch(epoch + 1, {"loss": total / n})
    sim.enable(True)
    return sim.remove().eval()


def finetune_for_int8(model: LightSERNet, data: FeatureSet, utt_ids: np.ndarray, cfg: TrainConfig,
                      on_epoch: Callable[[int, dict], None] | None = None) -> LightSERNet:
    """:func:`agreement_finetune` on every cached window (all variants) of ``utt_ids``, with
    the ``qat_*`` settings of ``cfg``."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rows = np.flatnonzero(np.isin(data.utt, utt_ids))
    return agreement_finetune(model, data.features[rows], epochs=cfg.qat_epochs, lr=cfg.qat_lr,
                              windows_per_epoch=cfg.qat_windows, seed=cfg.seed,
                              mismatch=cfg.qat_mismatch, recipe=cfg.int8_recipe, on_epoch=on_epoch)


def qat_settings(cfg: TrainConfig) -> dict:
    """The ``qat_*`` fields of ``cfg`` and the int8 recipe simulated (recorded with every
    fine-tuned model)."""
    return {k: v for k, v in cfg.to_dict().items() if k.startswith("qat_") or k == "int8_recipe"}


def finetune_checkpoint(src: Path, dst: Path, data: FeatureSet, utt_ids: np.ndarray,
                        cfg: TrainConfig) -> LightSERNet:
    """:func:`finetune_for_int8` of the model in checkpoint ``src`` (``data`` computed with the
    checkpoint's frontend); writes ``dst`` with the same labels, frontend and metadata and the
    ``qat_*`` settings added to its training config."""
    from training import checkpoint
    from worker.frontend import FrontendConfig

    model, blob = checkpoint.load(src)
    tuned = finetune_for_int8(model, data, utt_ids, cfg)
    meta = {k: v for k, v in blob.items()
            if k not in ("state_dict", "labels", "frontend", "train_config")}
    checkpoint.save(dst, tuned, blob["labels"], FrontendConfig.from_dict(blob["frontend"]),
                    {**blob["train_config"], **qat_settings(cfg)}, **meta)
    return tuned
