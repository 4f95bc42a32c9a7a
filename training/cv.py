"""Honest cross-validation: leave-one-speaker-out (LOSO) and leave-one-corpus-out (LOCO).

A fold holds out a speaker, a group of speakers (:func:`speaker_folds`) or a whole corpus
(:func:`corpus_folds`: LOCO, the estimate of what recordings unlike any training corpus get).
Each fold trains on everything else with a fixed recipe and keeps the final
(EMA) weights: no validation on the test data, no early stopping, no best-epoch picking.
The fold's model is then exported to ONNX fp32 and quantized to int8 (calibrated on that
fold's training audio only) and both are scored on the held-out speaker. An utterance's
prediction is the mean probability of its windows (hop 1 s), as ``sernet predict`` does.

Folds run in parallel processes and resume: a fold whose ``result.json`` exists is skipped.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training import features
from training.corpora import Utterance, corpus_arrays
from training.metrics import confusion, plot_confusion, scores
from training.config import INT8_RECIPES, TrainConfig
from worker.frontend import FrontendConfig


@dataclass(frozen=True)
class Fold:
    name: str
    test_ids: tuple[int, ...]  # indices into the utterance list; the rest is training


def speaker_folds(utterances: list[Utterance], speakers: list[str] | None = None,
                  test_corpus: str | None = None, groups: int = 0) -> list[Fold]:
    """Leave-one-speaker-out folds over the speakers of ``test_corpus`` (every corpus if None),
    or ``groups`` folds of consecutive speakers (sorted) when CPU time asks for fewer folds.
    The other corpora stay in every fold's training."""
    pool = sorted({u.speaker for u in utterances if test_corpus in (None, u.corpus)})
    if not pool:
        raise ValueError(f"no speakers in corpus {test_corpus!r}")
    chosen = speakers or pool
    unknown = set(chosen) - set(pool)
    if unknown:
        raise ValueError(f"unknown speakers {sorted(unknown)}; corpus has {pool}")
    if groups and groups < len(chosen):
        parts = np.array_split(np.array(sorted(chosen)), groups)
        sets = [list(p) for p in parts]
    else:
        sets = [[s] for s in chosen]
    spk = np.array([u.speaker for u in utterances])
    return [Fold("+".join(group), tuple(int(i) for i in np.flatnonzero(np.isin(spk, group))))
            for group in sets]


def corpus_folds(utterances: list[Utterance], corpora: list[str] | None = None) -> list[Fold]:
    """Leave-one-corpus-out folds: each corpus (of ``corpora``, default all) is one fold's test
    set, and none of its utterances is in that fold's training."""
    names = sorted({u.corpus for u in utterances})
    if len(names) < 2:
        raise ValueError(f"leave-one-corpus-out needs two corpora or more, got {names}")
    chosen = corpora or names
    unknown = set(chosen) - set(names)
    if unknown:
        raise ValueError(f"unknown corpora {sorted(unknown)}; loaded {names}")
    corpus = np.array([u.corpus for u in utterances])
    return [Fold(c, tuple(int(i) for i in np.flatnonzero(corpus == c))) for c in chosen]


@dataclass(frozen=True)
class FoldJob:
    fold: Fold
    utterances: list[Utterance]
    labels: list[str]
    frontend: FrontendConfig
    train_config: TrainConfig
    out_dir: Path
    int8: bool
    cache_dir: Path | None
    channels: bool = True


