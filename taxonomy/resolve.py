"""Resolve every record's names to one accepted taxon of a pinned backbone, explaining each decision.

Works on distinct queries (name + the record's own higher ranks), then joins back to records. Order of
attempts, each recorded as `match_type`: exact canonical name (accepted), synonym to its accepted name,
doubtful usage, then the lowest resolvable higher rank (`higherrank`), else `none`. Homonyms are
disambiguated by the record's higher ranks; when they cannot be, the resolver does not guess.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq
from rapidfuzz import process as rf_process
from rapidfuzz.distance import Levenshtein

from taxonomy.backbone import backbone_dir, latest_backbone
from taxonomy.names import INCERTAE_SEDIS, canonical_name, normalize_kingdom, parse_name
from warehouse.catalog import Catalog
from warehouse.contracts import HIGHER_RANKS, RANKS
from warehouse.schemas import RESOLUTIONS
from warehouse.stage_runs import StageRun, succeeded_runs

HIGHER = ("phylum", "class", "order", "family")
FALLBACK_RANKS = ("genus", "family", "order", "class", "phylum", "kingdom")
CONFIDENCE = {"exact": 1.0, "synonym": 0.95, "fuzzy": 0.9, "doubtful": 0.8, "higherrank": 0.6, "none": 0.0}
TIERS = ("exact", "synonym", "doubtful")
# Not an answer: resolution goes on with the record's higher ranks, and the reason is kept for the record.
NOT_FINAL = frozenset({"ambiguous", "kingdom_conflict"})


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
        if rank == "kingdom":
            return normalize_kingdom(self.kingdom)
        value = getattr(self, "class_" if rank == "class" else rank)
        return value.strip() or None if value else None


@dataclass(frozen=True)
class Resolution:
    taxon_id: str | None
    match_type: str
    query_name: str | None
    reason: str | None = None
    confidence: float | None = None


def _max_edits(word: str) -> int:
    """Edits a misspelling may have: none for short words (too many neighbours), 1 from 5 letters, 2 from 8."""
    return 2 if len(word) >= 8 else 1 if len(word) >= 5 else 0


class Usage(NamedTuple):
    taxon_id: str
    canonical: str
    rank: str
    status: str
    accepted_id: str | None


class Lineages(Mapping):
    """Accepted taxon id -> lineage row (a dict), built on access from column lists: a 1 M-taxon backbone
    costs one list per column instead of a million dicts up front."""

    def __init__(self, taxa: pa.Table) -> None:
        self._cols = {name: taxa[name].to_pylist() for name in taxa.column_names}
        self._pos = {tid: i for i, tid in enumerate(self._cols["taxon_id"])}

    def __getitem__(self, taxon_id: str) -> dict:
        i = self._pos[taxon_id]
        return {name: col[i] for name, col in self._cols.items()}

    def __contains__(self, taxon_id: object) -> bool:
        return taxon_id in self._pos

    def __iter__(self) -> Iterator[str]:
        return iter(self._pos)

    def __len__(self) -> int:
        return len(self._pos)

    def column(self, name: str) -> list:
        return self._cols[name]


class BackboneIndex:
    """Canonical name -> usages, accepted taxon id -> lineage, and the lookups fuzzy matching needs."""

    def __init__(self, taxon: pa.Table, taxa: pa.Table) -> None:
        self.usages: dict[str, list[Usage]] = defaultdict(list)
        self.epithets: dict[str, list[str]] = defaultdict(list)  # genus -> epithets of its species usages
        self.by_epithet: dict[str, list[str]] = defaultdict(list)  # epithet -> genera that have it
        columns = [
            taxon[c].to_pylist()
            for c in ("taxonID", "canonicalName", "scientificName", "taxonRank", "taxonomicStatus")
        ]
        accepted = (
            taxon["acceptedNameUsageID"].to_pylist()
            if "acceptedNameUsageID" in taxon.column_names
            else [None] * taxon.num_rows
        )
        for tid, canonical, scientific, rank, status, acc in zip(*columns, accepted, strict=True):
            name = canonical or canonical_name(scientific)[0]
            if not name or tid == "0":
                continue
            rank, status = (rank or "").lower(), (status or "").lower()
            self.usages[name].append(Usage(tid, name, rank, status, acc))
            if rank == "species" and " " in name:
                genus, epithet = name.split(" ", 1)
                self.epithets[genus].append(epithet)
                self.by_epithet[epithet].append(genus)
        self.lineage = Lineages(taxa)
        self.genera: dict[str, list[str]] = defaultdict(list)  # family -> accepted genera
        for rank, family, genus in zip(
            *(self.lineage.column(c) for c in ("taxon_rank", "family", "genus")), strict=True
        ):
            if rank == "genus" and family:
                self.genera[family].append(genus)

    def candidates(self, name: str, rank: str | None = None) -> list[tuple[str, str]]:
        """(tier, accepted taxon id) pairs reachable from `name`, optionally only from usages at `rank`."""
        out = set()
        for u in self.usages.get(name, ()):
            if rank and u.rank != rank:
                continue
            if u.status == "accepted" and u.taxon_id in self.lineage:
                out.add(("exact", u.taxon_id))
            elif "synonym" in u.status or u.status == "misapplied":
                if u.accepted_id in self.lineage:
                    out.add(("synonym", u.accepted_id))
            elif u.status in ("doubtful", "provisionally accepted") and u.taxon_id in self.lineage:
                out.add(("doubtful", u.taxon_id))
        return sorted(out)

    def accepted_at(self, rank: str, name: str, kingdom: str | None) -> str | None:
        ids = [i for t, i in self.candidates(name, rank) if t == "exact"]
        ids = [i for i in ids if kingdom is None or self.lineage[i]["kingdom"] == kingdom]
        return ids[0] if len(ids) == 1 else None


def _narrow(index: BackboneIndex, ids: list[str], q: Query) -> tuple[list[str], list[str]]:
    """Keep the candidates that agree with the record's own kingdom, then phylum ... family."""
    used = []
    for rank in ("kingdom", *HIGHER):
        value = q.given(rank)
        if not value or len(set(ids)) <= 1:
            continue
        keep = [i for i in ids if index.lineage[i].get(rank) == value]
        if keep and len(keep) < len(ids):
            ids, used = keep, [*used, rank]
    return ids, used


