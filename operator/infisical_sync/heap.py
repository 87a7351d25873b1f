"""Giving freed heap memory back to the system.

CPython hands objects larger than 512 bytes (response bodies, parsed lists, big dicts) to the C
allocator. glibc's returns freed memory to the system only from the top of each heap, so after a
peak (a cold start lists and syncs thousands of objects at once) most of it stays resident for
good, held by a few live blocks above it: at 1,000 SecretSyncs, about a fifth of the RSS.
`malloc_trim(0)` releases every free page, wherever it is. It costs a walk of the free lists,
milliseconds at these sizes, and runs in a thread: ctypes drops the GIL for the call.
Elsewhere (musl, macOS) there is no such call and nothing to do.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)
# Often enough to follow a cold start or a burst within a minute; rare enough to cost nothing.
TRIM_EVERY = 60.0


def _find_malloc_trim() -> Callable[[int], int] | None:
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the C library the process already runs on
    except (OSError, AttributeError):  # not glibc
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    found: Callable[[int], int] = trim
    return found


_malloc_trim = _find_malloc_trim()


def can_release() -> bool:
    return _malloc_trim is not None


def release_free_heap() -> bool:
    """Returns free heap pages to the system; False where the C library cannot."""
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    return True


async def release_periodically(every: float = TRIM_EVERY) -> None:
    """Until cancelled. Does nothing where the C library cannot release."""
    if not can_release():
        log.debug("no malloc_trim in this C library: freed heap memory stays with the process")
        return
    while True:
        await asyncio.sleep(every)
        try:
            await asyncio.to_thread(release_free_heap)
        except Exception:  # e.g. the thread pool shut down: this round is lost, not the loop
            log.exception("releasing free heap memory failed")