def run_fold(job: FoldJob, queue=None) -> dict:
    """Train, export and score one fold; returns (and writes) its result."""
    import torch

    from training import checkpoint
    from training.export import export_onnx
    from training.train import pool_by_utterance, predict_windows, train_distilled

    name = job.fold.name
    fold_dir = job.out_dir / "folds" / name
    result_path = fold_dir / "result.json"
    if result_path.is_file():
        return json.loads(result_path.read_text())
    torch.set_num_threads(max(1, job.train_config.threads or 1))
    start = time.time()
    cfg = job.frontend
    tr = features.build(job.utterances, cfg, "train", cache_dir=job.cache_dir, progress=False)
    ev = features.build(job.utterances, cfg, "eval", cache_dir=job.cache_dir, progress=False)
    y = np.array([job.labels.index(u.label) for u in job.utterances])
    groups, allowed = corpus_arrays(job.utterances, job.labels)
    test_ids = np.array(sorted(job.fold.test_ids))
    train_ids = np.setdiff1d(np.arange(len(job.utterances)), test_ids)

    def on_epoch(epoch: int, stats: dict) -> None:
        if queue is not None:
            queue.put((name, epoch, stats["loss"]))

    result = train_distilled(tr, y, train_ids, len(job.labels), job.train_config, on_epoch=on_epoch,
                             groups=groups, allowed=allowed)
    checkpoint.save(fold_dir / "model.pt", result.model, job.labels, cfg,
                    job.train_config.to_dict(), history=result.history, test_speaker=name)
    test_rows = np.isin(ev.utt, test_ids)
    test_feats = ev.features[test_rows].astype(np.float32)
    test_utt = ev.utt[test_rows]
    p32_torch = predict_windows(result.model, test_feats)
    tested = np.unique(test_utt)
    out = {"speaker": name, "utterances": [int(i) for i in tested],
           "y_true": [int(y[i]) for i in tested],
           "corpora": sorted({job.utterances[i].corpus for i in tested}),
           # the classes the held-out data annotates (for a score restricted to them)
           "classes": [int(k) for k in np.flatnonzero(allowed[tested].any(axis=0))]}
    windows = {"utt": test_utt, "fp32": p32_torch.astype(np.float32)}
    if job.train_config.qat_epochs:
        from training.qat import qat_settings

        out["qat"] = qat_settings(job.train_config)
    _, pooled = pool_by_utterance(p32_torch, test_utt)
    out["fp32_probs"] = pooled.round(6).tolist()
    if result.teachers:  # what the ensemble the student learned from scores (diagnostic)
        p_teachers = np.mean([predict_windows(t, test_feats) for t in result.teachers], axis=0)
        out["teachers_fp32_probs"] = pool_by_utterance(p_teachers, test_utt)[1].round(6).tolist()
    if job.int8:
        fp32_path = export_onnx(result.model, fold_dir / "model.fp32.onnx", cfg.input_shape)
        out.update(int8_eval(fold_dir, fp32_path, tr, train_ids, test_feats, test_utt,
                             pooled, job.train_config.seed, p32_torch,
                             recipe=job.train_config.int8_recipe))
        windows["int8"] = out.pop("int8_windows")
        if job.channels:
            out["channel_int8_probs"] = channel_eval(job.utterances, cfg, fold_dir / "model.int8.onnx",
                                                     test_ids, job.cache_dir)
    out["seconds"] = time.time() - start
    out["final_train_loss"] = result.history[-1]["loss"] if result.history else None
    fold_dir.mkdir(parents=True, exist_ok=True)
    # window probabilities: the held-out predictions that calibration is fitted and judged on
    np.savez_compressed(fold_dir / WINDOWS, **windows)
    result_path.write_text(json.dumps(out))
    return out


WINDOWS = "windows.npz"


def int8_eval(fold_dir: Path, fp32_path: Path, tr, train_ids: np.ndarray, test_feats: np.ndarray,
              test_utt: np.ndarray, pooled_fp32: np.ndarray, seed: int,
              p32_reference: np.ndarray | None = None, recipe: str = INT8_RECIPES[0]) -> dict:
    """Quantize a fold's fp32 ONNX with int8 ``recipe`` (calibration chosen among candidate
    sets of clean windows by agreement on augmented windows, all of the fold's training speakers
    only: :func:`training.export.quantize_selected`) and score both on the test speaker."""
    from training.export import agreement, ort_scores, quantize_selected
    from training.train import pool_by_utterance

    train_rows = np.isin(tr.utt, train_ids)
    int8_path, selection = quantize_selected(
        fp32_path, fold_dir / "model.int8.onnx", tr.features,
        np.flatnonzero(train_rows & (tr.variant == 0)), np.flatnonzero(train_rows & (tr.variant != 0)),
        seed=seed, recipe=recipe)
    p32 = ort_scores(fp32_path, test_feats)
    p8 = ort_scores(int8_path, test_feats)
    _, pooled8 = pool_by_utterance(p8, test_utt)
    out = {"int8_probs": pooled8.round(6).tolist(), "int8_windows": p8.astype(np.float32),
           "int8_agreement_windows": agreement(p32, p8),
           "int8_agreement_utterances": agreement(pooled_fp32, pooled8),
           "int8_bytes": int8_path.stat().st_size, "int8_calibration": selection}
    if p32_reference is not None:
        out["onnx_fp32_max_abs_diff"] = float(np.abs(p32 - p32_reference).max())
    return out


CHANNELS = ("telephone", "noisy")