def _lowest_common(index: BackboneIndex, ids: list[str]) -> tuple[str, str] | None:
    """(rank, name) of the lowest rank on which every candidate's lineage agrees, from the kingdom down (so
    two homonymous genera never agree on `genus` just by sharing the name)."""
    for depth in range(len(HIGHER_RANKS), 0, -1):
        paths = {tuple(index.lineage[i].get(r) for r in HIGHER_RANKS[:depth]) for i in ids}
        if len(paths) == 1 and (path := paths.pop())[-1] is not None:
            return HIGHER_RANKS[depth - 1], path[-1]
    return None


def _try(index: BackboneIndex, name: str, q: Query, rank: str | None) -> Resolution | None:
    """Exact, synonym or doubtful match of one name; homonyms narrowed by the record's ranks, never guessed."""
    found = index.candidates(name, rank)
    if not found:
        return None
    narrowed, used = _narrow(index, [i for _, i in found], q)
    found = [(t, i) for t, i in found if i in narrowed]
    kingdoms = {index.lineage[i]["kingdom"] for _, i in found}
    best = next(t for t in TIERS if any(tier == t for tier, _ in found))
    ids = sorted({i for t, i in found if t == best})
    if len(kingdoms) > 1 or len(ids) > 1:
        ids = sorted({i for _, i in found})
        common = _lowest_common(index, ids)
        why = f"homonym: {len(ids)} candidates for {name!r}, the record's ranks do not decide"
        if common is None:
            return Resolution(None, "ambiguous", name, why)
        taxon = index.accepted_at(common[0], common[1], index.lineage[ids[0]]["kingdom"])
        if taxon is None:
            return Resolution(None, "ambiguous", name, why)
        return Resolution(taxon, "higherrank", common[1], f"{why}; lowest common rank {common[0]}", 0.5)
    taxon_id = ids[0]
    reason = f"homonym resolved by {'+'.join(used)}" if used else None
    confidence = CONFIDENCE[best]
    kingdom = q.given("kingdom")
    if kingdom and index.lineage[taxon_id].get("kingdom") not in (kingdom, None):
        # A plant record must not be labelled with an insect's lineage: like GBIF's matcher, go on with the
        # record's own ranks (the binomial's genus first) within its kingdom.
        theirs = index.lineage[taxon_id]["kingdom"]
        why = f"given kingdom {kingdom} contradicts backbone {theirs} for {name!r}"
        return Resolution(None, "kingdom_conflict", name, "; ".join(filter(None, [reason, why])))
    return Resolution(taxon_id, best, name, reason, confidence)


