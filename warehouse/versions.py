"""Dataset versions: list, show, verify (checksums and sample counts against the manifest)."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path
from typing import Any

from warehouse.catalog import Catalog


def list_versions(catalog: Catalog) -> list[dict[str, Any]]:
    return catalog.query_arrow(
        "SELECT version, created_at, filters, n_samples, n_train, n_val, n_shards FROM dataset_versions "
        "ORDER BY created_at"
    ).to_pylist()


def load_manifest(catalog: Catalog, version: str) -> dict[str, Any]:
    path = catalog.shards / version / "manifest.json"
    if not path.exists():
        raise LookupError(f"no dataset version {version!r} under {catalog.shards}")
    return json.loads(path.read_text())


def shard_urls(catalog: Catalog, version: str, split: str = "train") -> list[str]:
    manifest = load_manifest(catalog, version)
    root = catalog.shards / version / split
    return [str(root / s["name"]) for s in manifest["shards"] if s["split"] == split]


def verify_version(catalog: Catalog, version: str) -> list[str]:
    """Problems found (empty when the version is intact): checksum or sample-count mismatches."""
    manifest = load_manifest(catalog, version)
    root = catalog.shards / version
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
