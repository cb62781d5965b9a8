"""A dataset card for every version: `README.md` beside its manifest, in the layout users know from dataset
hubs. Every figure comes from the version's own build plan (one row per sample) and manifest, and the
dedup run it was built from, so the card's counts are the catalog's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb

from warehouse.catalog import Catalog
from warehouse.tables import sql_path


def _table(rows: list[tuple], header: tuple[str, ...], total: int | None = None) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [str(c) for c in row]
        if total:
            cells.append(f"{100 * row[-1] / total:.1f}%")
        out.append("| " + " | ".join(cells) + " |")
    return out


def _counts(con: duckdb.DuckDBPyConnection, plan: Path, column: str) -> list[tuple]:
    return con.execute(
        f"SELECT coalesce(CAST({column} AS VARCHAR), 'unknown') AS v, count(*) AS n "
        f"FROM read_parquet({sql_path(plan)}) GROUP BY 1 ORDER BY n DESC, v"
    ).fetchall()


def dedup_removals(catalog: Catalog, dedup_run: str) -> list[tuple]:
    """(reason, images) the dedup run removed: exact and near duplicates, leaks per evaluation set."""
    with catalog.connect() as con:
        return con.execute(
            "SELECT reason, count(*) AS n FROM dedup_decisions_as_of(?) WHERE NOT kept GROUP BY 1 ORDER BY n DESC, reason",
            [dedup_run],
        ).fetchall()


def render_card(catalog: Catalog, manifest: dict[str, Any], plan: Path) -> str:
    """The card's Markdown for a version whose build plan is `plan`."""
    v, n = manifest["version"], manifest["n_samples"]
    con = duckdb.connect()
    try:
        by = {
            c: _counts(con, plan, c)
            for c in ("source", "kingdom", "license", "image_type", "img_type", "match_type")
        }
    finally:
        con.close()
    filters = manifest.get("filters") or {}
    removed = dedup_removals(catalog, manifest["dedup_run"])
    splits = manifest.get("splits", {})
    lines = [
        "---",
        f"pretty_name: {v}",
        "task_categories: [zero-shot-image-classification]",
        "tags: [biology, tree-of-life, bioclip, webdataset]",
        f"license: other  # per image: see the licence table ({len(by['license'])} licences)",
        "---",
        "",
        f"# {v}",
        "",
        f"{n} images of {manifest.get('n_taxa', '?')} taxa in {len(manifest.get('shards', []))} WebDataset shards "
        f"(train {splits.get('train', 0)}, val {splits.get('val', 0)}), built {manifest.get('created_at', '?')} "
        f"by code {manifest.get('code_version', '?')}.",
        "",
        "## Lineage",
        "",
        f"- backbone(s): {', '.join(manifest.get('backbone_versions') or []) or '?'}",
        f"- resolve run: `{manifest.get('resolve_run')}`",
        f"- dedup run: `{manifest.get('dedup_run')}`",
        f"- filter run: `{filters.get('filter_run') or 'none'}`",
        f"- selection: `{(manifest.get('config') or {}).get('where') or 'every kept image'}`",
        "",
        "## Images by source",
        "",
        *_table(by["source"], ("source", "images", "share"), n),
        "",
        "## Images by kingdom",
        "",
        *_table(by["kingdom"], ("kingdom", "images", "share"), n),
        "",
        "## Licences",
        "",
        *_table(by["license"], ("licence", "images", "share"), n),
        "",
        "## Image types",
        "",
        "The filter stage's label (`image_type`; `unknown` when no filter run scored the image) and the source's "
        "own (`img_type`).",
        "",
        *_table(by["image_type"], ("image_type", "images", "share"), n),
        "",
        *_table(by["img_type"], ("img_type", "images", "share"), n),
        "",
        "## How names were resolved",
        "",
        *_table(by["match_type"], ("match", "images", "share"), n),
        "",
        "Ranks present (images with a name at each rank): "
        + ", ".join(f"{r} {c}" for r, c in (manifest.get("rank_completeness") or {}).items()),
        "",
        "## Left out",
        "",
        "By the dedup run (decisions, not deletions: `dedup_decisions_as_of` in the catalog):",
        "",
        *(_table(removed, ("reason", "images")) if removed else ["none"]),
        "",
        f"By takedown requests: {manifest.get('taken_down', 0)} images (`tol takedown affected`).",
        "",
        f"By the version's filter rules ({filters.get('removed_total', 0)} images):",
        "",
        *(
            _table(
                [(k, r["removed"], r.get("by_image_type") or "-") for k, r in filters["removed"].items()],
                ("scorer", "images", "by image type"),
            )
            if filters.get("removed")
            else ["none"]
        ),
        "",
        "## Loading",
        "",
        "```python",
        "import webdataset as wds",
        f'ds = wds.WebDataset("{v}/train/shard-{{00000..{max(0, splits_count(manifest, "train") - 1):05d}}}.tar")'
        '.decode("pil").to_tuple("jpg", "taxon_com.txt")',
        "```",
        "",
        "open_clip's trainer reads the same shards: `--dataset-type webdataset --train-data "
        f"'{v}/train/shard-{{00000..{max(0, splits_count(manifest, 'train') - 1):05d}}}.tar' "
        f"--train-num-samples {splits.get('train', 0)}` (captions in the plain `txt` member; `train/sizes.json` "
        "lists each shard's count).",
        "",
    ]
    return "\n".join(lines)


def splits_count(manifest: dict[str, Any], split: str) -> int:
    return sum(1 for s in manifest.get("shards", []) if s.get("split") == split)
