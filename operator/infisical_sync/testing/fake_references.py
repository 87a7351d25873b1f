"""Secret reference expansion as the fake Infisical answers it (`expandSecretReferences=true`).

What the fake does, and where each rule comes from (Infisical/infisical backend,
`backend/src/services/secret-v2-bridge/secret-reference-fns.ts` `expandSecretReferencesFactory`,
earlier in `secret-v2-bridge-fns.ts`; `secret-v2-bridge-service.ts` `getSecrets` /
`getSecretByName`; `secret-import/secret-import-fns.ts` `fnSecretsV2FromImports`):

- Syntax: `${KEY}` is a secret of the same environment and folder as the secret holding it;
  `${env.seg1.seg2.KEY}` is environment `env`, folder `/seg1/seg2`, key `KEY` (no segments: the
  root folder). Only `[a-zA-Z0-9-_.]` may appear between the braces; anything else (`${A B}`) is
  plain text. (The newest servers also read `${@project.env.path.KEY}` across projects when the
  organisation enables it; the fake does not.)
- A reference to a secret that does not exist (or whose environment or folder does not exist)
  stays as its literal `${...}` text; a referenced secret that exists with an empty value
  becomes the empty string. (Current source: `if (referencedSecretExists)`; Infisical PR #6844,
  2026-06. Before it, an existing empty value also stayed literal, issue #3844 "expected
  behaviour"; the first v2-bridge code of mid-2024 replaced a missing reference with "".)
- Nested references are expanded where the referenced secret lives (its own environment and
  folder), each hop one level deeper; a level deeper than `MAX_REFERENCE_DEPTH` (10) is not
  scanned. When a pass ends with references it did not start with (nesting, or a reference put
  together by another: `${dev.${dev.VENDOR}.KEY}`), the whole value is scanned again, at most
  `MAX_REFERENCE_DEPTH` more passes; so a plain chain stops after 11 hops per pass, 121 in all,
  leaving the 122nd reference literal. (Servers before the re-scan stop after 11 hops.)
- A cycle (`A = ${B}`, `B = ${A}`) stops at the secret already visited on that path, leaving
  whatever text the substitutions produced (here `A` lists as `${B}`, `B` as `${A}`).
- A secret with `skipMultilineEncoding` whose value held a reference and expands to several
  lines is returned quoted with `\\n` escapes (`formatMultiValueEnv`).
- Permission: every referenced secret is checked for read-value permission (the fake: read
  access to the referenced environment). Refused in a list: **403** `ForbiddenError` "Failed to
  expand one or more secret references" with `details` = one message per refused secret, "You
  do not have permission to read secret 'K' in environment 'e' at path '/p', which is
  referenced by secret 'S' in environment 'e0' at path '/p0'."; in a single-secret get: 403
  `ForbiddenError` with that message and no `details`.
- Imported secrets (`include_imports=true`) are expanded where they live (the import's
  environment and path) on *every* list, whatever `expandSecretReferences` says (the list
  passes the expander to `fnSecretsV2FromImports` unconditionally in every version read); a
  refused reference there is swallowed (`Promise.allSettled`) and the value stays raw.
- Hidden values (`viewSecretValue=false`) are not expanded.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from infisical_sync.testing.fake_state import Project, normalise_path

REFERENCE = re.compile(r"\$\{([a-zA-Z0-9\-_.]+)\}")
MAX_REFERENCE_DEPTH = 10
CanRead = Callable[[str], bool]  # may the identity read values in this environment?
LIST_REFUSED = "Failed to expand one or more secret references"


class ReferenceForbidden(Exception):
    """A referenced secret the identity may not read (the server's 403 `ForbiddenError`)."""


@dataclass(frozen=True)
class _Frame:
    value: str
    environment: str
    path: str
    depth: int
    visited: frozenset[tuple[str, str, str]]


def expand_references(
    project: Project,
    environment: str,
    path: str,
    key: str,
    value: str,
    *,
    can_read: CanRead,
    skip_multiline_encoding: bool = False,
) -> str:
    """The value of secret `key` at `environment`:`path` as the server returns it expanded."""
    if not value or REFERENCE.search(value) is None:
        return value
    expanded = _expand(project, environment, normalise_path(path), key, value, can_read)
    if skip_multiline_encoding and "\n" in expanded:
        return '"' + expanded.replace("\n", "\\n") + '"'
    return expanded


def expand_listing(
    project: Project, listing: dict[str, Any], *, own: bool, can_read: CanRead
) -> list[str]:
    """Expand a list response in place: the folder's own secrets when `own`, imported ones
    always. Returns the refusals met in the own secrets (the caller answers 403)."""
    refused: list[str] = []
    if own:
        for item in listing["secrets"]:
            try:
                _expand_item(project, item, item["environment"], item["secretPath"], can_read)
            except ReferenceForbidden as exc:
                refused.append(str(exc))
    if refused:
        return refused
    for imported in listing.get("imports", []):
        for item in imported["secrets"]:
            # The server swallows a refusal here: the imported value stays raw.
            with contextlib.suppress(ReferenceForbidden):
                _expand_item(
                    project, item, imported["environment"], imported["secretPath"], can_read
                )
    return []


def _expand_item(
    project: Project, item: dict[str, Any], environment: str, path: str, can_read: CanRead
) -> None:
    if item.get("secretValueHidden"):
        return
    item["secretValue"] = expand_references(
        project,
        environment,
        path,
        str(item["secretKey"]),
        str(item["secretValue"]),
        can_read=can_read,
        skip_multiline_encoding=bool(item.get("skipMultilineEncoding")),
    )


def _lookup(project: Project, environment: str, path: str, key: str) -> tuple[str, bool]:
    env = project.environments.get(environment)
    folder = env.folders.get(path) if env is not None else None
    secret = folder.get(key) if folder is not None else None
    return (secret.value, True) if secret is not None else ("", False)


def _target(reference: str, environment: str, path: str) -> tuple[str, str, str]:
    parts = reference[2:-1].strip().split(".")
    if len(parts) == 1:
        return environment, path, parts[0]
    return parts[0], normalise_path("/".join(parts[1:-1])), parts[-1]


def _references(value: str) -> list[str]:
    return [match.group(0) for match in REFERENCE.finditer(value)]


def _expand(
    project: Project, environment: str, path: str, key: str, value: str, can_read: CanRead
) -> str:
    def refused(env: str, at: str, name: str) -> ReferenceForbidden:
        return ReferenceForbidden(
            f"You do not have permission to read secret '{name}' in environment '{env}' at "
            f"path '{at}', which is referenced by secret '{key}' in environment "
            f"'{environment}' at path '{path}'."
        )

    root = (environment, path, key)

    def root_frame(text: str) -> _Frame:
        return _Frame(text, environment, path, 0, frozenset({root}))

    if not can_read(environment):
        raise ReferenceForbidden(
            f"You do not have permission to read secret '{key}' in environment "
            f"'{environment}' at path '{path}'."
        )
    stack = [root_frame(value)]
    expanded = value
    seen_before_pass = set(_references(expanded))
    passes = 0
    while stack:
        frame = stack.pop()
        references = [] if frame.depth > MAX_REFERENCE_DEPTH else _references(frame.value)
        for reference in references:
            target = _target(reference, frame.environment, frame.path)
            target_value, exists = _lookup(project, *target)
            if not can_read(target[0]):
                raise refused(*target)
            if REFERENCE.search(target_value) and target not in frame.visited:
                stack.append(
                    _Frame(
                        target_value,
                        target[0],
                        target[1],
                        frame.depth + 1,
                        frame.visited | {target},
                    )
                )
            if exists:
                expanded = expanded.replace(reference, target_value)
        if not stack and passes < MAX_REFERENCE_DEPTH:
            after = _references(expanded)
            if any(reference not in seen_before_pass for reference in after):
                seen_before_pass = set(after)
                passes += 1
                stack.append(root_frame(expanded))
    return expanded
