"""Resolve every record's names to one accepted taxon of a pinned backbone, explaining each decision.

Works on distinct queries (name + the record's own higher ranks), then joins back to records. Order of
attempts, each recorded as `match_type`: exact canonical name (accepted), synonym to its accepted name,
doubtful usage, then the lowest resolvable higher rank (`higherrank`), else `none`. Homonyms are
disambiguated by the record's higher ranks; when they cannot be, the resolver does not guess.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from taxonomy.backbone import backbone_dir, latest_backbone
from taxonomy.names import canonical_name, normalize_kingdom
from warehouse.catalog import Catalog
from warehouse.lake import write_parquet_atomic
from warehouse.schemas import RESOLUTIONS
from warehouse.stage_runs import StageRun

HIGHER = ("phylum", "class", "order", "family")
FALLBACK_RANKS = ("genus", "family", "order", "class", "phylum", "kingdom")
CONFIDENCE = {"exact": 1.0, "synonym": 0.95, "doubtful": 0.8, "higherrank": 0.6, "none": 0.0}


@dataclass(frozen=True)
class Query:
    species: str | None
    name: str | None
    kingdom: str | None
    phylum: str | None
    class_: str | None
    order: str | None
    family: str | None
    genus: str | None

    def given(self, rank: str) -> str | None:
        return getattr(self, "class_" if rank == "class" else rank)


@dataclass(frozen=True)
class Resolution:
    taxon_id: str | None
    match_type: str
    query_name: str | None
    reason: str | None = None
    confidence: float | None = None


class BackboneIndex:
    """Canonical name -> usages, and accepted taxon id -> lineage, for one backbone version."""

    def __init__(self, taxon: pa.Table, taxa: pa.Table) -> None:
        self.usages: dict[str, list[dict]] = defaultdict(list)
        for row in taxon.select(
            [
                "taxonID",
                "canonicalName",
                "scientificName",
                "taxonRank",
                "taxonomicStatus",
                "acceptedNameUsageID",
            ]
        ).to_pylist():
            name = row["canonicalName"] or canonical_name(row["scientificName"])[0]
            if name and row["taxonID"] != "0":
                self.usages[name].append(row)
        self.lineage: dict[str, dict] = {r["taxon_id"]: r for r in taxa.to_pylist()}

    def candidates(self, name: str, rank: str | None = None) -> dict[str, list[str]]:
        """Accepted taxon ids reachable from `name`, grouped by how they were reached."""
        tiers: dict[str, list[str]] = {"exact": [], "synonym": [], "doubtful": []}
        for u in self.usages.get(name, []):
            status = (u["taxonomicStatus"] or "").lower()
            if rank and (u["taxonRank"] or "").lower() != rank:
                continue
            if status == "accepted" and u["taxonID"] in self.lineage:
                tiers["exact"].append(u["taxonID"])
            elif "synonym" in status or status == "misapplied":
                acc = u["acceptedNameUsageID"]
                if acc in self.lineage:
                    tiers["synonym"].append(acc)
            elif status == "doubtful" and u["taxonID"] in self.lineage:
                tiers["doubtful"].append(u["taxonID"])
        return {k: sorted(set(v)) for k, v in tiers.items()}


def _disambiguate(index: BackboneIndex, ids: list[str], q: Query) -> tuple[list[str], str | None]:
    """Narrow homonyms with the record's own kingdom, then phylum ... family."""
    if len(ids) <= 1:
        return ids, None
    kingdom = normalize_kingdom(q.kingdom)
    narrowed = ids
    used = []
    for rank, value in (("kingdom", kingdom), *((r, q.given(r)) for r in HIGHER)):
        if not value:
            continue
        keep = [i for i in narrowed if index.lineage[i].get(rank) == value]
        if keep:
            narrowed, used = keep, [*used, rank]
        if len(narrowed) == 1:
            break
    if len(narrowed) == 1:
        return narrowed, f"homonym resolved by {'+'.join(used)}"
    return narrowed, f"homonym: {len(narrowed)} candidates, higher ranks do not decide"


def _try(index: BackboneIndex, name: str, q: Query, rank: str | None) -> Resolution | None:
    tiers = index.candidates(name, rank)
    for match_type in ("exact", "synonym", "doubtful"):
        ids = tiers[match_type]
        if not ids:
            continue
        chosen, note = _disambiguate(index, ids, q)
        if len(chosen) != 1:
            return Resolution(None, "ambiguous", name, note)
        taxon_id = chosen[0]
        kingdom = normalize_kingdom(q.kingdom)
        reason = note
        confidence = CONFIDENCE[match_type]
        if kingdom and index.lineage[taxon_id].get("kingdom") not in (kingdom, None):
            reason = f"given kingdom {kingdom} contradicts backbone {index.lineage[taxon_id]['kingdom']}"
            confidence *= 0.7
        return Resolution(taxon_id, match_type, name, reason, confidence)
    return None