def channel_eval(utterances: list[Utterance], cfg: FrontendConfig, onnx_path: Path,
                 test_ids: np.ndarray, cache_dir: Path | None) -> dict[str, list]:
    """The fold's model on its test speaker's audio through channels it was not tested on
    (:data:`CHANNELS`: 300-3400 Hz G.711 telephone; coloured noise at 5-25 dB SNR behind a
    random microphone tilt), pooled per utterance like the clean figures."""
    from training.export import ort_scores
    from training.train import pool_by_utterance

    test = [utterances[i] for i in np.sort(test_ids)]  # pooled rows follow this order
    out = {}
    for variant in CHANNELS:
        ev = features.build(test, cfg, "eval", cache_dir=cache_dir, progress=False,
                            eval_variant=variant)
        probs = ort_scores(onnx_path, ev.features.astype(np.float32))
        out[variant] = pool_by_utterance(probs, ev.utt)[1].round(6).tolist()
    return out


def requantize(utterances: list[Utterance], frontend: FrontendConfig, out_dir: Path,
               progress: bool = True, cache_dir: Path | None = features.DEFAULT_CACHE,
               train_config: TrainConfig | None = None,
               speakers: list[str] | None = None, notes: list[str] | None = None) -> list[str]:
    """Re-run the int8 step of every finished fold with the current recipe.

    Post-training quantization is redone, calibrated on each fold's training speakers as
    before. A fold trained without int8 (``--no-int8``: only ``model.pt``) first gets its fp32
    ONNX exported from that checkpoint, so a long fp32 CV can be scored in int8 afterwards.
    With ``train_config.qat_epochs`` a fold not yet fine-tuned for int8 is fine-tuned first
    (:func:`training.qat.finetune_for_int8`, on its training speakers; the checkpoint before it
    is kept as ``model.pre_qat.pt``) and its fp32 scores are redone; otherwise the fp32 fold
    models are untouched. ``speakers``: only these folds. Returns the speakers redone; a fold
    fine-tuned for another int8 recipe than the one it is now quantized with is named in
    ``notes`` (its fine-tuning simulated other roundings; docs/training.md: the fused-relu
    graph failed the agreement gate that way).
    """
    recipe = train_config.int8_recipe if train_config else INT8_RECIPES[0]
    other_recipe: dict[str, list[str]] = {}
    tr = features.build(utterances, frontend, "train", cache_dir=cache_dir, progress=progress)
    ev = features.build(utterances, frontend, "eval", cache_dir=cache_dir, progress=progress)
    report = Path(out_dir) / "cv_report.json"
    seed = json.loads(report.read_text())["train_config"]["seed"] if report.is_file() else 0
    done = []
    for result_path in sorted(Path(out_dir).glob("folds/*/result.json")):
        fold_dir = result_path.parent
        r = json.loads(result_path.read_text())
        if speakers and r["speaker"] not in speakers:
            continue
        fp32_path = fold_dir / "model.fp32.onnx"
        test_ids = np.array(r["utterances"])
        train_ids = np.setdiff1d(np.arange(len(utterances)), test_ids)
        rows = np.isin(ev.utt, test_ids)
        if train_config is not None and train_config.qat_epochs and "qat" not in r:
            r.update(finetune_fold(fold_dir, tr, train_ids, ev.features[rows].astype(np.float32),
                                   ev.utt[rows], frontend, train_config))
        if not fp32_path.is_file() and (fold_dir / "model.pt").is_file():
            from training import checkpoint
            from training.export import export_onnx

            model, _ = checkpoint.load(fold_dir / "model.pt")
            export_onnx(model.eval(), fp32_path, frontend.input_shape)
        if not fp32_path.is_file():
            continue
        tuned_for = r["qat"].get("int8_recipe", INT8_RECIPES[0]) if "qat" in r else recipe
        if tuned_for != recipe:
            other_recipe.setdefault(tuned_for, []).append(r["speaker"])
        r.update(int8_eval(fold_dir, fp32_path, tr, train_ids, ev.features[rows].astype(np.float32),
                           ev.utt[rows], np.asarray(r["fp32_probs"]), seed, recipe=recipe))
        r.pop("int8_windows")
        r["channel_int8_probs"] = channel_eval(utterances, frontend, fold_dir / "model.int8.onnx",
                                               test_ids, cache_dir)
        r["int8_recipe"] = "quantize_selected"
        result_path.write_text(json.dumps(r))
        done.append(r["speaker"])
    if notes is not None:
        notes += [f"folds {', '.join(names)} were fine-tuned for int8 recipe {tuned_for!r} but are "
                  f"now quantized with {recipe!r}: their int8 agreement may drop (to fine-tune "
                  "them for it, restore model.pt from model.pre_qat.pt and drop \"qat\" from "
                  "result.json, then --requantize again)"
                  for tuned_for, names in other_recipe.items()]
    return done


