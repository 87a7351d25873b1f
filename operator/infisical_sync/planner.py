"""The sync planner: source map + destination + ownership -> what to write. Pure, no I/O.

Rules (SPEC §2.3):
- each source key becomes `keySchema` rendered with the key and the destination environment;
  keys Infisical refuses (empty, `:` or `/`, > 500 chars, surrounding spaces) are skipped;
- values are compared the way Infisical stores them (trimmed, one trailing newline kept);
- only keys this SecretSync owns are updated or deleted. Ownership is the `secretMetadata`
  entries owner (`<namespace>/<name>`), owner-uid and owner-cluster (the cluster's identity): a
  same-named SecretSync of another cluster is a conflict, and so is another UID unless the
  cluster is ours (the object was deleted with its keys kept and created again). On servers that
  return no metadata ownership falls back to the status ledger (managedKeys). An unowned key is
  adopted on the initial sync only; a key owned by anyone else is a conflict and never written;
- deletes are gated by keySchema and `disableSecretDeletion`, and held when the source is
  uncertain (unreadable, partly read) or suddenly empty, or when more than half of the owned
  keys (counting this cycle's creates) would go. A held plan has an id; the allow-mass-delete
  annotation set to that id lets exactly that plan through, once (never on an uncertain source);
- import modes (initial sync only) first merge the destination into the source.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

OWNER_KEY = "infisical-sync.dev/owner"
OWNER_UID_KEY = "infisical-sync.dev/owner-uid"
OWNER_CLUSTER_KEY = "infisical-sync.dev/owner-cluster"
OWNERSHIP_KEYS = (OWNER_KEY, OWNER_UID_KEY, OWNER_CLUSTER_KEY)
ALLOW_MASS_DELETE = "infisical-sync.dev/allow-mass-delete"
MAX_KEY_LENGTH = 500
InitialBehavior = Literal[
    "overwrite-destination", "import-prioritize-source", "import-prioritize-destination"
]

# JavaScript's String.prototype.trim() whitespace set: the Infisical server is Node.js.
_JS_WHITESPACE = (
    " \t\n\v\f\r\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
)
_PLACEHOLDER = re.compile(r"\{\{\s*(secretKey|environment)\s*\}\}")


def stored_form(value: str) -> str:
    """How Infisical stores a written value: trimmed, one trailing newline kept."""
    trimmed = value.strip(_JS_WHITESPACE)
    return trimmed + "\n" if value.endswith("\n") else trimmed


def render_key(schema: str, key: str, environment: str) -> str:
    def substitute(match: re.Match[str]) -> str:
        return key if match.group(1) == "secretKey" else environment

    return _PLACEHOLDER.sub(substitute, schema)


def key_problem(key: str) -> str | None:
    """Why Infisical would refuse this destination key, or None."""
    if not key:
        return "empty key"
    if key != key.strip(_JS_WHITESPACE):
        return "leading or trailing whitespace (Infisical trims keys)"
    if ":" in key or "/" in key:
        return "contains ':' or '/'"
    if len(key) > MAX_KEY_LENGTH:
        return f"longer than {MAX_KEY_LENGTH} characters"
    return None


@dataclass(frozen=True)
class KeySchema:
    """A compiled keySchema: maps source keys to destination keys and back."""

    template: str
    environment: str

    @property
    def _parts(self) -> tuple[str, str]:
        rendered = _PLACEHOLDER.sub(
            lambda m: "\0" if m.group(1) == "secretKey" else self.environment, self.template
        )
        prefix, _, suffix = rendered.partition("\0")
        return prefix, suffix.replace("\0", "")

    def destination_key(self, source_key: str) -> str:
        return render_key(self.template, source_key, self.environment)

    def matches(self, destination_key: str) -> bool:
        """Infisical's matchesSchema: the gate for deletes and imports."""
        prefix, suffix = self._parts
        if not destination_key.startswith(prefix) or not destination_key.endswith(suffix):
            return False
        if len(destination_key) <= len(prefix) + len(suffix):
            return False
        middle = destination_key[len(prefix) : len(destination_key) - len(suffix)]
        return not (("/" in prefix or "/" in suffix) and "/" in middle)

    def source_key(self, destination_key: str) -> str | None:
        if not self.matches(destination_key):
            return None
        prefix, suffix = self._parts
        return destination_key[len(prefix) : len(destination_key) - len(suffix)]


