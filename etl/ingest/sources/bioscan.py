"""BIOSCAN-5M metadata CSV and its image tree `<package>/<split>/<chunk>/<processid>.jpg`.
Kingdom Animalia is implied; placeholder and code-like species are set aside, never sent as names."""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from etl.http import PoliteClient
from etl.ingest.records import clean, record_id
from etl.ingest.sources import IngestConfig, Page, scratch

METADATA_PATH = "bioscan5m/metadata/csv/BIOSCAN_5M_Insect_Dataset_metadata.csv"
IMAGE_PACKAGE = "cropped_256"
RIGHTS_HOLDER = "CBG Photography Group, Centre for Biodiversity Genomics"
_PLACEHOLDER = re.compile(r"\d|_|\?|\bsp\.?(\s|$)|\bspp?\.|\baff\b|\bcf\.|malaise|not.classified", re.I)


def is_placeholder_species(name: str | None) -> bool:
    """Placeholder or code-like species labels (lower-case start, digits, `sp.`, `aff`, `_`, `?`)."""
    if not name:
        return False
    parts = name.split()
    return len(parts) < 2 or name[0].islower() or bool(_PLACEHOLDER.search(name))


def metadata_row(row: dict[str, str], image_root: str) -> dict[str, Any]:
    pid = row["processid"].strip()
    species = clean(row.get("species"))
    placeholder = is_placeholder_species(species)
    rel = "/".join(p for p in (row.get("split", "").strip(), (row.get("chunk") or "").strip()) if p)
    return {
        "source": "bioscan",
        "source_id": pid,
        "occurrence_id": pid,
        "record_id": record_id("bioscan", pid, 0),
        "media_index": 0,
        "media_url": f"{image_root.rstrip('/')}/{rel}/{pid}.jpg",
        "media_format": "image/jpeg",
        "license": "CC-BY-3.0",
        "license_verbatim": "CC BY 3.0",
        "rights_holder": RIGHTS_HOLDER,
        "img_type": "museum_specimen",
        "verbatim_name": None if placeholder else species,
        "verbatim_rank": "species" if species and not placeholder else None,
        "verbatim_kingdom": "Animalia",
        **{f"verbatim_{r}": clean(row.get(r)) for r in ("phylum", "class", "order", "family", "genus")},
        "verbatim_species": None if placeholder else species,
        "payload": row,
    }


def pages(client: PoliteClient, cfg: IngestConfig, checkpoint: dict[str, Any]) -> Iterator[Page]:
    if cfg.path:
        # Read as a stream: the real metadata CSV is 5 million rows.
        with open(cfg.path, encoding="utf-8", errors="replace", newline="") as fh:
            image_root = cfg.params.get("image_root") or Path(cfg.path).resolve().parent.as_uri()
            yield from _rows(csv.DictReader(fh), cfg, checkpoint, image_root)
        return
    if not cfg.api_url:
        raise ValueError(
            "bioscan has no public API: give --path (the BIOSCAN-5M metadata CSV, its images beside it or "
            "under --param image_root=URL) or --api-url (a mirror serving the dataset's paths)"
        )
    base = cfg.api_url.rstrip("/")
    # Streamed to disk within the archive cap, then read as a stream, as a local file is.
    local = client.download(
        f"{base}/{METADATA_PATH}", scratch(cfg) / "bioscan-metadata.csv", cfg.max_archive_bytes
    )
    image_root = cfg.params.get("image_root") or f"{base}/bioscan5m/images/{IMAGE_PACKAGE}"
    with open(local, encoding="utf-8", errors="replace", newline="") as fh:
        yield from _rows(csv.DictReader(fh), cfg, checkpoint, image_root)


def _rows(
    reader: csv.DictReader, cfg: IngestConfig, checkpoint: dict[str, Any], image_root: str
) -> Iterator[Page]:
    start = int(checkpoint.get("row", 0))
    batch: list[dict[str, Any]] = []
    n = 0
    for n, row in enumerate(reader, start=1):
        if n <= start:
            continue
        batch.append(metadata_row(row, image_root))
        if cfg.limit is not None and n >= cfg.limit:
            break
        if len(batch) >= 10_000:
            yield Page(batch, {"row": n})
            batch = []
    yield Page(batch, {"row": n}, complete=True)
