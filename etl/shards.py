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
import shutil
import tarfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
from PIL import Image

from etl.dedup import latest_dedup_run
from taxonomy.captions import captions
from warehouse.catalog import Catalog, fetch_first
from warehouse.lake import write_bytes_atomic, write_parquet_atomic
from warehouse.stage_runs import CODE_VERSION, StageRun

RANKS7 = ("kingdom", "phylum", "class", "order", "family", "genus", "species")
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
    overwrite: bool = False


def _bucket(value: str, seed: int) -> float:
    h = hashlib.sha1(f"{seed}:{value}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def _select(catalog: Catalog, cfg: ShardConfig) -> tuple[list[dict[str, Any]], str]:
    with catalog.connect() as con:
        dedup_run = latest_dedup_run(con)
        if dedup_run is None:
            raise LookupError("no successful dedup run: run `tol dedup` first")
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
              JOIN resolutions s USING (record_id)
              JOIN taxa t ON t.taxon_id = s.taxon_id AND t.backbone_version = s.backbone_version
              JOIN image_bytes b USING (record_id)
              WHERE d.run_id = ? AND d.kept AND s.taxon_id IS NOT NULL
            ) WHERE true {where}""",
                params=[dedup_run],
            )
            .to_arrow_table()
            .to_pylist()
        )
    return rows, dedup_run


def _squash(jpeg: bytes, size: int) -> bytes:
    img = Image.open(io.BytesIO(jpeg)).convert("RGB")
    resample = Image.Resampling.BICUBIC if min(img.size) >= size else Image.Resampling.LANCZOS
    buf = io.BytesIO()
    img.resize((size, size), resample).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def _sample_members(row: dict[str, Any], image_size: int | None) -> dict[str, bytes]:
    lineage = {r: row[r] for r in RANKS7}
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
    for name in (
        "sci",
        "com",
        "taxon",
        "sci_com",
        "taxon_com",
        "taxonTag",
        "taxonTag_com",
        "scientific_name",
        "common_name",
        "taxonomic_name",
    ):
        members[f"{name}.txt"] = caps[name].encode()
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
    sidecar = []
    offsets: dict[str, tuple[int, int]] = {}
    with tarfile.open(tmp, "r") as tar:
        for m in tar.getmembers():
            if m.name.endswith(".jpg"):
                offsets[m.name[:-4]] = (m.offset_data, m.size)
    for key, members, row in samples:
        off, size = offsets[key]
        sidecar.append(
            {
                "key": key,
                "record_id": row["record_id"],
                "taxon_id": row["taxon_id"],
                "jpg_offset": off,
                "jpg_size": size,
                "sample_bytes": sum(len(v) for v in members.values()),
            }
        )
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    size = tmp.stat().st_size
    os.replace(tmp, path)
    return sidecar, digest, size


def build_version(catalog: Catalog, cfg: ShardConfig) -> dict[str, Any]:
    root = catalog.shards / cfg.version
    with catalog.connect() as con:
        exists = fetch_first(con, "SELECT 1 FROM dataset_versions WHERE version = ?", [cfg.version])
    if exists and not cfg.overwrite:
        raise FileExistsError(f"dataset version {cfg.version!r} exists and is immutable; pass --overwrite")
    if root.exists():
        shutil.rmtree(root)  # a partial build (no catalog row) or an explicit overwrite: rebuild from scratch
    with StageRun(catalog, "shard", config=cfg) as run:
        rows, dedup_run = _select(catalog, cfg)
        run.n_in = len(rows)
        for row in rows:
            row["split"] = "val" if _bucket(row["occurrence_id"], cfg.seed) < cfg.val_fraction else "train"
            row["order_key"] = _bucket(row["record_id"], cfg.seed + 1)
        shard_rows, shards, counts = [], [], {"train": 0, "val": 0}
        for split in ("train", "val"):
            part = sorted((r for r in rows if r["split"] == split), key=lambda r: r["order_key"])
            (root / split).mkdir(parents=True, exist_ok=True)
            batch: list[tuple[str, dict[str, bytes], dict]] = []
            batch_bytes = 0

            def flush(split: str = split) -> None:
                nonlocal batch, batch_bytes
                if not batch:
                    return
                name = f"shard-{sum(1 for s in shards if s['split'] == split):05d}.tar"
                sidecar, digest, size = _write_shard(root / split / name, batch)
                write_parquet_atomic(
                    pa.Table.from_pylist(sidecar, schema=SIDECAR),
                    root / split / name.replace(".tar", ".parquet"),
                )
                shards.append(
                    {"split": split, "name": name, "n": len(batch), "sha256": digest, "bytes": size}
                )
                shard_rows.extend(
                    {
                        "version": cfg.version,
                        "split": split,
                        "shard": f"{split}/{name}",
                        "key": key,
                        "record_id": r["record_id"],
                        "taxon_id": r["taxon_id"],
                    }
                    for key, _, r in batch
                )
                batch, batch_bytes = [], 0

            for r in part:
                key = r["record_id"].replace(".", "")
                members = _sample_members(r, cfg.image_size)
                size = sum(len(v) for v in members.values())
                if batch and (
                    len(batch) >= cfg.samples_per_shard or batch_bytes + size > cfg.max_shard_bytes
                ):
                    flush()
                batch.append((key, members, r))
                batch_bytes += size
                counts[split] += 1
            flush()
        manifest = _manifest(cfg, rows, shards, dedup_run, counts)
        for split in ("train", "val"):
            sizes = {s["name"]: s["n"] for s in shards if s["split"] == split}
            write_bytes_atomic(json.dumps(sizes, indent=1).encode(), root / split / "sizes.json")
        write_bytes_atomic(json.dumps(manifest, indent=1, default=str).encode(), root / "manifest.json")
        with catalog.connect() as con:
            con.execute("DELETE FROM dataset_versions WHERE version = ?", [cfg.version])
            con.execute("DELETE FROM shard_samples WHERE version = ?", [cfg.version])
            if shard_rows:
                con.register("ss", pa.Table.from_pylist(shard_rows))
                con.execute(
                    "INSERT INTO shard_samples SELECT version, split, shard, key, record_id, taxon_id FROM ss"
                )
            con.execute(
                "INSERT INTO dataset_versions VALUES (?, ?, ?, ?, ?, NULL, ?, ?, ?, ?, ?, ?, ?)",
                [
                    cfg.version,
                    datetime.now(UTC),
                    cfg.where,
                    cfg.seed,
                    dedup_run,
                    len(rows),
                    counts["train"],
                    counts["val"],
                    len(shards),
                    str(root),
                    json.dumps(manifest, default=str),
                    CODE_VERSION,
                ],
            )
        run.n_out = len(rows)
        run.details = {
            "version": cfg.version,
            "train": counts["train"],
            "val": counts["val"],
            "shards": len(shards),
        }
    return manifest


def _manifest(cfg: ShardConfig, rows: list[dict], shards: list[dict], dedup_run: str, counts: dict) -> dict:
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
        "dedup_run": dedup_run,
        "n_samples": len(rows),
        "splits": counts,
        "per_source": count(lambda r: r["source"]),
        "per_kingdom": count(lambda r: r["kingdom"]),
        "per_license": count(lambda r: r["license"]),
        "rank_completeness": {rank: sum(1 for r in rows if r[rank]) for rank in RANKS7},
        "n_taxa": len({r["taxon_id"] for r in rows}),
        "shards": shards,
    }
