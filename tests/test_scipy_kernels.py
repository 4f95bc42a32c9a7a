"""worker.scipy_kernels: scipy's kernels loaded without scipy's Python packages, same bits."""

import subprocess
import sys

import numpy as np
import pytest
import scipy.fft
import scipy.sparse

from worker import scipy_kernels
from worker.frontend import FrontendConfig, mel_matrix


def test_kernels_load_directly():
    assert scipy_kernels.direct()


@pytest.mark.parametrize("shape,n", [((1, 1024), 1024), ((63, 1024), 1024), ((3, 1000, 1024), 1024),
                                     ((5, 700), 1024), ((4, 1100), 1024)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rfft_equals_scipy(shape, n, dtype):
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    got = scipy_kernels.rfft(x, n)
    want = scipy.fft.rfft(x, n=n, axis=-1, workers=1)
    assert got.dtype == want.dtype and np.array_equal(got, want)


def test_rfft_refuses_integers():
    with pytest.raises(TypeError):
        scipy_kernels.rfft(np.zeros((2, 1024), dtype=np.int16), 1024)


def test_dct2_equals_scipy():
    eye = np.eye(128)
    assert np.array_equal(scipy_kernels.dct2(eye), scipy.fft.dct(eye, type=2, axis=-1, norm=None))


@pytest.mark.parametrize("n", [1, 2, 63, 1008])
def test_csr_product_equals_scipy(n):
    cfg = FrontendConfig()
    w = mel_matrix(cfg.num_mel_bins, cfg.fft_length, cfg.sample_rate_hz, cfg.lower_edge_hz,
                   cfg.upper_edge_hz).T
    x = np.abs(np.random.default_rng(n).standard_normal((n, w.shape[1]))).astype(np.float32)
    rows = scipy_kernels.CsrRows(w)
    assert rows.nnz == scipy.sparse.csr_matrix(w).nnz
    got = rows.times_transposed(x)
    want = np.ascontiguousarray((scipy.sparse.csr_matrix(w) @ x.T).T)
    assert got.flags.c_contiguous and np.array_equal(got, want)
    with pytest.raises(ValueError):
        rows.times_transposed(x[:, :-1])


def test_fallback_without_the_extensions(monkeypatch):
    """Another scipy layout: the public functions, same results."""
    monkeypatch.setattr(scipy_kernels, "_pocketfft", lambda: None)
    monkeypatch.setattr(scipy_kernels, "_sparsetools", lambda: None)
    assert not scipy_kernels.direct()
    x = np.random.default_rng(1).standard_normal((7, 1024)).astype(np.float32)
    assert np.array_equal(scipy_kernels.rfft(x, 1024), scipy.fft.rfft(x, n=1024, axis=-1, workers=1))
    w = (np.abs(np.random.default_rng(2).standard_normal((4, 9))) * (np.arange(9) % 3 == 0)).astype(np.float32)
    rows = scipy_kernels.CsrRows(w)
    assert rows._scipy is not None
    y = np.random.default_rng(3).standard_normal((5, 9)).astype(np.float32)
    assert np.array_equal(rows.times_transposed(y), np.ascontiguousarray((scipy.sparse.csr_matrix(w) @ y.T).T))


def test_the_frontend_imports_no_scipy_package():
    """The worker's frontend path (features of a window) leaves scipy's Python packages out of
    the process: they cost ~28 MB of RSS per worker."""
    code = ("import sys, numpy as np\n"
            "from worker.frontend import window_features, FrontendConfig\n"
            "window_features(np.random.default_rng(0).standard_normal(48000).astype(np.float32) * 0.1)\n"
            "print(sorted(m for m in sys.modules if m == 'scipy' or m.startswith('scipy.')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