@dataclass(frozen=True)
class Owner:
    namespace: str
    name: str
    uid: str
    cluster: str  # the cluster's identity (kube-system namespace UID unless configured)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class DestinationKey:
    value: str
    # None: the server returned no secretMetadata for this key (ownership falls back to the ledger)
    metadata: tuple[tuple[str, str], ...] | None = ()
    # Metadata entries stored encrypted: written back, they must stay encrypted.
    encrypted: frozenset[str] = frozenset()

    def meta(self, name: str) -> str | None:
        for key, value in self.metadata or ():
            if key == name:
                return value
        return None

    @property
    def owner_ref(self) -> str | None:
        return self.meta(OWNER_KEY)


class ShownHold(NamedTuple):
    """A held set of deletes as the status showed it: only that id can confirm it."""

    id: str
    since: str


@dataclass(frozen=True)
class PlanInput:
    source: Mapping[str, str]
    destination: Mapping[str, DestinationKey]
    owner: Owner
    environment: str
    key_schema: str = "{{secretKey}}"
    initial: bool = False
    initial_behavior: InitialBehavior = "overwrite-destination"
    disable_deletion: bool = False
    # The allow-mass-delete annotation's value: lets through the held plan shown with this id.
    mass_delete_confirmation: str | None = None
    location: str = ""  # where the destination is: part of a held plan's id
    shown_hold: ShownHold | None = None  # status.heldDeletes of the last cycle
    now: str = ""  # when this plan is made: a new hold's `since`, which makes its id unique
    source_certain: bool = True
    uncertain_reason: str = ""
    ledger: frozenset[str] = frozenset()  # status.managedKeys from the last sync
    # The last sync here tracked ownership by the ledger alone (status.ownershipTracking Ledger):
    # the server kept no secretMetadata then.
    ledger_tracked: bool = False
    # Source keys known to exist but not sendable (e.g. binary data): never delete their targets.
    keep: frozenset[str] = frozenset()
    import_supported: bool = True  # False: the source cannot take imported keys


@dataclass
class Plan:
    create: dict[str, str] = field(default_factory=dict)
    update: dict[str, str] = field(default_factory=dict)
    delete: list[str] = field(default_factory=list)
    adopt: list[str] = field(default_factory=list)  # unowned keys taken over (initial sync)
    unchanged: list[str] = field(default_factory=list)
    import_to_source: dict[str, str] = field(default_factory=dict)  # source key -> value
    skipped: dict[str, str] = field(default_factory=dict)  # source key -> reason
    conflicts: dict[str, str] = field(default_factory=dict)  # destination key -> reason
    held_deletes: list[str] = field(default_factory=list)
    hold_reason: str = ""
    held_id: str = ""  # what the allow-mass-delete annotation must say to let these deletes go
    held_since: str = ""  # when this set of deletes was first held
    confirmed: bool = False  # the deletes go because the annotation confirmed this plan
    owned_before: list[str] = field(default_factory=list)
    managed_after: list[str] = field(default_factory=list)
    # None: the destination was empty, so whether the server keeps metadata is not known yet.
    metadata_tracking: bool | None = True
    metadata: dict[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)
    # Updates whose value is already right: only the metadata is written (no value sent, so the
    # key's version and what watches it do not change).
    metadata_only: set[str] = field(default_factory=set)
    encrypted: dict[str, frozenset[str]] = field(default_factory=dict)  # kept encrypted entries

    @property
    def writes(self) -> int:
        return len(self.create) + len(self.update) + len(self.delete)

    @property
    def synced_keys(self) -> int:
        return len(self.create) + len(self.update) + len(self.unchanged)


Ownership = Literal["ours", "nobody", "earlier", "foreign"]
NOT_MANAGED = "exists in the destination and is not managed by this SecretSync"


