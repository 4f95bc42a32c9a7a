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
from training.export import agreement, export_onnx, int8_recipe, ort_scores, quantize_selected
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


def build_artifact(ckpt_path: Path, utterances: list[Utterance], out_dir: Path,
                   cv_report: Path | None = None, fp16: bool = False, fused: bool = False,
                   calib_windows: int = 256,
                   min_agreement: float = 98.0, name: str = "light-sernet-emodb",
                   version: str = "1.0.0") -> dict:
    """Export ``ckpt_path`` to ``out_dir`` and write its manifest; returns the manifest."""
    model, blob = checkpoint.load(ckpt_path)
    cfg = FrontendConfig.from_dict(blob["frontend"])
    labels = blob["labels"]
    out_dir.mkdir(parents=True, exist_ok=True)
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
    if agree < min_agreement:
        raise RuntimeError(f"int8/fp32 agreement {agree:.2f}% < {min_agreement}% on the "
                           "training corpus windows: refusing to write the artifact")
    files = {INT8: {"precision": "int8", "kind": "model"}, FP32: {"precision": "fp32", "kind": "model"}}
    if fp16:
        export_onnx(model, out_dir / FP16, cfg.input_shape, fp16=True)
        files[FP16] = {"precision": "fp16", "kind": "model"}
    if fused:
        from training.fused import export_fused

        export_fused(model, out_dir / FUSED, cfg)
        files[FUSED] = {"precision": "fp32", "kind": "fused-frontend",
                        "input": {"name": "waveform", "shape": [None, cfg.window_samples]}}
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
                         "agreement_with_fp32_on_training_windows": round(agree, 2)},
        "training": {"corpus": "EMO-DB", "utterances": blob.get("n_utterances"),
                     "speakers": blob.get("speakers"), "data_fingerprint": blob.get("data_fingerprint"),
                     "train_config": blob["train_config"],
                     "train_seconds": round(blob.get("train_seconds", 0.0), 1)},
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
        for png in ("confusion_int8.png", "confusion_fp32.png"):
            src = Path(cv_report).parent / png
            if src.is_file():
                shutil.copy(src, out_dir / png)
                files[png] = {"kind": "figure"}
        shutil.copy(Path(cv_report).parent / "cv_table.md", out_dir / "cv_table.md")
        files["cv_table.md"] = {"kind": "report"}
    write_manifest(out_dir, manifest)  # fills sizes the card quotes
    from training.card import write_card

    write_card(out_dir, manifest)
    files[CARD] = {"kind": "card"}
    write_manifest(out_dir, manifest)
    return manifest
