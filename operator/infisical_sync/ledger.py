"""The ownership ledger of a server without secretMetadata, kept in a ConfigMap. Pure: no I/O.

Where keys carry no owner, the list of keys a SecretSync owns (the ledger) is what ownership
depends on. At thousands of keys it does not belong in status (etcd's request limit is 1.5 MiB,
and status is read and rewritten often): past SHOWN_NAMES keys it lives in a ConfigMap per
SecretSync (gzip-compressed names in binaryData), and status.ledger names it with the list's
count and digest. Status is the only place we trust (writing it needs secretsyncs/status), so a
ConfigMap whose list does not have status's digest is never believed: a hand-edited ledger
cannot make someone else's keys ours.

The ConfigMap is written before the status that names it. A crash in between leaves a newer
list than status vouches for; the ConfigMap also carries the change from the list status
vouched for (`previous`), so that list is rebuilt and checked against status's digest. The
newer list is not believed (nothing in status vouches for it): the crashed cycle's own creates
then show as conflicts, as they did when the ledger was in status and a crash lost its write.

The same ConfigMap keeps, past SHOWN_NAMES keys, the key list of a plan held for approval
(status.pendingApproval.keyList names it by digest): without metadata it is what makes the keys
a merged request created ours, so it is believed on the same terms.

Our finalizer keeps the ConfigMap while status may name it: deleting a namespace deletes it
at once, and the SecretSync's removal (deletionPolicy Delete) still needs its list. It goes once
the SecretSync is removed, released or abandoned, or its status stops naming the ConfigMap.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from infisical_sync.sync_status import SHOWN_NAMES, shown

FORMAT = "1"
KEYS = "keys.json.gz"  # binaryData: the ledger, a sorted JSON list of key names
PREVIOUS = "previous.json.gz"  # binaryData: {"added": [...], "removed": [...]} since status's
APPROVAL_KEYS = "approval-keys.json.gz"  # binaryData: the keys of the plan held for approval
APPROVAL_PREVIOUS = "approval-previous.json.gz"  # binaryData: its change since status's
FINALIZER = "infisical-sync.dev/ledger"
LEDGER_LABEL = "infisical-sync.dev/ledger"
SECRETSYNC_ANNOTATION = "infisical-sync.dev/secretsync"
SUFFIX = "-ledger"
MAX_NAME = 253
# A ConfigMap holds at most 1 MiB; the change since the last list is left out past this.
PREVIOUS_BUDGET = 256 * 1024
LEDGER_UNAVAILABLE = "LedgerUnavailable"


def digest(keys: Iterable[str]) -> str:
    """The ledger's digest: sha256 of its sorted names as a compact JSON list (any character a
    key may hold stays unambiguous, newlines included)."""
    return hashlib.sha256(_json(sorted(set(keys)))).hexdigest()


def configmap_name(secretsync: str) -> str:
    """`<name>-ledger`, or for a name too long for that, a prefix of it and a hash of the whole
    name: deterministic, at most 253 characters, a valid DNS subdomain (the SecretSync's name is
    one already)."""
    name = secretsync + SUFFIX
    if len(name) <= MAX_NAME:
        return name
    tag = hashlib.sha256(secretsync.encode()).hexdigest()[:10]
    prefix = secretsync[: MAX_NAME - len(SUFFIX) - len(tag) - 1].rstrip(".-")
    return f"{prefix}-{tag}{SUFFIX}"


@dataclass(frozen=True)
class LedgerRef:
    """status.ledger: the ConfigMap holding the ledger, and what its list must be."""

    config_map: str
    count: int
    digest: str

    def status(self) -> dict[str, Any]:
        return {"configMap": self.config_map, "count": self.count, "digest": self.digest}


@dataclass(frozen=True)
class Entries:
    """The binaryData entries of one list the ConfigMap keeps."""

    keys: str
    previous: str


LEDGER = Entries(KEYS, PREVIOUS)
APPROVAL = Entries(APPROVAL_KEYS, APPROVAL_PREVIOUS)


def shown_ref(status: Mapping[str, Any]) -> LedgerRef | None:
    """status.ledger, when status names a ConfigMap (else managedKeys is the whole ledger)."""
    return _ref(status.get("ledger"))


def approval_ref(status: Mapping[str, Any]) -> LedgerRef | None:
    """status.pendingApproval.keyList, when the held plan's keys are in the ConfigMap (else
    status.pendingApproval.keys is the whole list)."""
    return _ref((status.get("pendingApproval") or {}).get("keyList"))


def _ref(shown: Any) -> LedgerRef | None:
    ref = shown if isinstance(shown, Mapping) else {}
    if not ref.get("configMap") or not ref.get("digest"):
        return None
    return LedgerRef(str(ref["configMap"]), int(ref.get("count") or 0), str(ref["digest"]))


def wanted_ref(name: str, keys: Collection[str], tracking: str | None) -> LedgerRef | None:
    """The ConfigMap reference a list of `keys` gets (None: status shows it whole)."""
    if not kept_apart(keys, tracking):
        return None
    return LedgerRef(name, len(set(keys)), digest(keys))


def kept_apart(keys: Collection[str], tracking: str | None) -> bool:
    """Whether status.managedKeys goes to the ConfigMap: a ledger (keys carry no owner, or it
    is not known yet) longer than status shows."""
    return tracking != "Metadata" and len(keys) > SHOWN_NAMES


def status_fields(keys: Collection[str], ref: LedgerRef | None) -> dict[str, Any]:
    """What status says of a ledger: whole without a ConfigMap (ledger null clears an earlier
    reference), else the first names and the reference."""
    if ref is None:
        return {"managedKeys": sorted(keys), "ledger": None}
    return {"managedKeys": shown(keys), "ledger": ref.status()}


def approval_fields(pending: Mapping[str, Any], ref: LedgerRef | None) -> dict[str, Any]:
    """status.pendingApproval with its keys whole (no ConfigMap; keyList null clears an earlier
    reference), or the first names and the reference."""
    keys = list(pending.get("keys") or [])
    if ref is None:
        return {**pending, "keys": sorted(keys), "keyList": None}
    return {**pending, "keys": shown(keys), "keyList": ref.status()}


def configmap(
    *,
    namespace: str,
    secretsync: str,
    uid: str,
    keys: Collection[str] | None,
    vouched: Collection[str] | None,
    belongs_to: str,
    approval: Collection[str] | None = None,
    approval_vouched: Collection[str] | None = None,
    finalizers: Collection[str] = (),
) -> dict[str, Any]:
    """The ConfigMap body for the ledger `keys` and the held plan's keys `approval` (None: not
    kept). `vouched` / `approval_vouched`: the lists status vouches for now (None: none), kept
    as the change from them so that a crash before status names the new ones loses nothing.
    `finalizers`: others' finalizers the ConfigMap carries, kept next to ours."""
    binary: dict[str, bytes] = {}
    data = {"format": FORMAT}
    if keys is not None:
        ordered = sorted(set(keys))
        binary.update(_list_entries(LEDGER, ordered, vouched))
        data.update({"count": str(len(ordered)), "digest": digest(ordered)})
    if approval is not None:
        held = sorted(set(approval))
        binary.update(_list_entries(APPROVAL, held, approval_vouched))
        data.update({"approvalCount": str(len(held)), "approvalDigest": digest(held)})
    data["destination"] = belongs_to
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": configmap_name(secretsync),
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "infisical-sync", LEDGER_LABEL: "true"},
            "annotations": {SECRETSYNC_ANNOTATION: secretsync},
            # Kept until the SecretSync's removal read it (see the module's docstring).
            "finalizers": [FINALIZER, *sorted(set(finalizers) - {FINALIZER})],
            # Garbage-collected with the SecretSync. No blockOwnerDeletion: setting it needs
            # update on secretsyncs/finalizers, and nothing waits on this object.
            "ownerReferences": [
                {
                    "apiVersion": "infisical-sync.dev/v1alpha1",
                    "kind": "SecretSync",
                    "name": secretsync,
                    "uid": uid,
                    "controller": True,
                }
            ],
        },
        "data": data,
        "binaryData": {name: base64.b64encode(value).decode() for name, value in binary.items()},
    }