def _fuzzy(index: BackboneIndex, name: str, q: Query) -> Resolution | None:
    """A misspelt epithet within its genus, or a misspelt genus: within the record's family when it has
    one, else among the genera that have the binomial's epithet (GBIF matches such names too). Unique best
    only; a tie is answered with the reason, not a guess."""
    genus, _, epithet = name.partition(" ")
    tries = []
    if epithet and genus in index.epithets:
        tries = [(genus, e, d) for e, d in _closest(epithet, index.epithets[genus])]
    elif genus not in index.usages:
        family = q.given("family")
        if family:
            choices = index.genera.get(family, [])
        else:
            choices = sorted(set(index.by_epithet.get(epithet, []))) if epithet else []
        tries = [(g, epithet, d) for g, d in _closest(genus, choices)]
    if not tries:
        return None
    if len(tries) > 1:
        options = ", ".join(f"{g} {e}".strip() for g, e, _ in tries[:5])
        return Resolution(None, "ambiguous", name, f"fuzzy: {name!r} is as close to each of {options}")
    g, e, distance = tries[0]
    fixed = f"{g} {e}".strip()
    res = _try(index, fixed, q, None)
    if res is None or res.taxon_id is None or res.match_type == "higherrank":
        return res if res is not None and res.match_type in NOT_FINAL else None
    why = f"fuzzy: {name!r} -> {fixed!r} (edit distance {distance})"
    if res.match_type != "exact":
        why += f", then {res.match_type}"
    reason = "; ".join(filter(None, [why, res.reason]))
    confidence = round(CONFIDENCE["fuzzy"] * (res.confidence or 1.0) - 0.05 * (distance - 1), 3)
    return Resolution(res.taxon_id, "fuzzy", fixed, reason, confidence)


def _closest(word: str, choices: list[str]) -> list[tuple[str, int]]:
    """The choices at the smallest edit distance (within `_max_edits`), all of them when tied."""
    limit = _max_edits(word)
    if not limit or not choices:
        return []
    hits = rf_process.extract(word, choices, scorer=Levenshtein.distance, score_cutoff=limit, limit=None)
    if not hits:
        return []
    best = min(d for _, d, _ in hits)
    return sorted({(c, int(d)) for c, d, _ in hits if d == best})


