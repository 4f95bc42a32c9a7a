"""The demo samples stay within what the corpus may lend: at most six EMO-DB clips, attributed.

Any other sample file must be built from those clips (the call-center stereo file: one clip per
channel, the shorter zero-padded), so the repository never holds more corpus audio than six
utterances."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
EMODB_NAME = re.compile(r"^\d\d[ab]\d\d[WLEAFTN][a-z]\.wav$")  # speaker, text, emotion, version


def _clips() -> dict[str, np.ndarray]:
    return {p.name: sf.read(str(p), dtype="int16")[0] for p in sorted(SAMPLES.glob("*.wav"))
            if EMODB_NAME.match(p.name)}


def test_at_most_six_corpus_clips_all_attributed() -> None:
    clips = _clips()
    attribution = (SAMPLES / "ATTRIBUTION.md").read_text()
    assert 1 <= len(clips) <= 6
    for name in [p.name for p in SAMPLES.glob("*.wav")]:
        assert f"`{name}`" in attribution, f"{name} is not in samples/ATTRIBUTION.md"


def test_other_samples_reuse_those_clips() -> None:
    clips = _clips()
    others = [p for p in SAMPLES.glob("*.wav") if p.name not in clips]
    assert others, "expected the call-center stereo sample"
    for path in others:
        audio = sf.read(str(path), dtype="int16", always_2d=True)[0]
        for ch in range(audio.shape[1]):
            channel = audio[:, ch]
            sources = [name for name, clip in clips.items() if clip.shape[0] <= channel.shape[0]
                       and np.array_equal(channel[: clip.shape[0]], clip)
                       and not channel[clip.shape[0]:].any()]
            assert sources, f"{path.name} channel {ch} is not one of the corpus clips"
