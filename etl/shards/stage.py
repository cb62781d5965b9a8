"""Shard stage: a named, immutable dataset version as WebDataset tar shards with a sidecar Parquet each.

Samples are kept, resolved images of the latest dedup run. Train/validation are split by occurrence (never
the same occurrence on both sides), order is a seeded hash shuffle, members follow the paper's layout
(`jpg`, `json`, `sci.txt`, `com.txt`, `taxon.txt`, `sci_com.txt`, `taxon_com.txt`, `taxonTag.txt`, ...).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from taxonomy.captions import captions
from warehouse.catalog import Catalog, fetch_first
from warehouse.contracts import CAPTION_TYPES, RANKS, SHARD_TEXT_MEMBERS, check_name
from warehouse.lake import remove_tree, write_bytes_atomic, write_parquet_atomic
from warehouse.stage_runs import CODE_VERSION, StageRun
from warehouse.versions import BUILDS, link_version
from warehouse.writers import DatasetVersionRecord, replace_version

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
    version: str
    where: str | None = None
    samples_per_shard: int = 10_000
    max_shard_bytes: int = 1 << 30
    image_size: int | None = None
    val_fraction: float = 0.05
    seed: int = 0
    txt_caption: str = "taxon_com"  # the caption written as plain `txt` for loaders that read one text
    overwrite: bool = False

    def __post_init__(self) -> None:
        check_name("version", self.version)
        if self.where is not None and not self.where.strip():
            raise ValueError("--where is empty: leave it out to select every kept sample")
        if self.txt_caption not in CAPTION_TYPES:
            raise ValueError(f"txt_caption must be one of {CAPTION_TYPES}")
        if self.samples_per_shard < 1 or not 0 <= self.val_fraction < 1:
            raise ValueError("samples_per_shard must be >= 1 and val_fraction in [0, 1)")


def _bucket(value: str, seed: int) -> float:
    h = hashlib.sha1(f"{seed}:{value}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def _select(catalog: Catalog, cfg: ShardConfig, inputs: ShardInputs) -> list[dict[str, Any]]:
    """The kept samples of the dedup run, named by the resolve run (not whatever is latest now)."""
    with catalog.connect() as con:
        where = f"AND ({cfg.where})" if cfg.where else ""
        rows = (
            con.sql(
                f"""
            SELECT * FROM (
              SELECT r.record_id, r.source, r.source_id, coalesce(r.occurrence_id, r.record_id) AS occurrence_id,
                     r.media_url, r.license, r.rights_holder, r.publisher, r.basis_of_record, r.img_type,
                     s.taxon_id, s.match_type, t.kingdom, t.phylum, t.class, t."order", t.family, t.genus,
                     t.species, t.scientific_name, t.common_name, b.jpeg
              FROM dedup_decisions d
              JOIN raw_records r USING (record_id)
              JOIN resolutions_history s USING (record_id)
              JOIN taxa t ON t.taxon_id = s.taxon_id AND t.backbone_version = s.backbone_version
              JOIN image_bytes b USING (record_id)
              WHERE d.run_id = ? AND s.run_id = ? AND d.kept AND s.taxon_id IS NOT NULL
            ) WHERE true {where}""",
                params=[inputs.dedup_run, inputs.resolve_run],
            )
            .to_arrow_table()
            .to_pylist()
        )
    return rows


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
    path: Path, samples: list[tuple[str, dict[str, bytes], dict]]
) -> tuple[list[dict], str, int]:
    """Write a tar atomically; return sidecar rows, sha256 and size."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, members, _ in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                tar.addfile(info, io.BytesIO(data))
    offsets: dict[str, tuple[int, int]] = {}
    with tarfile.open(tmp, "r") as tar:
        for m in tar.getmembers():
            if m.name.endswith(".jpg"):
                offsets[m.name[:-4]] = (m.offset_data, m.size)
    sidecar = [
        {
            "key": key,
            "record_id": row["record_id"],
            "taxon_id": row["taxon_id"],
            "jpg_offset": offsets[key][0],
            "jpg_size": offsets[key][1],
            "sample_bytes": sum(len(v) for v in members.values()),
        }
        for key, members, row in samples
    ]
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


