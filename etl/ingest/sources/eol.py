"""EOL: the media manifest (`media_manifest_*.csv`, header in the first file only) joined to the Dynamic
Hierarchy `taxon.tab` for names (bulk), or the pages API for small pulls (`--param page_ids=1,2,3`:
`/api/pages/1.0/<id>.json`, images paged). Page ids are stable, content ids are not: `source_id` is
`<content id>_<page id>` as in the paper, and the record id keys on page id and the provider's source URL, so
both ways give the same record id to the same medium."""

from __future__ import annotations

import csv
import io
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from etl.http import HttpError, PoliteClient
from etl.ingest.records import clean, normalize_license, record_id
from etl.ingest.sources import IngestConfig, Page, scratch
from warehouse.archives import read_member
from warehouse.contracts import EOL_MANIFEST_COLUMNS

DEFAULT_API = "https://eol.org"
KINGDOM_NAMES = {
    "Animalia",
    "Plantae",
    "Fungi",
    "Chromista",
    "Protozoa",
    "Bacteria",
    "Archaea",
    "Viruses",
    "Metazoa",
    "Viridiplantae",
    "Archaeplastida",
}
HEADER = list(EOL_MANIFEST_COLUMNS)


def _manifest_files(client: PoliteClient, cfg: IngestConfig) -> list[tuple[str, str]]:
    if cfg.path:
        folder = Path(cfg.path)
        files = sorted(folder.glob("media_manifest_*.csv"), key=lambda p: int(re.findall(r"\d+", p.stem)[-1]))
        return [(p.name, p.read_text(encoding="utf-8", errors="replace")) for p in files]
    base = (cfg.api_url or DEFAULT_API).rstrip("/")
    archive = client.download(
        f"{base}/data/media_manifest.tgz", scratch(cfg) / "media_manifest.tgz", cfg.max_archive_bytes
    )
    out = []
    with tarfile.open(archive, mode="r:gz") as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".csv"):
                out.append((Path(member.name).name, read_member(tar, member, cfg.max_member_bytes)))
    out.sort(key=lambda item: int(re.findall(r"\d+", item[0])[-1]))
    return out


