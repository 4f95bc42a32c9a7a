"""Corpus loaders: each returns a list of :class:`Utterance` (path, label, speaker).

Labels are canonical English names; a corpus fixes its own label order (``*_LABELS``).
Loaders only find files and read labels: audio is decoded later, at any sample rate, by
:func:`worker.audio.load_mono_16k` (libsndfile + polyphase resampling to 16 kHz).

Kinds (``load_corpus(kind, path, **opts)``):

``emodb``
    EMO-DB by its file naming ``SSTTTEV.wav``.
``folder``
    Your own audio, one folder per label: ``root/<label>/*.wav|flac|ogg``. Speaker-independent
    evaluation needs a speaker per file; see :func:`load_folder` for where it comes from.
``csv``
    A manifest with the header ``path,label,speaker`` (:func:`load_csv`).
``iemocap``
    The standard IEMOCAP release (:func:`load_iemocap`), 4 classes, 10 speakers. Its
    utterances are longer: the published recipe uses 7 s windows (:data:`IEMOCAP_WINDOW_S`).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
DEFAULT_EMODB = SHARED_DATA / "emodb"

EMODB_LETTERS = {"W": "anger", "L": "boredom", "E": "disgust", "A": "fear",
                 "F": "happiness", "T": "sadness", "N": "neutral"}
EMODB_LABELS = ["anger", "boredom", "disgust", "fear", "happiness", "neutral", "sadness"]

#: IEMOCAP's four-class setup: ``exc`` (excited) is merged into happiness; every other
#: category (fru, sur, fea, dis, oth, xxx) is dropped.
IEMOCAP_CODES = {"ang": "anger", "hap": "happiness", "exc": "happiness",
                 "neu": "neutral", "sad": "sadness"}
IEMOCAP_LABELS = ["anger", "happiness", "neutral", "sadness"]
IEMOCAP_SUBSETS = ("improvised", "scripted", "all")
#: Model window for IEMOCAP, as in the published recipe (EMO-DB uses the 3 s default).
IEMOCAP_WINDOW_S = 7.0

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
#: ``load_folder``'s default: the file-name prefix before the first ``_`` or ``-``
#: (``spk03_0001.wav`` -> ``spk03``).
DEFAULT_SPEAKER_REGEX = r"^(?P<speaker>[^_\-]+)[_\-]"
SPEAKERS_CSV = "speakers.csv"
CORPUS_KINDS = ("emodb", "folder", "csv", "iemocap")
MANIFEST_CSV = "manifest.csv"


#: What the model card says of each corpus the project knows (shared/data/README.md).
KNOWN_CORPORA = {
    "emodb": {"language": "German", "kind": "acted", "licence": "research use"},
    "emovo": {"language": "Italian", "kind": "acted", "licence": "research use"},
    "nemo": {"language": "Polish", "kind": "acted", "licence": "CC BY-NC-SA 4.0"},
    "turev": {"language": "Turkish", "kind": "acted, single words", "licence": "CC BY-NC-ND 4.0"},
    "urdu": {"language": "Urdu", "kind": "natural (TV talk shows)", "licence": "research use"},
    "iemocap": {"language": "English", "kind": "acted dialogues", "licence": "research use"},
}


class CorpusError(ValueError):
    """A corpus that cannot be read as asked."""


@dataclass(frozen=True)
class Utterance:
    path: Path
    label: str
    speaker: str
    corpus: str = ""  # the corpus it came from: leave-one-corpus-out folds and partial labels


# --------------------------------------------------------------------------- EMO-DB


def load_emodb(root: str | Path = DEFAULT_EMODB) -> list[Utterance]:
    """EMO-DB by its file naming ``SSTTTEV.wav``: speaker ``SS``, emotion letter ``E``."""
    root = Path(root)
    wav_dir = root / "wav" if (root / "wav").is_dir() else root
    files = sorted(wav_dir.glob("*.wav"))
    if not files:
        raise CorpusError(f"no EMO-DB wav files under {root}; get the corpus from "
                          "http://emodb.bilderbar.info/ and point --data at it")
    out = []
    for path in files:
        stem = path.stem
        if len(stem) < 6 or stem[5] not in EMODB_LETTERS or not stem[:2].isdigit():
            raise CorpusError(f"{path.name} does not follow EMO-DB naming SSTTTEV.wav")
        out.append(Utterance(path, EMODB_LETTERS[stem[5]], stem[:2], "emodb"))
    return out


# --------------------------------------------------------------------------- folder per label


def _is_audio(path: Path) -> bool:
    return (path.is_file() and path.suffix.lower() in AUDIO_SUFFIXES
            and not path.name.startswith("."))


def _read_speakers_csv(csv_path: Path, root: Path) -> dict[str, str]:
    """``speakers.csv`` (header ``path,speaker``) -> {path relative to root: speaker}."""
    table: dict[str, str] = {}
    with csv_path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"path", "speaker"} <= set(reader.fieldnames):
            raise CorpusError(f"{csv_path}: header must contain path,speaker, "
                              f"got {reader.fieldnames}")
        for row in reader:
            where = f"{csv_path}:{reader.line_num}"
            rel = (row.get("path") or "").strip()
            speaker = (row.get("speaker") or "").strip()
            if not rel and not speaker:
                continue
            if not rel or not speaker:
                raise CorpusError(f"{where}: empty path or speaker")
            key = Path(rel).as_posix()
            if not (root / key).is_file():
                raise CorpusError(f"{where}: {rel} is not a file under {root}")
            table[key] = speaker
    return table


def load_folder(root: str | Path, speaker_regex: str | None = DEFAULT_SPEAKER_REGEX
                ) -> list[Utterance]:
    """A folder-per-label corpus: ``root/<label>/*.wav|flac|ogg`` (or ``.../<speaker>/*``).

    The label is the first folder's name, as written. The speaker comes from, in order:

    1. ``root/speakers.csv`` (header ``path,speaker``; paths relative to ``root``, e.g.
       ``anger/0001.wav``) when it exists: it must name every file;
    2. a speaker folder, ``root/<label>/<speaker>/file.wav``;
    3. ``speaker_regex`` searched in the file stem: its ``speaker`` group, else its first
       group, else the whole match. The default takes the prefix before the first ``_`` or
       ``-`` (``spk03_0001.wav`` -> ``spk03``).

    A file none of these gives a speaker to is an error, not its own speaker: one speaker
    per file would let leave-one-speaker-out evaluation put a speaker's other utterances into
    training. Pass ``speaker_regex=None`` to require (1) or (2).
    """
    root = Path(root)
    if not root.is_dir():
        raise CorpusError(f"{root} is not a folder")
    table = (_read_speakers_csv(root / SPEAKERS_CSV, root)
             if (root / SPEAKERS_CSV).is_file() else None)
    pattern = re.compile(speaker_regex) if speaker_regex else None
    out = []
    for label_dir in sorted(p for p in root.iterdir() if p.is_dir()
                            and not p.name.startswith(".")):
        for path in sorted(p for p in label_dir.rglob("*") if _is_audio(p)):
            rel = path.relative_to(root)
            depth = len(rel.parts)
            if depth > 3:
                raise CorpusError(f"{rel}: expected <label>/<file> or <label>/<speaker>/<file>")
            if table is not None:
                speaker = table.get(rel.as_posix())
                if speaker is None:
                    raise CorpusError(f"{rel} has no row in {root / SPEAKERS_CSV}")
            elif depth == 3:
                speaker = rel.parts[1]
            else:
                speaker = _speaker_from_name(path.stem, pattern, rel)
            out.append(Utterance(path, label_dir.name, speaker, root.name))
    if not out:
        raise CorpusError(f"no {'/'.join(AUDIO_SUFFIXES)} files in label folders under {root}")
    return out


def _speaker_from_name(stem: str, pattern: re.Pattern[str] | None, rel: Path) -> str:
    match = pattern.search(stem) if pattern else None
    if match is None:
        how = f"speaker_regex {pattern.pattern!r} does not match it" if pattern else \
            "speaker_regex is off"
        raise CorpusError(f"{rel}: no speaker ({how}); add {SPEAKERS_CSV} (path,speaker), "
                          "put files in <label>/<speaker>/ folders or pass speaker_regex")
    if "speaker" in pattern.groupindex:
        speaker = match.group("speaker")
    elif pattern.groups:
        speaker = match.group(1)
    else:
        speaker = match.group(0)
    if not speaker:
        raise CorpusError(f"{rel}: speaker_regex {pattern.pattern!r} matched an empty speaker")
    return speaker


# --------------------------------------------------------------------------- CSV manifest


def load_csv(manifest: str | Path) -> list[Utterance]:
    """A CSV manifest with header ``path,label,speaker`` and optionally ``corpus`` (more columns
    are ignored; without ``corpus`` the manifest's folder name is the corpus).

    Relative paths are relative to the manifest's folder. Blank rows are skipped; a row with
    an empty field, a missing file or a path listed twice is a :class:`CorpusError` naming
    its line.
    """
    manifest = Path(manifest)
    if not manifest.is_file():
        raise CorpusError(f"{manifest} is not a file")
    base = manifest.parent
    out: list[Utterance] = []
    seen: dict[Path, int] = {}
    with manifest.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        fields = [f.strip() for f in reader.fieldnames or []]
        if not {"path", "label", "speaker"} <= set(fields):
            raise CorpusError(f"{manifest}:1: header must contain path,label,speaker, "
                              f"got {','.join(fields) or 'nothing'}")
        reader.fieldnames = fields
        for row in reader:
            where = f"{manifest}:{reader.line_num}"
            values = {k: (row.get(k) or "").strip() for k in ("path", "label", "speaker")}
            if not any(values.values()):  # a row of empty fields: ",,"
                continue
            empty = [k for k, v in values.items() if not v]
            if empty:
                raise CorpusError(f"{where}: empty {', '.join(empty)}")
            path = Path(values["path"])
            path = path if path.is_absolute() else base / path
            if not path.is_file():
                raise CorpusError(f"{where}: audio file {values['path']} not found ({path})")
            key = path.resolve()
            if key in seen:
                raise CorpusError(f"{where}: {values['path']} already listed on line {seen[key]}")
            seen[key] = reader.line_num
            corpus = (row.get("corpus") or "").strip() or base.resolve().name
            out.append(Utterance(path, values["label"], values["speaker"], corpus))
    if not out:
        raise CorpusError(f"{manifest}: no rows")
    return out


# --------------------------------------------------------------------------- IEMOCAP

_IEMOCAP_LINE = re.compile(r"^\[\s*[\d.]+\s*-\s*[\d.]+\s*\]\s+(?P<utt>Ses\d\d[FM]_\S+)\s+"
                           r"(?P<code>[a-z]{3})\b")


def load_iemocap(root: str | Path, subset: str = "improvised") -> list[Utterance]:
    """IEMOCAP in its release layout, four classes (:data:`IEMOCAP_LABELS`).

    Labels from ``root/SessionN/dialog/EmoEvaluation/<dialog>.txt`` (lines
    ``[start - end]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[v, a, d]``), audio from
    ``root/SessionN/sentences/wav/<dialog>/<utterance>.wav``. ``exc`` counts as happiness;
    other categories are dropped. ``subset``: ``improvised`` (dialogs named ``*_impro*``),
    ``scripted`` (``*_script*``) or ``all``. The speaker is the session and the gender of the
    utterance's own speaker (last name part, ``F000`` -> ``Ses01F``): 10 speakers.
    """
    if subset not in IEMOCAP_SUBSETS:
        raise CorpusError(f"subset must be one of {IEMOCAP_SUBSETS}, got {subset!r}")
    root = Path(root)
    sessions = sorted(p for p in root.glob("Session*") if p.is_dir())
    if not sessions:
        raise CorpusError(f"no Session1..5 folders under {root}; point --data at the "
                          "IEMOCAP_full_release folder")
    want = {"improvised": ("_impro",), "scripted": ("_script",),
            "all": ("_impro", "_script")}[subset]
    out = []
    for session in sessions:
        label_dir = session / "dialog" / "EmoEvaluation"
        if not label_dir.is_dir():
            raise CorpusError(f"{session}: missing dialog/EmoEvaluation")
        # top-level *.txt only: Categorical/, Attribute/ hold per-annotator files;
        # ._* are macOS resource forks found in some copies
        for txt in sorted(p for p in label_dir.glob("*.txt") if not p.name.startswith(".")):
            dialog = txt.stem
            if not any(tag in dialog for tag in want):
                continue
            text = txt.read_text(encoding="utf-8", errors="replace")
            for line_no, line in enumerate(text.splitlines(), 1):
                match = _IEMOCAP_LINE.match(line)
                if match is None:
                    continue
                label = IEMOCAP_CODES.get(match["code"])
                if label is None:
                    continue
                utt = match["utt"]
                gender = utt.rsplit("_", 1)[-1][:1]
                if gender not in ("F", "M"):
                    raise CorpusError(f"{txt}:{line_no}: cannot read the speaker's gender "
                                      f"from {utt}")
                wav = session / "sentences" / "wav" / dialog / f"{utt}.wav"
                if not wav.is_file():
                    raise CorpusError(f"{txt}:{line_no}: {utt} has no audio at {wav}")
                out.append(Utterance(wav, label, utt[:5] + gender, "iemocap"))
    if not out:
        raise CorpusError(f"no {subset} IEMOCAP utterances with labels {IEMOCAP_LABELS} "
                          f"under {root}")
    return out


# --------------------------------------------------------------------------- dispatch


def load_corpus(kind: str, path: str | Path, **opts: Any) -> list[Utterance]:
    """Load a corpus by kind (:data:`CORPUS_KINDS`); ``opts`` go to that kind's loader."""
    loaders = {"emodb": load_emodb, "folder": load_folder, "csv": load_csv,
               "iemocap": load_iemocap}
    if kind not in loaders:
        raise CorpusError(f"corpus kind must be one of {CORPUS_KINDS}, got {kind!r}")
    try:
        return loaders[kind](path, **opts)
    except TypeError as exc:  # an option that loader does not take
        raise CorpusError(f"{kind} corpus: {exc}") from exc


def corpus_labels(kind: str, utterances: Iterable[Utterance]) -> list[str]:
    """The model's output order: fixed for EMO-DB and IEMOCAP, sorted labels otherwise."""
    found = sorted({u.label for u in utterances})
    fixed = {"emodb": EMODB_LABELS, "iemocap": IEMOCAP_LABELS}.get(kind)
    if fixed is None:
        if kind not in CORPUS_KINDS:
            raise CorpusError(f"corpus kind must be one of {CORPUS_KINDS}, got {kind!r}")
        return found
    stray = [label for label in found if label not in fixed]
    if stray:
        raise CorpusError(f"labels {stray} are not {kind} labels {fixed}")
    return list(fixed)


def default_window_s(kind: str) -> float:
    """The published window length for a corpus kind (7 s for IEMOCAP, else 3 s)."""
    return IEMOCAP_WINDOW_S if kind == "iemocap" else 3.0


def fingerprint(utterances: Iterable[Utterance], content: bool = False) -> str:
    """sha256 (hex) of the data a model was trained on, independent of where it lives.

    Hashes the sorted (path relative to the utterances' common folder, size in bytes, label,
    speaker) records. That catches added, removed, relabelled or re-encoded files without
    reading the audio; ``content=True`` also hashes every file's bytes (EMO-DB: ~0.1 s).
    """
    utterances = list(utterances)
    if not utterances:
        raise CorpusError("cannot fingerprint an empty corpus")
    paths = [Path(os.path.abspath(u.path)) for u in utterances]
    common = Path(os.path.commonpath([p.parent for p in paths]))
    records = []
    for utt, path in zip(utterances, paths):
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise CorpusError(f"{utt.path}: {exc}") from exc
        record = [path.relative_to(common).as_posix(), size, utt.label, utt.speaker]
        if content:
            record.append(hashlib.sha256(path.read_bytes()).hexdigest())
        records.append(record)
    digest = hashlib.sha256()
    for record in sorted(records):
        digest.update(json.dumps(record, ensure_ascii=False).encode() + b"\n")
    return digest.hexdigest()


# --------------------------------------------------------------------------- several corpora


def detect_kind(path: str | Path) -> str:
    """The layout of ``path``: a ``.csv`` file or a folder with ``manifest.csv`` is ``csv``,
    EMO-DB's ``wav/SSTTTEV.wav`` files ``emodb``, ``Session1..5`` folders ``iemocap``, any other
    folder ``folder`` (one folder per label)."""
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return "csv"
        raise CorpusError(f"{path}: a corpus is a folder or a .csv manifest")
    if not path.is_dir():
        raise CorpusError(f"{path}: no such corpus folder or manifest")
    wav = path / "wav"
    if wav.is_dir() and any(re.match(r"^\d\d\w{3}[WLEAFTN]\w*\.wav$", p.name)
                            for p in wav.glob("*.wav")):
        return "emodb"
    if (path / MANIFEST_CSV).is_file():
        return "csv"
    if any(path.glob("Session[1-5]")):
        return "iemocap"
    return "folder"


def corpus_folders(path: str | Path) -> list[Path]:
    """The corpora under ``path``: itself, or, for a folder of corpora such as ``shared/data``
    (sub-folders holding a ``manifest.csv`` and nothing else at the top), each of them."""
    path = Path(path)
    if path.is_dir() and not (path / MANIFEST_CSV).is_file() and not (path / "wav").is_dir():
        subs = sorted(p for p in path.iterdir() if p.is_dir() and (p / MANIFEST_CSV).is_file())
        if subs:
            return subs
    return [path]


def load_corpora(paths: Iterable[str | Path], kind: str = "auto", **opts: Any) -> list[Utterance]:
    """Every utterance of several corpora, in the order given (a folder of corpora expands to
    its corpora, sorted). ``kind="auto"`` detects each one's layout (:func:`detect_kind`).
    Each utterance keeps its corpus; two corpora of one name are an error."""
    out: list[Utterance] = []
    seen: dict[str, Path] = {}
    for given in paths:
        for path in corpus_folders(given):
            this = detect_kind(path) if kind == "auto" else kind
            utts = load_corpus(this, path if this != "csv" or path.is_file() else path / MANIFEST_CSV,
                               **(opts if this == "iemocap" else {}))
            for name in sorted({u.corpus for u in utts}):
                if name in seen:
                    raise CorpusError(f"corpus {name!r} given twice ({seen[name]} and {path})")
                seen[name] = path
            out.extend(utts)
    if not out:
        raise CorpusError("no corpus given")
    return out


def parse_label_map(text: str | None) -> dict[str, str]:
    """``their=ours,...`` -> {their: ours}; ``ours`` may be ``-`` to drop that label."""
    table: dict[str, str] = {}
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        their, sep, ours = item.partition("=")
        if not sep or not their.strip() or not ours.strip():
            raise CorpusError(f"label map entry {item!r} is not their=ours")
        table[their.strip()] = ours.strip()
    return table


def relabel(utterances: Iterable[Utterance], label_map: dict[str, str]) -> list[Utterance]:
    """Apply a label map; labels mapped to ``-`` are dropped."""
    from dataclasses import replace

    out = []
    for u in utterances:
        label = label_map.get(u.label, u.label)
        if label != "-":
            out.append(u if label == u.label else replace(u, label=label))
    return out


def keep_labels(utterances: Iterable[Utterance], labels: Iterable[str]
                ) -> tuple[list[Utterance], dict[str, dict[str, int]]]:
    """The utterances whose label is one of ``labels``, and the count of the others left out
    per corpus and label (reported, never silently lost)."""
    wanted = set(labels)
    kept, dropped = [], {}
    for u in utterances:
        if u.label in wanted:
            kept.append(u)
        else:
            per = dropped.setdefault(u.corpus, {})
            per[u.label] = per.get(u.label, 0) + 1
    return kept, dropped


def corpus_label_sets(utterances: Iterable[Utterance]) -> dict[str, list[str]]:
    """{corpus: the labels it annotates (sorted)}: a class missing from a corpus is unknown
    there, not absent (partial labels)."""
    sets: dict[str, set[str]] = {}
    for u in utterances:
        sets.setdefault(u.corpus, set()).add(u.label)
    return {c: sorted(v) for c, v in sorted(sets.items())}


def model_labels(utterances: list[Utterance], labels: Iterable[str] | None = None) -> list[str]:
    """The model's output order: ``labels`` as given, else EMO-DB's / IEMOCAP's fixed order for
    those corpora alone, else every label found, sorted."""
    if labels:
        labels = list(labels)
        if len(set(labels)) != len(labels):
            raise CorpusError(f"labels {labels} name a class twice")
        return labels
    corpora = {u.corpus for u in utterances}
    if corpora == {"emodb"}:
        return corpus_labels("emodb", utterances)
    if corpora == {"iemocap"}:
        return corpus_labels("iemocap", utterances)
    return sorted({u.label for u in utterances})


def corpus_arrays(utterances: list[Utterance], labels: list[str]):
    """(corpus index per utterance, (U, C) bool of the classes each one's corpus annotates):
    the inputs of balanced sampling and of the partial-label loss."""
    import numpy as np

    sets = corpus_label_sets(utterances)
    names = list(sets)
    groups = np.array([names.index(u.corpus) for u in utterances], dtype=np.int32)
    per_corpus = np.array([[label in sets[c] for label in labels] for c in names], dtype=bool)
    return groups, per_corpus[groups]