def write_shards_partition(
    batches: Iterator[pa.RecordBatch], root: str, image_size: int | None, txt_caption: str
) -> Iterator[pa.RecordBatch]:
    """Per-partition function: rows tagged with their `shard` (relative path) in, one result row per shard
    out. A shard whose tar and sidecar both exist is complete (both are written atomically) and is reused,
    which is how an interrupted build resumes."""
    rows = [r for b in batches for r in b.to_pylist()]
    by_shard: dict[str, list[dict]] = {}
    for r in rows:
        by_shard.setdefault(r["shard"], []).append(r)
    out = []
    for shard, members in by_shard.items():
        path = Path(root) / shard
        sidecar_path = path.with_suffix(".parquet")
        if path.exists() and sidecar_path.exists():
            out.append(
                {
                    "shard": shard,
                    "n": pq.read_metadata(sidecar_path).num_rows,
                    "sha256": _sha256(path),
                    "bytes": path.stat().st_size,
                    "reused": True,
                }
            )
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        samples = [(r["key"], _sample_members(r, image_size, txt_caption), r) for r in members]
        sidecar, digest, size = _write_shard(path, samples)
        write_parquet_atomic(pa.Table.from_pylist(sidecar, schema=SIDECAR), sidecar_path)
        out.append({"shard": shard, "n": len(samples), "sha256": digest, "bytes": size, "reused": False})
    yield pa.RecordBatch.from_pylist(out, schema=SHARD_RESULT)


def _plan(rows: list[dict], cfg: ShardConfig) -> list[list[dict]]:
    """Assign every row a shard (`train/shard-00000.tar`, ...): deterministic from the seed."""
    for row in rows:
        row["split"] = "val" if _bucket(row["occurrence_id"], cfg.seed) < cfg.val_fraction else "train"
        row["order_key"] = _bucket(row["record_id"], cfg.seed + 1)
        row["key"] = row["record_id"].replace(".", "")
    groups: list[list[dict]] = []
    for split in ("train", "val"):
        part = sorted((r for r in rows if r["split"] == split), key=lambda r: r["order_key"])
        current: list[dict] = []
        size = 0
        index = 0
        for r in part:
            estimate = len(r["jpeg"]) + 2048  # captions and json are about 2 KB
            if current and (len(current) >= cfg.samples_per_shard or size + estimate > cfg.max_shard_bytes):
                groups.append(current)
                current, size, index = [], 0, index + 1
            r["shard"] = f"{split}/shard-{index:05d}.tar"
            current.append(r)
            size += estimate
        if current:
            groups.append(current)
    return groups


def _same_build(manifest: dict, cfg: ShardConfig, inputs: ShardInputs) -> bool:
    settings = {k: v for k, v in asdict(cfg).items() if k != "overwrite"}
    built = {k: v for k, v in manifest.get("config", {}).items() if k != "overwrite"}
    return (
        built == settings
        and manifest.get("dedup_run") == inputs.dedup_run
        and manifest.get("resolve_run") == inputs.resolve_run
    )


