"""`sernet cv | train | export | validate | predict`.

torch loads only inside the commands that train or export; `predict` and `validate` need
only onnxruntime. Every option reads the environment variable shown in its --help.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import click

from training.corpora import CORPUS_KINDS, DEFAULT_EMODB, CorpusError
from worker.artifact import DEFAULT_ARTIFACT_DIR


def _env(name: str) -> str:
    return "SERNET_" + name.upper().replace("-", "_")


def opt(*names: str, **kw):
    """click.option with an env var derived from the long name and shown in --help."""
    long = [n for n in names if n.startswith("--")][0].lstrip("-").split("/")[0]
    return click.option(*names, envvar=kw.pop("envvar", _env(long)), show_envvar=True, **kw)


def corpus_options(fn):
    fn = opt("--corpus", type=click.Choice(("auto", *CORPUS_KINDS)), default="auto", show_default=True,
             help="Corpus layout: auto-detected, EMO-DB naming, folder-per-label, CSV manifest "
                  "(path,label,speaker[,corpus]) or IEMOCAP.")(fn)
    fn = opt("--data", type=click.Path(path_type=Path), multiple=True, default=(DEFAULT_EMODB,),
             show_default=True,
             help="Corpus root or CSV manifest; repeat for several corpora. A folder of corpora "
                  "(e.g. shared/data, one manifest.csv per sub-folder) loads them all. The env "
                  "variable takes paths separated by spaces.")(fn)
    fn = opt("--labels", default=None,
             help="Comma-separated classes of the model, in output order; utterances of other "
                  "classes are left out (counted). Default: EMO-DB's 7 for EMO-DB alone, else "
                  "every label found.")(fn)
    fn = opt("--label-map", default=None,
             help="their=ours,... renames corpus labels first (ours '-' drops the label).")(fn)
    fn = opt("--iemocap-subset", type=click.Choice(["improvised", "scripted", "all"]),
             default="improvised", show_default=True, help="IEMOCAP sessions to use.")(fn)
    return fn


def load(corpus: str, data, iemocap_subset: str, labels: str | None = None,
         label_map: str | None = None):
    """(utterances of the model's classes, the model's labels); what is left out is reported
    on stderr."""
    from training.corpora import keep_labels, load_corpora, model_labels, parse_label_map, relabel

    paths = [data] if isinstance(data, (str, Path)) else list(data)
    try:
        utts = relabel(load_corpora(paths, corpus, subset=iemocap_subset),
                       parse_label_map(label_map))
        chosen = model_labels(utts, [x.strip() for x in labels.split(",") if x.strip()]
                              if labels else None)
    except (CorpusError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    utts, dropped = keep_labels(utts, chosen)
    for name, counts in dropped.items():
        click.echo(f"{name}: left out {', '.join(f'{n} {k}' for k, n in sorted(counts.items()))} "
                   f"(not a model class: {', '.join(chosen)})", err=True)
    if not utts:
        raise click.ClickException(f"no utterance has one of the classes {chosen}")
    return utts, chosen


def corpus_kind(corpus: str, data) -> str:
    """The window-length key of the corpora: ``iemocap`` when that is all there is."""
    from training.corpora import corpus_folders, detect_kind

    paths = [data] if isinstance(data, (str, Path)) else list(data)
    if corpus != "auto":
        return corpus
    try:
        kinds = {detect_kind(p) for given in paths for p in corpus_folders(given)}
    except CorpusError:
        return "csv"
    return kinds.pop() if len(kinds) == 1 else "csv"


def scoring_options(fn):
    """The artifact and how it scores files: shared by `predict` and `eval`."""
    fn = opt("--threads", type=int, default=1, show_default=True, help="onnxruntime threads.")(fn)
    fn = opt("--hop-s", type=float, default=1.0, show_default=True, help="Hop between windows.")(fn)
    fn = opt("--precision", type=click.Choice(["int8", "fp32"]), default="int8", show_default=True,
             help="Which model of the artifact.")(fn)
    fn = opt("--artifact", type=click.Path(path_type=Path), default=DEFAULT_ARTIFACT_DIR,
             show_default=True, help="Model artifact folder.")(fn)
    return fn


def frontend_options(fn):
    fn = opt("--window-s", type=float, default=None,
             help="Window length in seconds [default: 3, IEMOCAP 7].")(fn)
    fn = opt("--input-type", type=click.Choice(["mfcc", "mel", "spectrogram"]), default="mfcc",
             show_default=True, help="Model input features.")(fn)
    return fn


def make_frontend(corpus: str, window_s: float | None, input_type: str, data=()):
    from training.corpora import default_window_s
    from worker.frontend import FrontendConfig

    return FrontendConfig(window_s=window_s or default_window_s(corpus_kind(corpus, data)),
                          input_type=input_type)


def train_options(fn):
    """One option per TrainConfig field; unset options keep the preset's value."""
    from training.config import TrainConfig

    for f in reversed(dataclasses.fields(TrainConfig)):
        name = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            fn = opt(f"{name}/--no-{f.name.replace('_', '-')}", f.name, default=None,
                     help=f"Override the preset's {f.name}.")(fn)
        else:
            kind = {"int": int, "float": float, "str": str}.get(str(f.type), str)
            fn = opt(name, f.name, type=kind, default=None,
                     help=f"Override the preset's {f.name} (paper default {f.default}).")(fn)
    fn = opt("--preset", type=click.Choice(["paper", "robust", "multi"]), default="paper",
             show_default=True,
             help="paper: the published recipe (300 epochs, Adam 1e-4, ...). robust: one corpus "
                  "(augmentation, whole utterances, EMA, one-cycle). multi: robust over several "
                  "corpora, epochs drawn so no corpus or class dominates (the artifact's).")(fn)
    return fn