def _list_entries(
    entries: Entries, ordered: list[str], vouched: Collection[str] | None
) -> dict[str, bytes]:
    binary = {entries.keys: _packed(ordered)}
    if vouched is not None:
        change = {
            "added": sorted(set(ordered) - set(vouched)),
            "removed": sorted(set(vouched) - set(ordered)),
        }
        packed = _packed(change)
        if len(packed) <= PREVIOUS_BUDGET:
            binary[entries.previous] = packed
    return binary


def others_finalizers(body: Mapping[str, Any]) -> list[str]:
    """The ConfigMap's finalizers that are not ours (a replace must keep them)."""
    found = (body.get("metadata") or {}).get("finalizers") or []
    return [str(name) for name in found if name != FINALIZER]


def released(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ConfigMap as read, without our finalizer, to replace it with; None when it carries
    none. Its lists stay: status no longer names them (or the SecretSync is going), so nothing
    believes them, and the ConfigMap goes with the SecretSync."""
    meta = dict(body.get("metadata") or {})
    if FINALIZER not in (meta.get("finalizers") or []):
        return None
    meta["finalizers"] = others_finalizers(body)
    meta.pop("managedFields", None)
    return {**body, "metadata": meta}


def owned_by_us(body: Mapping[str, Any], uid: str) -> bool:
    """The ConfigMap is this SecretSync's (never overwrite someone else's of the same name)."""
    refs = (body.get("metadata") or {}).get("ownerReferences") or []
    return any(ref.get("uid") == uid for ref in refs)


@dataclass(frozen=True)
class LedgerRead:
    keys: frozenset[str] | None  # None: no list status vouches for could be had
    problem: str = ""


def read(ref: LedgerRef, body: Mapping[str, Any] | None, entries: Entries = LEDGER) -> LedgerRead:
    """The list status vouches for, from the ConfigMap's body (None: it does not exist): the
    ledger, or with `entries` APPROVAL the held plan's keys."""
    where = f"ConfigMap {ref.config_map}"
    if body is None:
        return LedgerRead(None, f"{where} does not exist")
    data = body.get("data") or {}
    if data.get("format") != FORMAT:
        return LedgerRead(None, f"{where} has format {data.get('format')!r}, not {FORMAT!r}")
    binary = body.get("binaryData") or {}
    try:
        keys = frozenset(_list(_unpacked(binary[entries.keys])))
    except (KeyError, ValueError, OSError, EOFError, TypeError):
        return LedgerRead(None, f"{where} holds no readable key list")
    if digest(keys) == ref.digest:
        return LedgerRead(keys)
    # Written for a status that a crash (or a failed write) never stored: the list before it.
    try:
        change = _unpacked(binary[entries.previous])
        before = (keys - set(_list(change["added"]))) | set(_list(change["removed"]))
    except (KeyError, ValueError, OSError, EOFError, TypeError):
        before = None
    if before is not None and digest(before) == ref.digest:
        return LedgerRead(frozenset(before))
    field = "status.ledger" if entries == LEDGER else "status.pendingApproval.keyList"
    return LedgerRead(None, f"{where} does not hold the list {field}.digest names")