def finetune_fold(fold_dir: Path, tr, train_ids: np.ndarray, test_feats: np.ndarray,
                  test_utt: np.ndarray, frontend: FrontendConfig, cfg: TrainConfig) -> dict:
    """int8 agreement fine-tuning of a finished fold's ``model.pt`` (kept as ``model.pre_qat.pt``)
    on its training speakers; re-exports the fp32 ONNX and returns the fold's new fp32 scores."""
    import shutil

    import torch

    from training.export import export_onnx
    from training.qat import finetune_checkpoint, qat_settings
    from training.train import pool_by_utterance, predict_windows

    torch.set_num_threads(max(1, cfg.threads or 1))
    original = fold_dir / "model.pre_qat.pt"
    if not original.is_file():
        shutil.copy2(fold_dir / "model.pt", original)
    tuned = finetune_checkpoint(original, fold_dir / "model.pt", tr, train_ids, cfg)
    export_onnx(tuned, fold_dir / "model.fp32.onnx", frontend.input_shape)
    _, pooled = pool_by_utterance(predict_windows(tuned, test_feats), test_utt)
    return {"fp32_probs": pooled.round(6).tolist(), "qat": qat_settings(cfg)}


def run_cv(utterances: list[Utterance], labels: list[str], frontend: FrontendConfig,
           train_config: TrainConfig, out_dir: Path, speakers: list[str] | None = None,
           jobs: int = 2, int8: bool = True, progress: bool = True,
           cache_dir: Path | None = features.DEFAULT_CACHE, folds: list[Fold] | None = None,
           mode: str = "loso", channels: bool = True) -> dict:
    """Run ``folds`` (default: leave-one-speaker-out over ``speakers``), resuming finished ones,
    and write ``cv_report.json``, ``cv_table.md`` and the confusion matrices to ``out_dir``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    folds = folds or speaker_folds(utterances, speakers)
    # build the caches once in this process so the fold processes only load them
    features.build(utterances, frontend, "train", cache_dir=cache_dir, progress=progress)
    features.build(utterances, frontend, "eval", cache_dir=cache_dir, progress=progress)
    if jobs > 1 and train_config.threads == 0:
        from dataclasses import replace

        train_config = replace(train_config, threads=max(1, (os.cpu_count() or 2) // jobs))
    start = time.time()
    results: dict[str, dict] = {}
    ctx = mp.get_context("spawn")
    names = [f.name for f in folds]
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), disable=not progress) as bar:
        overall = bar.add_task("folds", total=len(folds))
        tasks = {n: bar.add_task(f"  fold {n}", total=train_config.total_epochs, visible=False)
                 for n in names}
        manager = ctx.Manager()
        queue = manager.Queue()
        stop = threading.Event()

        def pump() -> None:
            while not stop.is_set():
                try:
                    name, epoch, loss = queue.get(timeout=0.2)
                except Exception:
                    continue
                bar.update(tasks[name], completed=epoch, visible=True,
                           description=f"  fold {name} loss {loss:.3f}")
                if not progress and epoch % 5 == 0:  # a line now and then without a live bar
                    print(f"fold {name}: epoch {epoch}/{train_config.total_epochs} loss {loss:.3f}",
                          file=sys.stderr, flush=True)

        thread = threading.Thread(target=pump, daemon=True)
        thread.start()
        jobs_ = [FoldJob(f, utterances, labels, frontend, train_config, out_dir, int8, cache_dir,
                         channels) for f in folds]
        try:
            with ProcessPoolExecutor(max_workers=max(1, jobs), mp_context=ctx) as pool:
                futures = {pool.submit(run_fold, j, queue): j.fold.name for j in jobs_}
                for fut in as_completed(futures):
                    name = futures[fut]
                    results[name] = fut.result()
                    bar.update(tasks[name], visible=False)
                    bar.advance(overall)
                    if not progress:  # a log line per fold where there is no live bar
                        r = results[name]
                        pred = np.asarray(r.get("int8_probs", r["fp32_probs"])).argmax(-1)
                        ua = scores(r["y_true"], pred.tolist(), len(labels))["ua"]
                        print(f"fold {name} done ({len(results)}/{len(folds)}): "
                              f"{len(r['y_true'])} utterances, UA {ua:.2f}%, "
                              f"{r['seconds']:.0f} s", file=sys.stderr, flush=True)
        finally:
            stop.set()
            thread.join()
            manager.shutdown()
    report = summarize(results, labels, names, train_config, out_dir, mode=mode,
                       corpora=sorted({u.corpus for u in utterances}))
    report["seconds"] = time.time() - start
    (out_dir / "cv_report.json").write_text(json.dumps(report, indent=2))
    return report


PROTOCOLS = {
    "loso": "leave-one-speaker-out",
    "loco": "leave-one-corpus-out (each corpus tested by a model trained on the others only)",
}


def fold_scores(r: dict, labels: list[str], key: str) -> dict:
    """A fold's UA/WA/F1 over the classes its test data annotates: ``open`` takes the argmax
    over every model class (what events show), ``restricted`` over the test data's classes."""
    probs = np.asarray(r[key])
    present = r.get("classes") or list(range(len(labels)))
    out = scores(r["y_true"], probs.argmax(-1).tolist(), len(labels))
    masked = np.full_like(probs, -1.0)
    masked[:, present] = probs[:, present]
    out["restricted"] = scores(r["y_true"], masked.argmax(-1).tolist(), len(labels))
    return out


