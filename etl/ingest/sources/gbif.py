"""GBIF occurrence search API (`/v1/occurrence/search`): paged by absolute offset, one row per media item."""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from etl.http import HttpError, PoliteClient, redact
from etl.ingest.records import clean, normalize_license, record_id
from etl.ingest.sources import IngestConfig, Page
from warehouse.contracts import HIGHER_RANKS, check_name

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
        **{f"verbatim_{r}": clean(occ.get(r)) for r in HIGHER_RANKS},
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
    work = Path(cfg.work_dir or tempfile.gettempdir())
    if cfg.path:
        from etl.ingest.sources import gbif_dwca

        yield from gbif_dwca.pages(cfg, checkpoint, work / "dwca")
        return
    if cfg.download:
        yield from download_pages(client, cfg, checkpoint, work)
        return
    base = (cfg.api_url or DEFAULT_API).rstrip("/")
    limit = min(cfg.page_size, MAX_LIMIT)
    offset = int(checkpoint.get("offset", 0))
    params = {"mediaType": "StillImage", "occurrenceStatus": "PRESENT", **cfg.params}
    seen = 0
    while True:
        if offset + limit > RESTRICTED_OFFSET:
            raise HttpError(
                "restricted_offset",
                f"GBIF search cannot page past offset {RESTRICTED_OFFSET}; "
                "request a Darwin Core Archive download for bulk pulls",
            )
        body = client.get_json(f"{base}/v1/occurrence/search", {**params, "limit": limit, "offset": offset})
        results = body.get("results") if isinstance(body, dict) else None
        if not isinstance(results, list):
            raise HttpError("bad_payload", f"GBIF page at offset {offset} has no results list")
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


# Keys whose values are taxa, read against a checklist: GBIF's predicates carry the checklist as their own
# `checklistKey` field (gbif-api's EqualsPredicate and InPredicate), not as a predicate on a CHECKLIST_KEY.
TAXON_PREDICATE_KEYS = frozenset(
    {"TAXON_KEY", "ACCEPTED_TAXON_KEY", "KINGDOM_KEY", "PHYLUM_KEY", "CLASS_KEY", "ORDER_KEY", "FAMILY_KEY",
     "GENUS_KEY", "SUBGENUS_KEY", "SPECIES_KEY", "TAXONOMIC_STATUS", "IUCN_RED_LIST_CATEGORY"}
)  # fmt: skip


def download_predicate(params: dict[str, str]) -> dict[str, Any]:
    """The search filters as a download predicate: `taxonKey=212` -> `{"type": "equals", "key": "TAXON_KEY"}`;
    a comma-separated value becomes an `in` predicate. A `checklistKey` (GBIF's default taxonomy is the
    Catalogue of Life XR since 2026; the 2023 backbone is `d7dddbf4-...`) is set on each taxon predicate."""
    params = dict(params)
    checklist = params.pop("checklistKey", None)
    preds = []
    for name, value in sorted(params.items()):
        key = re.sub(r"(?<!^)(?=[A-Z])", "_", name).upper()
        values = [v.strip() for v in str(value).split(",") if v.strip()]
        if len(values) > 1:
            pred: dict[str, Any] = {"type": "in", "key": key, "values": values}
        else:
            pred = {"type": "equals", "key": key, "value": values[0] if values else ""}
        if checklist and key in TAXON_PREDICATE_KEYS:
            pred["checklistKey"] = checklist
        preds.append(pred)
    return {"type": "and", "predicates": preds}


def gbif_credentials() -> tuple[str, str, str]:
    user, password, email = (os.environ.get(k) for k in ("GBIF_USER", "GBIF_PWD", "GBIF_EMAIL"))
    if not (user and password and email):
        raise HttpError(
            "no_credentials", "GBIF downloads need an account: set GBIF_USER, GBIF_PWD and GBIF_EMAIL"
        )
    return user, password, email


