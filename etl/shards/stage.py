"""Shard stage: a named, immutable dataset version as WebDataset tar shards with a sidecar Parquet each.

Samples are kept, resolved images of the latest dedup run. Train/validation are split by occurrence (never
the same occurrence on both sides), order is a seeded hash shuffle, members follow the paper's layout
(`jpg`, `json`, `sci.txt`, `com.txt`, `taxon.txt`, `sci_com.txt`, `taxon_com.txt`, `taxonTag.txt`, ...).

Set-wise, references in and small rows out: DuckDB selects the samples and computes their split and order
(no image bytes), the driver streams that sorted selection once to cut it into shards and writes the plan
(one Parquet file, sorted by shard); each work unit is one shard's row range of the plan. Its worker reads
those rows, reads exactly their JPEGs from the image lake's blobs, and writes the tar and its sidecar; it
returns one small row. The driver holds one summary per shard, never a sample.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from etl.executors import LOCAL, Executor, ExecutorConfig, Unit
from etl.filter.rules import FilterRule
from etl.shards.card import render_card
from taxonomy.captions import captions
from warehouse.catalog import Catalog, check_expression, duckdb_config, fetch_first
from warehouse.contracts import CAPTION_TYPES, RANKS, SHARD_TEXT_MEMBERS, check_name
from warehouse.lake import read_image_blobs, read_rows, remove_tree, write_bytes_atomic, write_parquet_atomic
from warehouse.locks import is_held, train_lock
from warehouse.schemas import BUILD_PLAN
from warehouse.stage_runs import CODE_VERSION, StageRun
from warehouse.versions import BUILDS, link_version
from warehouse.writers import DatasetVersionRecord, replace_version

log = logging.getLogger("tol.shard")


SIDECAR = pa.schema(
    [
        ("key", pa.string()),
        ("record_id", pa.string()),
        ("taxon_id", pa.string()),
        ("jpg_offset", pa.int64()),
        ("jpg_size", pa.int64()),
        ("sample_bytes", pa.int64()),
    ]
)


@dataclass(frozen=True)
class ShardConfig:
    version: str = field(metadata={"help": "the new version's name", "name": "version"})
    where: str | None = field(
        default=None, metadata={"help": "SQL filter over lineage/record columns, e.g. kingdom = 'Animalia'"}
    )
    samples_per_shard: int = field(default=10_000, metadata={"help": "samples per tar shard"})
    max_shard_bytes: int = field(default=1 << 30, metadata={"help": "a shard closes at this size"})
    image_size: int | None = field(
        default=None, metadata={"help": "squash-resize images to this size (default: as fetched)"}
    )
    val_fraction: float = field(default=0.05, metadata={"help": "share of samples in the val split"})
    seed: int = field(default=0, metadata={"help": "seed of the split and of the sample order"})
    txt_caption: str = field(  # for loaders that read one text
        default="taxon_com",
        metadata={"help": "caption type also written as plain `txt`", "choices": CAPTION_TYPES},
    )
    # Thresholds on filter scores (etl/filter): a sample any rule matches is left out, and counted.
    filters: tuple[FilterRule, ...] = field(
        default=(),
        metadata={
            "help": "leave out samples by a filter score: SCORER>X, SCORER<X or SCORER=LABEL[,LABEL] "
            "(repeatable), e.g. 'burst>15' 'faces>0' 'museum_category=label,drawer'",
            "flag": "--filter",
            "metavar": "RULE",
            "type": FilterRule.parse,
        },
    )
    overwrite: bool = field(default=False, metadata={"help": "replace an existing version of this name"})

    def __post_init__(self) -> None:
        check_name("version", self.version)
        rules = tuple(r if isinstance(r, FilterRule) else FilterRule(**r) for r in self.filters)
        object.__setattr__(self, "filters", rules)
        scorers = [r.scorer for r in rules]
        if len(set(scorers)) != len(scorers):
            raise ValueError(f"one filter rule per scorer: {', '.join(scorers)} (merge the conditions)")
        if self.where is not None and not self.where.strip():
            raise ValueError("--where is empty: leave it out to select every kept sample")
        if self.where is not None:
            check_expression(self.where, "--where")
        if self.txt_caption not in CAPTION_TYPES:
            raise ValueError(f"txt_caption must be one of {CAPTION_TYPES}")
        if self.samples_per_shard < 1 or not 0 <= self.val_fraction < 1:
            raise ValueError("samples_per_shard must be >= 1 and val_fraction in [0, 1)")


def _bucket(value: str, seed: int) -> float:
    """The split/order hash, in Python: what `_hash_sql` computes in SQL (kept for tests and readers)."""
    h = hashlib.sha1(f"{seed}:{value}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def _hash_sql(column: str, seed: int) -> str:
    """The first 8 bytes of sha1('<seed>:<value>') as UBIGINT: `_bucket` * 2**64, computed by DuckDB."""
    return f"('0x' || substr(sha1('{int(seed)}:' || {column}), 1, 16))::UBIGINT"


def _filtered_by_sql(rules: tuple[FilterRule, ...], scores: str) -> str:
    """Per record, the scorers whose rule removes it, in the rules' order (empty list: kept), judged on
    `scores` (the pinned filter run's, `filter_scores_as_of(?)`)."""
    order = " ".join(f"WHEN '{r.scorer}' THEN {i}" for i, r in enumerate(rules))
    return f"""SELECT record_id, list(scorer ORDER BY CASE scorer {order} END) AS filtered_by
               FROM {scores} WHERE {" OR ".join(r.sql() for r in rules)} GROUP BY record_id"""


class VersionInUseError(RuntimeError):
    """`--overwrite` of a version that a live training run is reading."""


def refuse_if_training(catalog: Catalog, version: str) -> None:
    """Refuse to overwrite `version` while a training run reads it: its lock is held (a killed run's is not,
    so a stale `running` row does not block)."""
    with catalog.connect() as con:
        rows = con.execute(
            "SELECT run_id FROM training_runs WHERE version = ? AND status = 'running'", [version]
        ).fetchall()
    live = [r for (r,) in rows if is_held(catalog.home, train_lock(r))]
    if live:
        raise VersionInUseError(
            f"version {version!r} is being trained on by run(s) {', '.join(live)}: overwriting it would "
            "change its shards under them; wait for them to end (or stop them), or build another version"
        )


def _selection_sql(cfg: ShardConfig, takedowns: bool = False) -> str:
    """The kept samples of the dedup run (param 1: the decisions it stands for), named by the resolve run
    (param 2: the answers it stands for, not whatever is latest now), with their split, order and image location, sorted as they will be sharded. `image_type`
    is the filter stage's label (NULL before any filter run); `filtered_by` the scorers whose rule of the
    version removes the sample (empty when none does): those rows are counted, then left out."""
    where = f"AND ({cfg.where})" if cfg.where else ""
    # With rules, every score read is the pinned filter run's (params 3 and 4); without, the current labels.
    scores = "filter_scores_as_of(?)" if cfg.filters else "filter_scores"
    filtered_col = ", coalesce(fb.filtered_by, []::VARCHAR[]) AS filtered_by" if cfg.filters else ""
    filtered_join = (
        f"LEFT JOIN ({_filtered_by_sql(cfg.filters, scores)}) fb USING (record_id)" if cfg.filters else ""
    )
    # Taken-down records are selected, marked, then counted and dropped (`_drop_taken_down`).
    taken_col = ", td.record_id IS NOT NULL AS taken_down" if takedowns else ""
    taken_join = (
        "LEFT JOIN (SELECT DISTINCT record_id FROM takedowns) td USING (record_id)" if takedowns else ""
    )
    val = f"CAST('{float(cfg.val_fraction)!r}' AS DOUBLE)"
    return f"""
    SELECT *,
           CASE WHEN {_hash_sql("occurrence_id", cfg.seed)}::DOUBLE / 18446744073709551616.0 < {val}
                THEN 'val' ELSE 'train' END AS split,
           replace(record_id, '.', '') AS key
    FROM (
      SELECT r.record_id, r.source, r.source_id, coalesce(r.occurrence_id, r.record_id) AS occurrence_id,
             r.media_url, r.license, r.rights_holder, r.publisher, r.basis_of_record, r.img_type,
             s.taxon_id, s.match_type, t.kingdom, t.phylum, t.class, t."order", t.family, t.genus,
             t.species, t.scientific_name, t.common_name, l.blob, l.blob_offset, l.bytes AS jpeg_bytes,
             it.label AS image_type{filtered_col}{taken_col}
      FROM dedup_decisions_as_of(?) d
      JOIN raw_records r USING (record_id)
      JOIN resolutions_as_of(?) s USING (record_id)
      JOIN taxa t ON t.taxon_id = s.taxon_id AND t.backbone_version = s.backbone_version
      JOIN image_locations l USING (record_id)
      LEFT JOIN (SELECT record_id, label FROM {scores} WHERE scorer = 'image_type') it USING (record_id)
      {filtered_join}
      {taken_join}
      WHERE d.kept AND s.taxon_id IS NOT NULL
    ) WHERE true {where}
    ORDER BY split = 'val', {_hash_sql("record_id", cfg.seed + 1)}, record_id"""


def _squash(jpeg: bytes, size: int) -> bytes:
    img = Image.open(io.BytesIO(jpeg)).convert("RGB")
    resample = Image.Resampling.BICUBIC if min(img.size) >= size else Image.Resampling.LANCZOS
    buf = io.BytesIO()
    img.resize((size, size), resample).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def _sample_members(
    row: dict[str, Any], image_size: int | None, txt_caption: str = "taxon_com"
) -> dict[str, bytes]:
    lineage = {r: row[r] for r in RANKS}
    caps = captions(lineage, row["common_name"])
    meta = {
        **lineage,
        "scientific_name": caps["scientific_name"],
        "common_name": row["common_name"],
        "taxon_id": row["taxon_id"],
        "match_type": row["match_type"],
        "source": row["source"],
        "source_id": row["source_id"],
        "license": row["license"],
        "rights_holder": row["rights_holder"],
        "source_url": row["media_url"],
        "record_id": row["record_id"],
        "img_type": row["img_type"],
    }
    members = {
        "jpg": _squash(row["jpeg"], image_size) if image_size else row["jpeg"],
        "json": json.dumps(meta, sort_keys=True).encode(),
    }
    for name in SHARD_TEXT_MEMBERS:
        members[f"{name}.txt"] = caps[name].encode()
    members["txt"] = caps[txt_caption].encode()  # what open_clip's own trainer reads
    return members


def _write_shard(
    path: Path, samples: Iterable[tuple[str, dict[str, bytes], dict]]
) -> tuple[list[dict], str, int]:
    """Write a tar atomically from a stream of samples (one sample in memory at a time); return sidecar
    rows, sha256 and size."""
    tmp = path.with_name(f".{path.name}.tmp")
    sidecar = []
    with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, members, row in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                tar.addfile(info, io.BytesIO(data))
            sidecar.append(
                {
                    "key": key,
                    "record_id": row["record_id"],
                    "taxon_id": row["taxon_id"],
                    "sample_bytes": sum(len(v) for v in members.values()),
                }
            )
    offsets: dict[str, tuple[int, int]] = {}
    with tarfile.open(tmp, "r") as tar:
        for m in tar.getmembers():
            if m.name.endswith(".jpg"):
                offsets[m.name[:-4]] = (m.offset_data, m.size)
    for row in sidecar:
        row["jpg_offset"], row["jpg_size"] = offsets[row["key"]]
    digest = _sha256(tmp)
    size = tmp.stat().st_size
    os.replace(tmp, path)
    return sidecar, digest, size


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


SHARD_RESULT = pa.schema(
    [
        ("shard", pa.string()),
        ("n", pa.int64()),
        ("sha256", pa.string()),
        ("bytes", pa.int64()),
        ("reused", pa.bool_()),
    ]
)


READ_CHUNK = 256  # samples whose JPEGs a worker reads at once


def _samples(unit: Unit, rows: list[dict]) -> Iterator[tuple[str, dict[str, bytes], dict]]:
    home = Path(unit["home"])
    for start in range(0, len(rows), READ_CHUNK):
        chunk = rows[start : start + READ_CHUNK]
        jpegs = read_image_blobs(home, [(r["blob"], r["blob_offset"], r["jpeg_bytes"]) for r in chunk])
        for r, jpeg in zip(chunk, jpegs, strict=True):
            yield r["key"], _sample_members({**r, "jpeg": jpeg}, unit["image_size"], unit["txt_caption"]), r


def write_shard_unit(unit: Unit) -> pa.Table:
    """One work unit, run by a worker: the shard `unit["shard"]` from rows [start, start + n) of the plan,
    its images read from the image lake; one result row back. A shard whose tar and sidecar both exist is
    complete (both are written atomically) and is reused, which is how an interrupted build resumes."""
    shard = unit["shard"]
    path = Path(unit["root"]) / shard
    sidecar_path = path.with_suffix(".parquet")
    if path.exists() and sidecar_path.exists():
        row = {
            "shard": shard,
            "n": pq.read_metadata(sidecar_path).num_rows,
            "sha256": _sha256(path),
            "bytes": path.stat().st_size,
            "reused": True,
        }
        return pa.Table.from_pylist([row], schema=SHARD_RESULT)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = read_rows(unit["plan"], unit["start"], unit["n"]).to_pylist()
    if not rows or {rows[0]["shard"], rows[-1]["shard"]} != {shard}:  # one row is its first and its last
        raise RuntimeError(f"plan rows {unit['start']}+{unit['n']} are not shard {shard}")
    sidecar, digest, size = _write_shard(path, _samples(unit, rows))
    write_parquet_atomic(pa.Table.from_pylist(sidecar, schema=SIDECAR), sidecar_path)
    row = {"shard": shard, "n": len(sidecar), "sha256": digest, "bytes": size, "reused": False}
    return pa.Table.from_pylist([row], schema=SHARD_RESULT)


@dataclass
class ShardPlan:
    """One shard of the plan: what the driver keeps per shard (rows [start, start + n) of the plan)."""

    split: str
    index: int
    start: int
    n: int = 0
    estimate: int = 0

    @property
    def name(self) -> str:
        return f"{self.split}/shard-{self.index:05d}.tar"


def _plan(selection: Path, plan: Path, cfg: ShardConfig) -> list[ShardPlan]:
    """Cut the sorted selection into shards (`train/shard-00000.tar`, ...), streaming it once, and write the
    plan (the selection with its `shard`). A shard closes at `samples_per_shard` samples or before it
    would pass `max_shard_bytes` (each sample estimated as its JPEG plus 2 KB of captions and json)."""
    source = pq.ParquetFile(selection)
    tmp = plan.with_name(f".{plan.name}.tmp")
    shards: list[ShardPlan] = []
    row = 0
    with pq.ParquetWriter(tmp, source.schema_arrow.append(pa.field("shard", pa.string()))) as writer:
        for batch in source.iter_batches(batch_size=8192):
            names = []
            splits, sizes = batch.column("split").to_pylist(), batch.column("jpeg_bytes").to_pylist()
            for split, size in zip(splits, sizes, strict=True):
                estimate = size + 2048
                cur = shards[-1] if shards else None
                if cur is None or cur.split != split:
                    cur = ShardPlan(split, 0, row)
                    shards.append(cur)
                elif cur.n >= cfg.samples_per_shard or cur.estimate + estimate > cfg.max_shard_bytes:
                    cur = ShardPlan(split, cur.index + 1, row)
                    shards.append(cur)
                cur.n += 1
                cur.estimate += estimate
                names.append(cur.name)
                row += 1
            writer.write_batch(batch.append_column("shard", pa.array(names, pa.string())))
    os.replace(tmp, plan)
    return shards


def _same_build(manifest: dict, cfg: ShardConfig, inputs: ShardInputs) -> bool:
    # Through JSON, as the manifest stored them (tuples become lists).
    settings = json.loads(json.dumps({k: v for k, v in asdict(cfg).items() if k != "overwrite"}))
    built = {k: v for k, v in manifest.get("config", {}).items() if k != "overwrite"}
    built.setdefault("filters", [])  # a version built before filter rules existed had none
    return (
        built == settings
        and manifest.get("dedup_run") == inputs.dedup_run
        and manifest.get("resolve_run") == inputs.resolve_run
        and manifest.get("filters", {}).get("filter_run") == inputs.filter_run
    )


def _fingerprint(home: Path, cfg: ShardConfig, inputs: ShardInputs, selection: Path) -> str:
    """What the build depends on: settings, the input runs and the selected records (not the timestamp).
    The records enter as their count and an order-free sum of their ids' hashes, computed by DuckDB."""
    with duckdb.connect(config=duckdb_config(home)) as con:
        n, total = con.execute(
            f"SELECT count(*), sum({_hash_sql('record_id', 0)}::HUGEINT)::VARCHAR FROM read_parquet(?)",
            [str(selection)],
        ).fetchall()[0]
    settings = {k: v for k, v in asdict(cfg).items() if k != "overwrite"}
    runs = [inputs.dedup_run, inputs.resolve_run, inputs.filter_run]
    return hashlib.sha1(json.dumps([settings, runs, n, total], sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class ShardInputs:
    """The runs a version is built from, chosen once by the caller and recorded in the version."""

    dedup_run: str  # whose kept images are the samples
    resolve_run: str  # whose names label them
    backbone_versions: tuple[str, ...]  # the backbones that resolve run used, in priority order
    filter_run: str | None = None  # the filter run that scored those images (needed when rules are given)


def build_version(
    catalog: Catalog,
    cfg: ShardConfig,
    inputs: ShardInputs,
    *,
    executor: ExecutorConfig = LOCAL,
) -> dict[str, Any]:
    """Build (or resume building) a dataset version from `inputs`. Shards are written by the executor's
    workers, one unit per shard.

    The version is built in its own folder `shards/.builds/<version>.<fingerprint>` beside any earlier one;
    the catalog row is switched to it in one transaction and `shards/<version>` (a link) follows. So a
    killed build, `--overwrite` included, never leaves the catalog naming files that are gone; a rerun with
    the same inputs resumes the same folder and reuses its finished shards."""
    check_name("version", cfg.version)
    with StageRun(catalog, "shard", config=cfg, lock=f"shard-{cfg.version}") as run:
        with catalog.connect() as con:
            row = fetch_first(con, "SELECT path FROM dataset_versions WHERE version = ?", [cfg.version])
        current = catalog.home / row[0] if row else None  # relative to the home (absolute before)
        if current is not None and not cfg.overwrite:
            link_version(catalog, cfg.version, current)  # mends a link a killed build left behind
            manifest = json.loads((current / "manifest.json").read_text())
            if _same_build(manifest, cfg, inputs):
                # The same command again (after a kill, say): the version is what it would build.
                run.message = f"version {cfg.version} exists, built with these settings from these runs"
                return manifest
            raise FileExistsError(
                f"dataset version {cfg.version!r} exists and is immutable; pass --overwrite"
            )
        if current is not None:
            refuse_if_training(catalog, cfg.version)
        pool = executor.build()
        pool.warm_up([__name__])  # a Spark session starts while the selection is planned
        builds = catalog.shards / BUILDS
        builds.mkdir(parents=True, exist_ok=True)
        selection = builds / f".selection-{cfg.version}.parquet"  # the version's lock is held
        with catalog.connect() as con:
            takedowns = fetch_first(con, "SELECT count(*) FROM takedowns")[0] > 0
        try:
            run.n_in = catalog.export_parquet(
                _selection_sql(cfg, takedowns),
                selection,
                params=[
                    inputs.dedup_run,
                    inputs.resolve_run,
                    *([inputs.filter_run] * 2 if cfg.filters else []),
                ],
                sandbox=True,
            )
            taken_down = _drop_taken_down(selection, run) if takedowns else 0
            filters = _apply_filters(selection, cfg, inputs, run)
            n_samples = run.n_in - taken_down - filters["removed_total"]
            if not n_samples:
                raise ValueError(
                    f"the selection for version {cfg.version!r} is empty"
                    + (
                        f" (--where {cfg.where!r} matches no kept sample)"
                        if cfg.where and not run.n_in
                        else ""
                    )
                    + (" (its filter rules and takedowns remove every sample)" if run.n_in else "")
                    + ": an immutable version of 0 samples is not made"
                )
            root = builds / f"{cfg.version}.{_fingerprint(catalog.home, cfg, inputs, selection)[:16]}"
            for stale in builds.glob(f"{cfg.version}.*"):
                own = "." not in stale.name[len(cfg.version) + 1 :]  # not a build of version "<name>.<more>"
                if own and stale != root and stale != current:  # partial builds of other inputs
                    remove_tree(stale, builds)
            root.mkdir(parents=True, exist_ok=True)
            plan = root / BUILD_PLAN
            shards = _plan(selection, plan, cfg)
        finally:
            selection.unlink(missing_ok=True)
        results = _write_shards(catalog, cfg, root, plan, shards, pool)
        manifest_shards = []
        for sh in shards:
            r = results[sh.name]
            manifest_shards.append(
                {
                    "split": sh.split,
                    "name": sh.name.split("/")[1],
                    "n": r["n"],
                    "sha256": r["sha256"],
                    "bytes": r["bytes"],
                }
            )
        counts = {split: sum(sh.n for sh in shards if sh.split == split) for split in ("train", "val")}
        manifest = _manifest(catalog.home, cfg, plan, manifest_shards, inputs, counts) | {
            "filters": filters,
            "taken_down": taken_down,
        }
        for split in ("train", "val"):
            sizes = {s["name"]: s["n"] for s in manifest_shards if s["split"] == split}
            write_bytes_atomic(json.dumps(sizes, indent=1).encode(), root / split / "sizes.json")
        write_bytes_atomic(json.dumps(manifest, indent=1, default=str).encode(), root / "manifest.json")
        # The dataset card, from the same plan and manifest (its counts are the catalog's).
        write_bytes_atomic(render_card(catalog, manifest, plan).encode(), root / "README.md")
        record = DatasetVersionRecord(
            version=cfg.version,
            filters=cfg.where,
            seed=cfg.seed,
            dedup_run_id=inputs.dedup_run,
            resolve_run_id=inputs.resolve_run,
            backbone_version=",".join(inputs.backbone_versions),
            n_samples=n_samples,
            n_train=counts["train"],
            n_val=counts["val"],
            n_shards=len(shards),
            path=str(root.relative_to(catalog.home)),
            manifest=manifest,
            code_version=CODE_VERSION,
        )
        replace_version(catalog, record)  # the switch: before it the old version stands
        displaced = link_version(catalog, cfg.version, root)
        for old in (current, displaced):  # the version this one replaced, now unreferenced
            if old is not None and old.exists() and old.resolve() != root.resolve():
                remove_tree(old, builds)
        run.n_out = n_samples
        run.details = {
            "version": cfg.version,
            **counts,
            "shards": len(shards),
            "reused_shards": sum(1 for r in results.values() if r["reused"]),
            "filters": {k: v for k, v in filters.items() if k != "rules"},
        }
    return manifest


def _drop_taken_down(selection: Path, run: StageRun) -> int:
    """Count the selected samples a takedown covers (drop reason `taken_down`), then rewrite the selection
    without them and without the mark, in the same order. Returns the count (the manifest's `taken_down`)."""
    src = _sql_path(selection)
    tmp = selection.with_name(f".{selection.name}.untaken")
    with duckdb.connect(config=duckdb_config(run.catalog.home)) as con:
        n = con.execute(f"SELECT count(*) FROM read_parquet('{src}') WHERE taken_down").fetchone()[0]
        con.execute(
            f"COPY (SELECT * EXCLUDE (taken_down) FROM read_parquet('{src}') WHERE NOT taken_down)"
            f" TO '{_sql_path(tmp)}' (FORMAT parquet, COMPRESSION zstd)"
        )
    os.replace(tmp, selection)
    if n:
        run.drop("taken_down", n)
    return n


def _apply_filters(selection: Path, cfg: ShardConfig, inputs: ShardInputs, run: StageRun) -> dict[str, Any]:
    """Count what each rule removes from the selection (by the first rule that matches, as the stage run's
    `filtered:<scorer>` drops; and every rule on its own, `matched`), per image type, then rewrite the
    selection without those samples, in the same order. Returns the manifest's `filters` entry."""
    out: dict[str, Any] = {
        "rules": [asdict(r) for r in cfg.filters],
        "filter_run": inputs.filter_run,
        "removed_total": 0,
        "removed": {},
    }
    if not cfg.filters:
        return out
    src = _sql_path(selection)
    with duckdb.connect(config=duckdb_config(run.catalog.home)) as con:
        con.execute(f"CREATE VIEW sel AS SELECT * FROM read_parquet('{src}')")
        first = con.execute(
            """SELECT filtered_by[1], coalesce(image_type, 'unknown'), count(*) FROM sel
               WHERE len(filtered_by) > 0 GROUP BY ALL ORDER BY ALL"""
        ).fetchall()
        matched = dict(
            con.execute(
                "SELECT s, count(*) FROM (SELECT unnest(filtered_by) AS s FROM sel) GROUP BY s"
            ).fetchall()
        )
        tmp = selection.with_name(f".{selection.name}.kept")
        con.execute(
            f"COPY (SELECT * EXCLUDE (filtered_by) FROM sel WHERE len(filtered_by) = 0) TO '{_sql_path(tmp)}'"
            " (FORMAT parquet, COMPRESSION zstd)"
        )
    os.replace(tmp, selection)
    for rule in cfg.filters:
        types = {t: n for scorer, t, n in first if scorer == rule.scorer}
        out["removed"][rule.scorer] = {
            "removed": sum(types.values()),
            "matched": matched.get(rule.scorer, 0),
            "by_image_type": types,
        }
        if types:
            run.drop(f"filtered:{rule.scorer}", sum(types.values()))
    out["removed_total"] = sum(v["removed"] for v in out["removed"].values())
    return out


def _write_shards(
    catalog: Catalog,
    cfg: ShardConfig,
    root: Path,
    plan: Path,
    shards: list[ShardPlan],
    pool: Executor,
) -> dict[str, dict[str, Any]]:
    """Run one work unit per shard; the result row of each, by shard name."""
    units: list[Unit] = [
        {
            "home": str(catalog.home),
            "root": str(root),
            "plan": str(plan),
            "start": sh.start,
            "n": sh.n,
            "shard": sh.name,
            "image_size": cfg.image_size,
            "txt_caption": cfg.txt_caption,
        }
        for sh in shards
    ]
    results: dict[str, dict[str, Any]] = {}
    step = max(1, len(units) // 10)
    for _, table in pool.run_units(write_shard_unit, units):
        for r in table.to_pylist():
            results[r["shard"]] = r
        if len(results) % step == 0 or len(results) == len(units):
            log.info("shard %s: %d of %d shards written", cfg.version, len(results), len(units))
    return results


def _manifest(
    home: Path, cfg: ShardConfig, plan: Path, shards: list[dict], inputs: ShardInputs, counts: dict
) -> dict:
    """The version's manifest; its tallies are computed by DuckDB over the plan (no rows in Python)."""
    with duckdb.connect(config=duckdb_config(home)) as con:
        con.execute(f"CREATE VIEW plan AS SELECT * FROM read_parquet('{_sql_path(plan)}')")

        def count(column: str) -> dict[str, int]:
            rows = con.execute(
                f"SELECT coalesce(CAST(\"{column}\" AS VARCHAR), 'None'), count(*) FROM plan GROUP BY 1"
            ).fetchall()
            return dict(sorted(rows))

        filled = ", ".join(f"count(*) FILTER (WHERE coalesce(\"{r}\", '') <> '')" for r in RANKS)
        completeness = con.execute(f"SELECT {filled} FROM plan").fetchall()[0]
        n_samples, n_taxa = con.execute("SELECT count(*), count(DISTINCT taxon_id) FROM plan").fetchall()[0]
        per = {name: count(name) for name in ("source", "kingdom", "license")}
    return {
        "version": cfg.version,
        "created_at": datetime.now(UTC).isoformat(),
        "config": asdict(cfg),
        "code_version": CODE_VERSION,
        "dedup_run": inputs.dedup_run,
        "resolve_run": inputs.resolve_run,
        "backbone_versions": list(inputs.backbone_versions),
        "n_samples": n_samples,
        "splits": counts,
        "per_source": per["source"],
        "per_kingdom": per["kingdom"],
        "per_license": per["license"],
        "rank_completeness": dict(zip(RANKS, completeness, strict=True)),
        "n_taxa": n_taxa,
        "shards": shards,
    }


def _sql_path(path: Path) -> str:
    return str(path).replace("'", "''")
