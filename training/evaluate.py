"""``sernet eval``: score a labelled corpus with the model artifact, as a user checks the model
on their own recordings before trusting its events.

Each file is scored as ``sernet predict`` scores it (the artifact's windows, mean of window
probabilities, argmax over every model class: what the events show). Labels the model lacks
are counted and reported, never scored and never a crash; a file that cannot be decoded is
reported and skipped. Metrics are over the classes the data shares with the model: UA (mean
recall), WA (accuracy), macro-F1, per-class recall, the confusion matrix (rows: the data's
classes, columns: the model's), the expected calibration error of the scores, and the same
per corpus when several are given.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from training.calibration import ece
from training.corpora import Utterance
from training.metrics import confusion, plot_confusion, scores


@dataclass
class Scored:
    utterances: list[Utterance] = field(default_factory=list)
    probs: list[np.ndarray] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)


def score_files(model, utterances: list[Utterance], frontend, hop_s: float = 1.0,
                progress: bool = False) -> Scored:
    """Mean window probabilities of each utterance; undecodable files go to ``failed``."""
    from rich.progress import track

    from worker.audio import AudioError, load_mono_16k
    from worker.predict import window_scores

    out = Scored()
    for u in track(utterances, description="eval", disable=not progress, transient=True):
        try:
            probs = window_scores(model, load_mono_16k(u.path), frontend, hop_s)
        except (AudioError, ValueError, OSError) as exc:
            out.failed.append({"file": str(u.path), "error": str(exc)})
            continue
        out.utterances.append(u)
        out.probs.append(probs.mean(axis=0))
    return out


def metrics(y_true: list[int], probs: np.ndarray, labels: list[str]) -> dict:
    """UA/WA/F1 over the classes in ``y_true``, per-class recall, confusion, ECE (percent)."""
    y = np.asarray(y_true)
    pred = probs.argmax(-1)
    out = scores(y.tolist(), pred.tolist(), len(labels))
    out["n"] = int(len(y))
    out["recall"] = {labels[k]: round(100 * float((pred[y == k] == k).mean()), 2)
                     for k in sorted(set(y.tolist()))}
    out["confusion"] = confusion(y.tolist(), pred.tolist(), len(labels)).tolist()
    out["ece"] = ece(probs, y)
    return out


def evaluate(model, labels: list[str], utterances: list[Utterance], frontend,
             hop_s: float = 1.0, progress: bool = False) -> tuple[dict, Scored]:
    """Score ``utterances`` (labels outside ``labels`` reported, not scored)."""
    known = [u for u in utterances if u.label in labels]
    lacking: dict[str, int] = {}
    for u in utterances:
        if u.label not in labels:
            lacking[u.label] = lacking.get(u.label, 0) + 1
    scored = score_files(model, known, frontend, hop_s, progress)
    report: dict = {"labels": labels, "files": len(utterances), "scored": len(scored.utterances),
                    "not_in_model": dict(sorted(lacking.items())), "failed": scored.failed,
                    "combine": "mean of window probabilities; label = argmax over every model class"}
    if not scored.utterances:
        return report, scored
    probs = np.stack(scored.probs)
    y = [labels.index(u.label) for u in scored.utterances]
    report["metrics"] = metrics(y, probs, labels)
    corpora = sorted({u.corpus for u in scored.utterances})
    if len(corpora) > 1:
        report["per_corpus"] = {}
        for c in corpora:
            rows = [i for i, u in enumerate(scored.utterances) if u.corpus == c]
            report["per_corpus"][c] = metrics([y[i] for i in rows], probs[rows], labels)
        report["per_corpus_mean"] = {k: round(float(np.mean([m[k] for m in report["per_corpus"].values()])), 2)
                                     for k in ("ua", "wa", "f1")}
    return report, scored


def write(report: dict, out_dir: Path, title: str) -> dict[str, Path]:
    """``eval_report.json`` and ``confusion.png`` (rows: the data's classes) under ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "eval_report.json"}
    paths["json"].write_text(json.dumps(report, indent=2) + "\n")
    m = report.get("metrics")
    if m:
        labels = report["labels"]
        cm = np.asarray(m["confusion"])
        rows = [k for k in range(len(labels)) if cm[k].sum()]
        paths["png"] = plot_confusion(cm[rows], labels, out_dir / "confusion.png",
                                      title=f"{title}: UA {m['ua']:.1f}% WA {m['wa']:.1f}%",
                                      row_labels=[labels[k] for k in rows])
    return paths