def resolve_query(index: BackboneIndex, q: Query) -> Resolution:
    ambiguous: Resolution | None = None
    notes: list[str] = []
    for raw in (q.species, q.name):
        parsed = parse_name(raw)
        if parsed.note and parsed.note != "empty_name":
            notes.append(f"{raw!r}: {parsed.note}")
        name = parsed.canonical
        if not name:
            continue
        res = _try(index, name, q, None)
        if res is None and " " in name:
            res = _fuzzy(index, name, q)
        if res and parsed.partial and res.match_type in TIERS:
            # The name had an epithet we could not read: what matched is its genus, a higher rank.
            conf = min(CONFIDENCE["higherrank"], res.confidence or 0)
            res = Resolution(res.taxon_id, "higherrank", res.query_name, res.reason, conf)
        if res and res.match_type not in NOT_FINAL:
            return _with_notes(res, notes)
        ambiguous = ambiguous or res
        if " " in name and not q.genus:
            q = Query(q.species, q.name, q.kingdom, q.phylum, q.class_, q.order, q.family, name.split(" ")[0])
    for rank in FALLBACK_RANKS:
        value = q.given(rank)
        name = canonical_name(value)[0] if value else None
        if not name:
            continue
        res = _try(index, name, q, rank) or (_fuzzy(index, name, q) if rank == "genus" else None)
        if res and res.match_type not in NOT_FINAL:
            why = [f"fell back to {rank}"]
            if ambiguous:
                why.append(ambiguous.reason or "")
            conf = min(CONFIDENCE["higherrank"], res.confidence or 0)
            return Resolution(
                res.taxon_id, "higherrank", res.query_name, "; ".join(filter(None, [*why, *notes])), conf
            )
        ambiguous = ambiguous or res
    if ambiguous:
        return Resolution(
            None, "none", ambiguous.query_name, "; ".join(filter(None, [ambiguous.reason, *notes])), 0.0
        )
    empty = all(parse_name(raw).note == "empty_name" for raw in (q.species, q.name))
    return Resolution(
        None, "none", q.species or q.name, "; ".join(notes) or ("empty_name" if empty else "no_match"), 0.0
    )


def _with_notes(res: Resolution, notes: list[str]) -> Resolution:
    if not notes:
        return res
    reason = "; ".join(filter(None, [res.reason, *notes]))
    return Resolution(res.taxon_id, res.match_type, res.query_name, reason, res.confidence)


NAME_MATCHES = ("exact", "synonym", "fuzzy", "doubtful")


def resolve_prioritised(indexes: list[tuple[str, BackboneIndex]], q: Query) -> tuple[str, Resolution]:
    """(backbone version, resolution): the first backbone, in priority order, that matches the name itself;
    else the first that resolves a higher rank; else the first backbone's answer (the paper's order was the
    GBIF backbone, then Catalogue of Life, then Open Tree of Life)."""
    answers = []
    for k, (version, index) in enumerate(indexes):
        res = resolve_query(index, q)
        if res.match_type in NAME_MATCHES:
            if k:
                res = _with_notes(res, [f"from backbone {version} (priority {k + 1})"])
            return version, res
        answers.append((version, res))
    return next((a for a in answers if a[1].taxon_id), answers[0])


def _versions(catalog: Catalog, backbone_version: str | Sequence[str] | None) -> list[str]:
    if backbone_version is None:
        return [latest_backbone(catalog)]
    return [backbone_version] if isinstance(backbone_version, str) else list(backbone_version)


def load_index(catalog: Catalog, version: str) -> BackboneIndex:
    taxon = pq.read_table(backbone_dir(catalog, version) / "taxon.parquet")
    taxa = catalog.query_arrow("SELECT * FROM taxa WHERE backbone_version = ?", [version])
    return BackboneIndex(taxon, taxa)


QUERY_COLUMNS = (
    "verbatim_species",
    "verbatim_name",
    "verbatim_kingdom",
    "verbatim_phylum",
    "verbatim_class",
    "verbatim_order",
    "verbatim_family",
    "verbatim_genus",
)


# Bump when a change to the resolver would answer a stored query differently: runs of another resolver
# version are not reused by an incremental run.
RESOLVER_VERSION = 1

USABLE = "SELECT * FROM raw_records WHERE drop_reason IS NULL"


def _base_run(catalog: Catalog, config: dict) -> tuple[str, list[str]] | None:
    """The latest succeeded resolve run of the same configuration, and its chain (itself, then the runs it
    carried answers from): what an incremental run reuses."""
    for run in succeeded_runs(catalog, "resolve"):
        if run.config == config:
            return run.run_id, run.chain
    return None


