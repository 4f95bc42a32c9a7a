"""The model card: a short markdown page written next to the artifact from its manifest."""

from __future__ import annotations

import json
from pathlib import Path

from training.augment import VARIANTS
from training.config import variant_names
from training.corpora import KNOWN_CORPORA as KNOWN


def _row(name: str, m: dict) -> str:
    return f"| {name} | {m['ua']:.2f} | {m['wa']:.2f} | {m['f1']:.2f} |"


VARIANT_TEXT = {
    "slow": "speed 0.9 (slower speech, lower voice)",
    "fast": "speed 1.1 (faster speech, higher voice)",
    "telephone": "telephone band with 8 kHz G.711 u-law",
    "noisy": "coloured noise at 5-25 dB SNR behind a random microphone tilt",
}


def robustness(tc: dict) -> str:
    """What the recipe does for speakers, languages and microphones it never heard."""
    parts = []
    if tc.get("augment"):
        chosen = variant_names(tc.get("aug_variants") or "") or [v for v in VARIANTS if v != "clean"]
        parts.append(f"every epoch draws each utterance clean with probability "
                     f"{tc.get('clean_prob', 0.4):g}, otherwise as one of these waveform variants "
                     "(" + "; ".join(VARIANT_TEXT.get(v, v) for v in chosen) + ")")
    if tc.get("time_masks") or tc.get("freq_masks"):
        parts.append("SpecAugment time/frequency masks")
    if tc.get("mixup_alpha"):
        parts.append(f"mixup (alpha {tc['mixup_alpha']})")
    if tc.get("input_norm") == "cmn":
        parts.append("per-window cepstral mean normalisation")
    text = ("Robustness to speakers, languages and microphones not heard in training: "
            + ("; ".join(parts) if parts else "none beyond the published recipe") + ". "
            "The input is peak-normalised, so gain does not matter.")
    if tc.get("random_crop"):
        text += " Every window of each utterance is trained on, not one centre crop."
    if tc.get("teachers"):
        text += (f" Distilled (weight {tc['distill_weight']:g}, temperature "
                 f"{tc.get('distill_temperature', 2.0):g}) from the ensemble of {tc['teachers']} "
                 "models trained the same way with other seeds, so one model carries what the "
                 "ensemble learned.")
    return text


def _corpora_section(t: dict) -> list[str]:
    corpora = t.get("corpora")
    if not corpora:  # an artifact of the single-corpus era
        return [f"{t.get('corpus', '?')}, {t['utterances']} utterances, speakers "
                f"{', '.join(t.get('speakers') or [])}."]
    lines = ["| corpus | language | kind | utterances | classes annotated | licence |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {c} | {m.get('language', '?')} | {m.get('kind', '?')} | {m.get('utterances', '?')} "
              f"| {', '.join(m.get('labels', []))} | {m.get('licence', '?')} |" for c, m in corpora.items()]
    lines += ["", f"{t['utterances']} utterances, {len(t.get('speakers') or [])} speakers; data "
              f"fingerprint `{(t.get('data_fingerprint') or '')[:16]}`. **Licences: every corpus is "
              "for research and non-commercial use, and so is this model.**"]
    return lines