def make_train_config(preset_name: str, kw: dict):
    from training.config import TrainConfig, preset

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    try:
        return preset(preset_name, **{k: kw.pop(k) for k in list(kw) if k in names})
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc


@click.command()
@corpus_options
@frontend_options
@train_options
@opt("--out", type=click.Path(path_type=Path), default=Path("runs/cv"), show_default=True,
     help="Output folder: per-fold models, cv_report.json, cv_table.md, confusion PNGs.")
@opt("--mode", type=click.Choice(["loso", "loco"]), default="loso", show_default=True,
     help="loso: leave one speaker (or --speaker-groups group) out; loco: leave one corpus out.")
@opt("--speakers", default=None, help="loso: comma-separated test speakers (default: every speaker "
                                      "of --test-corpus).")
@opt("--test-corpus", default=None,
     help="loso: hold out speakers of this corpus only; the other corpora train every fold.")
@opt("--speaker-groups", type=int, default=0, show_default=True,
     help="loso: this many folds of consecutive speakers instead of one per speaker (0 = one each).")
@opt("--test-corpora", default=None, help="loco: comma-separated corpora to hold out (default: all).")
@opt("--channels/--no-channels", default=True, show_default=True,
     help="Also score each fold's int8 model through telephone and noisy channels.")
@opt("--jobs", type=int, default=2, show_default=True, help="Folds trained in parallel processes.")
@opt("--int8/--no-int8", default=True, show_default=True, help="Export and score each fold's int8 model.")
@opt("--requantize", is_flag=True,
     help="First redo the int8 step of every finished fold in --out with the current recipe "
          "(calibration on each fold's training speakers). With --qat-epochs > 0, folds not yet "
          "fine-tuned for int8 are fine-tuned first (their fp32 scores change); otherwise the "
          "fp32 fold models are untouched.")
