"""glibc malloc settings for the worker process: keep resident memory close to what is in use.

The worker allocates many short-lived numpy arrays of 100-200 KB (a window's audio, its frames)
from three threads (event loop, Kafka consumer, scorer). glibc's defaults let that memory stay
resident after it is freed: one heap arena per contending thread (up to 8 per core), and a
``mmap`` threshold that grows after the first large free so later 192 KB arrays come from a heap
that is rarely trimmed. :func:`limit_malloc` caps the arenas and fixes the threshold (arrays at
or above it are mapped and returned to the system on free). A no-op off glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8


def limit_malloc(arenas: int, mmap_threshold: int = 128 * 1024) -> bool:
    """Cap glibc's malloc arenas at ``arenas`` and fix its mmap/trim thresholds; ``arenas`` 0
    leaves glibc's defaults. Returns whether the settings were applied (False off glibc)."""
    if arenas <= 0:
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return all(mallopt(param, value) == 1 for param, value in (
        (M_ARENA_MAX, arenas), (M_MMAP_THRESHOLD, mmap_threshold), (M_TRIM_THRESHOLD, 2 * mmap_threshold)))
