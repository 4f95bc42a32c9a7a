"""asyncio helpers shared by the worker's event-loop code."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable


async def bounded(aw: Awaitable[Any], timeout_s: float) -> Any:
    """``await aw`` within ``timeout_s`` seconds (``TimeoutError`` after them; ``aw`` is then
    cancelled). ``asyncio.timeout`` runs it in the calling task; ``asyncio.wait_for`` (kept for
    Python 3.10) wraps it in a task of its own, one more task and loop turn per call: per event
    that was 140-200 -> 30-50 CPU-us with the producer's send (bench/README.md)."""
    timeout = getattr(asyncio, "timeout", None)
    if timeout is None:  # Python 3.10
        return await asyncio.wait_for(aw, timeout_s)
    async with timeout(timeout_s):
        return await aw