def ownership(entry: DestinationKey, owner: Owner) -> tuple[Ownership, str]:
    """Whose a key carrying metadata is, and why when it is not ours.

    "earlier": written by a SecretSync of this namespace/name on this cluster with another UID,
    i.e. deleted without releasing its keys (abandoned) and created again. Like an unowned key,
    it is adopted on the initial sync only, never deleted before that.
    """
    ref = entry.owner_ref
    if ref is None:
        return "nobody", NOT_MANAGED
    if ref != owner.ref:
        return "foreign", f"owned by SecretSync {ref}"
    cluster, uid = entry.meta(OWNER_CLUSTER_KEY), entry.meta(OWNER_UID_KEY)
    if cluster is not None and cluster != owner.cluster:
        return "foreign", f"owned by SecretSync {ref} of another cluster ({cluster})"
    if uid is not None and uid != owner.uid:
        if cluster is None:
            # Written before cluster identities: it may be another cluster's, never taken over.
            return (
                "foreign",
                f"owned by another SecretSync named {ref} (UID {uid}, cluster unknown)",
            )
        return "earlier", f"written by an earlier SecretSync {ref} of this cluster (UID {uid})"
    return "ours", ""


def foreign_owner(entry: DestinationKey, owner: Owner) -> str | None:
    """Why a key may never be written by this SecretSync (None: ours, or adoptable)."""
    kind, reason = ownership(entry, owner)
    return reason if kind == "foreign" else None


def owned_by(
    key: str,
    entry: DestinationKey,
    owner: Owner,
    ledger: frozenset[str],
    *,
    ledger_tracked: bool = False,
) -> bool:
    if entry.metadata is None:
        return key in ledger
    kind = ownership(entry, owner)[0]
    # The server was upgraded to a generation with secretMetadata: the keys written while it
    # kept none come back with [] and the ledger still names them. Ours, and stamped now. On a
    # server that always kept metadata a key without an owner is someone else's edit: never.
    return kind == "ours" or (kind == "nobody" and ledger_tracked and key in ledger)


def ownership_metadata(
    owner: Owner, existing: tuple[tuple[str, str], ...] | None = None
) -> tuple[tuple[str, str], ...]:
    """Our entries, keeping whatever other metadata the key already carries."""
    return (
        *without_ownership(existing),
        (OWNER_KEY, owner.ref),
        (OWNER_UID_KEY, owner.uid),
        (OWNER_CLUSTER_KEY, owner.cluster),
    )


def without_ownership(
    existing: tuple[tuple[str, str], ...] | None,
) -> tuple[tuple[str, str], ...]:
    """The key's metadata less ours: what Retain leaves behind when it lets a key go."""
    return tuple((k, v) for k, v in (existing or ()) if k not in OWNERSHIP_KEYS)


def held_plan_id(location: str, keys: list[str], since: str) -> str:
    """Names one hold: these deletes at this destination, held first at `since`. A later hold
    of the same keys has another id, so an old confirmation never lets it through."""
    digest = hashlib.sha256("\0".join([location, since, *sorted(keys)]).encode())
    return digest.hexdigest()[:12]


def plan_imports(data: PlanInput) -> dict[str, str]:
    """Import modes: destination keys to merge into the source (source key -> value)."""
    if not data.initial or data.initial_behavior == "overwrite-destination":
        return {}
    schema = KeySchema(data.key_schema, data.environment)
    imports: dict[str, str] = {}
    for dest_key in sorted(data.destination):
        entry = data.destination[dest_key]
        if entry.metadata is not None and foreign_owner(entry, data.owner) is not None:
            continue  # another SecretSync's key: reported as a conflict by plan()
        source_key = schema.source_key(dest_key)
        if source_key is None:
            continue
        current = data.source.get(source_key)
        if current is None or (
            data.initial_behavior == "import-prioritize-destination"
            and entry.value != ""
            and stored_form(current) != entry.value
        ):
            imports[source_key] = entry.value
    return imports