@opt("--json", "as_json", is_flag=True, help="Print the report as one JSON line at the end.")
def cv(corpus, data, labels, label_map, iemocap_subset, window_s, input_type, preset, out, mode,
       speakers, test_corpus, speaker_groups, test_corpora, channels, jobs, int8, requantize,
       as_json, **kw):
    """Honest cross-validation: each fold trains on everything but its test speakers (loso) or
    its test corpus (loco) with a fixed schedule and keeps its final weights; the test data
    steers nothing. Finished folds are kept and skipped on a re-run (resumable).

    Short mode for tests: --speakers 03,08 --epochs 1.
    """
    from rich.console import Console
    from rich.markdown import Markdown

    from training.cv import corpus_folds, speaker_folds
    from training.cv import requantize as redo_int8
    from training.cv import run_cv

    utts, labels = load(corpus, data, iemocap_subset, labels, label_map)
    cfg = make_frontend(corpus, window_s, input_type, data)
    tcfg = make_train_config(preset, kw)
    chosen = speakers.split(",") if speakers else None
    try:
        folds = (corpus_folds(utts, test_corpora.split(",") if test_corpora else None)
                 if mode == "loco" else
                 speaker_folds(utts, chosen, test_corpus, speaker_groups))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    if requantize:
        notes: list[str] = []
        redone = redo_int8(utts, cfg, out, progress=sys.stderr.isatty(), train_config=tcfg,
                           speakers=chosen, notes=notes)
        click.echo(f"re-quantized folds: {', '.join(redone) or 'none'}", err=True)
        for note in notes:
            click.echo(f"warning: {note}", err=True)
    try:
        report = run_cv(utts, labels, cfg, tcfg, out, jobs=jobs, int8=int8,
                        progress=sys.stderr.isatty(), folds=folds, mode=mode, channels=channels)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    console = Console(stderr=as_json)
    console.print(Markdown((out / "cv_table.md").read_text()))
    console.print(f"report: {out / 'cv_report.json'}  ({report['seconds']:.0f} s)")
    if as_json:
        click.echo(json.dumps({k: report[k] for k in ("metrics", "folds", "seconds", "mode",
                                                       "calibration") if k in report}))


@click.command()
@corpus_options
@frontend_options
@train_options
@opt("--out", type=click.Path(path_type=Path), default=Path("runs/final/model.pt"), show_default=True,
     help="Checkpoint to write.")
@opt("--finetune-only", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
     help="Skip training: only the int8 fine-tuning (--qat-epochs ...) of this checkpoint, "
          "trained on the same corpus with the same recipe; the result equals a full run.")
def train(corpus, data, labels, label_map, iemocap_subset, window_s, input_type, preset, out,
          finetune_only, **kw):
    """Train Light-SERNet on every speaker of one or more corpora (the artifact's model).

    Prints the parameter count and MFLOPs per window. Short mode: --epochs 1.
    """
    from training.fit import fit
    from training.model import LightSERNet, count_mflops, count_parameters

    utts, labels = load(corpus, data, iemocap_subset, labels, label_map)
    cfg = make_frontend(corpus, window_s, input_type, data)
    tcfg = make_train_config(preset, kw)
    if finetune_only is not None:
        if not tcfg.qat_epochs:
            raise click.UsageError("--finetune-only needs --qat-epochs > 0")
        import numpy as np

        from training import checkpoint, features
        from training.qat import finetune_checkpoint
        from worker.frontend import FrontendConfig

        if FrontendConfig.from_dict(checkpoint.load(finetune_only)[1]["frontend"]) != cfg:
            raise click.UsageError(f"{finetune_only} was trained with another frontend than the "
                                   "one asked for (window length or input type)")
        tr = features.build(utts, cfg, "train", progress=sys.stderr.isatty())
        finetune_checkpoint(finetune_only, out, tr, np.arange(len(utts)), tcfg)
        click.echo(f"checkpoint: {out}")
        return
    net = LightSERNet(len(labels))
    click.echo(f"Light-SERNet: {count_parameters(net):,} parameters, "
               f"{count_mflops(net, cfg.input_shape):.1f} MFLOPs per {cfg.window_s:g} s window")
    path = fit(utts, labels, cfg, tcfg, out, progress=sys.stderr.isatty())
    click.echo(f"checkpoint: {path}")


@click.command()
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@corpus_options
@opt("--out", type=click.Path(path_type=Path), default=DEFAULT_ARTIFACT_DIR, show_default=True,
     help="Artifact folder to write.")
@opt("--cv-report", type=click.Path(path_type=Path), default=Path("runs/cv/cv_report.json"),
     show_default=True, help="CV report whose honest figures go into the manifest.")
@opt("--loco-report", type=click.Path(path_type=Path), default=None,
     help="Leave-one-corpus-out report: its per-corpus figures go into the manifest and card, "
          "its temperature into the exported graphs.")
@opt("--baseline-eval", type=click.Path(path_type=Path), default=None,
     help="`sernet eval` report of a previous model on the held-out corpora, shown beside the "
          "LOCO figures for contrast.")
@opt("--fp16", is_flag=True, help="Also export an fp16 model.")
@opt("--fused", is_flag=True, help="Also export the model with the frontend fused in (waveform in).")
@opt("--min-agreement", type=float, default=98.0, show_default=True,
     help="Refuse to write an int8 model agreeing less with fp32 (percent of windows).")
