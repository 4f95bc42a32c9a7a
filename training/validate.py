"""The artifact validation gate.

1. every file's sha256 matches the manifest;
2. the manifest's frontend equals the runtime frontend for its window length and input type,
   parameter by parameter, and the model's input/output shapes fit it and the labels;
3. the default (int8) model, run over a labeled corpus, reproduces the UA the manifest recorded
   for that corpus at export (less a margin; or reaches ``min_ua``) and agrees with its fp32
   source on at least ``min_agreement`` percent of windows in every corpus.

Every failed check is reported; the CLI exits non-zero if any failed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from worker.artifact import ArtifactError, check_frontend, read_manifest, verify_checksums
from worker.frontend import FrontendConfig


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def add(self, name: str, ok: bool, detail: str) -> bool:
        self.checks.append(Check(name, ok, detail))
        return ok

    def to_dict(self) -> dict:
        return {"ok": self.ok, "checks": [c.__dict__ for c in self.checks], "metrics": self.metrics}


def runtime_frontend(manifest: dict) -> FrontendConfig:
    """What this runtime computes for the artifact's window length and input type."""
    recorded = manifest["frontend"]
    return FrontendConfig(window_s=recorded.get("window_s", 3.0),
                          input_type=recorded.get("input_type", "mfcc"))


DEFAULT_MIN_UA = 85.0  # for an artifact without export-time reference figures


def validate(directory: Path, utterances=None, min_ua: float | None = None,
             min_agreement: float = 98.0, hop_s: float = 1.0, progress: bool = False) -> Report:
    """``min_ua`` None: each corpus the manifest has a reference UA for (``validation``) must
    reach it less the margin; other corpora, or an artifact without references, the pooled
    UA must reach :data:`DEFAULT_MIN_UA`. A number: the pooled UA must reach it."""
    from worker.model import EmotionModel

    report = Report()
    try:
        manifest = read_manifest(directory)
    except ArtifactError as exc:
        report.add("manifest", False, str(exc))
        return report
    report.add("manifest", True, f"{directory}/manifest.json")
    try:
        verify_checksums(directory, manifest)
        report.add("checksums", True, f"{len(manifest['files'])} files match their sha256")
    except ArtifactError as exc:
        report.add("checksums", False, str(exc))
        return report
    try:
        cfg = runtime_frontend(manifest)
        check_frontend(manifest, cfg)
        report.add("frontend", True, "manifest frontend == runtime frontend")
    except (ArtifactError, TypeError, ValueError) as exc:
        report.add("frontend", False, str(exc))
        return report
    labels = manifest["labels"]
    models = {}
    for precision in ("int8", "fp32"):
        try:
            from worker.artifact import Artifact

            art = Artifact(Path(directory), manifest)
            models[precision] = EmotionModel.from_artifact(art, precision)
        except Exception as exc:  # onnxruntime raises its own exception types
            report.add(f"load {precision}", False, f"{type(exc).__name__}: {exc}")
    if len(models) < 2:
        return report
    probe = np.zeros((1, *cfg.input_shape), dtype=np.float32)
    for precision, model in models.items():
        shape = model.session.get_inputs()[0].shape
        out = model.scores(probe)
        ok = list(shape[1:]) == list(cfg.input_shape) and out.shape == (1, len(labels))
        report.add(f"shapes {precision}", ok,
                   f"input {shape} vs frontend {cfg.input_shape}; output {out.shape} vs {len(labels)} labels")
    if utterances is None:
        return report
    from rich.progress import track

    from training.metrics import scores as metric_scores
    from worker.audio import load_mono_16k
    from worker.frontend import clip_features

    y_true, y_pred, corpus_of = [], [], []
    agree: dict[str, list[int]] = {}  # corpus -> [agreeing windows, windows]
    for u in track(utterances, description="validate", disable=not progress, transient=True):
        if u.label not in labels:
            continue
        feats = clip_features(load_mono_16k(u.path), cfg, hop_s)
        p8 = models["int8"].scores(feats)
        p32 = models["fp32"].scores(feats)
        counts = agree.setdefault(u.corpus or "corpus", [0, 0])
        counts[0] += int((p8.argmax(-1) == p32.argmax(-1)).sum())
        counts[1] += len(feats)
        y_true.append(labels.index(u.label))
        y_pred.append(int(p8.mean(axis=0).argmax()))
        corpus_of.append(u.corpus or "corpus")
    if not y_true:
        report.add("corpus", False, "no utterance of the corpus has a label the model knows")
        return report
    m = metric_scores(y_true, y_pred, len(labels))
    windows = sum(n for _, n in agree.values())
    m["agreement"] = round(100 * sum(a for a, _ in agree.values()) / windows, 2)
    m["agreement_per_corpus"] = {c: round(100 * a / n, 2) for c, (a, n) in sorted(agree.items())}
    m["ua_per_corpus"] = {
        c: metric_scores([t for t, k in zip(y_true, corpus_of) if k == c],
                         [p for p, k in zip(y_pred, corpus_of) if k == c], len(labels))["ua"]
        for c in sorted(set(corpus_of))}
    m["utterances"], m["windows"] = len(y_true), windows
    report.metrics = m
    reference = manifest.get("validation", {})
    refs = reference.get("reference_ua", {})
    margin = float(reference.get("margin", 2.0))
    if min_ua is None and set(m["ua_per_corpus"]) <= set(refs):
        for c, ua in m["ua_per_corpus"].items():
            report.add(f"ua {c}", ua >= refs[c] - margin,
                       f"int8 UA {ua:.2f}% (export-time reference {refs[c]:.2f}% - {margin:g})")
    else:
        floor = DEFAULT_MIN_UA if min_ua is None else min_ua
        report.add("ua", m["ua"] >= floor,
                   f"int8 UA {m['ua']:.2f}% (min {floor}%) on {len(y_true)} utterances")
    worst = min(m["agreement_per_corpus"], key=m["agreement_per_corpus"].get)
    report.add("agreement", m["agreement_per_corpus"][worst] >= min_agreement,
               f"int8/fp32 agreement {m['agreement']:.2f}% of {windows} windows, lowest "
               f"{worst} {m['agreement_per_corpus'][worst]:.2f}% (min {min_agreement}% per corpus)")
    return report