def _fingerprint(cfg: ShardConfig, inputs: ShardInputs, rows: list[dict]) -> str:
    """What the build depends on: settings, the input runs and the selected records (not the timestamp)."""
    keys = hashlib.sha1("\n".join(sorted(r["record_id"] for r in rows)).encode()).hexdigest()
    settings = {k: v for k, v in asdict(cfg).items() if k != "overwrite"}
    runs = [inputs.dedup_run, inputs.resolve_run]
    return hashlib.sha1(json.dumps([settings, runs, keys], sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class ShardInputs:
    """The runs a version is built from, chosen once by the caller and recorded in the version."""

    dedup_run: str  # whose kept images are the samples
    resolve_run: str  # whose names label them
    backbone_versions: tuple[str, ...]  # the backbones that resolve run used, in priority order


def build_version(
    catalog: Catalog,
    cfg: ShardConfig,
    inputs: ShardInputs,
    *,
    executor: str = "local",
    workers: int = 2,
    spark_master: str | None = None,
) -> dict[str, Any]:
    """Build (or resume building) a dataset version from `inputs`. Shards are written by the executor's
    workers.

    The version is built in its own folder `shards/.builds/<version>.<fingerprint>` beside any earlier one;
    the catalog row is switched to it in one transaction and `shards/<version>` (a link) follows. So a
    killed build, `--overwrite` included, never leaves the catalog naming files that are gone; a rerun with
    the same inputs resumes the same folder and reuses its finished shards."""
    from etl.executors import get_executor

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
        rows = _select(catalog, cfg, inputs)
        run.n_in = len(rows)
        if not rows:
            raise ValueError(
                f"the selection for version {cfg.version!r} is empty"
                + (f" (--where {cfg.where!r} matches no kept sample)" if cfg.where else "")
                + ": an immutable version of 0 samples is not made"
            )
        fingerprint = _fingerprint(cfg, inputs, rows)
        builds = catalog.shards / BUILDS
        root = builds / f"{cfg.version}.{fingerprint[:16]}"
        for stale in builds.glob(f"{cfg.version}.*"):
            own = "." not in stale.name[len(cfg.version) + 1 :]  # not a build of version "<name>.<more>"
            if own and stale != root and stale != current:  # partial builds of other inputs
                remove_tree(stale, builds)
        root.mkdir(parents=True, exist_ok=True)
        groups = _plan(rows, cfg)
        columns = [c for c in rows[0] if c not in ("order_key",)] if rows else []
        partitions = [pa.Table.from_pylist([{c: r[c] for c in columns} for r in g]) for g in groups]
        fn = partial(
            write_shards_partition, root=str(root), image_size=cfg.image_size, txt_caption=cfg.txt_caption
        )
        results = {}
        for _, table in get_executor(executor, workers, spark_master).map_partitions(
            fn, partitions, SHARD_RESULT
        ):
            for r in table.to_pylist():
                results[r["shard"]] = r
        shards = []
        for g in groups:
            r = results[g[0]["shard"]]
            split, name = r["shard"].split("/")
            shards.append(
                {"split": split, "name": name, "n": r["n"], "sha256": r["sha256"], "bytes": r["bytes"]}
            )
        counts = {split: sum(1 for r in rows if r["split"] == split) for split in ("train", "val")}
        manifest = _manifest(cfg, rows, shards, inputs, counts)
        for split in ("train", "val"):
            sizes = {s["name"]: s["n"] for s in shards if s["split"] == split}
            write_bytes_atomic(json.dumps(sizes, indent=1).encode(), root / split / "sizes.json")
        write_bytes_atomic(json.dumps(manifest, indent=1, default=str).encode(), root / "manifest.json")
        samples = pa.table(
            {
                "version": [cfg.version] * len(rows),
                "split": [r["split"] for r in rows],
                "shard": [r["shard"] for r in rows],
                "key": [r["key"] for r in rows],
                "record_id": [r["record_id"] for r in rows],
                "taxon_id": [r["taxon_id"] for r in rows],
            }
        )
        record = DatasetVersionRecord(
            version=cfg.version,
            filters=cfg.where,
            seed=cfg.seed,
            dedup_run_id=inputs.dedup_run,
            resolve_run_id=inputs.resolve_run,
            backbone_version=",".join(inputs.backbone_versions),
            n_samples=len(rows),
            n_train=counts["train"],
            n_val=counts["val"],
            n_shards=len(shards),
            path=str(root.relative_to(catalog.home)),
            manifest=manifest,
            code_version=CODE_VERSION,
        )
        replace_version(catalog, record, samples)  # the switch: before it the old version stands
        displaced = link_version(catalog, cfg.version, root)
        for old in (current, displaced):  # the version this one replaced, now unreferenced
            if old is not None and old.exists() and old.resolve() != root.resolve():
                remove_tree(old, builds)
        run.n_out = len(rows)
        run.details = {
            "version": cfg.version,
            **counts,
            "shards": len(shards),
            "reused_shards": sum(1 for r in results.values() if r["reused"]),
        }
    return manifest


def _manifest(
    cfg: ShardConfig, rows: list[dict], shards: list[dict], inputs: ShardInputs, counts: dict
) -> dict:
    def count(key) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in rows:
            k = key(r)
            out[str(k)] = out.get(str(k), 0) + 1
        return dict(sorted(out.items()))

    return {
        "version": cfg.version,
        "created_at": datetime.now(UTC).isoformat(),
        "config": asdict(cfg),
        "code_version": CODE_VERSION,
        "dedup_run": inputs.dedup_run,
        "resolve_run": inputs.resolve_run,
        "backbone_versions": list(inputs.backbone_versions),
        "n_samples": len(rows),
        "splits": counts,
        "per_source": count(lambda r: r["source"]),
        "per_kingdom": count(lambda r: r["kingdom"]),
        "per_license": count(lambda r: r["license"]),
        "rank_completeness": {rank: sum(1 for r in rows if r[rank]) for rank in RANKS},
        "n_taxa": len({r["taxon_id"] for r in rows}),
        "shards": shards,
    }
