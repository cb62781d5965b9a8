"""GBIF occurrence search API (`/v1/occurrence/search`): paged by absolute offset, one row per media item."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from etl.http import FetchError, PoliteClient
from etl.records import clean, normalize_license, record_id
from etl.sources import IngestConfig, Page

DEFAULT_API = "https://api.gbif.org"
MAX_LIMIT = 300
RESTRICTED_OFFSET = 100_000  # offset + limit beyond this is refused by GBIF: use a DwC-A download instead
CITIZEN_SCIENCE_PUBLISHERS = ("inaturalist", "observation.org", "naturgucker", "artportalen")
MUSEUM_BASES = {
    "PRESERVED_SPECIMEN",
    "FOSSIL_SPECIMEN",
    "MATERIAL_SAMPLE",
    "LIVING_SPECIMEN",
    "MATERIAL_CITATION",
}
RANK_KEYS = ("kingdom", "phylum", "class", "order", "family", "genus")


def image_type(occ: dict[str, Any]) -> str:
    """The paper's coarse image-type split: camera trap, citizen science, museum specimen, other."""
    remarks = (occ.get("eventRemarks") or "").lower()
    if "camera trap" in remarks or "trigger sensitivity" in remarks:
        return "camera_trap"
    publisher = (occ.get("publisher") or occ.get("institutionCode") or "").lower()
    if any(p in publisher for p in CITIZEN_SCIENCE_PUBLISHERS):
        return "citizen_science"
    if occ.get("basisOfRecord") in MUSEUM_BASES:
        return "museum_specimen"
    return "other"


def media_drop_reason(occ: dict[str, Any], media: dict[str, Any]) -> str | None:
    if occ.get("basisOfRecord") == "MATERIAL_CITATION":
        return "material_citation"
    url = clean(media.get("identifier"))
    if not url:
        return "no_media_url"
    mtype, fmt = media.get("type"), (media.get("format") or "").lower()
    if mtype not in (None, "StillImage"):
        return "not_still_image"
    if fmt == "application/ld+json":
        return "iiif_manifest_unresolved"
    if fmt == "dzi" or url.endswith(".dzi"):
        return "dzi_unsupported"
    if mtype is None and fmt and "image" not in fmt:
        return "not_still_image"
    if not url.lower().startswith(("http://", "https://")):
        return "unsupported_url_scheme"
    return None


def occurrence_rows(occ: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per media item; an occurrence without media still yields one row, with its reason."""
    gbif_id = str(occ.get("gbifID") or occ.get("key"))
    base = {
        "source": "gbif",
        "source_id": gbif_id,
        "occurrence_id": gbif_id,
        "dataset_key": occ.get("datasetKey"),
        "basis_of_record": occ.get("basisOfRecord"),
        "publisher": occ.get("publisher") or occ.get("publishingOrgKey"),
        "img_type": image_type(occ),
        "verbatim_name": clean(occ.get("scientificName")),
        "verbatim_rank": clean(occ.get("taxonRank")),
        **{f"verbatim_{r}": clean(occ.get(r)) for r in RANK_KEYS},
        "verbatim_species": clean(occ.get("species")),
        "event_date": occ.get("eventDate"),
        "payload": occ,
    }
    media = occ.get("media")
    if not isinstance(media, list) or not media:
        return [
            {
                **base,
                "record_id": record_id("gbif", gbif_id, -1),
                "media_index": -1,
                "drop_reason": "no_media",
                "license": normalize_license(occ.get("license")),
                "license_verbatim": occ.get("license"),
            }
        ]
    rows = []
    for i, m in enumerate(media):
        if not isinstance(m, dict):
            m = {}
        url = clean(m.get("identifier"))
        licence_raw = m.get("license") or occ.get("license")
        rows.append(
            {
                **base,
                "record_id": record_id("gbif", gbif_id, url or i),
                "media_index": i,
                "media_url": url,
                "media_format": m.get("format"),
                "license": normalize_license(licence_raw),
                "license_verbatim": licence_raw,
                "rights_holder": m.get("rightsHolder") or occ.get("rightsHolder"),
                "creator": m.get("creator"),
                "drop_reason": media_drop_reason(occ, m),
            }
        )
    return rows


def pages(client: PoliteClient, cfg: IngestConfig, checkpoint: dict[str, Any]) -> Iterator[Page]:
    """`--path` reads a Darwin Core Archive download (bulk, set-wise); otherwise the search API is paged."""
    if cfg.path:
        from etl.sources import gbif_dwca

        yield from gbif_dwca.pages(cfg, checkpoint, Path(cfg.work_dir or tempfile.gettempdir()) / "dwca")
        return
    base = (cfg.api_url or DEFAULT_API).rstrip("/")
    limit = min(cfg.page_size, MAX_LIMIT)
    offset = int(checkpoint.get("offset", 0))
    params = {"mediaType": "StillImage", "occurrenceStatus": "PRESENT", **cfg.params}
    seen = 0
    while True:
        if offset + limit > RESTRICTED_OFFSET:
            raise FetchError(
                "restricted_offset",
                f"GBIF search cannot page past offset {RESTRICTED_OFFSET}; "
                "request a Darwin Core Archive download for bulk pulls",
            )
        body = client.get_json(f"{base}/v1/occurrence/search", {**params, "limit": limit, "offset": offset})
        results = body.get("results") if isinstance(body, dict) else None
        if not isinstance(results, list):
            raise FetchError("bad_payload", f"GBIF page at offset {offset} has no results list")
        rows: list[dict[str, Any]] = []
        for occ in results:
            if not isinstance(occ, dict):
                rows.append(
                    {
                        "source": "gbif",
                        "source_id": f"offset-{offset}",
                        "record_id": record_id("gbif", f"offset-{offset}", len(rows)),
                        "drop_reason": "malformed_record",
                        "payload": occ,
                    }
                )
                continue
            rows.extend(occurrence_rows(occ))
        offset += len(results)
        seen += len(results)
        end = bool(body.get("endOfRecords")) or not results or (cfg.limit is not None and seen >= cfg.limit)
        yield Page(rows=rows, checkpoint={"offset": offset}, complete=end)
        if end:
            return
