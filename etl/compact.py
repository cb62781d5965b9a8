"""The compaction stage: small lake parts merged into parts of bounded size, each merge a work unit.

What a merge is, and why no reader ever sees a half-done one, is `warehouse.compaction`; this stage lists
the merges, runs them on an executor (part paths in, a path and a row count out) and swaps each part in as
its unit returns."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from etl.executors import LOCAL, ExecutorConfig
from warehouse.catalog import COMPACTED_PREFIX, Catalog
from warehouse.compaction import (
    CompactionConfig,
    Part,
    merge_unit,
    plan_groups,
    remove_unlisted,
    swap,
    sweep,
    visible_parts,
)
from warehouse.schemas import LAKE_TABLES
from warehouse.stage_runs import StageRun

log = logging.getLogger("tol.compact")


def run_compaction(
    catalog: Catalog,
    cfg: CompactionConfig | None = None,
    *,
    executor: ExecutorConfig = LOCAL,
) -> dict[str, Any]:
    """Merge the small parts of the chosen lake tables (see the module's docstring) as one `compact` stage
    run (n_in: parts merged, n_out: parts written), after deleting what earlier compactions retired more
    than `grace_seconds` ago. Each merge is a work unit on the executor (part paths in, a path and a row
    count out); the driver checks the count and swaps the part in as each unit returns."""
    cfg = cfg or CompactionConfig()
    with StageRun(catalog, "compact", config=cfg) as run:
        removed = sweep(catalog, cfg.grace_seconds)
        units: list[dict[str, Any]] = []
        groups: list[list[Part]] = []
        before: dict[str, int] = {}
        for table in cfg.tables or tuple(LAKE_TABLES):
            removed += remove_unlisted(catalog, table)
            folders = visible_parts(catalog, table)
            before[table] = sum(len(v) for v in folders.values())
            for parts in folders.values():
                for group in plan_groups(parts, cfg):
                    groups.append(group)
                    units.append({
                        "home": str(catalog.home),
                        "table": table,
                        "parts": [p.rel for p in group],
                        "name": f"{COMPACTED_PREFIX}{run.run_id}-{uuid.uuid4().hex[:8]}",
                    })  # fmt: skip
        merged: dict[str, list[int]] = {}  # table -> [parts merged, parts written]
        t0 = time.perf_counter()
        for i, result in executor.build().run_units(merge_unit, units):
            table, group = units[i]["table"], groups[i]
            path, rows = result.column("path")[0].as_py(), result.column("rows")[0].as_py()
            if rows != sum(p.rows for p in group):  # never swap in a part that lost or gained rows
                (catalog.home / path).unlink(missing_ok=True)
                raise RuntimeError(
                    f"compaction of {path}: {rows} rows written, {sum(p.rows for p in group)} expected"
                )
            swap(catalog, table, path, group)
            counts = merged.setdefault(table, [0, 0])
            counts[0] += len(group)
            counts[1] += 1
            log.info("%s: %d parts (%d rows) merged into %s", table, len(group), rows, path)
        if cfg.grace_seconds == 0:  # nobody is to be waited for: what was just retired goes now
            removed += sweep(catalog, 0)
        run.n_in = sum(m[0] for m in merged.values())
        run.n_out = sum(m[1] for m in merged.values())
        run.details = {
            "tables": {
                t: {"parts_before": before[t], "parts_after": before[t] - m[0] + m[1]}
                for t, m in merged.items()
            },
            "files_removed": removed,
            "merge_seconds": round(time.perf_counter() - t0, 2),
        }
    return run.summary()
