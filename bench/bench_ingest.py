"""Ingest: GBIF search-page records parsed into contract rows per second (no network: parse + Arrow build)."""

from __future__ import annotations

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import emit, peak_rss_mb, timer

from etl.records import make_rows
from etl.sources.gbif import occurrence_rows


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


def main(pages: int = 100) -> None:
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


if __name__ == "__main__":
    main()
