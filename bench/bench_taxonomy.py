"""Taxonomy resolution at scale: a synthetic GBIF-shaped backbone of >= 1 M taxa and 1 M input names.

Inputs are drawn with repetition (a Zipf-like law, as records repeat names): exact names, a share with
authorship (these go through gnparser), synonyms, one-edit misspellings of the epithet, and unknown names.
Reports backbone load seconds, index build seconds, names per second end to end (index build included),
distinct names per second, match types and peak RSS.

Usage: bench_taxonomy.py [--taxa 1000000] [--names 1000000]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import emit, peak_rss_mb

SYLLABLES = [a + b for a in "bcdfghlmnprstvz" for b in ("a", "e", "i", "o", "u", "ae", "io")]
COLS = ["taxonID", "scientificName", "canonicalName", "taxonRank", "taxonomicStatus", "acceptedNameUsageID"]
COLS += ["kingdom", "phylum", "class", "order", "family", "genus", "specificEpithet"]


def _word(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(n))


def write_backbone(folder: Path, n_taxa: int, seed: int = 0) -> dict:
    """~9% genera, ~80% accepted species, ~11% synonyms, spread over families, orders, classes, phyla."""
    rng = random.Random(seed)
    kingdoms = ["Animalia", "Plantae", "Fungi"]
    n_genera = n_taxa // 11
    genera = []
    seen = set()
    rows = []
    for g in range(n_genera):
        name = _word(rng, 3).capitalize()
        while name in seen:
            name = _word(rng, 3).capitalize()
        seen.add(name)
        k = kingdoms[g % 3]
        lineage = (k, f"Phy{g % 40}", f"Cla{g % 300}", f"Ord{g % 2000}", f"Fam{g % 15000}ae")
        genera.append((name, lineage))
        rows.append((f"g{g}", name, name, "genus", "accepted", "", *lineage, name, ""))
    species = []
    sid = 0
    while len(rows) < n_taxa * 0.89:
        genus, lineage = genera[rng.randrange(n_genera)]
        epithet = _word(rng, rng.randint(3, 4))
        name = f"{genus} {epithet}"
        rows.append(
            (f"s{sid}", f"{name} Auct., 1900", name, "species", "accepted", "", *lineage, genus, epithet)
        )
        species.append((f"s{sid}", name))
        sid += 1
    synonyms = []
    while len(rows) < n_taxa:
        acc_id, acc = species[rng.randrange(len(species))]
        genus, lineage = genera[rng.randrange(n_genera)]
        name = f"{genus} {acc.split(' ')[1]}{rng.choice('aeiou')}"
        rows.append((f"y{sid}", name, name, "species", "synonym", acc_id, *lineage, "", ""))
        synonyms.append(name)
        sid += 1
    with open(folder / "Taxon.tsv", "w", encoding="utf-8") as fh:
        fh.write("\t".join(COLS) + "\n")
        fh.writelines("\t".join(r) + "\n" for r in rows)
    (folder / "VernacularName.tsv").write_text("taxonID\tvernacularName\tlanguage\n", encoding="utf-8")
    return {"species": [n for _, n in species], "synonyms": synonyms, "taxa": len(rows)}


def make_names(world: dict, n: int, seed: int = 1) -> tuple[list[dict], Counter]:
    rng = random.Random(seed)
    species, synonyms = world["species"], world["synonyms"]
    kinds = Counter()
    out = []
    for _ in range(n):
        r = rng.random()
        # Zipf-like: a few names are very common, most are rare (paretovariate tail).
        pick = species[min(len(species) - 1, int(rng.paretovariate(0.7)) * 7919 % len(species))]
        if r < 0.45:
            kind, name = "exact", pick
        elif r < 0.60:
            kind, name = (
                "with_authorship",
                f"{pick} ({rng.choice(['Linnaeus', 'Smith', 'Walker'])}, 18{rng.randint(10, 99)})",
            )
        elif r < 0.75:
            kind, name = "synonym", synonyms[rng.randrange(len(synonyms))]
        elif r < 0.90:
            genus, epithet = pick.split(" ")
            i = rng.randrange(1, len(epithet))
            kind, name = "misspelt", f"{genus} {epithet[:i]}{rng.choice('xyqw')}{epithet[i:]}"
        else:
            kind, name = "unknown", f"{_word(rng, 3).capitalize()}x {_word(rng, 3)}"
        kinds[kind] += 1
        out.append({"scientific_name": name})
    return out, kinds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--taxa", type=int, default=1_000_000)
    ap.add_argument("--names", type=int, default=1_000_000)
    args = ap.parse_args()
    from taxonomy.backbone import load_backbone
    from taxonomy.resolve import resolve_names
    from warehouse.catalog import open_catalog

    out: dict = {"bench": "taxonomy_resolve"}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "backbone"
        folder.mkdir()
        world = write_backbone(folder, args.taxa)
        names, kinds = make_names(world, args.names)
        cat = open_catalog(Path(tmp) / "home")
        t0 = time.perf_counter()
        version = load_backbone(cat, folder)
        out.update(taxa=world["taxa"], backbone_load_seconds=round(time.perf_counter() - t0, 2))
        t0 = time.perf_counter()
        resolved = resolve_names(cat, names, version, timings=out)
        seconds = time.perf_counter() - t0
    out.update(
        input_names=len(names),
        distinct_names=len({n["scientific_name"] for n in names}),
        input_kinds=dict(kinds),
        seconds=round(seconds, 2),
        names_per_second=round(len(names) / seconds),
        match_types=dict(Counter(r["match_type"] for r in resolved)),
        peak_rss_mb=round(peak_rss_mb()),
    )
    out["distinct_per_second"] = round(out["distinct_names"] / seconds)
    emit(out)


if __name__ == "__main__":
    main()
