"""A random-weight model artifact for benchmarking before the trained one is committed.

Latency barely depends on the weights, so a random Light-SERNet exported and quantized exactly
like the real artifact (``training/export.py``) times the same graph. Built once, cached under
``.cache/bench-artifact-v2``. Needs the training extra (torch, onnx).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from worker.artifact import DEFAULT_ARTIFACT_DIR, MANIFEST, load_artifact, write_manifest
from worker.frontend import FrontendConfig

LABELS = ["anger", "boredom", "disgust", "fear", "happiness", "neutral", "sadness"]
REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "bench-artifact-v2"
CHECKPOINT = "light-sernet.random.pt"


def calibration_features(n: int = 64, seed: int = 0) -> np.ndarray:
    """Features of random speech-like noise through the real frontend (N, 184, 40)."""
    from worker.frontend import batch_features

    cfg = FrontendConfig()
    rng = np.random.default_rng(seed)
    t = np.arange(cfg.window_samples) / cfg.sample_rate_hz
    windows = []
    for _ in range(n):
        f0 = rng.uniform(90, 250)
        env = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 6) * t)
        sig = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 8)) * env
        sig = sig + rng.normal(0, 0.05, t.shape)
        windows.append((sig * rng.uniform(0.05, 0.5)).astype(np.float32))
    return batch_features(windows, cfg)


def random_model(seed: int = 0, num_classes: int = len(LABELS)):
    """A random-weight LightSERNet (eval mode) whose BatchNorms carry non-trivial statistics,
    so BN folding is exercised as in a trained model."""
    import torch

    from training.model import LightSERNet

    torch.manual_seed(seed)
    net = LightSERNet(num_classes=num_classes).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return net


def build_fixture(directory: Path = CACHE, seed: int = 0) -> Path:
    """Random-weight fp32 + int8 (``training.export.quantize_int8`` defaults) artifact."""
    if (directory / MANIFEST).is_file():
        try:
            load_artifact(directory)
            return directory
        except Exception:
            shutil.rmtree(directory, ignore_errors=True)
    import torch

    from training.export import export_onnx, quantize_int8

    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    net = random_model(seed)
    torch.save(net.state_dict(), tmp / CHECKPOINT)
    cfg = FrontendConfig()
    fp32, int8 = "light-sernet.fp32.onnx", "light-sernet.int8.onnx"
    export_onnx(net, tmp / fp32, cfg.input_shape)
    quantize_int8(tmp / fp32, tmp / int8, calibration_features())
    write_manifest(tmp, {
        "name": "light-sernet-bench-fixture", "version": "bench-0", "labels": LABELS,
        "frontend": cfg.to_dict(), "default_model": int8,
        "files": {int8: {"precision": "int8", "kind": "model"},
                  fp32: {"precision": "fp32", "kind": "model"}},
    })
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)
    return directory


def committed_or_fixture() -> Path:
    return DEFAULT_ARTIFACT_DIR if (DEFAULT_ARTIFACT_DIR / MANIFEST).is_file() else build_fixture()
