"""Corpus loaders: EMO-DB on the shared copy, the others on tiny fixtures written here."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from training.corpora import (
    EMODB_LABELS,
    IEMOCAP_LABELS,
    IEMOCAP_WINDOW_S,
    CorpusError,
    Utterance,
    corpus_labels,
    default_window_s,
    fingerprint,
    load_corpus,
    load_csv,
    load_emodb,
    load_folder,
    load_iemocap,
)
from worker.audio import load_mono_16k

# --------------------------------------------------------------------------- EMO-DB

EMODB_COUNTS = {"anger": 127, "boredom": 81, "disgust": 46, "fear": 69, "happiness": 71,
                "sadness": 62, "neutral": 79}  # W L E A F T N, from the corpus README
EMODB_SPEAKERS = {"03": 49, "08": 58, "09": 43, "10": 38, "11": 55, "12": 35, "13": 61,
                  "14": 69, "15": 56, "16": 71}


def test_emodb_counts(emodb_root):
    utts = load_emodb(emodb_root)
    assert len(utts) == 535
    assert Counter(u.label for u in utts) == EMODB_COUNTS
    assert Counter(u.speaker for u in utts) == EMODB_SPEAKERS
    assert corpus_labels("emodb", utts) == EMODB_LABELS == sorted(EMODB_COUNTS)
    assert load_corpus("emodb", emodb_root) == utts
    assert load_emodb(emodb_root / "wav") == utts


def test_emodb_fingerprint_is_stable(emodb_root):
    utts = load_emodb(emodb_root)
    fp = fingerprint(utts)
    assert len(fp) == 64 and fp == fingerprint(list(reversed(utts)))
    assert fingerprint(utts[:-1]) != fp


def test_emodb_errors(tmp_path, write_wav):
    with pytest.raises(CorpusError, match="no EMO-DB wav"):
        load_emodb(tmp_path)
    write_wav("wav/not_emodb.wav")
    with pytest.raises(CorpusError, match="SSTTTEV"):
        load_emodb(tmp_path)


# --------------------------------------------------------------------------- resampling


@pytest.mark.parametrize("rate_hz", [44100, 8000, 16000])
def test_any_rate_comes_back_at_16k(write_wav, rate_hz):
    path = write_wav(f"t{rate_hz}.wav", seconds=0.5, sample_rate_hz=rate_hz, freq_hz=1000.0)
    x = load_mono_16k(path)
    assert x.dtype == np.float32
    assert x.shape == (8000,)  # 0.5 s at 16 kHz
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    assert np.fft.rfftfreq(x.size, 1 / 16000)[spectrum.argmax()] == pytest.approx(1000, abs=4)


# --------------------------------------------------------------------------- folder per label


def test_folder_speaker_prefix_default(tmp_path, write_wav):
    for name in ("anger/spk1_001.wav", "anger/spk2-001.flac", "calm/spk1_002.ogg",
                 "calm/spk2_003.WAV", "calm/notes.txt", "calm/.hidden_1.wav"):
        if name.endswith(".txt"):
            (tmp_path / name).write_text("x")
        else:
            write_wav(name)
    utts = load_folder(tmp_path)
    got = sorted((u.path.relative_to(tmp_path).as_posix(), u.label, u.speaker) for u in utts)
    assert got == [("anger/spk1_001.wav", "anger", "spk1"), ("anger/spk2-001.flac", "anger", "spk2"),
                   ("calm/spk1_002.ogg", "calm", "spk1"), ("calm/spk2_003.WAV", "calm", "spk2")]
    assert corpus_labels("folder", utts) == ["anger", "calm"]
    assert load_corpus("folder", tmp_path) == utts


def test_folder_speaker_subfolders_and_regex(tmp_path, write_wav):
    write_wav("sub/anger/alice/1.wav")
    write_wav("sub/neutral/bob/2.wav")
    assert {(u.label, u.speaker) for u in load_folder(tmp_path / "sub")} == \
        {("anger", "alice"), ("neutral", "bob")}

    write_wav("rx/anger/call0042_agentA.wav")
    write_wav("rx/neutral/call0043_agentB.wav")
    utts = load_corpus("folder", tmp_path / "rx", speaker_regex=r"_agent(?P<speaker>\w+)$")
    assert sorted(u.speaker for u in utts) == ["A", "B"]
    utts = load_folder(tmp_path / "rx", speaker_regex=r"agent\w")
    assert sorted(u.speaker for u in utts) == ["agentA", "agentB"]


def test_folder_speakers_csv(tmp_path, write_wav):
    write_wav("anger/0001.wav")
    write_wav("neutral/0002.wav")
    (tmp_path / "speakers.csv").write_text("path,speaker\nanger/0001.wav,s1\nneutral/0002.wav,s2\n")
    assert {(u.label, u.speaker) for u in load_folder(tmp_path)} == \
        {("anger", "s1"), ("neutral", "s2")}

    (tmp_path / "speakers.csv").write_text("path,speaker\nanger/0001.wav,s1\n")
    with pytest.raises(CorpusError, match="0002.wav has no row"):
        load_folder(tmp_path)
    (tmp_path / "speakers.csv").write_text("path,speaker\nanger/0001.wav,s1\nanger/gone.wav,s3\n")
    with pytest.raises(CorpusError, match=r"speakers.csv:3: anger/gone.wav is not a file"):
        load_folder(tmp_path)
    (tmp_path / "speakers.csv").write_text("file,who\n")
    with pytest.raises(CorpusError, match="header"):
        load_folder(tmp_path)


def test_folder_errors(tmp_path, write_wav):
    with pytest.raises(CorpusError, match="not a folder"):
        load_folder(tmp_path / "missing")
    (tmp_path / "empty" / "anger").mkdir(parents=True)
    with pytest.raises(CorpusError, match="no .wav"):
        load_folder(tmp_path / "empty")
    write_wav("nospk/anger/0001.wav")  # no prefix: refusing beats one speaker per file
    with pytest.raises(CorpusError, match="0001.wav: no speaker"):
        load_folder(tmp_path / "nospk")
    write_wav("nospk2/anger/spk_1.wav")
    with pytest.raises(CorpusError, match="speaker_regex is off"):
        load_folder(tmp_path / "nospk2", speaker_regex=None)
    write_wav("deep/anger/a/b/spk_1.wav")
    with pytest.raises(CorpusError, match="expected <label>"):
        load_folder(tmp_path / "deep")


# --------------------------------------------------------------------------- CSV manifest


def test_csv_relative_and_absolute(tmp_path, write_wav):
    a = write_wav("audio/a.wav")
    write_wav("audio/b.flac")
    manifest = tmp_path / "lists" / "train.csv"
    manifest.parent.mkdir()
    manifest.write_text("path,label,speaker,notes\n"
                        "../audio/b.flac, sad ,s2,\n"
                        f"{a},angry,s1,x\n"
                        ",,,\n")
    utts = load_csv(manifest)
    # without a corpus column the manifest's folder names the corpus
    assert utts == [Utterance(manifest.parent / "../audio/b.flac", "sad", "s2", "lists"),
                    Utterance(a, "angry", "s1", "lists")]
    assert load_corpus("csv", manifest) == utts
    assert corpus_labels("csv", utts) == ["angry", "sad"]


@pytest.mark.parametrize("body, match", [
    ("path,label\na.wav,x\n", ":1: header must contain path,label,speaker"),
    ("path,label,speaker\na.wav,x,s\nmissing.wav,x,s\n", ":3: audio file missing.wav not found"),
    ("path,label,speaker\na.wav,,s\n", ":2: empty label"),
    ("path,label,speaker\na.wav,x,s\n./a.wav,y,s\n", ":3: ./a.wav already listed on line 2"),
    ("path,label,speaker\n", "no rows"),
])
def test_csv_errors(tmp_path, write_wav, body, match):
    write_wav("a.wav")
    manifest = tmp_path / "m.csv"
    manifest.write_text(body)
    with pytest.raises(CorpusError, match=match):
        load_csv(manifest)


def test_csv_missing_manifest(tmp_path):
    with pytest.raises(CorpusError, match="not a file"):
        load_csv(tmp_path / "nope.csv")


# --------------------------------------------------------------------------- IEMOCAP

# (session, dialog, [(utterance, code)])
IEMOCAP_FIXTURE = [
    (1, "Ses01F_impro01", [("Ses01F_impro01_F000", "neu"), ("Ses01F_impro01_M000", "exc"),
                           ("Ses01F_impro01_F001", "xxx"), ("Ses01F_impro01_M001", "ang")]),
    (1, "Ses01M_script01_1", [("Ses01M_script01_1_F000", "hap"), ("Ses01M_script01_1_M000", "fru"),
                              ("Ses01M_script01_1_M001", "sad")]),
    (2, "Ses02F_impro03", [("Ses02F_impro03_F000", "sad"), ("Ses02F_impro03_M000", "neu")]),
    (2, "Ses02M_script02_2", [("Ses02M_script02_2_M000", "ang")]),
]


@pytest.fixture
def iemocap_root(tmp_path, write_wav) -> Path:
    root = tmp_path / "IEMOCAP_full_release"
    for session, dialog, utts in IEMOCAP_FIXTURE:
        sess = root / f"Session{session}"
        lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
        for i, (utt, code) in enumerate(utts):
            lines += [f"[{i + 0.5:.4f} - {i + 1.25:.4f}]\t{utt}\t{code}\t[2.5000, 2.5000, 2.5000]",
                      f"C-E2:\t{code.capitalize()};\t()", "A-F1:\tNeutral;\t()", ""]
            write_wav(sess / "sentences" / "wav" / dialog / f"{utt}.wav", seconds=0.02)
        evaluation = sess / "dialog" / "EmoEvaluation"
        (evaluation / "Categorical").mkdir(parents=True, exist_ok=True)
        (evaluation / f"{dialog}.txt").write_text("\n".join(lines))
        (evaluation / "Categorical" / f"{dialog}_e1_cat.txt").write_text(f"{utts[0][0]} :Anger;\n")
        (evaluation / f"._{dialog}.txt").write_bytes(b"\x00\x05\x16\x07 resource fork")
    return root


def _summary(utts):
    return sorted((u.path.stem, u.label, u.speaker) for u in utts)


def test_iemocap_improvised(iemocap_root):
    utts = load_iemocap(iemocap_root)
    assert _summary(utts) == [
        ("Ses01F_impro01_F000", "neutral", "Ses01F"),
        ("Ses01F_impro01_M000", "happiness", "Ses01M"),  # exc merged into happiness
        ("Ses01F_impro01_M001", "anger", "Ses01M"),
        ("Ses02F_impro03_F000", "sadness", "Ses02F"),
        ("Ses02F_impro03_M000", "neutral", "Ses02M"),
    ]
    for u in utts:
        assert u.path.is_file()
        assert u.path.parent.name == u.path.stem.rsplit("_", 1)[0]
    assert corpus_labels("iemocap", utts) == IEMOCAP_LABELS == ["anger", "happiness", "neutral",
                                                                "sadness"]
    assert default_window_s("iemocap") == IEMOCAP_WINDOW_S == 7.0


def test_iemocap_subsets(iemocap_root):
    scripted = load_iemocap(iemocap_root, subset="scripted")
    assert _summary(scripted) == [
        ("Ses01M_script01_1_F000", "happiness", "Ses01F"),
        ("Ses01M_script01_1_M001", "sadness", "Ses01M"),  # fru dropped
        ("Ses02M_script02_2_M000", "anger", "Ses02M"),
    ]
    everything = load_corpus("iemocap", iemocap_root, subset="all")
    assert len(everything) == 8
    assert {u.label for u in everything} <= set(IEMOCAP_LABELS)
    assert {u.speaker for u in everything} == {"Ses01F", "Ses01M", "Ses02F", "Ses02M"}
    with pytest.raises(CorpusError, match="subset"):
        load_iemocap(iemocap_root, subset="impro")


def test_iemocap_errors(tmp_path, iemocap_root):
    with pytest.raises(CorpusError, match="no Session"):
        load_iemocap(tmp_path / "elsewhere")
    (iemocap_root / "Session2/sentences/wav/Ses02F_impro03/Ses02F_impro03_F000.wav").unlink()
    with pytest.raises(CorpusError, match=r"Ses02F_impro03.txt:\d+: Ses02F_impro03_F000 has no audio"):
        load_iemocap(iemocap_root)


# --------------------------------------------------------------------------- dispatch, fingerprint


def test_dispatch_errors(tmp_path):
    with pytest.raises(CorpusError, match="kind"):
        load_corpus("librispeech", tmp_path)
    with pytest.raises(CorpusError, match="emodb corpus"):
        load_corpus("emodb", tmp_path, subset="all")
    with pytest.raises(CorpusError, match="kind"):
        corpus_labels("nope", [])
    with pytest.raises(CorpusError, match="not emodb labels"):
        corpus_labels("emodb", [Utterance(Path("x.wav"), "calm", "s")])


def test_fingerprint_sensitivity(tmp_path, write_wav, tone):
    import soundfile as sf

    a, b = write_wav("c1/anger/s1_a.wav"), write_wav("c1/calm/s2_b.wav")
    utts = load_folder(tmp_path / "c1")
    fp = fingerprint(utts)
    # the same files elsewhere give the same fingerprint: it does not depend on the location
    for p in (a, b):
        dst = tmp_path / "c2" / p.relative_to(tmp_path / "c1")
        dst.parent.mkdir(parents=True)
        dst.write_bytes(p.read_bytes())
    assert fingerprint(load_folder(tmp_path / "c2")) == fp
    assert fingerprint(utts, content=True) == fingerprint(load_folder(tmp_path / "c2"), content=True)
    # relabelled, new speaker, resized or re-written audio all change it
    assert fingerprint([Utterance(utts[0].path, "calm", utts[0].speaker), utts[1]]) != fp
    assert fingerprint([Utterance(utts[0].path, utts[0].label, "s9"), utts[1]]) != fp
    before = fingerprint(utts, content=True)
    sf.write(str(a), -tone(440.0, 0.05), 16000)  # same size, different samples
    assert fingerprint(utts) == fp and fingerprint(utts, content=True) != before
    sf.write(str(a), tone(440.0, 0.06), 16000)
    assert fingerprint(utts) != fp
    with pytest.raises(CorpusError):
        fingerprint([])