def _loco_section(loco: dict) -> list[str]:
    base = (loco.get("baseline") or {}).get("per_corpus", {})
    lines = [
        "## How it does on voices it never heard (leave-one-corpus-out)",
        "",
        "Each corpus is scored by a model trained on the other corpora only, with the same recipe: "
        "the honest estimate of what recordings unlike any training corpus will get (other "
        "speakers, language, room, microphone, acting style). UA, WA and F1 are over the "
        "classes the held-out corpus annotates, with the argmax over all model classes (what the "
        "events show); 'restricted' takes the argmax over the corpus's own classes. "
        + ("'EMO-DB-only' is the previous model (trained on EMO-DB alone) on the same clips "
           "(`sernet eval`; it also has a boredom class)." if base else ""),
        "",
        "| held-out corpus | language | n | int8 UA % | int8 WA % | int8 F1 % | restricted UA % "
        "| fp32 UA % | int8/fp32 agreement % | EMO-DB-only UA % |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c, m in loco["per_corpus"].items():
        i8, f32 = m.get("int8", {}), m.get("fp32", {})
        lines.append(f"| {c} | {KNOWN.get(c, {}).get('language', '?')} | {m['n']} "
                     f"| {i8.get('ua', float('nan')):.2f} | {i8.get('wa', float('nan')):.2f} "
                     f"| {i8.get('f1', float('nan')):.2f} | {i8.get('restricted_ua', float('nan')):.2f} "
                     f"| {f32.get('ua', float('nan')):.2f} | {m.get('int8_agreement_windows') or float('nan'):.2f} "
                     f"| {base[c]['ua']:.2f} |" if c in base else
                     f"| {c} | {KNOWN.get(c, {}).get('language', '?')} | {m['n']} "
                     f"| {i8.get('ua', float('nan')):.2f} | {i8.get('wa', float('nan')):.2f} "
                     f"| {i8.get('f1', float('nan')):.2f} | {i8.get('restricted_ua', float('nan')):.2f} "
                     f"| {f32.get('ua', float('nan')):.2f} | {m.get('int8_agreement_windows') or float('nan'):.2f} | - |")
    mean = loco["mean"].get("int8", {})
    base_mean = [base[c]["ua"] for c in loco["per_corpus"] if c in base]
    lines.append(f"| **mean** | | | **{mean.get('ua', float('nan')):.2f}** | {mean.get('wa', float('nan')):.2f} "
                 f"| {mean.get('f1', float('nan')):.2f} | {mean.get('restricted_ua', float('nan')):.2f} "
                 f"| {loco['mean'].get('fp32', {}).get('ua', float('nan')):.2f} | "
                 f"| {sum(base_mean) / len(base_mean):.2f} (over {len(base_mean)}) |" if base_mean else
                 f"| **mean** | | | **{mean.get('ua', float('nan')):.2f}** | | | | | | |")
    minutes = (loco.get("fold_seconds_total") or 0) / 60
    ranked = sorted(loco["per_corpus"], key=lambda c: loco["per_corpus"][c].get("int8", {}).get("ua", 0))
    def named(c: str) -> str:
        info = KNOWN.get(c, {})
        return (f"{c} ({info.get('language', '?')}, {info.get('kind', '?')}: "
                f"{loco['per_corpus'][c].get('int8', {}).get('ua', float('nan')):.1f} %)")
    lines += ["", "Per language: one corpus per language, so a language's figure is also its "
              f"corpus's speakers, room and style. Highest {named(ranked[-1])}; lowest "
              f"{named(ranked[0])}. Expect figures in this range on a language or recording "
              "setup none of them shares, and check with `sernet eval` on your own data."]
    lines += ["", f"Chance is 100 / (classes the corpus annotates): 16.7 % for six, 25 % for four, "
              f"33.3 % for three. {len(loco['per_corpus'])} folds, {minutes:.0f} min of fold wall "
              "time summed over the folds (CPU, 2 cores, folds side by side). Per-fold files "
              "and confusion matrices: "
              "[reports/loco/](reports/loco/cv_table.md).", "",
              "![LOCO confusion, int8, all held-out corpora](reports/loco/confusion_int8.png)"]
    return lines


def render(manifest: dict) -> str:
    cv = manifest.get("metrics", {}).get("cv")
    loco = manifest.get("metrics", {}).get("loco")
    cal = manifest.get("calibration") or {}
    t = manifest["training"]
    fe = manifest["frontend"]
    labels = manifest["labels"]
    several = len(t.get("corpora") or {}) > 1
    lines = [
        f"# Model card: {manifest['name']} {manifest['version']}",
        "",
        f"{manifest['model']['architecture']}: {manifest['model']['parameters']:,} parameters, "
        f"{manifest['model']['mflops_per_window']} MFLOPs per {manifest['window_s']:g} s window. "
        f"Default model `{manifest['default_model']}` "
        f"({manifest['files'][manifest['default_model']].get('bytes', 0) / 1024:.0f} KiB, int8 QDQ), "
        "fp32 source beside it.",
        "",
        "## Intended use",
        f"Emotion analytics over {manifest['window_s']:g} s windows of 16 kHz speech "
        f"({len(labels)} classes: {', '.join(labels)}). Trained on acted speech"
        + (" in several languages and some natural speech" if several else "")
        + ": treat scores as a signal to aggregate over time and speakers, not as a verdict "
        "about a person. Not for decisions about individuals. **Research and non-commercial use "
        "only**, as the licences of the training corpora require. Check it on your own "
        "recordings first: `sernet eval DATA --label-map their=ours`.",
        "",
        "## Training data",
        "",
        *_corpora_section(t),
        "",
        f"Recipe: `{json.dumps(t['train_config'], sort_keys=True)}`.",
        "",
        robustness(t["train_config"]),
    ]
    if several:
        lines += [
            "",
            "Several corpora: each epoch draws utterances so that no corpus or class dominates "
            f"(a corpus's share ~ its size ^ {t['train_config'].get('corpus_alpha', 0.5):g}, the "
            "classes it annotates equally). A corpus that lacks a class says nothing about it: "
            "the loss of its utterances is a softmax over the classes it annotates only, so a "
            "missing class gets no gradient from them (partial labels).",
        ]
    if loco:
        lines += ["", *_loco_section(loco)]
    if cal.get("method") == "temperature":
        lines += [
            "",
            "## Calibration",
            "",
            f"The scores are temperature-scaled (T = {cal['temperature']:.3f}, {cal['baked_into']}), "
            f"fitted on {cal['fitted_on']}. Expected calibration error on the leave-one-corpus-out "
            "predictions, each fold with a temperature fitted on the other folds only:",
            "",
            "| | ECE % (windows = events) | ECE % (utterances) |", "|---|---|---|",
            f"| before | {cal['ece_before']['windows']:.2f} | {cal['ece_before']['utterances']:.2f} |",
            f"| after | {cal['ece_after']['windows']:.2f} | {cal['ece_after']['utterances']:.2f} |",
        ]
    lines += ["", "## EMO-DB leave-one-speaker-out" if several else
              "## Evaluation (honest leave-one-speaker-out CV)"]
    if cv:
        lines += [
            cv["protocol"] + f"; {cv['folds']} folds"
            + (" of EMO-DB speakers (grouped to fit the CPU budget), every other corpus in each "
               "fold's training" if several else "")
            + f", {(cv.get('fold_seconds_total') or 0) / 60:.0f} min of fold wall time summed over "
            "the folds (CPU only, 2 cores). Over the EMO-DB classes the model has.",
            "",
            "| model | UA % | WA % | macro-F1 % |", "|---|---|---|---|",
            _row("fp32", cv["fp32"]), _row("int8", cv["int8"]),
            "",
            f"int8 vs fp32 agreement, worst fold: {cv.get('int8_agreement_min_fold')} % of windows"
            + (" (target >= 98 %: met)." if (cv.get("int8_agreement_min_fold") or 0) >= 98
               else " (target >= 98 %: missed).")
            + " Per-fold table: [reports/loso/](reports/loso/cv_table.md)."
            + (f" Each model was fine-tuned {t['train_config']['qat_epochs']} epochs after "
               "training so that its int8 twin agrees with it (simulated int8 rounding, training "
               "windows only, no labels: `training/qat.py`)." if t["train_config"].get("qat_epochs") else ""),
            "",
            ("This meets the project's target of 85 % int8 UA on EMO-DB." if cv["int8"]["ua"] >= 85
             else f"This is below the project's target of 85 % int8 UA on EMO-DB: EMO-DB is about "
                  "one eighth of each multi-corpus epoch, where the EMO-DB-only recipe trained on "
                  "it alone for 120 epochs"
                  + (f", and each of the {cv['folds']} folds trains on only "
                     f"{10 - 10 // cv['folds']} of its 10 speakers." if cv["folds"] < 10 else ".")),
            "",
        ]
        if cv.get("int8_channels"):
            lines += [
                "The same held-out speakers through channels (int8, pooled over the folds): "
                "telephone = 300-3400 Hz band, 8 kHz G.711 u-law; noisy = coloured noise at "
                "5-25 dB SNR behind a random low/high-pass microphone tilt.",
                "",
                "| channel | UA % | WA % | macro-F1 % |", "|---|---|---|---|",
                *[_row(name, m) for name, m in cv["int8_channels"].items()],
                "",
            ]
        lines += [
            "Published Light-SERNet on EMO-DB: UA 94.15 / WA 94.21, but its best epoch was picked "
            "on the test fold; here nothing about the test speaker steers training or selection "
            "inside a fold.",
        ]
    else:
        lines.append("No cross-validation report was attached to this export.")
    per_corpus = manifest.get("quantization", {}).get("agreement_with_fp32_per_corpus")
    if per_corpus:
        lines += ["", "int8/fp32 window agreement of this model per training corpus: "
                  + ", ".join(f"{c} {a:.2f} %" for c, a in per_corpus.items()) + "."]
    lines += ["", "## Frontend", "", "| parameter | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in fe.items()]
    lines += ["", f"Code version `{manifest['code_version']}`, created {manifest['created']}."]
    return "\n".join(lines) + "\n"


def write_card(directory: Path, manifest: dict) -> Path:
    path = Path(directory) / "MODEL_CARD.md"
    path.write_text(render(manifest))
    return path
