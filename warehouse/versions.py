"""Dataset versions: list, show, verify (checksums and sample counts against the manifest)."""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import uuid
from pathlib import Path
from typing import Any

from warehouse.catalog import Catalog, fetch_first
from warehouse.contracts import check_name

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


def verify_version(catalog: Catalog, version: str) -> list[str]:
    """Problems found (empty when the version is intact): checksum or sample-count mismatches."""
    manifest = load_manifest(catalog, version)
    root = version_root(catalog, version)
    problems = []
    for s in manifest["shards"]:
        path = Path(root / s["split"] / s["name"])
        if not path.exists():
            problems.append(f"{s['split']}/{s['name']}: missing")
            continue
        with open(path, "rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()  # streamed: shards can be GBs
        if digest != s["sha256"]:
            problems.append(f"{s['split']}/{s['name']}: sha256 {digest[:12]} != manifest {s['sha256'][:12]}")
        try:
            with tarfile.open(path) as tar:
                n = len({m.name.split(".", 1)[0] for m in tar.getmembers()})
        except (tarfile.TarError, OSError) as exc:
            problems.append(f"{s['split']}/{s['name']}: unreadable tar ({exc})")
            continue
        if n != s["n"]:
            problems.append(f"{s['split']}/{s['name']}: {n} samples != manifest {s['n']}")
    return problems
