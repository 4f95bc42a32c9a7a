"""Assemble ``model_artifacts/``: int8 + fp32 ONNX, manifest, model card, confusion image."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np

from training import checkpoint, features
from training.corpora import Utterance
from training.config import INT8_RECIPES
from training.corpora import KNOWN_CORPORA
from training.export import (agreement, bake_temperature, export_onnx, int8_recipe, ort_scores,
                             quantize_selected)
from training.model import count_mflops, count_parameters
from worker.artifact import REPO_ROOT, write_manifest
from worker.frontend import FrontendConfig
from worker.predict import COMBINE

INT8 = "light-sernet.int8.onnx"
FP32 = "light-sernet.fp32.onnx"
FP16 = "light-sernet.fp16.onnx"
FUSED = "light-sernet.fused.fp32.onnx"
CARD = "MODEL_CARD.md"


def code_version(exclude: Path | None = None) -> str:
    """``git describe --always``, ``-dirty`` when tracked files changed -- except under
    ``exclude`` (the artifact folder being written, which is not code)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()

    try:
        version = git("describe", "--always")
        spec = ["--", "."]
        if exclude is not None:
            try:
                spec.append(f":(exclude){Path(exclude).resolve().relative_to(REPO_ROOT)}")
            except ValueError:
                pass  # outside the repository
        return version + ("-dirty" if git("status", "--porcelain", "--untracked-files=no", *spec) else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


REPORTS = "reports"


def copy_report(report: Path, out_dir: Path, name: str, files: dict) -> None:
    """Copy a CV or eval report folder's summary files (and each fold's result.json) into
    ``out_dir/reports/name`` and list them in ``files``: every figure the manifest and card
    quote is traceable to a file beside them."""
    src = Path(report).parent
    dest = Path(out_dir) / REPORTS / name
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    picked = [Path(report)] + sorted(src.glob("*.png")) + sorted(src.glob("*.md"))
    picked += sorted(src.glob("folds/*/result.json"))
    for path in picked:
        target = dest / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
        kind = "figure" if path.suffix == ".png" else "report"
        files[target.relative_to(out_dir).as_posix()] = {"kind": kind}


def loco_metrics(report: dict, baseline: dict | None = None) -> dict:
    """The manifest's ``metrics.loco``: each held-out corpus, their mean, the EMO-DB-only
    model's figures on the same corpora (``baseline``: an eval report) for contrast."""
    out = {"protocol": report["protocol"], "labels": report["labels"],
           "mean": report["metrics"]["per_corpus_mean"],
           "per_corpus": {f["speaker"]: {"n": f["n"], "classes": f["classes"],
                                         **{p: {k: f[p][k] for k in ("ua", "wa", "f1")}
                                            | {"restricted_ua": f[p]["restricted"]["ua"]}
                                            for p in ("fp32", "int8") if p in f},
                                         "int8_agreement_windows": f.get("int8_agreement_windows")}
                          for f in report["folds"]},
           "seconds": round(report.get("seconds", 0.0)),
           "fold_seconds_total": report.get("fold_seconds_total"),
           "train_config": report["train_config"]}
    if baseline and baseline.get("per_corpus"):
        out["baseline"] = {"model": baseline.get("artifact"),
                           "per_corpus": {c: {k: m[k] for k in ("ua", "wa", "f1")}
                                          for c, m in baseline["per_corpus"].items()},
                           "mean": baseline.get("per_corpus_mean")}
    return out


VALIDATION_MARGIN = 2.0  # UA points below the export-time figure that `sernet validate` accepts


def training_data_ua(utterances: list[Utterance], labels: list[str], ev, p8: np.ndarray) -> dict:
    """int8 UA (percent) of each training corpus, utterance = mean of its windows: the
    reference `sernet validate` re-measures (a regression check, not an accuracy claim)."""
    from training.calibration import pool
    from training.metrics import scores

    ids = np.unique(ev.utt)
    pooled = pool(p8, ev.utt)
    corpus = np.array([utterances[i].corpus for i in ids])
    y = np.array([labels.index(utterances[i].label) for i in ids])
    return {c: scores(y[corpus == c].tolist(), pooled[corpus == c].argmax(-1).tolist(),
                      len(labels))["ua"] for c in sorted(set(corpus.tolist()))}


def corpus_agreement(utterances: list[Utterance], ev, p32: np.ndarray, p8: np.ndarray) -> dict:
    """int8/fp32 window agreement (percent) per corpus."""
    corpus = np.array([utterances[i].corpus for i in ev.utt])
    return {c: round(100 * agreement(p32[corpus == c], p8[corpus == c]), 2)
            for c in sorted(set(corpus.tolist()))}


def build_artifact(ckpt_path: Path, utterances: list[Utterance], out_dir: Path,
                   cv_report: Path | None = None, fp16: bool = False, fused: bool = False,
                   calib_windows: int = 256,
                   min_agreement: float = 98.0, name: str | None = None,
                   version: str = "2.0.0", loco_report: Path | None = None,
                   baseline_report: Path | None = None) -> dict:
    """Export ``ckpt_path`` to ``out_dir`` and write its manifest; returns the manifest.

    With ``loco_report``, the temperature it fitted on held-out corpora is baked into the
    graphs (:func:`training.export.bake_temperature`) and its per-corpus figures go into the
    manifest and card."""
    model, blob = checkpoint.load(ckpt_path)
    cfg = FrontendConfig.from_dict(blob["frontend"])
    labels = blob["labels"]
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("confusion_int8.png", "confusion_fp32.png", "cv_table.md", REPORTS):
        target = out_dir / stale
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    loco = json.loads(Path(loco_report).read_text()) if loco_report else None
    calibration = (loco or {}).get("calibration")
    if calibration:
        model = bake_temperature(model, calibration["temperature"])
    export_onnx(model, out_dir / FP32, cfg.input_shape)
    tr = features.build(utterances, cfg, "train", progress=False)
    recipe = blob["train_config"].get("int8_recipe", INT8_RECIPES[0])
    _, selection = quantize_selected(out_dir / FP32, out_dir / INT8, tr.features,
                                     np.flatnonzero(tr.variant == 0), np.flatnonzero(tr.variant != 0),
                                     seed=blob["train_config"].get("seed", 0),
                                     calib_windows=calib_windows, recipe=recipe)
    ev = features.build(utterances, cfg, "eval", progress=False)
    p32 = ort_scores(out_dir / FP32, ev.features)
    p8 = ort_scores(out_dir / INT8, ev.features)
    agree = 100 * agreement(p32, p8)
    per_corpus = corpus_agreement(utterances, ev, p32, p8)
    worst = min(per_corpus, key=per_corpus.get)
    if agree < min_agreement or per_corpus[worst] < min_agreement:
        raise RuntimeError(f"int8/fp32 agreement {agree:.2f}% ({worst}: {per_corpus[worst]:.2f}%) "
                           f"< {min_agreement}% on the training corpus windows: refusing to write "
                           "the artifact")
    files = {INT8: {"precision": "int8", "kind": "model"}, FP32: {"precision": "fp32", "kind": "model"}}
    if fp16:
        export_onnx(model, out_dir / FP16, cfg.input_shape, fp16=True)
        files[FP16] = {"precision": "fp16", "kind": "model"}
    if fused:
        from training.fused import export_fused

        export_fused(model, out_dir / FUSED, cfg)
        files[FUSED] = {"precision": "fp32", "kind": "fused-frontend",
                        "input": {"name": "waveform", "shape": [None, cfg.window_samples]}}
    corpora = blob.get("corpora") or {"emodb": {"labels": labels, "utterances": blob.get("n_utterances")}}
    name = name or ("light-sernet-multi" if len(corpora) > 1 else "light-sernet-emodb")
    manifest = {
        "name": name, "version": version,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "labels": labels, "default_model": INT8, "window_s": cfg.window_s,
        "input": {"name": "features", "shape": [None, *cfg.input_shape], "dtype": "float32",
                  "type": cfg.input_type},
        "output": {"name": "scores", "shape": [None, len(labels)],
                   "semantics": "softmax probabilities in `labels` order"},
        "frontend": cfg.to_dict(),
        "predict": {"hop_s": 1.0, "combine": COMBINE},
        "files": files,
        "model": {"architecture": "Light-SERNet (Aftab et al., ICASSP 2022)",
                  "parameters": count_parameters(model),
                  "mflops_per_window": round(count_mflops(model, cfg.input_shape), 1)},
        "quantization": {"format": "QDQ static", "ops": ["Conv", "Gemm"],
                         "int8_recipe": recipe,
                         "recipe": f"training.export.quantize_selected: {int8_recipe(recipe).summary}",
                         "weights": "int8 per-channel symmetric",
                         "activations": "uint8 asymmetric, MinMax",
                         "calibration_windows": selection["calibration_windows"],
                         "calibration_data": "clean training windows; the set (of "
                                             f"{selection['candidates']} seeded candidates) whose "
                                             "int8 model agrees best with fp32 on augmented "
                                             "training windows",
                         "calibration_selection": selection,
                         "agreement_with_fp32_on_training_windows": round(agree, 2),
                         "agreement_with_fp32_per_corpus": per_corpus},
        "training": {"corpora": {c: {**KNOWN_CORPORA.get(c, {}), **meta} for c, meta in corpora.items()},
                     "licence_note": "trained on research / non-commercial corpora: the model "
                                     "inherits their terms (research and non-commercial use only)",
                     "utterances": blob.get("n_utterances"),
                     "speakers": blob.get("speakers"), "data_fingerprint": blob.get("data_fingerprint"),
                     "train_config": blob["train_config"],
                     "train_seconds": round(blob.get("train_seconds", 0.0), 1)},
        "validation": {"reference_ua": training_data_ua(utterances, labels, ev, p8),
                       "margin": VALIDATION_MARGIN,
                       "note": "int8 UA of this model on its own training corpora at export "
                               "(hop 1 s, mean of windows): `sernet validate` fails a corpus "
                               "more than `margin` points below it. A regression reference, "
                               "not an accuracy claim (see metrics.loco)."},
        "code_version": code_version(exclude=out_dir),
        "metrics": {},
    }
    if cv_report is not None and Path(cv_report).is_file():
        report = json.loads(Path(cv_report).read_text())
        manifest["metrics"]["cv"] = {
            "protocol": report["protocol"], "folds": len(report["folds"]),
            "fp32": {k: report["metrics"]["fp32"][k] for k in ("ua", "wa", "f1")},
            "int8": {k: report["metrics"]["int8"][k] for k in ("ua", "wa", "f1")},
            "int8_agreement_min_fold": report["metrics"].get("int8_agreement_min_fold"),
            "int8_channels": report["metrics"].get("int8_channels"),
            "seconds": round(report.get("seconds", 0.0)),
            "fold_seconds_total": report.get("fold_seconds_total"),
            "train_config": report["train_config"],
        }
        copy_report(Path(cv_report), out_dir, "loso", files)
    if loco is not None:
        baseline = json.loads(Path(baseline_report).read_text()) if baseline_report else None
        manifest["metrics"]["loco"] = loco_metrics(loco, baseline)
        copy_report(Path(loco_report), out_dir, "loco", files)
        if baseline_report:
            copy_report(Path(baseline_report), out_dir, "baseline", files)
    manifest["calibration"] = (
        {"method": "temperature", "temperature": calibration["temperature"],
         "baked_into": "the dense layer of every exported graph (logits / T)",
         "fitted_on": "held-out windows of the leave-one-corpus-out folds (each corpus scored "
                      "by a model that never trained on it; all of them training data here)",
         "ece_before": calibration["ece_before"], "ece_after": calibration["ece_after"],
         "ece_judged_on": calibration["judged_on"]}
        if calibration else {"method": "none", "temperature": 1.0})
    write_manifest(out_dir, manifest)  # fills sizes the card quotes
    from training.card import write_card

    write_card(out_dir, manifest)
    files[CARD] = {"kind": "card"}
    write_manifest(out_dir, manifest)
    return manifest
