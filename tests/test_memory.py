"""worker.memory: glibc malloc settings that let freed window buffers leave the process."""

from __future__ import annotations

import subprocess
import sys

import pytest

from worker.memory import limit_malloc

PROBE = r"""
import sys
from worker.memory import limit_malloc
applied = limit_malloc(int(sys.argv[1]))
import numpy as np

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

np.ones(48000, np.float32)  # one 192 KB array freed: glibc's default raises its mmap threshold
base = rss()
arrays = [np.ones(48000, np.float32) for _ in range(300)]  # 300 windows of audio, 57 MB
keep = arrays[-1]
del arrays  # all but the newest freed; it pins the top of a heap they would share
print(applied, round((rss() - base) / 2**20, 1))
"""


def _held_mib(arenas: int) -> tuple[str, float]:
    out = subprocess.run([sys.executable, "-c", PROBE, str(arenas)], capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0], float(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_freed_window_buffers_leave_the_process():
    applied, held = _held_mib(2)
    default_applied, default_held = _held_mib(0)
    assert applied == "True" and default_applied == "False"
    assert held < 5, f"{held} MiB still resident after freeing 57 MB of buffers"
    assert default_held > 40, "glibc's defaults would keep them (else this test proves nothing)"


def test_zero_keeps_the_defaults():
    assert limit_malloc(0) is False
