"""Temperature scaling (Guo et al., 2017) fitted on held-out cross-validation predictions.

A model's softmax is over-confident on speech unlike its training data. One temperature ``T``
divides the logits (``softmax(z / T)``), which changes no argmax, only how sure the scores
are. ``T`` is fitted by minimising the negative log-likelihood of cross-validation windows
that the fold's model never trained on; each fold counts equally, whatever its size.

:func:`calibrate_cv` judges it honestly: each fold's windows are scored with a temperature
fitted on the *other* folds only (for LOCO: never on the held-out corpus), and the expected
calibration error (ECE, 15 equal-width confidence bins, percent) is reported before and after.
The temperature fitted on all folds is the one exported (``training.package`` divides the
dense layer by it, so the graph's scores are calibrated probabilities).

numpy only: ``sernet validate`` and ``eval`` compute ECE without torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ECE_BINS = 15
T_RANGE = (0.05, 20.0)


def scale(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(probs) / T): the scores of the same model with its logits divided by T."""
    logp = np.log(np.clip(probs, 1e-12, 1.0)) / temperature
    logp -= logp.max(axis=-1, keepdims=True)
    out = np.exp(logp)
    return out / out.sum(axis=-1, keepdims=True)


def nll(probs: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None) -> float:
    p = np.clip(probs[np.arange(len(y)), y], 1e-12, 1.0)
    return float(-np.average(np.log(p), weights=weights))


def fit_temperature(probs: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None) -> float:
    """The T in :data:`T_RANGE` minimising the (weighted) NLL: golden-section search on log T
    (the NLL is convex in 1/T)."""
    lo, hi = np.log(T_RANGE[0]), np.log(T_RANGE[1])
    g = (np.sqrt(5) - 1) / 2
    f = lambda t: nll(scale(probs, float(np.exp(t))), y, weights)  # noqa: E731
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = f(a), f(b)
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = f(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = f(b)
    return round(float(np.exp((lo + hi) / 2)), 4)


def ece(probs: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error in percent: the gap between confidence (top probability)
    and accuracy, averaged over equal-width confidence bins weighted by their counts."""
    if len(y) == 0:
        return float("nan")
    conf = probs.max(axis=-1)
    right = probs.argmax(axis=-1) == y
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.mean() * abs(right[inside].mean() - conf[inside].mean())
    return round(100 * total, 2)


def _fold_windows(out_dir: Path, name: str, result: dict) -> dict | None:
    path = Path(out_dir) / "folds" / name / "windows.npz"
    if not path.is_file():
        return None
    data = np.load(path)
    label = dict(zip(result["utterances"], result["y_true"]))
    utt = data["utt"]
    return {"utt": utt, "y": np.array([label[int(u)] for u in utt]),
            **{k: data[k] for k in ("fp32", "int8") if k in data}}


def pool(probs: np.ndarray, utt: np.ndarray) -> np.ndarray:
    """Mean window probability per utterance, in sorted utterance order."""
    ids, inverse = np.unique(utt, return_inverse=True)
    sums = np.zeros((len(ids), probs.shape[1]))
    np.add.at(sums, inverse, probs)
    return sums / np.bincount(inverse)[:, None]


def calibrate_cv(out_dir: Path, folds: list[str], results: dict[str, dict],
                 labels: list[str]) -> dict | None:
    """Nested temperature scaling over finished folds (two or more with saved windows):
    per-fold temperatures from the other folds, ECE before/after on every fold's windows and
    utterances, and the temperature fitted on all folds (the one to export)."""
    data = {n: w for n in folds if (w := _fold_windows(out_dir, n, results[n])) is not None}
    if len(data) < 2:
        return None
    precision = "int8" if all("int8" in w for w in data.values()) else "fp32"

    def stacked(names: list[str]):
        probs = np.concatenate([data[n]["fp32"] for n in names])
        y = np.concatenate([data[n]["y"] for n in names])
        w = np.concatenate([np.full(len(data[n]["y"]), 1.0 / len(data[n]["y"])) for n in names])
        return probs, y, w

    per_fold, before, after = {}, {"windows": [], "utterances": []}, {"windows": [], "utterances": []}
    for name, w in data.items():
        t = fit_temperature(*stacked([n for n in data if n != name]))
        raw, cal = w[precision], scale(w[precision], t)
        y_utt = np.array([dict(zip(results[name]["utterances"], results[name]["y_true"]))[int(u)]
                          for u in np.unique(w["utt"])])
        row = {"temperature": t,
               "ece_before": {"windows": ece(raw, w["y"]), "utterances": ece(pool(raw, w["utt"]), y_utt)},
               "ece_after": {"windows": ece(cal, w["y"]), "utterances": ece(pool(cal, w["utt"]), y_utt)}}
        per_fold[name] = row
        for k in ("windows", "utterances"):
            before[k].append(row["ece_before"][k])
            after[k].append(row["ece_after"][k])
    mean = lambda v: round(float(np.mean(v)), 2)  # noqa: E731
    return {"method": "temperature scaling of the logits (one scalar), fitted by NLL on held-out "
                      "fp32 windows, each fold weighted equally",
            "judged_on": f"{precision} windows of each fold, with a temperature fitted on the "
                         "other folds only",
            "ece_bins": ECE_BINS,
            "temperature": fit_temperature(*stacked(list(data))),
            "ece_before": {k: mean(v) for k, v in before.items()},
            "ece_after": {k: mean(v) for k, v in after.items()},
            "folds": per_fold}
