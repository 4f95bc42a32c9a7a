"""EmotionModel: the worker's onnxruntime wrapper."""

from __future__ import annotations

import numpy as np
import pytest

from worker.model import EmotionModel


def test_run_batch_splits_calls_with_the_same_scores(artifact, monkeypatch):
    directory, art = artifact
    feats = np.random.default_rng(0).normal(0, 3, (5,) + art.frontend.input_shape).astype(np.float32)
    whole = EmotionModel.from_artifact(art)
    split = EmotionModel.from_artifact(art, run_batch=2)
    calls = []
    run = split._run
    monkeypatch.setattr(split, "_run", lambda x: calls.append(x.shape[0]) or run(x))
    got = split.scores(feats)
    assert calls == [2, 2, 1]
    np.testing.assert_allclose(got, whole.scores(feats), rtol=0, atol=1e-6)
    assert got.shape == (5, len(art.labels))


def test_run_batch_must_be_positive(artifact):
    with pytest.raises(ValueError, match="run_batch"):
        EmotionModel.from_artifact(artifact[1], run_batch=0)


def test_worker_uses_the_memory_arena_only_for_one_window_per_call():
    from helpers.artifact import committed_or_fixture
    from sernet.settings import Settings
    from worker.app import load_model

    model, _, _ = load_model(Settings(model_dir=str(committed_or_fixture()), model_batch=3))
    opts = model.session.get_session_options()
    assert not opts.enable_cpu_mem_arena and not opts.enable_mem_pattern
    assert model.run_batch == 3
    model, _, _ = load_model(Settings(model_dir=str(committed_or_fixture())))
    opts = model.session.get_session_options()
    assert opts.enable_cpu_mem_arena and opts.enable_mem_pattern and model.run_batch == 1
