"""The demo's closing summary: per stage rows in/out/dropped by reason, version, training run, scores."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from warehouse.catalog import Catalog


def _filter_lines(*manifests: dict[str, Any]) -> list[str]:
    """Per version, what each filter rule removed (and by image type)."""
    lines = []
    for m in manifests:
        f = m.get("filters") or {}
        if not f.get("rules"):
            continue
        lines.append(f"filters of {m['version']} ({f['removed_total']} removed, {m['n_samples']} kept):")
        for scorer, r in f["removed"].items():
            types = ", ".join(f"{t} {n}" for t, n in r["by_image_type"].items()) or "-"
            lines.append(f"  {scorer:<16}{r['removed']:>5} removed  ({types})")
    return lines


def demo_report(catalog: Catalog, summary: dict[str, Any], since: datetime) -> str:
    with catalog.connect() as con:
        rows = con.execute(
            """SELECT stage || coalesce(':' || (config->>'source'), ''), status, n_in, n_out,
                                     dropped_by_reason, seconds FROM stage_runs
                              WHERE started_at >= ? ORDER BY started_at""",
            [since],
        ).fetchall()
    lines = [
        "",
        "=" * 100,
        "Demo summary",
        "=" * 100,
        f"{'stage':<18}{'status':<11}{'in':>7}{'out':>7}  {'seconds':>8}  dropped by reason",
    ]
    for stage, status, n_in, n_out, dropped, seconds in rows:
        d = json.loads(dropped) if dropped else {}
        reasons = ", ".join(f"{k}={v}" for k, v in d.items()) or "-"
        lines.append(f"{stage:<18}{status:<11}{n_in or 0:>7}{n_out or 0:>7}  {seconds or 0:>8.1f}  {reasons}")
    shard = summary["curate"].get("shard", {})
    tasks, base_tasks = summary["evaluation"], summary["random_init_evaluation"]
    zs, base = tasks["sample-heldout-zero-shot"], base_tasks["sample-heldout-zero-shot"]
    zs = {k.removeprefix("zero_shot_taxon_"): v for k, v in zs.items()}
    base = {k.removeprefix("zero_shot_taxon_"): v for k, v in base.items()}
    lines += [
        "",
        f"dataset version : {shard.get('version')} ({shard.get('n_samples')} samples, "
        f"train {shard.get('splits', {}).get('train')}, val {shard.get('splits', {}).get('val')}, "
        f"{shard.get('n_taxa')} taxa, {shard.get('n_shards')} shards)",
        *_filter_lines(shard, summary.get("museum_filter", {}).get("shard", {})),
        f"training run    : {summary['training_run']} -> {summary['export_path']}",
        f"zero-shot top-1 : {zs['top1']:.3f} on {zs['n']} held-out images, {zs['n_classes']} species "
        f"(chance {zs['chance']:.3f}, {zs['top1'] / zs['chance']:.1f}x chance; top-5 {zs['top5']:.3f})",
        f"random init     : {base['top1']:.3f} ({base['top1'] / base['chance']:.1f}x chance)",
        "per-rank accuracy: "
        + ", ".join(
            f"{k.removeprefix('rank_acc_')} {v:.2f}" for k, v in zs.items() if k.startswith("rank_acc_")
        ),
        "",
        f"{'task metric':<44}{'trained':>10}{'random init':>13}",
        *[
            f"{t.removeprefix('sample-heldout-') + ' ' + k:<44}{v:>10.3f}{base_tasks[t].get(k, float('nan')):>13.3f}"
            for t, r in tasks.items()
            if t != "sample-heldout-zero-shot"
            for k, v in r.items()
            if isinstance(v, float) and not k.endswith("_std")
        ],
        f"plots           : {', '.join(tasks.get('sample-heldout-life-stage', {}).get('plots', [])[:2])} ...",
        f"total seconds   : {summary['seconds']:.0f}",
        'Query the catalog: tol sql "select stage, status, n_in, n_out from stage_runs"',
    ]
    return "\n".join(lines)