def unavailable_message(problem: str) -> str:
    return (
        f"the ownership ledger is unusable: {problem}. Nothing is written or deleted: without "
        "it no key can be told ours. Restore the ConfigMap, or to start over annotate the "
        'SecretSync infisical-sync.dev/abandon: "true", delete it and create it again (its '
        "first sync adopts the keys its source names)"
    )


def approval_unavailable_message(request: str, problem: str, keys: Collection[str]) -> str:
    """Keys exist without an owner that the held plan's list (unreadable) may name."""
    names = ", ".join(shown(keys))
    more = f" and {len(keys) - SHOWN_NAMES} more" if len(keys) > SHOWN_NAMES else ""
    return (
        f"the key list of {request} (status.pendingApproval) is unusable: {problem}. Keys "
        f"{names}{more} exist without an owner and may be the ones that request created once "
        "merged: none is taken for ours and nothing is written or deleted. Restore the "
        "ConfigMap; or delete those keys in Infisical if they are this SecretSync's (the next "
        'sync creates them again); or annotate the SecretSync infisical-sync.dev/abandon: "true", '
        "delete it and create it again (its first sync adopts the keys its source names)"
    )


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _packed(value: Any) -> bytes:
    # mtime=0: the same list packs to the same bytes (no spurious ConfigMap changes).
    return gzip.compress(_json(value), mtime=0)


def _unpacked(encoded: str) -> Any:
    return json.loads(gzip.decompress(base64.b64decode(encoded, validate=True)))


def _list(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError("not a list of names")
    return value