def export(checkpoint, corpus, data, labels, label_map, iemocap_subset, out, cv_report, loco_report,
           baseline_eval, fp16, fused, min_agreement):
    """Export CHECKPOINT to ONNX fp32 + int8 (static, calibrated on training audio) and write
    the artifact folder: models, manifest.json with sha256 and CV metrics, model card. With a
    LOCO report, its temperature is baked into the graphs (calibrated scores)."""
    from training.package import build_artifact

    utts, _ = load(corpus, data, iemocap_subset, labels, label_map)
    try:
        manifest = build_artifact(checkpoint, utts, out, cv_report if cv_report.is_file() else None,
                                  fp16=fp16, fused=fused, min_agreement=min_agreement,
                                  loco_report=loco_report if loco_report and loco_report.is_file()
                                  else None,
                                  baseline_report=baseline_eval if baseline_eval and baseline_eval.is_file()
                                  else None)
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from exc
    cv = manifest["metrics"].get("cv")
    if cv:
        click.echo(f"CV int8 UA {cv['int8']['ua']:.2f}% WA {cv['int8']['wa']:.2f}%")
    click.echo(f"artifact written to {out}")


@click.command()
@opt("--artifact", type=click.Path(path_type=Path), default=DEFAULT_ARTIFACT_DIR, show_default=True,
     help="Artifact folder to validate.")
@corpus_options
@opt("--no-corpus", is_flag=True, help="Only checksums, frontend and shapes; skip the accuracy run.")
@opt("--min-ua", type=float, default=None,
     help="Minimum pooled int8 UA in percent. Default: each corpus must reach the artifact's "
          "export-time reference (manifest 'validation') less its margin; 85 without one.")
@opt("--min-agreement", type=float, default=98.0, show_default=True,
     help="Minimum int8/fp32 agreement in percent of windows.")
@opt("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def validate(artifact, corpus, data, labels, label_map, iemocap_subset, no_corpus, min_ua,
             min_agreement, as_json):
    """Gate a model artifact: checksums, frontend parameters, shapes, then int8 accuracy and
    int8/fp32 agreement over a labeled corpus. Exits 1 if any check fails."""
    from training.validate import validate as run

    if not no_corpus and not labels:
        from worker.artifact import ArtifactError, read_manifest

        try:
            labels = ",".join(read_manifest(artifact)["labels"])
        except ArtifactError:
            labels = None
    utts = None if no_corpus else load(corpus, data, iemocap_subset, labels, label_map)[0]
    report = run(artifact, utts, min_ua=min_ua, min_agreement=min_agreement,
                 progress=sys.stderr.isatty())
    if as_json:
        click.echo(json.dumps(report.to_dict()))
    else:
        for c in report.checks:
            click.echo(f"{'PASS' if c.ok else 'FAIL'}  {c.name:<14} {c.detail}")
    if not report.ok:
        raise SystemExit(1)


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@scoring_options
@opt("--json", "as_json", is_flag=True,
     help="One JSON object per file per line: file, label, scores, windows, combine.")
def predict(files, artifact, precision, hop_s, threads, as_json):
    """Score audio FILES offline. Each file is cut into the model's windows (hop --hop-s, last
    window end-aligned, short clips zero-padded); its scores are the mean of its windows'
    probabilities and its label their argmax."""
    from worker.artifact import ArtifactError, load_artifact
    from worker.audio import AudioError
    from worker.model import EmotionModel
    from worker.predict import predict_file

    try:
        art = load_artifact(artifact)
    except ArtifactError as exc:
        raise click.ClickException(str(exc)) from exc
    model = EmotionModel.from_artifact(art, precision, threads=threads)
    failed = 0
    rows = []
    for path in files:
        try:
            if not path.is_file():
                raise AudioError(f"{path}: no such file")
            result = predict_file(model, path, art.frontend, hop_s)
        except (AudioError, ValueError) as exc:
            failed += 1
            if as_json:
                click.echo(json.dumps({"file": str(path), "error": str(exc)}))
            else:
                click.echo(f"error: {exc}", err=True)
            continue
        if as_json:
            click.echo(json.dumps(result.to_dict()))
        else:
            rows.append(result)
    if rows:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"{art.name} {art.version} ({precision}); scores = mean of window probabilities")
        table.add_column("file")
        table.add_column("label", style="bold")
        table.add_column("p", justify="right")
        table.add_column("windows", justify="right")
        for r in rows:
            table.add_row(r.file, r.label, f"{r.scores[r.label]:.2f}", str(r.windows))
        Console().print(table)
    if failed:
        raise SystemExit(1)