def summarize(results: dict[str, dict], labels: list[str], speakers: list[str],
              train_config: TrainConfig, out_dir: Path, mode: str = "loso",
              corpora: list[str] | None = None) -> dict:
    """Pooled UA/WA/F1 and confusion matrices (JSON + PNG) for fp32 and int8, per-fold table;
    for LOCO also each held-out corpus's scores and confusion matrix and their mean."""
    report: dict = {"labels": labels, "train_config": train_config.to_dict(), "folds": [],
                    "mode": mode, "corpora": corpora or [],
                    "protocol": f"{PROTOCOLS[mode]}; fixed schedule, final EMA weights; "
                                "utterance = mean of window probabilities (hop 1 s)"}
    # teachers_fp32: the ensemble a distilled student learned from (diagnostic, not shipped)
    pooled: dict[str, tuple[list, list]] = {"fp32": ([], []), "int8": ([], []), "teachers_fp32": ([], [])}
    for spk in speakers:
        r = results[spk]
        row = {"speaker": spk, "n": len(r["y_true"]), "seconds": round(r["seconds"], 1),
               "corpora": r.get("corpora", []),
               "classes": [labels[k] for k in r.get("classes", range(len(labels)))]}
        for precision in pooled:
            key = f"{precision}_probs"
            if key not in r:
                continue
            pred = np.asarray(r[key]).argmax(-1).tolist()
            pooled[precision][0].extend(r["y_true"])
            pooled[precision][1].extend(pred)
            row[precision] = fold_scores(r, labels, key)
            if mode == "loco":
                cm = confusion(r["y_true"], pred, len(labels))
                row[precision]["confusion"] = cm.tolist()
                if precision == "int8":
                    plot_confusion(cm, labels, out_dir / f"confusion_{spk}_int8.png",
                                   title=f"LOCO {spk} (int8): UA {row[precision]['ua']:.1f}% "
                                         f"WA {row[precision]['wa']:.1f}%")
        if "int8_agreement_windows" in r:
            row["int8_agreement_windows"] = round(100 * r["int8_agreement_windows"], 2)
            row["int8_agreement_utterances"] = round(100 * r["int8_agreement_utterances"], 2)
            row["int8_bytes"] = r["int8_bytes"]
        report["folds"].append(row)
    report["metrics"] = {}
    for precision, (y_true, y_pred) in pooled.items():
        if not y_true:
            continue
        report["metrics"][precision] = scores(y_true, y_pred, len(labels))
        cm = confusion(y_true, y_pred, len(labels))
        report["metrics"][precision]["confusion"] = cm.tolist()
        what = "LOCO" if mode == "loco" else "LOSO CV"
        plot_confusion(cm, labels, out_dir / f"confusion_{precision}.png",
                       title=f"{what} ({precision}, pooled): UA {report['metrics'][precision]['ua']:.1f}% "
                             f"WA {report['metrics'][precision]['wa']:.1f}%")
    if mode == "loco":
        # the headline: the mean over held-out corpora (each corpus counts once, whatever its size)
        report["metrics"]["per_corpus_mean"] = {
            precision: {k: round(float(np.mean([f[precision][k] for f in report["folds"]])), 2)
                        for k in ("ua", "wa", "f1")}
            | {"restricted_ua": round(float(np.mean([f[precision]["restricted"]["ua"]
                                                     for f in report["folds"]])), 2),
               "min_ua": min(f[precision]["ua"] for f in report["folds"])}
            for precision in ("fp32", "int8") if all(precision in f for f in report["folds"])}
    channels: dict[str, tuple[list, list]] = {}
    for spk in speakers:
        for variant, probs in results[spk].get("channel_int8_probs", {}).items():
            y_true, y_pred = channels.setdefault(variant, ([], []))
            y_true.extend(results[spk]["y_true"])
            y_pred.extend(np.asarray(probs).argmax(-1).tolist())
    if channels and "int8" in report["metrics"]:
        # int8 on the same held-out speakers, clean and through unseen channels
        report["metrics"]["int8_channels"] = {
            "clean": {k: report["metrics"]["int8"][k] for k in ("ua", "wa", "f1")},
            **{v: scores(t, p, len(labels)) for v, (t, p) in channels.items()}}
    report["fold_seconds_total"] = round(sum(results[s]["seconds"] for s in speakers), 1)
    agreements = [f["int8_agreement_windows"] for f in report["folds"] if "int8_agreement_windows" in f]
    if agreements:
        report["metrics"]["int8_agreement_min_fold"] = min(agreements)
    from training.calibration import calibrate_cv

    calibration = calibrate_cv(out_dir, speakers, results, labels)
    if calibration:
        report["calibration"] = calibration
    (out_dir / "cv_table.md").write_text(fold_table(report))
    return report


