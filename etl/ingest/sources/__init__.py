"""Source connectors behind one small interface, looked up by name in `CONNECTORS`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from etl.http import PoliteClient
from warehouse.contracts import SOURCES


@dataclass(frozen=True)
class IngestConfig:
    """What to pull: `api_url` (a service or mirror base) or `path` (a local file or folder)."""

    source: str
    api_url: str | None = None
    path: str | None = None
    params: dict[str, str] = field(default_factory=dict)
    limit: int | None = None
    page_size: int = 300
    work_dir: str | None = None  # scratch space for archives; the stage sets it under the home
    download: bool = False  # GBIF: request an asynchronous DwC-A download (GBIF_USER, GBIF_PWD, GBIF_EMAIL)
    download_poll_seconds: float = 30.0
    download_timeout_seconds: float = 6 * 3600.0

    def query_key(self) -> str:
        parts = [
            self.api_url or self.path or "default",
            *(f"{k}={v}" for k, v in sorted(self.params.items())),
        ]
        return "|".join(parts)


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


def get_connector(name: str) -> ConnectorFn:
    registry = _registry()
    if name not in registry:
        raise ValueError(f"unknown source {name!r}; choose one of: {', '.join(sorted(registry))}")
    return registry[name]
