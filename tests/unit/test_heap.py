"""heap.release_free_heap gives freed memory back to the system (glibc: malloc_trim)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from infisical_sync import heap

# A fragmented heap: 64 MiB of 4 KiB blocks (above pymalloc's 512 bytes, so the C allocator's)
# freed but for one in 64, which keeps glibc from shrinking the heap by itself.
FRAGMENTED = textwrap.dedent(
    """
    import sys
    from infisical_sync import heap

    def rss_kib():
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))

    blocks = [bytearray(4096) for _ in range(16384)]
    kept = blocks[::64]
    del blocks
    before = rss_kib()
    released = heap.release_free_heap()
    print(released, before, rss_kib(), len(kept))
    """
)


@pytest.mark.skipif(not heap.can_release(), reason="the C library has no malloc_trim (not glibc)")
def test_free_pages_in_the_middle_of_the_heap_go_back_to_the_system() -> None:
    source_root = str(Path(heap.__file__).parents[1])  # this checkout's, not an installed one
    out = subprocess.run(
        [sys.executable, "-c", FRAGMENTED],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": source_root},
    ).stdout.split()
    released, before, after = out[0], int(out[1]), int(out[2])
    assert released == "True"
    assert before - after > 32 * 1024, f"RSS {before} KiB -> {after} KiB"


async def test_the_periodic_release_runs_until_cancelled(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(heap, "_malloc_trim", lambda pad: calls.append(pad) or 1)
    task = asyncio.create_task(heap.release_periodically(every=0.01))
    while len(calls) < 3:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert calls[:3] == [0, 0, 0]


async def test_without_malloc_trim_nothing_is_scheduled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heap, "_malloc_trim", None)
    assert heap.release_free_heap() is False
    await asyncio.wait_for(heap.release_periodically(every=0.01), 5)  # returns, not loops