def plan(data: PlanInput) -> Plan:
    result = Plan()
    schema = KeySchema(data.key_schema, data.environment)
    result.metadata_tracking = (
        None
        if not data.destination
        else not any(entry.metadata is None for entry in data.destination.values())
    )
    owned = {
        key
        for key, entry in data.destination.items()
        if owned_by(key, entry, data.owner, data.ledger, ledger_tracked=data.ledger_tracked)
    }
    result.owned_before = sorted(owned)

    source = dict(data.source)
    if data.import_supported:
        result.import_to_source = plan_imports(data)
        source.update(result.import_to_source)

    desired: dict[str, str] = {}  # destination key -> value as Infisical will store it
    for source_key in sorted(source):
        dest_key = schema.destination_key(source_key)
        problem = key_problem(dest_key)
        if problem:
            shown = dest_key if len(dest_key) <= 60 else dest_key[:57] + "..."
            result.skipped[source_key] = f"{problem} (destination key {shown!r})"
            continue
        desired[dest_key] = stored_form(source[source_key])

    for dest_key, value in desired.items():
        entry = data.destination.get(dest_key)
        if entry is None:
            result.create[dest_key] = value
            result.metadata[dest_key] = ownership_metadata(data.owner)
            continue
        if dest_key in owned:
            if entry.value == value and not _stale_metadata(entry, data.owner):
                result.unchanged.append(dest_key)
                continue
        else:
            kind, why = (
                ("nobody", NOT_MANAGED) if entry.metadata is None else ownership(entry, data.owner)
            )
            if kind == "foreign" or not data.initial:
                result.conflicts[dest_key] = why
                continue
            result.adopt.append(dest_key)
            if entry.metadata is None and entry.value == value:
                # Nothing to write: without secretMetadata only the ledger records the adoption
                # (a write of the same value would be one more change request under approval).
                result.unchanged.append(dest_key)
                continue
        result.update[dest_key] = value
        result.metadata[dest_key] = ownership_metadata(data.owner, entry.metadata)
        result.encrypted[dest_key] = entry.encrypted
        if entry.value == value and entry.metadata is not None:
            result.metadata_only.add(dest_key)

    # The guard counts the keys owned once this cycle's creates and adoptions are done, so that
    # a held delete stays held (and an allowed one stays allowed) when planned again.
    owned_now = owned | set(result.create) | set(result.adopt)
    kept_targets = {schema.destination_key(key) for key in data.keep}
    removable = sorted(
        key
        for key in owned
        if key not in desired and key not in kept_targets and schema.matches(key)
    )
    if removable and not data.disable_deletion:
        hold = data.shown_hold
        same_hold = hold is not None and hold.id == held_plan_id(
            data.location, removable, hold.since
        )
        since = hold.since if hold is not None and same_hold else data.now
        held_id = held_plan_id(data.location, removable, since)
        confirm = (
            f'set the annotation {ALLOW_MASS_DELETE}: "{held_id}" to allow exactly these deletes'
        )
        if data.mass_delete_confirmation not in (None, held_id):
            confirm += f" (the annotation says {data.mass_delete_confirmation[:40]!r})"
        # Only an id the status showed for exactly this hold confirms it.
        confirmed = same_hold and data.mass_delete_confirmation == held_id
        if not source and owned:
            guard = f"source is empty while {len(owned)} keys are owned: no deletes"
        elif len(removable) * 2 > len(owned_now):
            guard = f"would delete {len(removable)} of {len(owned_now)} owned keys"
        else:
            guard = ""
        if not data.source_certain:
            result.held_deletes = removable
            result.hold_reason = f"source uncertain ({data.uncertain_reason}): no deletes"
        elif guard and not confirmed:
            result.held_deletes, result.held_id, result.held_since = removable, held_id, since
            result.hold_reason = f"{guard}; {confirm}"
        else:
            result.delete = removable
            result.confirmed = bool(guard)

    after = (owned | set(result.create) | set(result.adopt)) - set(result.delete)
    result.managed_after = sorted(after)
    return result


def _stale_metadata(entry: DestinationKey, owner: Owner) -> bool:
    """Ours, but our entries are not exactly what we write today: an earlier incarnation
    (deleted with Retain, recreated) or a key written before the cluster identity."""
    if entry.metadata is None:
        return False
    ours = {(k, v) for k, v in entry.metadata if k in OWNERSHIP_KEYS}
    return ours != set(ownership_metadata(owner)) or len(ours) != len(OWNERSHIP_KEYS)


def apply_plan(
    destination: Mapping[str, DestinationKey], result: Plan
) -> dict[str, DestinationKey]:
    """What the destination holds after the plan's writes (for tests and re-planning)."""
    after = dict(destination)
    for key, value in result.create.items():
        after[key] = DestinationKey(stored_form(value), result.metadata[key])
    for key, value in result.update.items():
        after[key] = DestinationKey(stored_form(value), result.metadata[key])
    for key in result.delete:
        after.pop(key, None)
    return after