def run_resolve(
    catalog: Catalog, backbone_version: str | Sequence[str] | None = None, *, full: bool = False
) -> dict:
    """Resolve all usable raw records (those without a drop reason) against one backbone, or several in
    priority order (default: the latest loaded).

    Incremental unless `full`: when a succeeded run of the same configuration (backbones as loaded, resolver
    version) exists, only records it did not answer, or whose payload changed since, are resolved, and
    records dropped since get a row without a taxon; the rest is carried from that run. The run's part holds
    only what it wrote; `resolutions_as_of(run)` is everything it stands for (its chain of runs, the newest
    answer per record). Its counts (n_in, n_out, drops, match types) are of that whole set; `details`
    says how many were resolved now and how many carried.

    Set-wise: each distinct query (name and the record's own ranks) is resolved once in Python; DuckDB joins
    the answers back to the records and writes the run's part, so memory follows the distinct queries (a few
    per species), not the records."""
    versions = _versions(catalog, backbone_version)
    with catalog.connect() as con:
        loaded = dict(
            con.execute(
                "SELECT backbone_version, CAST(loaded_at AS VARCHAR) FROM backbones"
                " WHERE list_contains(?, backbone_version)",
                [versions],
            ).fetchall()
        )
    config = {"backbone_versions": versions, "backbones_loaded": loaded, "resolver": RESOLVER_VERSION}
    base = None if full else _base_run(catalog, config)
    with StageRun(catalog, "resolve", config=config) as run:
        chain = [run.run_id, *(base[1] if base else [])]
        if base is None:
            todo, carried_sql = USABLE, None
        else:
            b = base[0].replace("'", "''")
            todo = f"""SELECT r.* FROM ({USABLE}) r LEFT JOIN resolutions_as_of('{b}') s USING (record_id)
                       WHERE s.record_id IS NULL OR s.payload_hash IS DISTINCT FROM r.payload_hash"""
            carried_sql = f"""SELECT s.* FROM ({USABLE}) r JOIN resolutions_as_of('{b}') s USING (record_id)
                              WHERE s.payload_hash IS NOT DISTINCT FROM r.payload_hash"""
        cols = ", ".join(QUERY_COLUMNS)
        queries = catalog.query_arrow(f"SELECT {cols}, count(*) AS n FROM ({todo}) GROUP BY ALL").to_pylist()
        indexes = [(v, load_index(catalog, v)) for v in versions]
        answers: dict[str, list] = {c: [] for c in (*QUERY_COLUMNS, *ANSWER.names)}
        counts: Counter = Counter()
        flags: Counter = Counter()
        by_backbone: Counter = Counter()
        unresolved = 0
        for row in queries:
            q = Query(*(row[c] for c in QUERY_COLUMNS))
            version, res = resolve_prioritised(indexes, q)
            n = row["n"]
            counts[res.match_type] += n
            by_backbone[version] += n
            unresolved += n if res.taxon_id is None else 0
            if (q.kingdom or "").strip().lower() == INCERTAE_SEDIS:
                flags["kingdom_incertae_sedis"] += n
            if res.reason and "contradicts" in res.reason:
                flags["kingdom_contradicted"] += n
            if res.reason and "homonym" in res.reason:
                flags["homonym"] += n
            for c in QUERY_COLUMNS:
                answers[c].append(row[c])
            for k, v in (
                ("taxon_id", res.taxon_id),
                ("match_type", res.match_type),
                ("confidence", res.confidence),
                ("query_name", res.query_name),
                ("reason", res.reason),
                ("backbone_version", version),
            ):
                answers[k].append(v)
        resolved_now = sum(counts.values())
        schema = pa.schema([pa.field(c, pa.string()) for c in QUERY_COLUMNS] + list(ANSWER))
        same_query = " AND ".join(f"r.{c} IS NOT DISTINCT FROM a.{c}" for c in QUERY_COLUMNS)
        written = f"""SELECT r.record_id, r.payload_hash, a.* EXCLUDE ({cols}), '{run.run_id}' AS run_id
                      FROM ({todo}) r JOIN answers a ON {same_query}"""
        if base is not None:  # answered before, unusable now: a row without a taxon stops the carry
            written += f"""
                UNION ALL
                SELECT s.record_id, NULL AS payload_hash, NULL AS taxon_id, 'none' AS match_type,
                       0.0 AS confidence, NULL AS query_name,
                       'record dropped at ingest since ' || s.run_id AS reason, NULL AS backbone_version,
                       '{run.run_id}' AS run_id
                FROM resolutions_as_of('{b}') s ANTI JOIN ({USABLE}) r USING (record_id)
                WHERE s.taxon_id IS NOT NULL OR s.reason NOT LIKE 'record dropped at ingest since %'"""
        n_written = catalog.write_part_from_query(
            "resolutions_history",
            written,
            partition={"run": run.run_id},
            part="part-00000",
            tables={"answers": pa.Table.from_pydict(answers, schema=schema)},
        )
        carried: Counter = Counter()
        if carried_sql is not None:
            with catalog.connect(read_only=True) as con:
                for match_type, bb, n, no_taxon in con.execute(
                    f"""SELECT match_type, backbone_version, count(*), count(*) FILTER (WHERE taxon_id IS NULL)
                        FROM ({carried_sql}) GROUP BY ALL"""
                ).fetchall():
                    carried[match_type] += n
                    by_backbone[bb] += n
                    unresolved += no_taxon
        counts += carried
        if unresolved:
            run.drop("unresolved", unresolved)
        run.n_in = sum(counts.values())
        run.n_out = run.n_in - counts["none"]
        distinct = {Query(*(r[c] for c in QUERY_COLUMNS)) for r in queries}
        parsers = Counter(parse_name(n).parser for q in distinct for n in (q.species, q.name) if n)
        run.details = {
            "chain": chain,
            "base_run": base[0] if base else None,
            "resolved_now": resolved_now,
            "carried": sum(carried.values()),
            "rows_written": n_written,
            "match_type": dict(counts),
            "distinct_queries": len(distinct),
            "flags": dict(flags),
            "names_parsed_by": dict(parsers),
            "backbone": dict(by_backbone),
        }
    return run.summary()


