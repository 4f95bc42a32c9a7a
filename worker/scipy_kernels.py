"""scipy's compiled FFT and sparse-product kernels, without importing scipy's Python packages.

The frontend needs three things from scipy: a float32 real FFT, a DCT-II (once, to build the
MFCC matrix) and a CSR sparse x dense product (the mel filterbank). ``import scipy.fft`` also
imports ``scipy.special`` and ``scipy._lib`` (~240 modules) and ``scipy.sparse`` most of those
again: together ~28 MB of every worker's RSS, about a seventh of it at 256 speakers
(bench/README.md). The kernels themselves live in two self-contained extension
modules, ``scipy/fft/_pocketfft/pypocketfft`` (pocketfft, pybind11) and
``scipy/sparse/_sparsetools``, which load on their own for ~0.6 MB. This module loads them from
scipy's installed files and calls them with exactly the arguments scipy's wrappers pass, so
results are bit-identical to ``scipy.fft.rfft``/``scipy.fft.dct``/``csr_matrix @`` (tested in
``tests/test_scipy_kernels.py``). Where they cannot be loaded (another scipy layout), the
public scipy functions are used: same bits, more memory.
"""

from __future__ import annotations

import functools
import importlib.machinery
import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np

__all__ = ["rfft", "dct2", "CsrRows", "direct"]


def _extension(subpackage: str, name: str) -> ModuleType | None:
    """scipy's extension module ``scipy/<subpackage>/<name>`` loaded as a top-level module
    (its parent packages are not imported), or None."""
    try:
        spec = importlib.util.find_spec("scipy")  # locates the package, does not import it
        if spec is None or not spec.submodule_search_locations:
            return None
        folder = Path(next(iter(spec.submodule_search_locations)), *subpackage.split("/"))
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = folder / f"{name}{suffix}"
            if path.is_file():
                ext_spec = importlib.util.spec_from_file_location(name, path)
                module = importlib.util.module_from_spec(ext_spec)
                ext_spec.loader.exec_module(module)
                return module
    except Exception:  # any surprise: the public functions below are the fallback
        return None
    return None


@functools.lru_cache(maxsize=1)
def _pocketfft() -> ModuleType | None:
    module = _extension("fft/_pocketfft", "pypocketfft")
    return module if module is not None and hasattr(module, "r2c") and hasattr(module, "dct") else None


@functools.lru_cache(maxsize=1)
def _sparsetools() -> ModuleType | None:
    module = _extension("sparse", "_sparsetools")
    return module if module is not None and hasattr(module, "csr_matvecs") else None


def direct() -> bool:
    """Whether both kernels were loaded directly (scipy's Python packages stay unimported)."""
    return _pocketfft() is not None and _sparsetools() is not None


def rfft(x: np.ndarray, n: int) -> np.ndarray:
    """``scipy.fft.rfft(x, n=n, axis=-1, workers=1)`` for float32 or float64 ``x``."""
    pf = _pocketfft()
    if pf is None:
        import scipy.fft

        return scipy.fft.rfft(x, n=n, axis=-1, workers=1)
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"rfft expects float32 or float64, got {x.dtype}")
    if x.shape[-1] > n:  # as scipy's _fix_shape_1d: cut, or zero-pad at the end
        x = x[..., :n]
    elif x.shape[-1] < n:
        padded = np.zeros(x.shape[:-1] + (n,), dtype=x.dtype)
        padded[..., : x.shape[-1]] = x
        x = padded
    # scipy.fft.rfft: norm None -> 0 ("backward"), forward, one axis, no output array
    return pf.r2c(x, (x.ndim - 1,), True, 0, None, 1)


def dct2(x: np.ndarray) -> np.ndarray:
    """``scipy.fft.dct(x, type=2, axis=-1, norm=None)`` for a float64 ``x``."""
    pf = _pocketfft()
    if pf is None:
        import scipy.fft

        return scipy.fft.dct(x, type=2, axis=-1, norm=None)
    x = np.asarray(x, dtype=np.float64)
    return pf.dct(x, 2, (x.ndim - 1,), 0, None, 1, None)


class CsrRows:
    """A dense matrix ``A`` (rows x cols) kept as CSR, applied as ``scipy.sparse.csr_matrix(A) @
    X`` is: every output element sums its row's non-zeros in column order, so a column of
    ``X`` gets the same bits however many columns share the call."""

    def __init__(self, dense: np.ndarray) -> None:
        dense = np.asarray(dense)
        mask = dense != 0
        self.shape = dense.shape
        self.dtype = dense.dtype
        # as scipy.sparse.csr_matrix(dense) stores it: row by row, columns ascending, int32
        self.indptr = np.concatenate([[0], np.cumsum(mask.sum(axis=1))]).astype(np.int32)
        self.indices = np.nonzero(mask)[1].astype(np.int32)
        self.data = np.ascontiguousarray(dense[mask])
        self._kernel = _sparsetools()  # None: scipy.sparse's matrix instead
        self._scipy = None if self._kernel is not None else self._scipy_matrix(dense)

    @staticmethod
    def _scipy_matrix(dense: np.ndarray):
        import scipy.sparse

        return scipy.sparse.csr_matrix(dense)

    @property
    def nnz(self) -> int:
        return int(self.data.shape[0])

    def times_transposed(self, flat: np.ndarray) -> np.ndarray:
        """``(A @ flat.T).T``, C-contiguous: ``flat`` is (n, cols), the result (n, rows)."""
        if self._scipy is not None:
            return np.ascontiguousarray((self._scipy @ flat.T).T)
        rows, cols = self.shape
        if flat.ndim != 2 or flat.shape[1] != cols:
            raise ValueError(f"expected (n, {cols}), got {flat.shape}")
        n = flat.shape[0]
        out = np.zeros((rows, n), dtype=np.result_type(self.dtype, flat.dtype))
        other = np.ascontiguousarray(flat.T, dtype=out.dtype)  # scipy: other.ravel() of flat.T
        self._kernel.csr_matvecs(rows, cols, n, self.indptr, self.indices,
                                 self.data.astype(out.dtype, copy=False), other.ravel(),
                                 out.ravel())
        return np.ascontiguousarray(out.T)
