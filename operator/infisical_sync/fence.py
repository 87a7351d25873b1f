"""Write fencing: a replica that may have lost the leader Lease sends no write.

The elector opens the fence until (start of its last successful renewal) + renew deadline, a
moment always before any standby may take the Lease (standbys wait the longer lease duration on
their own clocks from when they saw that renewal). Every Infisical write and every Kubernetes
write of the operator is sent inside `sending()`, which asks `allows()` right before it goes;
`margin` keeps a request from going out in the fence's last moment. Without leader election the
fence is always open.

The fence also counts the writes it let through that have not finished: a leader stopping
closes it and waits for them (`wait_drained`) before it releases the Lease, so that none of
its writes lands after a standby took over.

Used from the event loop and from the Kubernetes worker threads, hence the lock.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterator

REFUSED = "not sent: this replica is not the leader (its Lease was lost or not renewed in time)"


class Fence:
    def __init__(
        self,
        *,
        closed: bool = False,
        margin: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._until = -math.inf if closed else math.inf
        self._margin = margin
        self._clock = clock
        self._changed = threading.Condition()
        self._under_way = 0

    def open_until(self, deadline: float) -> None:
        """Writes allowed until `deadline` (the fence's clock) less the margin."""
        with self._changed:
            self._until = deadline

    def close(self) -> None:
        """Once this returns, no write is let through; those already through may still run."""
        with self._changed:
            self._until = -math.inf

    def allows(self) -> bool:
        return self._clock() + self._margin < self._until

    def refusal(self, what: str) -> str:
        return f"{what} {REFUSED}"

    @contextlib.contextmanager
    def sending(self, what: str, refused: Callable[[str], Exception]) -> Iterator[None]:
        """Around one write: raises `refused(message)` when the fence does not allow it, else
        counts it as under way until the block ends."""
        with self._changed:
            if not self.allows():
                raise refused(self.refusal(what))
            self._under_way += 1
        try:
            yield
        finally:
            with self._changed:
                self._under_way -= 1
                self._changed.notify_all()

    @property
    def writes_under_way(self) -> int:
        return self._under_way

    def wait_drained(self, seconds: float) -> bool:
        """After close(): True once every write let through has finished; False when some are
        still under way after `seconds`. Blocks: from the event loop, run it in a thread."""
        with self._changed:
            return self._changed.wait_for(lambda: self._under_way == 0, seconds)