def _taxon_tab(client: PoliteClient, cfg: IngestConfig) -> dict[str, dict[str, str]]:
    if cfg.path:
        table = Path(cfg.path) / "taxon.tab"
    else:  # streamed to disk within the archive cap, then read as a stream, as a local file is
        url = f"{(cfg.api_url or DEFAULT_API).rstrip('/')}/data/taxon.tab"
        table = client.download(url, scratch(cfg) / "taxon.tab", cfg.max_archive_bytes)
    with open(table, encoding="utf-8", errors="replace", newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        return {row["eolID"]: row for row in reader if row.get("eolID")}


def _kingdom(higher: str | None) -> str | None:
    for part in (higher or "").split("|"):
        if part.strip() in KINGDOM_NAMES:
            return part.strip()
    return None


def manifest_row(row: list[str], taxa: dict[str, dict[str, str]]) -> dict[str, Any]:
    rec = dict(zip(HEADER, row + [""] * (len(HEADER) - len(row)), strict=False))
    content, page = rec["EOL content ID"].strip(), rec["EOL page ID"].strip()
    source_url, copy_url = clean(rec["Medium Source URL"]), clean(rec["EOL Full-Size Copy URL"])
    taxon = taxa.get(page, {})
    drop = None
    if not copy_url:
        drop = "no_media_url"
    elif not copy_url.lower().startswith(("http://", "https://")):
        drop = "unsupported_url_scheme"
    return {
        "source": "eol",
        "source_id": f"{content}_{page}",
        "occurrence_id": page,
        "record_id": record_id("eol", page, source_url or copy_url or content),
        "media_index": 0,
        "media_url": copy_url,
        "license": normalize_license(rec["License Name"]),
        "license_verbatim": rec["License Name"],
        "rights_holder": clean(rec["Copyright Owner"]),
        "img_type": "other",
        "verbatim_name": clean(taxon.get("canonicalName")) or clean(taxon.get("scientificName")),
        "verbatim_rank": clean(taxon.get("taxonRank")),
        "verbatim_kingdom": _kingdom(taxon.get("higherClassification")),
        "drop_reason": drop,
        "payload": {"manifest": rec, "taxon": taxon},
    }


STILL_IMAGE = "http://purl.org/dc/dcmitype/StillImage"
API_IMAGES_PER_PAGE = 75


def data_object_row(page_id: str, taxon: dict[str, Any], obj: dict[str, Any], index: int) -> dict[str, Any]:
    """One pages-API data object as a contract row, keyed like the manifest's rows."""
    content = str(obj.get("dataObjectVersionID") or obj.get("identifier") or index)
    source_url, copy_url = clean(obj.get("mediaURL")), clean(obj.get("eolMediaURL"))
    url = copy_url or source_url
    drop = None
    if obj.get("dataType") not in (STILL_IMAGE, "StillImage", None):
        drop = "not_still_image"
    elif not url:
        drop = "no_media_url"
    elif not url.lower().startswith(("http://", "https://")):
        drop = "unsupported_url_scheme"
    elif str(obj.get("vettedStatus", "")).lower() == "untrusted":
        drop = "untrusted_media"
    concepts = taxon.get("taxonConcepts") or []
    ranked = next((c for c in concepts if isinstance(c, dict) and c.get("taxonRank")), {})
    return {
        "source": "eol",
        "source_id": f"{content}_{page_id}",
        "occurrence_id": page_id,
        "record_id": record_id("eol", page_id, source_url or copy_url or content),
        "media_index": index,
        "media_url": url,
        "media_format": obj.get("mimeType"),
        "license": normalize_license(obj.get("license")),
        "license_verbatim": obj.get("license"),
        "rights_holder": clean(obj.get("rightsHolder")),
        "creator": next(
            (a.get("full_name") for a in obj.get("agents") or [] if a.get("role") == "creator"), None
        ),
        "img_type": "other",
        "verbatim_name": clean(taxon.get("scientificName")),
        "verbatim_rank": clean(ranked.get("taxonRank")),
        "drop_reason": drop,
        "payload": {"page_id": page_id, "object": obj},
    }


def api_pages(client: PoliteClient, cfg: IngestConfig, checkpoint: dict[str, Any]) -> Iterator[Page]:
    base = (cfg.api_url or DEFAULT_API).rstrip("/")
    page_ids = [p.strip() for p in cfg.params["page_ids"].split(",") if p.strip()]
    done = set(checkpoint.get("pages_done", []))
    seen = 0
    for n, page_id in enumerate(page_ids):
        if page_id in done:
            continue
        rows: list[dict[str, Any]] = []
        images_page = 1
        while True:
            body = client.get_json(
                f"{base}/api/pages/1.0/{page_id}.json",
                {"images_per_page": API_IMAGES_PER_PAGE, "images_page": images_page, "details": "true",
                 "taxonomy": "true", "licenses": "all"},
            )  # fmt: skip
            taxon = (body.get("taxonConcept") or body.get("taxon")) if isinstance(body, dict) else None
            if not isinstance(taxon, dict):
                raise HttpError("bad_payload", f"EOL page {page_id}: no taxonConcept in the response")
            objects = taxon.get("dataObjects") or []
            if not isinstance(objects, list):
                raise HttpError("bad_payload", f"EOL page {page_id}: dataObjects is not a list")
            for obj in objects:
                if isinstance(obj, dict):
                    rows.append(data_object_row(page_id, taxon, obj, len(rows)))
            if len(objects) < API_IMAGES_PER_PAGE or (
                cfg.limit is not None and seen + len(rows) >= cfg.limit
            ):
                break
            images_page += 1
        seen += len(rows)
        done.add(page_id)
        last = n == len(page_ids) - 1 or (cfg.limit is not None and seen >= cfg.limit)
        yield Page(rows, {"pages_done": sorted(done)}, complete=last)
        if last:
            return


def pages(client: PoliteClient, cfg: IngestConfig, checkpoint: dict[str, Any]) -> Iterator[Page]:
    if "page_ids" in cfg.params:
        yield from api_pages(client, cfg, checkpoint)
        return
    files = _manifest_files(client, cfg)
    if not files:
        raise HttpError("no_manifest", "no media_manifest_*.csv files found")
    taxa = _taxon_tab(client, cfg)
    done_files = set(checkpoint.get("files_done", []))
    seen = 0
    for i, (name, text) in enumerate(files):
        if name in done_files:
            continue
        reader = csv.reader(io.StringIO(text))
        rows = []
        for j, row in enumerate(reader):
            if j == 0 and row[:2] == HEADER[:2]:
                continue  # the header exists in the first file only
            if not row:
                continue
            rows.append(manifest_row(row, taxa))
            seen += 1
            if cfg.limit is not None and seen >= cfg.limit:
                break
        done_files.add(name)
        last = i == len(files) - 1 or (cfg.limit is not None and seen >= cfg.limit)
        yield Page(rows=rows, checkpoint={"files_done": sorted(done_files)}, complete=last)
        if last:
            return
