"""Classification metrics in percent (scikit-learn) and confusion-matrix plots (matplotlib)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def scores(y_true, y_pred, n_classes: int) -> dict[str, float]:
    """UA (mean per-class recall), WA (accuracy) and macro-F1, in percent, over the classes
    present in ``y_true`` (a class the test data lacks has no recall to average)."""
    from sklearn.metrics import accuracy_score, f1_score, recall_score

    present = sorted(set(int(v) for v in y_true))
    return {"ua": round(100 * recall_score(y_true, y_pred, labels=present, average="macro",
                                           zero_division=0), 2),
            "wa": round(100 * accuracy_score(y_true, y_pred), 2),
            "f1": round(100 * f1_score(y_true, y_pred, labels=present, average="macro",
                                       zero_division=0), 2)}


def confusion(y_true, y_pred, n_classes: int) -> np.ndarray:
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(y_true, y_pred, labels=list(range(n_classes)))


def plot_confusion(cm: np.ndarray, labels: list[str], path: str | Path, title: str = "",
                   row_labels: list[str] | None = None) -> Path:
    """Row-normalised confusion matrix as a PNG; ``row_labels`` when the rows are a subset of
    the columns (test data lacking some of the model's classes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = cm.sum(axis=1, keepdims=True)
    norm = cm / np.maximum(rows, 1)
    fig, ax = plt.subplots(figsize=(6.4, 5.4), dpi=110)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(cm.shape[0]), row_labels or labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{cm[i, j]}\n{100 * norm[i, j]:.0f}%", ha="center", va="center",
                    fontsize=7, color="white" if norm[i, j] > 0.5 else "black")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