# A resolution without its record: what each distinct query gets (RESOLUTIONS less the record's columns).
ANSWER = pa.schema([f for f in RESOLUTIONS if f.name not in ("record_id", "payload_hash", "run_id")])


def resolve_names(
    catalog: Catalog,
    names: list[dict],
    backbone_version: str | Sequence[str] | None = None,
    timings: dict | None = None,
) -> list[dict]:
    """Resolve plain name rows (`scientific_name` plus optional rank columns) for `tol taxonomy resolve-names`.

    Each distinct (name, ranks) is resolved once. `timings`, when given, receives the index build seconds.
    """
    t0 = time.perf_counter()
    indexes = [(v, load_index(catalog, v)) for v in _versions(catalog, backbone_version)]
    by_version = dict(indexes)
    if timings is not None:
        timings["index_seconds"] = round(time.perf_counter() - t0, 2)
    cache: dict[Query, dict] = {}
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
        result = cache.get(q)
        if result is None:
            version, res = resolve_prioritised(indexes, q)
            lin = by_version[version].lineage.get(res.taxon_id or "", {})
            result = cache[q] = {
                **{r: lin.get(r) for r in RANKS},
                "accepted_name": lin.get("scientific_name"),
                "common_name": lin.get("common_name"),
                "match_type": res.match_type,
                "confidence": res.confidence,
                "reason": res.reason,
                "backbone_version": version,
            }
        out.append({**row, **result})
    return out
