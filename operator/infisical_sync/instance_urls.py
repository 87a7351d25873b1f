"""Which Infisical instances connections may use: the operator-wide allow-list.

An entry allows a URL with the same scheme, the same host (case-insensitive, whole host: no
suffix or prefix matching) and the same port (443 / 80 when not written), whose path lies inside
the entry's path, compared segment by segment (`https://h/infisical` allows `/infisical` and
`/infisical/x`, not `/infisical-old`). Trailing slashes do not count.

Only plain URLs take part: `scheme://host[:port][/path]` with a path of letters, digits and
`-._~`. Anything else (user info, query, fragment, percent-escapes, backslashes, whitespace,
`.` or `..` segments) is never allowed, and is refused as an entry, so that no URL can read as
one host here and reach another in the HTTP client.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

_PLAIN_URL = re.compile(
    r"(?P<scheme>https?)://"
    r"(?P<host>[a-z0-9.-]+|\[[0-9a-f:.]+\])"
    r"(?::(?P<port>[0-9]{1,5}))?"
    r"(?P<path>(?:/[a-z0-9._~-]*)*)",
    re.IGNORECASE,
)
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class InstanceUrl:
    scheme: str
    host: str
    port: int
    path: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> InstanceUrl:
        """Raises ValueError for anything but a plain http(s) URL."""
        match = _PLAIN_URL.fullmatch(text)
        if match is None:
            raise ValueError("not a plain http(s)://host[:port][/path] URL")
        scheme = match["scheme"].lower()
        port = int(match["port"]) if match["port"] else _DEFAULT_PORTS[scheme]
        if not 0 < port < 65536:
            raise ValueError(f"port {port} is out of range")
        segments = match["path"].split("/")[1:]
        while segments and not segments[-1]:
            segments.pop()  # trailing slashes
        if {".", ".."} & set(segments):
            raise ValueError("'.' and '..' path segments are not allowed")
        return cls(scheme, match["host"].lower(), port, tuple(segments))

    def contains(self, other: InstanceUrl) -> bool:
        return (self.scheme, self.host, self.port) == (
            other.scheme,
            other.host,
            other.port,
        ) and other.path[: len(self.path)] == self.path

    def __str__(self) -> str:
        port = "" if self.port == _DEFAULT_PORTS[self.scheme] else f":{self.port}"
        path = "".join(f"/{segment}" for segment in self.path)
        return f"{self.scheme}://{self.host}{port}{path}"


def parse_entry(text: str) -> InstanceUrl:
    """One allow-list entry; ValueError with the entry and why."""
    try:
        return InstanceUrl.parse(text.strip())
    except ValueError as exc:
        raise ValueError(f"allowed instance URL {text!r}: {exc}") from None


@dataclass(frozen=True)
class AllowedInstances:
    """The allow-list; empty allows any instance."""

    entries: tuple[InstanceUrl, ...] = ()

    @classmethod
    def from_urls(cls, urls: Iterable[str]) -> AllowedInstances:
        return cls(tuple(parse_entry(url) for url in urls))

    def allows(self, url: str) -> bool:
        if not self.entries:
            return True
        try:
            candidate = InstanceUrl.parse(url)
        except ValueError:
            return False
        return any(entry.contains(candidate) for entry in self.entries)

    def __str__(self) -> str:
        return ", ".join(str(entry) for entry in self.entries) if self.entries else "any"