@click.command(name="eval")
@click.argument("data", nargs=-1, required=True, type=click.Path(path_type=Path))
@opt("--corpus", type=click.Choice(("auto", *CORPUS_KINDS)), default="auto", show_default=True,
     help="Layout of DATA: auto-detected, EMO-DB naming, folder-per-label, CSV manifest "
          "(path,label,speaker[,corpus]) or IEMOCAP.")
@opt("--label-map", default=None,
     help="their=ours,... maps the data's label names to the model's (ours '-' drops a label); "
          "labels the model lacks are counted and reported, not scored.")
@scoring_options
@opt("--iemocap-subset", type=click.Choice(["improvised", "scripted", "all"]),
     default="improvised", show_default=True, help="IEMOCAP sessions to use.")
@opt("--out", type=click.Path(path_type=Path), default=Path("runs/eval"), show_default=True,
     help="Folder for eval_report.json and confusion.png.")
@opt("--json", "as_json", is_flag=True, help="End with the report as one JSON line.")
def evaluate(data, corpus, label_map, artifact, precision, hop_s, threads, iemocap_subset, out,
             as_json):
    """Score labelled DATA (EMO-DB layout, folder per label, CSV manifest; several allowed) with
    the artifact: UA/WA/F1 over the classes it shares with the model, per-class recall,
    confusion matrix (PNG + JSON) and calibration error. Check the model on your own
    recordings before trusting its events."""
    from rich.console import Console
    from rich.table import Table

    from training.corpora import load_corpora, parse_label_map, relabel
    from training.evaluate import evaluate as run
    from training.evaluate import write
    from worker.artifact import ArtifactError, load_artifact
    from worker.model import EmotionModel

    try:
        art = load_artifact(artifact)
        utts = relabel(load_corpora(data, corpus, subset=iemocap_subset), parse_label_map(label_map))
    except (ArtifactError, CorpusError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    model = EmotionModel.from_artifact(art, precision, threads=threads)
    report, _ = run(model, art.labels, utts, art.frontend, hop_s, progress=sys.stderr.isatty())
    report.update({"artifact": f"{art.name} {art.version}", "precision": precision,
                   "data": [str(d) for d in data]})
    paths = write(report, out, f"{art.name} {precision}")
    console = Console(stderr=as_json)
    for label, n in report["not_in_model"].items():
        console.print(f"not scored: {n} '{label}' files (not a model class; map it with "
                      f"--label-map {label}=<class> or {label}=-)")
    for bad in report["failed"]:
        console.print(f"[red]failed[/red]: {bad['error']}")
    m = report.get("metrics")
    if m is None:
        raise click.ClickException(f"no file of {', '.join(map(str, data))} has a label the model "
                                   f"knows ({', '.join(art.labels)}); use --label-map")
    table = Table(title=f"{art.name} {art.version} ({precision}) on {report['scored']} files")
    for col in ("data", "n", "UA %", "WA %", "F1 %", "ECE %"):
        table.add_column(col, justify="left" if col == "data" else "right")
    for name, pm in {**report.get("per_corpus", {}), "all": m}.items():
        table.add_row(name, str(pm["n"]), f"{pm['ua']:.2f}", f"{pm['wa']:.2f}", f"{pm['f1']:.2f}",
                      f"{pm['ece']:.2f}")
    console.print(table)
    recall = Table(title="recall per class (%) and confusion (rows: true, columns: predicted)")
    recall.add_column("true")
    recall.add_column("recall", justify="right")
    for label in art.labels:
        recall.add_column(label[:5], justify="right")
    for label, r in m["recall"].items():
        row = m["confusion"][art.labels.index(label)]
        recall.add_row(label, f"{r:.1f}", *[str(v) for v in row])
    console.print(recall)
    console.print(f"report: {paths['json']}  confusion: {paths.get('png')}")
    if as_json:
        click.echo(json.dumps(report))