def fold_table(report: dict) -> str:
    head = "held-out corpus" if report.get("mode") == "loco" else "speaker"
    lines = [f"| {head} | n | fp32 UA | fp32 WA | int8 UA | int8 WA | int8 F1 "
             "| int8 UA, argmax over its classes | int8/fp32 agreement (windows) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for f in report["folds"]:
        lines.append(f"| {f['speaker']} | {f['n']} | {f.get('fp32', {}).get('ua', float('nan')):.1f} "
                     f"| {f.get('fp32', {}).get('wa', float('nan')):.1f} "
                     f"| {f.get('int8', {}).get('ua', float('nan')):.1f} "
                     f"| {f.get('int8', {}).get('wa', float('nan')):.1f} "
                     f"| {f.get('int8', {}).get('f1', float('nan')):.1f} "
                     f"| {f.get('int8', {}).get('restricted', {}).get('ua', float('nan')):.1f} "
                     f"| {f.get('int8_agreement_windows', float('nan')):.1f} |")
    mean = report.get("metrics", {}).get("per_corpus_mean")
    if mean:
        fp, i8 = mean.get("fp32", {}), mean.get("int8", {})
        lines.append(f"| **mean over corpora** | | {fp.get('ua', float('nan')):.2f} "
                     f"| {fp.get('wa', float('nan')):.2f} | {i8.get('ua', float('nan')):.2f} "
                     f"| {i8.get('wa', float('nan')):.2f} | {i8.get('f1', float('nan')):.2f} "
                     f"| {i8.get('restricted_ua', float('nan')):.2f} | |")
    for precision, m in report.get("metrics", {}).items():
        if isinstance(m, dict) and "ua" in m:
            lines.append(f"| **pooled {precision}** | | {m['ua']:.2f} | {m['wa']:.2f} | | | F1 {m['f1']:.2f} | | |")
    cal = report.get("calibration")
    if cal:
        lines += ["", "Calibration on held-out windows (int8; temperature fitted without the "
                  "fold's own test data):", "", "| | ECE % windows | ECE % utterances |", "|---|---|---|",
                  f"| before | {cal['ece_before']['windows']:.2f} | {cal['ece_before']['utterances']:.2f} |",
                  f"| after | {cal['ece_after']['windows']:.2f} | {cal['ece_after']['utterances']:.2f} |",
                  "", f"Temperature for a model trained on all of them: {cal['temperature']:.3f}"]
    channels = report.get("metrics", {}).get("int8_channels")
    if channels:
        lines += ["", "int8 on the held-out speakers through channels (pooled):", "",
                  "| channel | UA | WA | F1 |", "|---|---|---|---|"]
        lines += [f"| {c} | {m['ua']:.2f} | {m['wa']:.2f} | {m['f1']:.2f} |" for c, m in channels.items()]
    return "\n".join(lines) + "\n"
