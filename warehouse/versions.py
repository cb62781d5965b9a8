"""Dataset versions: list, show, verify (checksums and sample counts against the manifest)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa

from warehouse.catalog import Catalog, fetch_first
from warehouse.contracts import check_name


class UnitRunner(Protocol):
    """What verify needs of an executor (`etl.executors`, which the warehouse does not import)."""

    def run_units(
        self, fn: Callable[[dict[str, Any]], pa.Table], units: Sequence[dict[str, Any]]
    ) -> Iterator[tuple[int, pa.Table]]: ...


log = logging.getLogger("tol.versions")

BUILDS = ".builds"  # under shards/: one folder per build, `<version>.<fingerprint>`; shards/<version> links


def version_root(catalog: Catalog, version: str) -> Path:
    """The folder of a dataset version, as the catalog records it (the catalog decides what a version is)."""
    check_name("version", version)
    with catalog.connect() as con:
        row = fetch_first(con, "SELECT path FROM dataset_versions WHERE version = ?", [version])
    if row is None:
        raise LookupError(f"no dataset version {version!r} in the catalog")
    return catalog.home / row[0]  # relative to the home; versions built before that hold absolute paths


def link_version(catalog: Catalog, version: str, target: Path) -> Path | None:
    """Point `shards/<version>` at `target` with an atomic rename of a new link. A real folder found there
    (a version built before builds had their own folders) is moved under `.builds`; returns where to."""
    link = catalog.shards / check_name("version", version)
    if link.exists() and link.resolve() == target.resolve():
        return None
    displaced = None
    if link.is_dir() and not link.is_symlink():
        displaced = catalog.shards / BUILDS / f"{version}.legacy-{uuid.uuid4().hex[:8]}"
        displaced.parent.mkdir(parents=True, exist_ok=True)
        link.rename(displaced)
    tmp = catalog.shards / f".{version}.{uuid.uuid4().hex}.link"
    os.symlink(os.path.relpath(target, catalog.shards), tmp)
    os.replace(tmp, link)
    return displaced


def list_versions(catalog: Catalog) -> list[dict[str, Any]]:
    return catalog.query_arrow(
        "SELECT version, created_at, filters, n_samples, n_train, n_val, n_shards FROM dataset_versions "
        "ORDER BY created_at"
    ).to_pylist()


def load_manifest(catalog: Catalog, version: str) -> dict[str, Any]:
    path = version_root(catalog, version) / "manifest.json"
    if not path.exists():
        raise LookupError(f"dataset version {version!r}: {path} is missing")
    return json.loads(path.read_text())


def shard_urls(catalog: Catalog, version: str, split: str = "train") -> list[str]:
    manifest = load_manifest(catalog, version)
    root = version_root(catalog, version) / split
    return [str(root / s["name"]) for s in manifest["shards"] if s["split"] == split]


def verify_shard_unit(unit: dict[str, Any]) -> pa.Table:
    """One shard's check, as a work unit (`{"path", "label", "sha256", "n"}`): its sha256, streamed, and its
    count of samples against the manifest. Returns one row: `label`, `problems` (empty when intact) and
    `bytes` read, so an executor's driver holds a row per shard, never a shard's bytes."""
    path, label = Path(unit["path"]), unit["label"]
    problems: list[str] = []
    size = 0
    if not path.exists():
        problems.append(f"{label}: missing")
    else:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()  # streamed: shards can be GBs
        if digest != unit["sha256"]:
            problems.append(f"{label}: sha256 {digest[:12]} != manifest {unit['sha256'][:12]}")
        try:
            with tarfile.open(path) as tar:
                n = len({m.name.split(".", 1)[0] for m in tar.getmembers()})
        except (tarfile.TarError, OSError) as exc:
            problems.append(f"{label}: unreadable tar ({exc})")
        else:
            if n != unit["n"]:
                problems.append(f"{label}: {n} samples != manifest {unit['n']}")
    return pa.table(
        {
            "label": pa.array([label], pa.string()),
            "problems": pa.array([problems], pa.list_(pa.string())),
            "bytes": pa.array([size], pa.int64()),
        }
    )


def verify_version(catalog: Catalog, version: str, executor: UnitRunner | None = None) -> list[str]:
    """Problems found (empty when the version is intact): missing shards, checksum or sample-count
    mismatches, in the manifest's order. One work unit per shard on `executor` (by default one unit after
    another in this process), so a cluster verifies a corpus's shards in parallel where they lie."""
    manifest = load_manifest(catalog, version)
    root = version_root(catalog, version)
    units = [
        {
            "path": str(root / s["split"] / s["name"]),
            "label": f"{s['split']}/{s['name']}",
            "sha256": s["sha256"],
            "n": s["n"],
        }
        for s in manifest["shards"]
    ]
    found: dict[int, list[str]] = {}
    done_bytes, step, t0 = 0, max(1, len(units) // 10), time.monotonic()
    results = executor.run_units(verify_shard_unit, units) if executor is not None else _in_process(units)
    for i, table in results:
        row = table.to_pylist()[0]
        found[i] = row["problems"]
        done_bytes += row["bytes"]
        if len(found) % step == 0 or len(found) == len(units):
            seconds = time.monotonic() - t0
            log.info(
                "verify %s: %d of %d shards, %.0f MB, %.0f MB/s",
                version,
                len(found),
                len(units),
                done_bytes / 1e6,
                done_bytes / 1e6 / max(seconds, 1e-9),
            )
    return [p for i in sorted(found) for p in found[i]]


def _in_process(units: list[dict[str, Any]]) -> Iterator[tuple[int, pa.Table]]:
    for i, unit in enumerate(units):
        yield i, verify_shard_unit(unit)
