"""What the operator keeps in memory between handler calls (kopf's memo holds one Runtime)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from infisical_sync.config import Settings
from infisical_sync.infisical.client import ClientPool

Key = tuple[str, str, str]  # (kind, namespace, name)


@dataclass
class Slot:
    """Wakes one object's daemon: a kick from a trigger or the end of its interval."""

    event: asyncio.Event = field(default_factory=asyncio.Event)
    force: bool = False
    reasons: set[str] = field(default_factory=set)

    def kick(self, reason: str, *, force: bool = False) -> None:
        self.force = self.force or force
        self.reasons.add(reason)
        self.event.set()

    async def wait(self, delay: float) -> tuple[bool, set[str]]:
        """Wait for a kick or `delay` seconds; returns (force, reasons) and resets them."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.event.wait(), timeout=max(0.0, delay))
        force, reasons = self.force, self.reasons or {"timer"}
        self.event.clear()
        self.force, self.reasons = False, set()
        return force, reasons


class Kicks:
    """One slot per object. A kick before the daemon starts is kept, not lost."""

    def __init__(self) -> None:
        self._slots: dict[Key, Slot] = {}

    def slot(self, key: Key) -> Slot:
        return self._slots.setdefault(key, Slot())

    def kick(self, key: Key, reason: str, *, force: bool = False) -> None:
        self.slot(key).kick(reason, force=force)

    def discard(self, key: Key) -> None:
        self._slots.pop(key, None)


@dataclass
class Runtime:
    settings: Settings
    pool: ClientPool
    kicks: Kicks = field(default_factory=Kicks)
    # One lock per SecretSync: a sync and a removal never run at once.
    locks: dict[Key, asyncio.Lock] = field(default_factory=dict)
    # What the SecretSync event handler last saw, to tell spec changes and requests apart.
    seen: dict[Key, tuple[object, ...]] = field(default_factory=dict)

    def lock(self, key: Key) -> asyncio.Lock:
        return self.locks.setdefault(key, asyncio.Lock())
