"""Shards: `--shard i/N` splits the SecretSyncs (and the InfisicalConnection status writers)
between N replicas by a stable hash of namespace/name. Pure.

Every configuration has its own finalizer names (`…/shard-i-of-N`; the unsharded one keeps
`…/finalizer`, so existing installs are unchanged). kopf removes its finalizer from any object
none of its handlers match; names shared between configurations (e.g. `shard-0` for both 0/2
and 0/3) would make two replicas of a resharding rollout strip and re-add each other's
finalizer on every event. Disjoint names cannot fight; what an earlier configuration left
behind is named by `stale_finalizers` and removed by the current owner.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

PREFIX = "infisical-sync.dev"
LEGACY_FINALIZER = f"{PREFIX}/finalizer"
_SPEC = re.compile(r"\s*(\d+)/(\d+)\s*")
_FAMILY = re.compile(rf"{re.escape(PREFIX)}/(?:finalizer|shard-\d+-of-\d+)")


class ShardSpecError(ValueError):
    pass


def _jump(key: int, buckets: int) -> int:
    """Lamping & Veach's jump consistent hash: going from N to N+1 buckets moves only the keys
    the new bucket takes (1/(N+1) of them), never keys between the other buckets."""
    bucket, candidate = -1, 0
    while candidate < buckets:
        bucket = candidate
        key = (key * 2862933555777941757 + 1) % (1 << 64)
        candidate = int((bucket + 1) * ((1 << 31) / ((key >> 33) + 1)))
    return bucket


def slot_of(namespace: str, name: str, count: int) -> int:
    """The shard (0 ≤ slot < count) owning namespace/name. Stable across processes, versions
    and machines (sha256, not Python's salted hash)."""
    digest = hashlib.sha256(f"{namespace}/{name}".encode()).digest()
    return _jump(int.from_bytes(digest[:8], "big"), count)


@dataclass(frozen=True)
class Shard:
    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ShardSpecError(
                f"shard {self.index}/{self.count}: expected i/N with N ≥ 1 and 0 ≤ i < N"
            )

    @classmethod
    def parse(cls, text: str) -> Shard:
        match = _SPEC.fullmatch(text)
        if match is None:
            raise ShardSpecError(f"shard {text!r}: expected i/N with N ≥ 1 and 0 ≤ i < N")
        return cls(int(match[1]), int(match[2]))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def sharded(self) -> bool:
        return self.count > 1

    def owns(self, namespace: str, name: str) -> bool:
        return self.count == 1 or slot_of(namespace, name, self.count) == self.index

    @property
    def finalizer(self) -> str:
        return f"{PREFIX}/shard-{self.index}-of-{self.count}" if self.sharded else LEGACY_FINALIZER

    @property
    def annotation_prefix(self) -> str:
        """Where kopf keeps this shard's handler progress and last-handled configuration. Every
        shard handles every InfisicalConnection: shared annotations would let one shard's
        progress (a retry, a finished deletion) stand for another's."""
        return f"shard-{self.index}-of-{self.count}.{PREFIX}" if self.sharded else PREFIX

    @property
    def lease_suffix(self) -> str:
        """Appended to the leader-election Lease name: one Lease per shard index."""
        return f"-shard-{self.index}" if self.sharded else ""

    def stale_finalizers(self, finalizers: Iterable[str]) -> list[str]:
        """Our finalizers on an object that no shard of this configuration uses: left by an
        earlier configuration, they would keep the object from ever being deleted."""
        current = {Shard(i, self.count).finalizer for i in range(self.count)}
        return [f for f in finalizers if _FAMILY.fullmatch(f) and f not in current]
