"""Write fencing: a replica that may have lost the leader Lease sends no write.

The elector opens the fence until (start of its last successful renewal) + renew deadline, a
moment always before any standby may take the Lease (standbys wait the longer lease duration on
their own clocks from when they saw that renewal). Every Infisical write and every Kubernetes
write of the operator asks `allows()` right before it is sent; `margin` keeps a request from
going out in the fence's last moment. Without leader election the fence is always open.

Read from the event loop and from the Kubernetes worker threads: a float assignment is atomic.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

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

    def open_until(self, deadline: float) -> None:
        """Writes allowed until `deadline` (the fence's clock) less the margin."""
        self._until = deadline

    def close(self) -> None:
        self._until = -math.inf

    def allows(self) -> bool:
        return self._clock() + self._margin < self._until

    def refusal(self, what: str) -> str:
        return f"{what} {REFUSED}"
