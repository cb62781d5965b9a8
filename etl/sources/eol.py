"""EOL media manifest (`media_manifest_*.csv`, header in the first file only) joined to the Dynamic
Hierarchy `taxon.tab` for names. Page ids are stable, content ids are not: `source_id` is
`<content id>_<page id>` as in the paper, the record id keys on page id and the provider's source URL."""

from __future__ import annotations

import csv
import io
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from etl.http import FetchError, PoliteClient
from etl.records import clean, normalize_license, record_id
from etl.sources import IngestConfig, Page

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
HEADER = [
    "EOL content ID",
    "EOL page ID",
    "Medium Source URL",
    "EOL Full-Size Copy URL",
    "License Name",
    "Copyright Owner",
]


def _manifest_files(client: PoliteClient, cfg: IngestConfig) -> list[tuple[str, str]]:
    if cfg.path:
        folder = Path(cfg.path)
        files = sorted(folder.glob("media_manifest_*.csv"), key=lambda p: int(re.findall(r"\d+", p.stem)[-1]))
        return [(p.name, p.read_text(encoding="utf-8", errors="replace")) for p in files]
    base = (cfg.api_url or DEFAULT_API).rstrip("/")
    data = client.get(f"{base}/data/media_manifest.tgz").content
    out = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            if member.isfile() and member.name.endswith(".csv"):
                fh = tar.extractfile(member)
                assert fh is not None
                out.append((Path(member.name).name, fh.read().decode("utf-8", errors="replace")))
    out.sort(key=lambda item: int(re.findall(r"\d+", item[0])[-1]))
    return out


def _taxon_tab(client: PoliteClient, cfg: IngestConfig) -> dict[str, dict[str, str]]:
    if cfg.path:
        text = (Path(cfg.path) / "taxon.tab").read_text(encoding="utf-8", errors="replace")
    else:
        text = client.get(f"{(cfg.api_url or DEFAULT_API).rstrip('/')}/data/taxon.tab").text
    reader = csv.DictReader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE)
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


def pages(client: PoliteClient, cfg: IngestConfig, checkpoint: dict[str, Any]) -> Iterator[Page]:
    files = _manifest_files(client, cfg)
    if not files:
        raise FetchError("no_manifest", "no media_manifest_*.csv files found")
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
