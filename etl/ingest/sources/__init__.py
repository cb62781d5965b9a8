"""Source connectors behind one small interface, looked up by name in `CONNECTORS`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa

from etl.http import HttpConfig, PoliteClient, redact
from warehouse.contracts import SOURCES


@dataclass(frozen=True)
class IngestConfig:
    """What to pull: `api_url` (a service or mirror base) or `path` (a local file or folder)."""

    source: str = field(metadata={"help": "the source to pull", "positional": True, "choices": SOURCES})
    api_url: str | None = field(
        default=None, metadata={"help": "service or mirror base URL (default: the real service)"}
    )
    path: str | None = field(default=None, metadata={"help": "a local file or folder instead of the API"})
    params: dict[str, str] = field(
        default_factory=dict,
        metadata={
            "help": "query filter passed through (repeatable)",
            "flag": "--param",
            "metavar": "KEY=VALUE",
        },
    )
    since: str | None = field(  # GBIF's lastInterpreted filter; other sources re-read everything
        default=None,
        metadata={"help": "gbif: only records (re)interpreted since this date (YYYY-MM-DD)"},
    )
    limit: int | None = field(
        default=None, metadata={"help": "stop after this many records (default: no limit)"}
    )
    page_size: int = field(default=300, metadata={"help": "records per API page"})
    work_dir: str | None = None  # scratch space for archives; the stage sets it under the home
    download: bool = field(
        default=False,
        metadata={
            "help": "gbif: request an asynchronous DwC-A download for the query (GBIF_USER, GBIF_PWD, GBIF_EMAIL)"
        },
    )
    download_poll_seconds: float = 30.0
    download_timeout_seconds: float = 6 * 3600.0
    # Bounds on what a source can make one run read: API pages requested, and a downloaded archive's size
    # (GBIF's DwC-A, EOL's manifest) and any one of its members' (declared or streamed).
    max_pages: int = field(
        default=100_000, metadata={"help": "stop (and fail) past this many API requests in one run"}
    )
    max_archive_bytes: int = 64 * 2**30
    max_member_bytes: int = 16 * 2**30
    max_document_bytes: int = 2**30  # a document parsed whole (a COCO export's JSON)
    allow_private_hosts: bool = (
        field(  # operator-only: a mirror on a private network, the loopback sample world
            default=False,
            metadata={
                "help": "let the API be on a private or loopback address (a LAN mirror; refused by default)"
            },
        )
    )

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"unknown source {self.source!r}; choose one of: {', '.join(SOURCES)}")
        if (
            self.since is not None
        ):  # folded into GBIF's filter here, so every entry point (CLI, recipe, UI) has it
            if self.source != "gbif":
                raise ValueError(
                    "since is supported for gbif (its lastInterpreted filter); other sources re-read all"
                )
            since = f"{date.fromisoformat(self.since).isoformat()},*"
            object.__setattr__(self, "params", {**self.params, "lastInterpreted": since})
            object.__setattr__(self, "since", None)
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1 (or absent for no limit), not {self.limit}")
        if self.page_size < 1:
            raise ValueError(f"page_size must be >= 1, not {self.page_size}")
        if min(self.max_pages, self.max_archive_bytes, self.max_member_bytes, self.max_document_bytes) < 1:
            raise ValueError("max_pages and the byte caps must be >= 1")
        if self.api_url is not None:
            parts = urlsplit(self.api_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"api_url must be an http(s) URL with a host, not {redact(self.api_url)!r}")
            if parts.username or parts.password:
                # A URL is copied into names, tags, logs and the catalog: credentials go in the environment.
                raise ValueError(
                    f"api_url {redact(self.api_url)!r} carries credentials; give them through the environment "
                    "(GBIF_USER, GBIF_PWD), never in a URL"
                )

    def client_config(self) -> HttpConfig:
        """The HTTP settings this pull's client uses: the API defaults, with the operator's private-host rule."""
        return HttpConfig(allow_private_hosts=self.allow_private_hosts)

    def query_key(self) -> str:
        parts = [
            self.api_url or self.path or "default",
            *(f"{k}={v}" for k, v in sorted(self.params.items())),
        ]
        return "|".join(parts)


def scratch(cfg: IngestConfig) -> Path:
    """The pull's scratch folder for downloaded files (under the home's cache unless the stage set another)."""
    folder = Path(cfg.work_dir or ".") / cfg.source
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@dataclass
class Page:
    """A batch of raw rows (dicts, or an Arrow `table` of contract columns from set-wise readers) and the
    checkpoint to store once they are committed."""

    rows: list[dict[str, Any]]
    checkpoint: dict[str, Any]
    complete: bool = False
    table: pa.Table | None = None


ConnectorFn = Callable[[PoliteClient, IngestConfig, dict[str, Any]], Iterator[Page]]


def _registry() -> dict[str, ConnectorFn]:
    from etl.ingest.sources import bioscan, eol, fathomnet, gbif

    registry = {"gbif": gbif.pages, "eol": eol.pages, "bioscan": bioscan.pages, "fathomnet": fathomnet.pages}
    assert tuple(registry) == SOURCES, "every source in warehouse.contracts.SOURCES has one connector"
    return registry


def default_api(name: str) -> str | None:
    """The real service a source's connector calls when no `api_url` is given (None: it reads files)."""
    from etl.ingest.sources import bioscan, eol, fathomnet, gbif

    modules = {"gbif": gbif, "eol": eol, "bioscan": bioscan, "fathomnet": fathomnet}
    if name not in modules:
        raise ValueError(f"unknown source {name!r}; choose one of: {', '.join(sorted(modules))}")
    return getattr(modules[name], "DEFAULT_API", None)


def get_connector(name: str) -> ConnectorFn:
    registry = _registry()
    if name not in registry:
        raise ValueError(f"unknown source {name!r}; choose one of: {', '.join(sorted(registry))}")
    return registry[name]
