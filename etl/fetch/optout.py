"""Opt-out signals a host gives, honoured by fetch: robots.txt (RFC 9309), TDMRep (W3C TDM Reservation
Protocol: `/.well-known/tdmrep.json` and the `tdm-reservation` response header) and `X-Robots-Tag: noai` /
`noimageai`. An image a signal reserves ends with that signal's drop reason (`robots_disallowed`,
`tdm_reserved`, `noai`); which signals are honoured is `FetchConfig.honour` (all by default).

The two files are read once per origin (scheme, host, port) and per worker process, through the fetch's own
guarded session and deadline, capped at `POLICY_FILE_BYTES`. As RFC 9309 says, a robots.txt answered with a
4xx status allows everything, and one answered with a 5xx disallows everything for that origin. When the
origin gives no answer at all (a refused address, a timeout, a name that does not resolve), the image ends
with that same reason, as it would have without the check, and nothing is cached. A TDMRep file that is absent or not valid JSON reserves nothing; its first rule whose
`location` matches the path decides.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlparse

from protego import Protego

from etl.http import HttpError
from warehouse.contracts import OPT_OUT_DROP_REASONS

POLICY_FILE_BYTES = 512 * 1024
NOAI_TOKENS = frozenset({"noai", "noimageai"})

# (status, body) of one GET of a policy file; status None when it could not be read at all
FetchText = Callable[[str], tuple[int | None, bytes]]


MAX_LOCATION_CHARS = 2048  # a TDMRep rule's `location`; longer ones are ignored (no path needs more)
MAX_ORIGINS = 4096  # origins whose rules one worker process keeps (least recently used dropped first)


@dataclass(frozen=True)
class Location:
    """A TDMRep / robots-style path pattern: `*` any run of characters, a final `$` the end of the path.
    Matched piece by piece with `str.find` (leftmost is optimal for `*`-only patterns), never as a regular
    expression, so a hostile file of stars costs linear time, not backtracking."""

    pieces: tuple[str, ...]
    anchored: bool

    @classmethod
    def parse(cls, location: str) -> Location:
        anchored = location.endswith("$")
        return cls(tuple(location.removesuffix("$").split("*")), anchored)

    def match(self, path: str) -> bool:
        first, *rest = self.pieces
        if not path.startswith(first):
            return False
        if not rest:
            return path == first if self.anchored else True
        at = len(first)
        for piece in rest[:-1]:
            found = path.find(piece, at)
            if found < 0:
                return False
            at = found + len(piece)
        last = rest[-1]
        if self.anchored:
            return path.endswith(last) and len(path) - len(last) >= at
        return path.find(last, at) >= 0


@dataclass(frozen=True)
class OriginRules:
    robots: Protego | None  # None: disallow everything (an unreadable robots.txt)
    tdm_rules: tuple[tuple[Location, bool], ...]  # (location, reserved), in file order

    def robots_allow(self, url: str, agent: str) -> bool:
        return self.robots is not None and self.robots.can_fetch(url, agent)

    def tdm_reserved(self, path: str) -> bool:
        return next((reserved for pattern, reserved in self.tdm_rules if pattern.match(path)), False)


def parse_robots(status: int | None, body: bytes) -> Protego | None:
    """Protego (Scrapy's parser: RFC 9309's longest match, `*` and `$`) over the file; None disallows all."""
    if status is not None and 400 <= status < 500:
        return Protego.parse("")  # no robots.txt: everything allowed
    if status is None or status >= 500:
        return None
    return Protego.parse(body.decode("utf-8", errors="replace"))


def parse_tdmrep(status: int | None, body: bytes) -> tuple[tuple[Location, bool], ...]:
    if status != 200:
        return ()
    try:
        rules = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return ()
    if not isinstance(rules, list):
        return ()
    out = []
    for rule in rules:
        location = rule.get("location") if isinstance(rule, dict) else None
        if isinstance(location, str) and len(location) <= MAX_LOCATION_CHARS:
            out.append((Location.parse(location), str(rule.get("tdm-reservation")) == "1"))
    return tuple(out)


def noai(headers: Mapping[str, str]) -> bool:
    """Whether `X-Robots-Tag` holds `noai` or `noimageai` (alone, in a list, or after `agent:`)."""
    value = headers.get("X-Robots-Tag") or ""
    tokens = {t.strip().lower().rsplit(":", 1)[-1].strip() for t in value.split(",")}
    return bool(tokens & NOAI_TOKENS)


class OptOutPolicy:
    """The signals `honour` names, for every URL of one worker process; origins' files are cached."""

    def __init__(self, honour: tuple[str, ...], agent: str) -> None:
        unknown = set(honour) - set(OPT_OUT_DROP_REASONS)
        if unknown:
            raise ValueError(
                f"unknown opt-out signals {sorted(unknown)}; known: {list(OPT_OUT_DROP_REASONS)}"
            )
        self.honour = frozenset(honour)
        self.agent = agent
        self._origins: OrderedDict[str, OriginRules] = OrderedDict()  # at most MAX_ORIGINS, LRU first
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}  # origins being read now, one lock each

    def _cached(self, origin: str) -> OriginRules | None:
        with self._lock:
            rules = self._origins.get(origin)
            if rules is not None:
                self._origins.move_to_end(origin)
            return rules

    def _rules(self, origin: str, fetch_text: FetchText) -> OriginRules:
        rules = self._cached(origin)
        if rules is not None:
            return rules
        with self._lock:
            loading = self._loading.setdefault(origin, threading.Lock())
        with loading:  # one read per origin, however many threads ask at once
            rules = self._cached(origin)
            if rules is not None:
                return rules
            try:
                robots = (
                    parse_robots(*fetch_text(origin + "/robots.txt")) if "robots" in self.honour else None
                )
                tdm = (
                    parse_tdmrep(*fetch_text(origin + "/.well-known/tdmrep.json"))
                    if "tdmrep" in self.honour
                    else ()
                )
            finally:
                with self._lock:
                    self._loading.pop(origin, None)
            rules = OriginRules(robots, tdm)
            with self._lock:
                self._origins[origin] = rules
                while len(self._origins) > MAX_ORIGINS:
                    self._origins.popitem(last=False)
            return rules

    def check_url(self, url: str, fetch_text: FetchText) -> None:
        """Raise HttpError (of the signal's drop reason) when the URL's origin reserves it by robots.txt or TDMRep."""
        if not self.honour & {"robots", "tdmrep"}:
            return
        parts = urlparse(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        rules = self._rules(origin, fetch_text)
        if "robots" in self.honour and not rules.robots_allow(url, self.agent):
            raise HttpError(OPT_OUT_DROP_REASONS["robots"], f"robots.txt of {origin} disallows {parts.path}")
        if "tdmrep" in self.honour and rules.tdm_reserved(parts.path or "/"):
            raise HttpError(OPT_OUT_DROP_REASONS["tdmrep"], f"tdmrep.json of {origin} reserves {parts.path}")

    def check_headers(self, url: str, headers: Mapping[str, str]) -> None:
        """Raise HttpError (of the signal's drop reason) when the image's own response reserves it (`tdm-reservation: 1`, `noai`)."""
        if "tdmrep" in self.honour and (headers.get("tdm-reservation") or "").strip() == "1":
            raise HttpError(OPT_OUT_DROP_REASONS["tdmrep"], f"{url}: tdm-reservation header")
        if "noai" in self.honour and noai(headers):
            raise HttpError(
                OPT_OUT_DROP_REASONS["noai"], f"{url}: X-Robots-Tag {headers.get('X-Robots-Tag')}"
            )
