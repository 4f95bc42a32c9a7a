"""The frontend-fused ONNX variant (training/fused.py) against the numpy frontend + plain model.

The fused graph normalises over the whole window it is given, so parity is checked on full
3 s windows only (EMO-DB clips at least 3 s long, first 3 s); a clip shorter than a window is
normalised on its real samples by the numpy frontend and is out of the fused graph's scope.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.export import export_onnx, quantize_int8
from training.fused import (FusedFrontend, export_fused, export_fused_frontend, fused_scores,
                            parity, percentile_indices, reference_scores)
from training.model import LightSERNet
from worker.frontend import FrontendConfig, batch_features, peak_scale

CFG = FrontendConfig()


@pytest.fixture(scope="module")
def windows(emodb_root) -> np.ndarray:
    """(4, 48000): the first 3 s of the first four EMO-DB clips that are at least 3 s long."""
    import soundfile as sf

    out = []
    for path in sorted((emodb_root / "wav").glob("*.wav")):
        if sf.info(str(path)).frames >= CFG.window_samples:
            audio, sr = sf.read(str(path), dtype="float32")
            assert sr == CFG.sample_rate_hz
            out.append(audio[: CFG.window_samples])
        if len(out) == 4:
            break
    assert len(out) == 4
    return np.stack(out)


@pytest.fixture(scope="module")
def net(windows) -> LightSERNet:
    """Seeded random-weight LightSERNet whose BatchNorm statistics are set from the clips'
    features and whose classifier is scaled, so that scores differ between clips (a plain
    random net scores every window ~uniformly and would make any parity check vacuous)."""
    torch.manual_seed(0)
    model = LightSERNet()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average: one pass sets the running stats
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(batch_features(list(windows), CFG)))
        model.classifier.weight.mul_(5.0)
    return model.eval()


@pytest.fixture(scope="module")
def onnx_models(net, windows, tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("fused")
    feats = batch_features(list(windows), CFG)
    plain = export_onnx(net, d / "plain.onnx", CFG.input_shape)
    plain8 = quantize_int8(plain, d / "plain8.onnx", feats)
    fused = export_fused(net, d / "fused.onnx", CFG, int8_path=d / "fused8.onnx",
                         calibration=windows)
    return {"plain": str(plain), "plain8": str(plain8), "fused": str(fused),
            "fused8": str(d / "fused8.onnx")}


# --------------------------------------------------------------------------- peak normalisation


@pytest.mark.parametrize("n", [1, 2, 7, 1000, 1001, 48000, 112000])
def test_percentile_via_topk_matches_numpy(n):
    rng = np.random.default_rng(n)
    x = rng.standard_normal(n).astype(np.float32)
    k, frac, hi_off = percentile_indices(n, 99.9)
    top = np.sort(np.abs(x))[::-1][:k]
    got = top[k - 1] + frac * (top[k - 1 - hi_off] - top[k - 1])
    assert got == pytest.approx(np.percentile(np.abs(x), 99.9), rel=1e-6)


def test_gain_matches_peak_scale(windows):
    rng = np.random.default_rng(1)
    spiky = rng.standard_normal((3, CFG.window_samples)).astype(np.float32) * 0.01
    spiky[0, ::500] = 0.9  # outliers above the percentile
    spiky[1, :] = np.round(spiky[1] * 100) / 100  # heavy ties
    batch = np.concatenate([windows, spiky])
    got = FusedFrontend(CFG).gain(torch.from_numpy(batch)).numpy()[:, 0]
    want = np.array([peak_scale(w, CFG.peak_percentile) for w in batch])
    np.testing.assert_allclose(got, want, rtol=1e-6)


# --------------------------------------------------------------------------- features


@pytest.mark.parametrize("input_type,tol", [("mfcc", 1e-3), ("mel", 1e-3), ("spectrogram", 3e-2)])
def test_fused_features_match_numpy(windows, input_type, tol):
    cfg = FrontendConfig(input_type=input_type)
    with torch.no_grad():
        got = FusedFrontend(cfg)(torch.from_numpy(windows)).numpy()
    want = batch_features(list(windows), cfg)
    assert got.shape == want.shape == (4,) + cfg.input_shape
    # matmul DFT vs pocketfft, both float32: the linear spectrogram's log of near-zero bins is
    # the loosest (a few bins near 0.01); nearly all values agree to ~1e-5.
    diff = np.abs(got - want)
    assert np.max(diff) < tol
    assert np.quantile(diff, 0.999) < tol / 10


def test_gather_framing_and_other_window_length(windows):
    """hop that does not divide the frame (Gather path) and a 7 s window (IEMOCAP)."""
    rng = np.random.default_rng(2)
    for cfg in (FrontendConfig(hop_length=300), FrontendConfig(window_s=7.0)):
        x = rng.standard_normal((2, cfg.window_samples)).astype(np.float32) * 0.1
        with torch.no_grad():
            got = FusedFrontend(cfg)(torch.from_numpy(x)).numpy()
        want = batch_features(list(x), cfg)
        assert got.shape == want.shape == (2,) + cfg.input_shape
        assert np.max(np.abs(got - want)) < 1e-3


def test_onnx_frontend_features(windows, tmp_path):
    import onnxruntime as ort

    path = export_fused_frontend(tmp_path / "frontend.onnx", CFG)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(["features"], {"waveform": windows})[0]
    assert np.max(np.abs(got - batch_features(list(windows), CFG))) < 1e-3


# --------------------------------------------------------------------------- scores


def test_fused_scores_match_numpy_frontend_plus_model(onnx_models, net, windows):
    ref = reference_scores(onnx_models["plain"], CFG, windows)
    assert ref.max() > 0.25  # the scores actually vary: parity is not vacuous
    assert parity(onnx_models["fused"], onnx_models["plain"], CFG, windows) < 1e-4
    assert parity(onnx_models["fused"], net, CFG, windows) < 1e-4
    scores = fused_scores(onnx_models["fused"], windows)
    assert scores.shape == (4, 7)
    np.testing.assert_allclose(scores.sum(-1), 1.0, atol=1e-5)


def test_fused_int8_quantizes_only_the_model(onnx_models, windows):
    import onnx

    graph = onnx.load(onnx_models["fused8"]).graph
    producer = {o: n.op_type for n in graph.node for o in n.output}
    matmuls = [n for n in graph.node if n.op_type == "MatMul"]
    assert len(matmuls) == 4  # DFT cos, DFT sin, mel, DCT
    assert all(producer.get(i) != "DequantizeLinear" for n in matmuls for i in n.input)
    assert sum(n.op_type == "QuantizeLinear" for n in graph.node) > 0
    # Same calibration windows -> same quantization as the plain int8 model. Rounding to int8 is
    # a step function, so a ~1e-4 feature difference can flip one quantized activation: the
    # measured gap is ~1e-6 here and up to ~5e-3 on windows outside the calibration set.
    assert parity(onnx_models["fused8"], onnx_models["plain8"], CFG, windows) < 1e-2


def test_silence_gives_finite_scores(onnx_models):
    quiet = np.zeros((3, CFG.window_samples), dtype=np.float32)
    quiet[1] = 1e-10  # below the silence threshold: gain 1
    quiet[2, 100] = 0.5  # one click: the 99.9th percentile is 0 -> gain 1
    for key in ("fused", "fused8"):
        scores = fused_scores(onnx_models[key], quiet)
        assert np.all(np.isfinite(scores))
    assert parity(onnx_models["fused"], onnx_models["plain"], CFG, quiet) < 1e-4


def test_partial_windows_are_refused(onnx_models):
    with pytest.raises(ValueError, match="full windows"):
        parity(onnx_models["fused"], onnx_models["plain"], CFG,
               [np.zeros(CFG.window_samples - 1, dtype=np.float32)])