# Where the GBIF account may be sent: GBIF's own API, and the bases an operator lists (a test server, a
# proxy of their own) in TOL_GBIF_CREDENTIAL_URLS, comma-separated. Never wherever a recipe's api_url says.
CREDENTIAL_URLS_ENV = "TOL_GBIF_CREDENTIAL_URLS"
DOWNLOAD_KEY = re.compile(r"[0-9]{7}-[0-9]{15}")  # GBIF's download keys: 0001234-250101120000000


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme.lower(), (parts.hostname or "").lower(), parts.port


def credential_base(base: str) -> str:
    """`base`, if the GBIF account may be sent there; else a clear refusal."""
    allowed = [
        DEFAULT_API,
        *(u.strip() for u in os.environ.get(CREDENTIAL_URLS_ENV, "").split(",") if u.strip()),
    ]
    if _origin(base) not in {_origin(u) for u in allowed}:
        raise HttpError(
            "credentials_refused",
            f"GBIF credentials are sent only to {DEFAULT_API} or a base listed in {CREDENTIAL_URLS_ENV}, "
            f"not to {redact(base)}",
        )
    return base


def check_download_key(key: str) -> str:
    """A download key as GBIF forms them; anything else (it becomes a file name) is refused."""
    if not DOWNLOAD_KEY.fullmatch(key):
        raise HttpError("bad_payload", f"GBIF answered a download key of unexpected form: {key[:40]!r}")
    return check_name("download key", key)


def download_pages(
    client: PoliteClient, cfg: IngestConfig, checkpoint: dict[str, Any], work: Path
) -> Iterator[Page]:
    """Request an asynchronous Darwin Core Archive download for the query, poll it, fetch the zip, read it.

    The download key is checkpointed as soon as GBIF gives it, so a killed run polls the same download
    instead of requesting another; a finished one requests a fresh download (new data) next time."""
    from etl.ingest.sources import gbif_dwca

    base = credential_base((cfg.api_url or DEFAULT_API).rstrip("/"))
    user, password, email = gbif_credentials()
    key = checkpoint.get("download_key") if not checkpoint.get("done") else None
    if not key:
        params = {"mediaType": "StillImage", "occurrenceStatus": "PRESENT", **cfg.params}
        body = {
            "creator": user,
            "notificationAddresses": [email],
            "sendNotification": False,
            "format": "DWCA",
            "predicate": download_predicate(params),
        }
        response = client.request(
            "POST", f"{base}/v1/occurrence/download/request", json=body, auth=(user, password)
        )
        key = check_download_key(response.text.strip())
        yield Page([], {"download_key": key})
    key = check_download_key(str(key))
    link = _wait_for_download(client, base, key, cfg)
    archive = work / "gbif-downloads" / f"{key}.zip"
    if not archive.exists():
        client.download(link, archive, cfg.max_archive_bytes)  # no credentials: the link is public
    dwca_cfg = replace(cfg, path=str(archive), download=False)
    for page in gbif_dwca.pages(
        dwca_cfg, {k: v for k, v in checkpoint.items() if k != "download_key"}, work / "dwca"
    ):
        page.checkpoint = {**page.checkpoint, "download_key": key}
        yield page


def _wait_for_download(client: PoliteClient, base: str, key: str, cfg: IngestConfig) -> str:
    deadline = time.monotonic() + cfg.download_timeout_seconds
    while True:
        meta = client.get_json(f"{base}/v1/occurrence/download/{key}")
        status = str(meta.get("status", "")).upper() if isinstance(meta, dict) else ""
        if status == "SUCCEEDED" and meta.get("downloadLink"):
            return meta["downloadLink"]
        if status in ("FAILED", "KILLED", "CANCELLED", "FILE_ERASED"):
            raise HttpError("download_failed", f"GBIF download {key} ended as {status}")
        if time.monotonic() > deadline:
            raise HttpError("download_timeout", f"GBIF download {key} still {status or 'unknown'}; run again")
        time.sleep(cfg.download_poll_seconds)
