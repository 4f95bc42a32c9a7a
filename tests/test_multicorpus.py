"""Several corpora: manifests of every shared corpus, partial labels, balanced sampling,
leave-one-corpus-out folds, calibration, `sernet eval`, and a short multi-corpus CV through the
real CLI."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from training.corpora import (CorpusError, Utterance, corpus_arrays, corpus_label_sets, keep_labels,
                              load_corpora, model_labels, parse_label_map, relabel)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CORPORA = ("emodb", "emovo", "nemo", "turev", "urdu")
SIX = ["anger", "disgust", "fear", "happiness", "neutral", "sadness"]
SERNET = [sys.executable, "-m", "sernet.cli"]


def sernet(*args, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([*SERNET, *map(str, args)], capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"sernet {' '.join(map(str, args))} exited {proc.returncode}:\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def shared_data() -> Path:
    if not all((SHARED_DATA / c / "manifest.csv").is_file() for c in CORPORA):
        msg = f"the shared corpora are not all at {SHARED_DATA}"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return SHARED_DATA


@pytest.fixture(scope="module")
def samples(shared_data, tmp_path_factory) -> Path:
    """A folder of corpora like shared/data: per corpus a manifest.csv of its first 2 clips of
    each of its first 3 labels (absolute paths to the real audio), header as shipped."""
    root = tmp_path_factory.mktemp("corpora")
    for corpus in CORPORA:
        src = shared_data / corpus / "manifest.csv"
        with src.open(newline="") as fh:
            reader = csv.DictReader(fh)
            fields = reader.fieldnames
            rows = list(reader)
        picked, per = [], {}
        for row in rows:
            if row["label"] in per and per[row["label"]] >= 2 or (row["label"] not in per and len(per) >= 3):
                continue
            per[row["label"]] = per.get(row["label"], 0) + 1
            picked.append({**row, "path": str(shared_data / corpus / row["path"])})
        (root / corpus).mkdir()
        with (root / corpus / "manifest.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(picked)
    return root


# --------------------------------------------------------------------------- loading


def test_every_shared_manifest_loads_with_corpus_speaker_and_known_labels(shared_data):
    from worker.audio import load_mono_16k

    for corpus in CORPORA:
        utts = load_corpora([shared_data / corpus / "manifest.csv"])
        assert {u.corpus for u in utts} == {corpus}
        assert len({u.speaker for u in utts}) >= 6
        assert set(corpus_label_sets(utts)[corpus]) <= set(SIX) | {"boredom", "calm", "surprise"}
        first = load_mono_16k(utts[0].path)  # wav, flac and ogg all decode
        assert first.dtype == np.float32 and first.shape[0] > 1600


def test_a_folder_of_corpora_loads_each_and_keeps_them_apart(samples):
    utts = load_corpora([samples])
    assert sorted({u.corpus for u in utts}) == list(CORPORA)
    sets = corpus_label_sets(utts)
    assert all(len(v) == 3 for v in sets.values())
    with pytest.raises(CorpusError, match="given twice"):
        load_corpora([samples, samples / "urdu"])


def test_label_selection_reports_what_it_leaves_out():
    utts = [Utterance(Path(f"{i}.wav"), label, "s", corpus)
            for i, (label, corpus) in enumerate([("anger", "a"), ("calm", "b"), ("boredom", "a"),
                                                 ("calm", "b"), ("sadness", "b")])]
    kept, dropped = keep_labels(utts, SIX)
    assert [u.label for u in kept] == ["anger", "sadness"]
    assert dropped == {"a": {"boredom": 1}, "b": {"calm": 2}}
    mapped = relabel(utts, parse_label_map("calm=neutral, boredom=-"))
    assert [u.label for u in mapped] == ["anger", "neutral", "neutral", "sadness"]
    with pytest.raises(CorpusError, match="their=ours"):
        parse_label_map("calm")
    assert model_labels(utts, ["sadness", "anger"]) == ["sadness", "anger"]


def test_partial_label_masks_follow_each_corpus():
    utts = [Utterance(Path("1.wav"), "anger", "s1", "a"), Utterance(Path("2.wav"), "disgust", "s1", "a"),
            Utterance(Path("3.wav"), "anger", "s2", "b"), Utterance(Path("4.wav"), "sadness", "s2", "b")]
    groups, allowed = corpus_arrays(utts, ["anger", "disgust", "sadness"])
    assert groups.tolist() == [0, 0, 1, 1]
    assert allowed.tolist() == [[True, True, False]] * 2 + [[True, False, True]] * 2


# --------------------------------------------------------------------------- training pieces


def test_partial_label_loss_gives_an_absent_class_no_gradient():
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    from training.train import partial_logits, soft_ce

    logits = torch.tensor([[2.0, 0.5, 1.0, -1.0], [0.1, 0.2, 0.3, 0.4]], requires_grad=True)
    allowed = torch.tensor([[True, False, True, True], [True, True, True, True]])
    target = F.one_hot(torch.tensor([0, 2]), 4).float()
    soft_ce(partial_logits(logits, allowed), target, None).backward()
    grad = logits.grad
    assert grad[0, 1] == 0.0                   # class 1 unknown to sample 0's corpus: untouched
    assert (grad[0, [2, 3]] > 0).all()         # annotated wrong classes are pushed down
    assert grad[0, 0] < 0 and (grad[1] != 0).all()
    # without the mask the same sample would push class 1 down (the error partial labels avoid)
    plain = logits.detach().clone().requires_grad_(True)
    soft_ce(plain, target, None).backward()
    assert plain.grad[0, 1] > 0


def test_balanced_sampling_shares_corpora_by_size_power_and_classes_equally():
    pytest.importorskip("torch")
    from training.train import balanced_weights

    # corpus 0: 400 utterances (300 of class 0, 100 of class 1); corpus 1: 100 of class 2
    labels = np.array([0] * 300 + [1] * 100 + [2] * 100)
    groups = np.array([0] * 400 + [1] * 100)
    ids = np.arange(500)
    w = balanced_weights(ids, labels, groups, alpha=0.5)
    assert w.sum() == pytest.approx(1.0)
    assert w[groups == 0].sum() == pytest.approx(20 / 30)   # sqrt(400) : sqrt(100)
    assert w[labels == 0].sum() == pytest.approx(w[labels == 1].sum())
    equal = balanced_weights(ids, labels, groups, alpha=0.0)
    assert equal[groups == 1].sum() == pytest.approx(0.5)


def test_mixup_partners_stay_inside_their_corpus():
    torch = pytest.importorskip("torch")
    from training.train import mix_partner

    groups = np.array([0, 1, 0, 1, 1, 2, 0])
    perm = mix_partner(groups, torch.Generator().manual_seed(3)).numpy()
    assert sorted(perm.tolist()) == list(range(7))
    assert (groups[perm] == groups).all()


def test_loco_folds_never_share_a_corpus_between_train_and_test():
    from training.cv import corpus_folds, speaker_folds

    utts = [Utterance(Path(f"{c}{i}.wav"), "anger", f"{c}-s{i % 3}", c)
            for c in ("a", "b", "c") for i in range(6)]
    folds = corpus_folds(utts)
    assert [f.name for f in folds] == ["a", "b", "c"]
    for f in folds:
        test = {utts[i].corpus for i in f.test_ids}
        train = {u.corpus for i, u in enumerate(utts) if i not in f.test_ids}
        assert test == {f.name} and f.name not in train
    with pytest.raises(ValueError, match="unknown corpora"):
        corpus_folds(utts, ["x"])
    with pytest.raises(ValueError, match="two corpora"):
        corpus_folds(utts[:6])
    grouped = speaker_folds(utts, test_corpus="b", groups=2)
    assert [f.name for f in grouped] == ["b-s0+b-s1", "b-s2"]
    assert all(utts[i].corpus == "b" for f in grouped for i in f.test_ids)


def test_temperature_fit_recovers_a_known_temperature_and_lowers_ece():
    from training.calibration import ece, fit_temperature, scale

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(4000, 5))
    true_p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    y = np.array([rng.choice(5, p=p) for p in true_p])
    overconfident = scale(true_p, 0.5)  # the logits doubled
    t = fit_temperature(overconfident, y)
    assert t == pytest.approx(2.0, rel=0.1)
    assert ece(scale(overconfident, t), y) < ece(overconfident, y) / 2
    assert (scale(overconfident, t).argmax(-1) == overconfident.argmax(-1)).all()


def test_temperature_is_baked_into_the_exported_graph(tmp_path):
    torch = pytest.importorskip("torch")
    from bench.fixture import random_model
    from training.export import bake_temperature, export_onnx, ort_scores

    net = random_model(num_classes=6)
    x = torch.randn(3, 184, 40)
    path = export_onnx(bake_temperature(net, 2.5), tmp_path / "t.onnx", (184, 40))
    with torch.no_grad():
        want = torch.softmax(net(x) / 2.5, dim=-1).numpy()
        plain = torch.softmax(net(x), dim=-1).numpy()
    got = ort_scores(path, x.numpy())
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert not np.allclose(got, plain, atol=1e-3)
    assert (got.argmax(-1) == plain.argmax(-1)).all()


# --------------------------------------------------------------------------- through the CLI


def test_eval_maps_labels_and_reports_classes_the_model_lacks(write_wav, tmp_path):
    from helpers.artifact import committed_or_fixture
    from worker.artifact import read_manifest

    artifact = committed_or_fixture()
    model_labels_ = read_manifest(artifact)["labels"]
    for i, label in enumerate(["angry", "angry", "sad", "bored_not_ours", "sad"]):
        write_wav(f"mine/{label}/spk{i % 2}_{i}.wav", seconds=1.2, freq_hz=200 + 50 * i)
    (tmp_path / "mine" / "sad" / "spk1_9.wav").write_bytes(b"not audio")
    out = tmp_path / "eval"
    proc = sernet("eval", tmp_path / "mine", "--artifact", artifact, "--out", out, "--json",
                  "--label-map", "angry=anger,sad=sadness")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["not_in_model"] == {"bored_not_ours": 1}
    assert report["scored"] == 4 and len(report["failed"]) == 1
    assert set(report["metrics"]["recall"]) == {"anger", "sadness"}
    cm = np.array(report["metrics"]["confusion"])
    assert cm.shape == (len(model_labels_), len(model_labels_)) and cm.sum() == 4
    assert cm[model_labels_.index("anger")].sum() == 2
    assert (out / "confusion.png").stat().st_size > 1000
    assert json.loads((out / "eval_report.json").read_text())["scored"] == 4
    assert "not scored: 1 'bored_not_ours'" in proc.stderr
    # nothing the model knows: a clear error, no traceback
    bad = sernet("eval", tmp_path / "mine", "--artifact", artifact, "--out", out, check=False)
    assert bad.returncode == 1 and "--label-map" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_short_mode_multi_corpus_loco_end_to_end(samples, tmp_path):
    """Two sample corpora, one epoch: per-corpus rows, mean, confusion PNGs, held-out windows,
    calibration, and a resumed re-run that trains nothing."""
    out = tmp_path / "loco"
    args = ("cv", "--data", samples / "urdu", "--data", samples / "emovo", "--labels", ",".join(SIX),
            "--mode", "loco", "--preset", "multi", "--epochs", "1", "--epoch-utterances", "16",
            "--qat-epochs", "0", "--no-channels", "--jobs", "2", "--out", out, "--json")
    summary = json.loads(sernet(*args).stdout.strip().splitlines()[-1])
    assert summary["mode"] == "loco"
    folds = {f["speaker"]: f for f in summary["folds"]}
    assert set(folds) == {"emovo", "urdu"}
    assert folds["urdu"]["classes"] == sorted({u.label for u in load_corpora([samples / "urdu"])})
    for f in folds.values():
        assert set(f["int8"]) >= {"ua", "wa", "f1", "restricted", "confusion"}
        assert (out / f"confusion_{f['speaker']}_int8.png").is_file()
        assert (out / "folds" / f["speaker"] / "windows.npz").is_file()
    mean = summary["metrics"]["per_corpus_mean"]["int8"]
    assert mean["ua"] == pytest.approx(np.mean([f["int8"]["ua"] for f in folds.values()]), abs=0.01)
    cal = summary["calibration"]
    assert cal["temperature"] > 0 and set(cal["folds"]) == {"emovo", "urdu"}
    assert "mean over corpora" in (out / "cv_table.md").read_text()
    again = sernet(*args)
    assert json.loads(again.stdout.strip().splitlines()[-1])["folds"] == summary["folds"]


def test_bf16_training_keeps_fp32_weights_and_learns():
    """precision="bf16" autocasts the forward pass only: the weights (and so the checkpoint,
    the export and the int8 step) stay fp32, and the loss still goes down."""
    torch = pytest.importorskip("torch")
    from dataclasses import replace

    from training.config import PRESETS, TrainConfig
    from training.features import FeatureSet
    from training.train import train

    rng = np.random.default_rng(0)
    n = 24
    y = np.arange(n) % 3
    feats = rng.normal(0, 1, (n, 184, 40)).astype(np.float16)
    feats[:, :, 0] += y[:, None] * 3  # separable by the first coefficient
    data = FeatureSet(feats, np.arange(n, dtype=np.int32), np.zeros(n, dtype=np.int8))
    cfg = replace(PRESETS["multi"], epochs=4, epoch_utterances=0, qat_epochs=0, augment=False,
                  mixup_alpha=0.0, time_masks=0, freq_masks=0, ema_decay=0.0, batch_size=8,
                  threads=1)
    assert cfg.precision == "bf16"
    result = train(data, y, np.arange(n), 3, cfg)
    assert all(p.dtype == torch.float32 for p in result.model.parameters())
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp16")
