"""Ingest benchmarks, JSON lines:
1. GBIF search-page records parsed into contract rows per second (no network: parse + Arrow build);
2. a synthetic GBIF Darwin Core Archive with 1,000,000 multimedia rows (400,000 occurrences) ingested end to end
   into a fresh catalog (read, join, ids, licences, drop reasons, payloads, anti-join, Parquet), in its own
   process so peak RSS is its own.

Usage: bench_ingest.py [--dwca-media 1000000] [--skip-dwca]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import emit, peak_rss_mb, timer

from etl.ingest.records import make_rows
from etl.ingest.sources.gbif import occurrence_rows


def synthetic_page(rng: random.Random, start: int, n: int = 300) -> list[dict]:
    out = []
    for key in range(start, start + n):
        media = [
            {
                "type": "StillImage",
                "format": "image/jpeg",
                "identifier": f"https://img.example.org/{key}/{i}.jpg",
                "license": "http://creativecommons.org/licenses/by/4.0/",
                "rightsHolder": "someone",
            }
            for i in range(rng.choice([1, 1, 2, 3]))
        ]
        out.append(
            {
                "key": key,
                "gbifID": str(key),
                "datasetKey": "50c9509d",
                "basisOfRecord": "HUMAN_OBSERVATION",
                "scientificName": "Puma concolor (Linnaeus, 1771)",
                "kingdom": "Animalia",
                "phylum": "Chordata",
                "class": "Mammalia",
                "order": "Carnivora",
                "family": "Felidae",
                "genus": "Puma",
                "species": "Puma concolor",
                "taxonRank": "SPECIES",
                "license": "http://creativecommons.org/licenses/by-nc/4.0/legalcode",
                "media": media,
            }
        )
    return out


def search_parse(pages: int = 100) -> None:
    rng = random.Random(0)
    data = [synthetic_page(rng, p * 300) for p in range(pages)]
    result: dict = {"bench": "ingest_gbif_search_parse", "pages": pages, "records": pages * 300}
    rows = 0
    with timer(result, "seconds"):
        for page in data:
            table = make_rows([r for occ in page for r in occurrence_rows(occ)], "bench")
            rows += table.num_rows
    result.update(
        media_rows=rows,
        media_rows_per_s=round(rows / result["seconds"]),
        records_per_s=round(pages * 300 / result["seconds"]),
        peak_rss_mb=round(peak_rss_mb()),
    )
    emit(result)


def write_synthetic_dwca(folder: Path, n_media: int, seed: int = 0) -> int:
    """occurrence.txt + multimedia.txt in GBIF's column layout; 2.5 media per occurrence on average."""
    rng = random.Random(seed)
    occ_cols = ["gbifID", "datasetKey", "basisOfRecord", "scientificName", "taxonRank", "kingdom", "phylum",
                "class", "order", "family", "genus", "species", "eventDate", "license", "rightsHolder", "publisher"]  # fmt: skip
    mm_cols = [
        "gbifID",
        "type",
        "format",
        "identifier",
        "references",
        "created",
        "creator",
        "license",
        "rightsHolder",
    ]
    licences = ["http://creativecommons.org/licenses/by/4.0/legalcode", "CC_BY_NC_4_0", "CC0_1_0", ""]
    n_occ, media = 0, 0
    with open(folder / "occurrence.txt", "w") as occ, open(folder / "multimedia.txt", "w") as mm:
        occ.write("\t".join(occ_cols) + "\n")
        mm.write("\t".join(mm_cols) + "\n")
        while media < n_media:
            key = 4_000_000_000 + n_occ
            genus = f"Genus{n_occ % 5000}"
            occ.write(f"{key}\tds-{n_occ % 40}\tHUMAN_OBSERVATION\t{genus} epithet{n_occ % 7} (Auth, 1900)\tSPECIES\t"
                      f"Animalia\tChordata\tAves\tOrder{n_occ % 30}\tFam{n_occ % 400}\t{genus}\t"
                      f"{genus} epithet{n_occ % 7}\t2023-06-01\t{licences[n_occ % 4]}\tobserver\tiNaturalist.org\n")  # fmt: skip
            for i in range(min(rng.choice((1, 2, 3, 4)), n_media - media)):
                mm.write(f"{key}\tStillImage\timage/jpeg\thttps://img.example.org/{key}/{i}.jpg\t\t2023-06-01\t"
                         f"observer\t{licences[(n_occ + i) % 4]}\tobserver\n")  # fmt: skip
                media += 1
            n_occ += 1
    return n_occ


def bench_dwca_one(n_media: int) -> dict:
    from _common import peak_rss_mb as rss

    from etl.ingest.sources import IngestConfig
    from etl.ingest.stage import run_ingest
    from warehouse.catalog import open_catalog

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "dwca"
        folder.mkdir()
        n_occ = write_synthetic_dwca(folder, n_media)
        size_mb = sum(p.stat().st_size for p in folder.iterdir()) / 2**20
        catalog = open_catalog(Path(tmp) / "home")
        t0 = time.perf_counter()
        summary = run_ingest(catalog, IngestConfig("gbif", path=str(folder)))
        seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        again = run_ingest(catalog, IngestConfig("gbif", path=str(folder)))
        rerun = time.perf_counter() - t0
    return {
        "bench": "ingest_gbif_dwca",
        "occurrences": n_occ,
        "media_rows": n_media,
        "archive_mb": round(size_mb, 1),
        "seconds": round(seconds, 2),
        "media_rows_per_s": round(n_media / seconds),
        "rows_written": summary["n_out"],
        "rerun_seconds": round(rerun, 2),
        "rerun_rows_written": again["n_out"],
        "peak_rss_mb": round(rss()),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pages", type=int, default=100)
    ap.add_argument("--dwca-media", type=int, default=1_000_000)
    ap.add_argument("--skip-dwca", action="store_true")
    ap.add_argument("--one-dwca", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one_dwca:
        print(json.dumps(bench_dwca_one(args.one_dwca)))
        return
    search_parse(args.pages)
    if not args.skip_dwca:
        out = subprocess.run([sys.executable, __file__, "--one-dwca", str(args.dwca_media)], check=True,
                             capture_output=True, text=True)  # fmt: skip
        emit(json.loads(out.stdout.strip().splitlines()[-1]))


if __name__ == "__main__":
    main()