def resolve_query(index: BackboneIndex, q: Query) -> Resolution:
    ambiguous: Resolution | None = None
    notes: list[str] = []
    for raw in (q.species, q.name):
        name, note = canonical_name(raw)
        if note and note != "empty_name":
            notes.append(f"{raw!r}: {note}")
        if not name:
            continue
        res = _try(index, name, q, None)
        if res and res.match_type != "ambiguous":
            return (
                res
                if not notes
                else Resolution(
                    res.taxon_id,
                    res.match_type,
                    res.query_name,
                    "; ".join(filter(None, [res.reason, *notes])),
                    res.confidence,
                )
            )
        ambiguous = ambiguous or res
        if " " in name and not q.genus:
            q = Query(q.species, q.name, q.kingdom, q.phylum, q.class_, q.order, q.family, name.split(" ")[0])
    for rank in FALLBACK_RANKS:
        value = q.given(rank) if rank != "kingdom" else normalize_kingdom(q.kingdom)
        name = canonical_name(value)[0] if value else None
        if not name:
            continue
        res = _try(index, name, q, rank)
        if res and res.match_type != "ambiguous":
            why = [f"fell back to {rank}"]
            if ambiguous:
                why.append(ambiguous.reason or "")
            return Resolution(
                res.taxon_id,
                "higherrank",
                name,
                "; ".join(filter(None, [*why, *notes])),
                CONFIDENCE["higherrank"],
            )
        ambiguous = ambiguous or res
    if ambiguous:
        return Resolution(None, "none", ambiguous.query_name, ambiguous.reason, 0.0)
    return Resolution(None, "none", q.species or q.name, "; ".join(notes) or "no_match", 0.0)


def load_index(catalog: Catalog, version: str) -> BackboneIndex:
    taxon = pq.read_table(backbone_dir(catalog, version) / "taxon.parquet")
    taxa = catalog.query_arrow("SELECT * FROM taxa WHERE backbone_version = ?", [version])
    return BackboneIndex(taxon, taxa)


def run_resolve(catalog: Catalog, backbone_version: str | None = None) -> dict:
    """Resolve all usable raw records (those without a drop reason) against the backbone."""
    version = backbone_version or latest_backbone(catalog)
    with StageRun(catalog, "resolve", config={"backbone_version": version}) as run:
        records = catalog.query_arrow(
            """SELECT record_id, verbatim_species, verbatim_name, verbatim_kingdom, verbatim_phylum,
                      verbatim_class, verbatim_order, verbatim_family, verbatim_genus
               FROM raw_records WHERE drop_reason IS NULL ORDER BY record_id"""
        ).to_pylist()
        index = load_index(catalog, version)
        cache: dict[Query, Resolution] = {}
        out: dict[str, list] = {f.name: [] for f in RESOLUTIONS}
        counts: Counter = Counter()
        for r in records:
            q = Query(
                r["verbatim_species"],
                r["verbatim_name"],
                r["verbatim_kingdom"],
                r["verbatim_phylum"],
                r["verbatim_class"],
                r["verbatim_order"],
                r["verbatim_family"],
                r["verbatim_genus"],
            )
            res = cache.get(q)
            if res is None:
                res = cache[q] = resolve_query(index, q)
            counts[res.match_type] += 1
            for k, v in (
                ("record_id", r["record_id"]),
                ("taxon_id", res.taxon_id),
                ("match_type", res.match_type),
                ("confidence", res.confidence),
                ("query_name", res.query_name),
                ("reason", res.reason),
                ("backbone_version", version),
                ("run_id", run.run_id),
            ):
                out[k].append(v)
            if res.taxon_id is None:
                run.drop("unresolved")
        table = pa.Table.from_pydict(out, schema=RESOLUTIONS)
        write_parquet_atomic(table, catalog.lake / "resolved" / f"run={run.run_id}" / "part-00000.parquet")
        run.n_in, run.n_out = len(records), len(records) - counts["none"]
        run.details = {"match_type": dict(counts), "distinct_queries": len(cache)}
    return run.summary()


def resolve_names(catalog: Catalog, names: list[dict], backbone_version: str | None = None) -> list[dict]:
    """Resolve plain name rows (`scientific_name` plus optional rank columns) for `tol taxonomy resolve-names`."""
    version = backbone_version or latest_backbone(catalog)
    index = load_index(catalog, version)
    out = []
    for row in names:
        q = Query(
            None,
            row.get("scientific_name"),
            row.get("kingdom"),
            row.get("phylum"),
            row.get("class"),
            row.get("order"),
            row.get("family"),
            row.get("genus"),
        )
        res = resolve_query(index, q)
        lin = index.lineage.get(res.taxon_id or "", {})
        out.append(
            {
                **row,
                **{
                    r: lin.get(r)
                    for r in ("kingdom", "phylum", "class", "order", "family", "genus", "species")
                },
                "accepted_name": lin.get("scientific_name"),
                "common_name": lin.get("common_name"),
                "match_type": res.match_type,
                "confidence": res.confidence,
                "reason": res.reason,
            }
        )
    return out
