"""Kicks: how triggers (watch events, spec changes, requests) wake an InfisicalConnection's
daemon loop (a SecretSync's are handled by the scheduler's timetable)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

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

    def take(self) -> tuple[bool, set[str]]:
        """(force, reasons) of the kicks since the last take, and reset; no kick is "timer"."""
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
