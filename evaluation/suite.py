"""`--suite bioclip2`: every benchmark found under a data root, each with the paper's protocol, features
extracted once per image list and cached; results go to `eval_results` as task `bioclip2-<name>`.

Expected layout under the data root (each folder in its benchmark's published layout, see evaluation.layouts):
`nabirds/`, `meta-album/<SET>_Mini/` (PLK, INS, INS_2, PLT_NET, FNG, PLT_VIL, MED_LF), `camera-traps/`,
`rare-species/`, `fishnet/`, `newt/`, `awa2/`, `herbarium19/`, `plantdoc/`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from evaluation import layouts, protocols
from evaluation.fewshot import simpleshot
from evaluation.tasks import resolve_model
from warehouse.stage_runs import StageRun
from warehouse.writers import EvalScore, record_scores

log = logging.getLogger("tol.evaluate.suite")  # under the CLI's `tol` handler, so skips are shown

# BioCLIP 2's published figures (model card, Tables of the paper), in percent.
PUBLISHED_BIOCLIP2 = {
    "nabirds": 74.9,
    "plankton": 3.9,
    "insects": 55.3,
    "insects2": 27.7,
    "camera-traps": 53.9,
    "plantnet": 96.8,
    "fungi": 83.8,
    "plantvillage": 25.1,
    "medleaf": 57.8,
    "rare-species": 76.8,
    "fishnet": 39.8,
    "newt": 89.1,
    "awa2": 69.5,
    "herbarium19": 48.6,
    "plantdoc": 40.4,
}
TABLE_TITLES = {
    "nabirds": "NABirds",
    "plankton": "Plankton",
    "insects": "Insects",
    "insects2": "Insects2",
    "camera-traps": "CamTrap",
    "plantnet": "PlantNet",
    "fungi": "Fungi",
    "plantvillage": "PlantVillage",
    "medleaf": "MedLeaf",
    "rare-species": "Rare",
    "fishnet": "FishNet",
    "newt": "NeWT",
    "awa2": "AwA2",
    "herbarium19": "Herb19",
    "plantdoc": "PlantDoc",
}


@dataclass
class Features:
    """Feature extraction shared by every benchmark of one suite run; counts images embedded (and how fast)
    apart from those read back from the cache."""

    model: Any
    cache_dir: Path
    progress: bool = True
    stats: dict[str, float] = field(default_factory=dict)

    def __call__(self, paths: list[Path], normalize: bool = True) -> np.ndarray:
        from evaluation.zero_shot import image_features

        return image_features(
            self.model,
            paths,
            cache_dir=self.cache_dir,
            progress=self.progress,
            normalize=normalize,
            stats=self.stats,
        )


@dataclass(frozen=True)
class Benchmark:
    name: str
    folder: str
    table: str  # "species" (zero-shot, 1- and 5-shot) or "other"
    headline: str  # the metric set against the paper's figure
    run: Callable[[Path, Features], dict[str, Any]]
    protocol: str  # one line, printed beside the results
    options: dict[str, Any] = field(default_factory=dict)


def _coverage(missing: list[str], n: int) -> dict[str, Any]:
    """What the report says about a benchmark's images: read, listed but absent (and the first few)."""
    return {"n": n, "n_missing": len(missing), "missing_examples": missing[: layouts.MISSING_EXAMPLES]}


def _species_scores(data, feats: Features) -> dict[str, Any]:
    from evaluation.zero_shot import metrics_from_logits, zero_shot_logits

    labels = np.array(data.labels)
    x = feats(data.paths)  # zero-shot below reads the same cached features
    logits = zero_shot_logits(feats.model, data, "openai", cache_dir=feats.cache_dir, progress=False)
    zs = metrics_from_logits(logits, labels, data.class_lineages)
    out = {
        "zero_shot_top1": zs["top1"],
        "zero_shot_top5": zs["top5"],
        **simpleshot(x, labels, (1, 5), 5),
        **_coverage(data.missing, len(data.paths)),
        "n_classes": zs["n_classes"],
    }
    test = np.array([e.get("split") == "test" for e in data.extra], dtype=bool)
    if test.any():  # NABirds: the test split's figure beside the paper's all-images one
        out["zero_shot_top1_test"] = metrics_from_logits(logits[test], labels[test], data.class_lineages)[
            "top1"
        ]
        out["n_test"] = int(test.sum())
    return out


SPECIES_MEANS = ("zero_shot_top1", "zero_shot_top5", "few_shot_k1_acc", "few_shot_k5_acc")


def _species(reader: Callable[[Path], Any]) -> Callable[[Path, Features], dict[str, Any]]:
    """Zero-shot and few-shot on one image set, or on each of several (the camera traps) with the paper's
    figure as the mean over the sets and each set's own figures as `<set>_<metric>`."""

    def run(root: Path, feats: Features) -> dict[str, Any]:
        data = reader(root)
        if not isinstance(data, dict):
            return _species_scores(data, feats)
        per = {name: _species_scores(d, feats) for name, d in data.items()}
        out: dict[str, Any] = {k: float(np.mean([sc[k] for sc in per.values()])) for k in SPECIES_MEANS}
        for name, sc in per.items():
            out.update({f"{name}_{k}": v for k, v in sc.items() if k in (*SPECIES_MEANS, "n", "n_classes")})
        missing = [f"{name}: {m}" for name, d in data.items() for m in d.missing]
        out.update(_coverage(missing, sum(sc["n"] for sc in per.values())))
        out["n_classes"] = sum(sc["n_classes"] for sc in per.values())
        out["sets"] = list(per)
        return out

    return run


def _head(d: layouts.TrainTest, feats: Features, metrics: tuple[str, ...], lr: float) -> dict[str, Any]:
    """The paper's two-layer head on raw (unnormalised) features, as its FishNet and AwA2 code."""
    out = protocols.mlp_head(
        feats(d.train_paths, normalize=False),
        d.train_y,
        feats(d.test_paths, normalize=False),
        d.test_y,
        metrics=metrics,
        lr=lr,
    )
    dropped = {f"dropped {k}": v for k, v in d.dropped.items()}
    n = len(d.train_paths) + len(d.test_paths)
    return {**out, **_coverage(d.missing, n), "n_labels": len(d.label_names), **dropped}


def _fishnet(root: Path, feats: Features) -> dict[str, Any]:
    return _head(layouts.read_fishnet(root), feats, ("all_correct",), 1e-4)


def _awa2(root: Path, feats: Features) -> dict[str, Any]:
    return _head(layouts.read_awa2(root), feats, ("macro_f1", "macro_f1_upstream"), 1e-5)


def _newt(root: Path, feats: Features) -> dict[str, Any]:
    d = layouts.read_newt(root)
    out = protocols.newt_svc(feats(d.paths), d.task, d.label, d.is_train)
    return {**out, **_coverage(d.missing, len(d.paths)), "n_tasks": len(set(d.task.tolist()))}


def _herbarium(root: Path, feats: Features) -> dict[str, Any]:
    d = layouts.read_herbarium19(root)
    out = protocols.gcd_herbarium(feats(d.paths), d.labels, d.old_classes, d.n_classes)
    return {**out, **_coverage(d.missing, len(d.paths)), "n_classes": d.n_classes}


def _plantdoc(root: Path, feats: Features) -> dict[str, Any]:
    d = layouts.read_plantdoc(root)
    xtr, xte = feats(d.train_paths), feats(d.test_paths)
    out = protocols.simpleshot_split(xtr, d.train_y, xte, d.test_y, k=1, repeats=5)
    if d.upstream_y is not None:  # the paper's code: each side numbered on its own
        up = protocols.simpleshot_split(xtr, d.upstream_y[0], xte, d.upstream_y[1], k=1, repeats=5)
        out["k1_acc_upstream"] = up["k1_acc"]
    return {
        **out,
        **_coverage(d.missing, len(d.train_paths) + len(d.test_paths)),
        "n_classes": len(d.label_names),
        "n_classes_train": len(set(d.train_y.tolist())),
        "n_classes_test": len(set(d.test_y.tolist())),
    }


SPECIES_PROTOCOL = "zero-shot, 80 OpenAI templates, {text} text; SimpleShot 1 and 5 shots, 5 folds"


def _meta_album(name: str) -> Benchmark:
    folder = f"meta-album/{layouts.META_ALBUM_MINI[name]}"
    return Benchmark(
        name,
        folder,
        "species",
        "zero_shot_top1",
        _species(layouts.read_meta_album),
        SPECIES_PROTOCOL.format(text="asis"),
    )


# In the paper's column order.
BIOCLIP2: tuple[Benchmark, ...] = (
    Benchmark(
        "nabirds",
        "nabirds",
        "species",
        "zero_shot_top1",
        _species(layouts.read_nabirds),
        SPECIES_PROTOCOL.format(text="asis") + "; all images (test split beside)",
    ),
    *(_meta_album(n) for n in ("plankton", "insects", "insects2")),
    Benchmark(
        "camera-traps",
        "camera-traps",
        "species",
        "zero_shot_top1",
        _species(layouts.read_camera_traps),
        SPECIES_PROTOCOL.format(text="taxon_com") + "; each set apart, mean of the sets",
    ),
    *(_meta_album(n) for n in ("plantnet", "fungi", "plantvillage", "medleaf")),
    Benchmark(
        "rare-species",
        "rare-species",
        "species",
        "zero_shot_top1",
        _species(layouts.read_rare_species),
        SPECIES_PROTOCOL.format(text="taxon_com"),
    ),
    Benchmark(
        "fishnet",
        "fishnet",
        "other",
        "all_correct",
        _fishnet,
        "MLP head on raw features, 9 traits, BCE, Adam 1e-4, 50 epochs, 3 runs; all traits correct",
    ),
    Benchmark(
        "newt",
        "newt",
        "other",
        "micro_acc",
        _newt,
        "per task: SVC with randomised search (100 draws), 3 runs; micro-accuracy",
    ),
    Benchmark(
        "awa2",
        "awa2",
        "other",
        "macro_f1",
        _awa2,
        "MLP head on raw features, 85 attributes, Adam 1e-5, 50 epochs, 3 runs; macro-F1",
    ),
    Benchmark(
        "herbarium19",
        "herbarium19",
        "other",
        "acc_all",
        _herbarium,
        "semi-supervised k-means, k = all classes, 80% of Old images labelled, 3 runs; clustering accuracy",
    ),
    Benchmark(
        "plantdoc",
        "plantdoc",
        "other",
        "k1_acc",
        _plantdoc,
        "SimpleShot, 1 shot per class, 5 repeats, whole test side (upstream's per-side ids beside)",
    ),
)
SUITES = {"bioclip2": BIOCLIP2}


def run_suite(
    catalog, model_spec: str, data_root: str | Path, suite: str = "bioclip2", *, progress: bool = True
) -> dict[str, Any]:
    """Run every benchmark of `suite` whose folder exists under `data_root`; absent ones are logged and
    listed under `skipped`. A benchmark whose folder is there but wrong is listed under `failed` with its
    LayoutError's message, and the others still run."""
    from evaluation.zero_shot import load_model

    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; choose one of {sorted(SUITES)}")
    root = Path(data_root)
    if not root.is_dir():
        raise FileNotFoundError(f"--data-root {root} is not a folder")
    spec, run_id = resolve_model(catalog, model_spec)
    results: dict[str, dict[str, Any]] = {}
    skipped: list[str] = []
    failed: dict[str, str] = {}
    start = time.perf_counter()
    with StageRun(
        catalog, "evaluate", config={"model": spec, "run_id": run_id, "suite": suite, "data_root": str(root)}
    ) as stage:
        feats = Features(load_model(spec), catalog.home / "cache" / "features", progress)
        for b in SUITES[suite]:
            folder = root / b.folder
            if not folder.is_dir():
                log.info("%s: skipped, no %s", b.name, folder)
                skipped.append(b.name)
                continue
            t0 = time.perf_counter()
            try:
                scores = b.run(folder, feats)
            except (layouts.LayoutError, ValueError) as e:
                # one malformed benchmark folder must not cost the others their results
                log.error("%s: failed: %s", b.name, e)
                failed[b.name] = str(e)
                continue
            scores["seconds"] = round(time.perf_counter() - t0, 2)
            results[b.name] = scores
            log.info(
                "%s: %s %.4f (%d images read, %d listed but missing)",
                b.name,
                b.headline,
                scores[b.headline],
                scores.get("n", 0),
                scores.get("n_missing", 0),
            )
            record_scores(
                catalog,
                [
                    EvalScore(
                        run_id,
                        spec,
                        f"{suite}-{b.name}",
                        k,
                        float(v),
                        int(scores.get("n", 0)),
                        {"suite": suite},
                    )
                    for k, v in scores.items()
                    if isinstance(v, int | float) and not isinstance(v, bool) and k != "n"
                ],
            )
        stage.n_in, stage.n_out = len(results) + len(failed), len(results)
        summary = {
            "suite": suite,
            "model": spec,
            "run_id": run_id,
            "results": results,
            "skipped": skipped,
            "failed": failed,
            "images_embedded": int(feats.stats.get("embedded", 0)),
            "images_from_cache": int(feats.stats.get("cached", 0)),
            "images_per_second": (
                round(feats.stats["embedded"] / feats.stats["embed_seconds"], 1)
                if feats.stats.get("embed_seconds")
                else None
            ),
            "total_seconds": round(time.perf_counter() - start, 1),
        }
        stage.details = {k: v for k, v in summary.items() if k != "results"}
    label = run_id or hashlib.sha1(spec.encode()).hexdigest()[:12]
    out = catalog.home / "eval" / label
    out.mkdir(parents=True, exist_ok=True)

    (out / f"suite-{suite}.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


def benchmark_table(summary: dict[str, Any]) -> str:
    """One line per benchmark of a suite run: images read, images listed but missing, classes, headline and
    protocol; skipped and failed benchmarks say so."""
    lines = ["benchmark | images read | listed, missing | classes | headline | protocol"]
    for b in SUITES[summary["suite"]]:
        if b.name in summary["results"]:
            r = summary["results"][b.name]
            missing = str(r.get("n_missing", 0))
            if r.get("missing_examples"):
                missing += f" (first: {r['missing_examples'][0]})"
            head = f"{b.headline} {100 * r[b.headline]:.1f}"
            classes = next(
                (
                    f"{r[k]}{unit}"
                    for k, unit in (("n_classes", ""), ("n_labels", " labels"), ("n_tasks", " tasks"))
                    if k in r
                ),
                "-",
            )
            cells = [str(r.get("n", "-")), missing, classes, head]
        elif b.name in summary["failed"]:
            cells = ["-", "-", "-", f"failed: {summary['failed'][b.name]}"]
        else:
            cells = ["-", "-", "-", "skipped: folder absent"]
        lines.append(" | ".join([TABLE_TITLES[b.name], *cells, b.protocol]))
    return "\n".join(lines) + "\n"


def paper_tables(rows: dict[str, dict[str, float | None]], suite: str = "bioclip2") -> str:
    """The paper's two tables, in percent: one line per model (rows: label -> benchmark -> headline value as a
    fraction, None when absent), with the published BioCLIP 2 figures as the last line. Means only over a
    complete row; a row missing benchmarks shows `-` and no mean."""
    lines = []
    for table, metric_label in (("species", "zero-shot top-1"), ("other", "headline metric")):
        names = [b.name for b in SUITES[suite] if b.table == table]
        header = ["model", *(TABLE_TITLES[n] for n in names), "Mean"]
        lines.append(f"{table} benchmarks, {metric_label} (%)")
        lines.append(" | ".join(header))
        all_rows = {**rows, "BioCLIP 2 (published)": {n: PUBLISHED_BIOCLIP2[n] / 100 for n in names}}
        for who, vals in all_rows.items():
            got = [vals.get(n) for n in names]
            cells = ["-" if v is None else f"{100 * v:.1f}" for v in got]
            mean = f"{100 * np.mean(got):.1f}" if all(v is not None for v in got) else "-"
            lines.append(" | ".join([who, *cells, mean]))
        lines.append("")
    return "\n".join(lines)


def published_value(task: str, metric: str, suite: str = "bioclip2") -> float | None:
    """The published BioCLIP 2 figure (a fraction) for a suite task's headline metric, else None."""
    heads = {f"{suite}-{b.name}": (b.name, b.headline) for b in SUITES.get(suite, ())}
    name, head = heads.get(task, (None, None))
    return PUBLISHED_BIOCLIP2[name] / 100 if name and metric == head else None


def headline_rows(
    summaries: list[dict[str, Any]], suite: str = "bioclip2"
) -> dict[str, dict[str, float | None]]:
    heads = {b.name: b.headline for b in SUITES[suite]}
    return {
        s["run_id"] or s["model"]: {n: s["results"].get(n, {}).get(h) for n, h in heads.items()}
        for s in summaries
    }


def suite_report(summary: dict[str, Any]) -> str:
    """What `tol evaluate --suite` prints: the per-benchmark table, the paper's two tables, and a last line
    on what was skipped and how fast the images were embedded."""
    return "\n".join(
        [
            benchmark_table(summary),
            paper_tables(headline_rows([summary], summary["suite"]), summary["suite"]),
            f"skipped (absent): {', '.join(summary['skipped']) or 'none'}; "
            f"{summary['images_embedded']} images embedded at {summary['images_per_second']} images/s, "
            f"{summary['images_from_cache']} read from the feature cache; {summary['total_seconds']} s in all",
        ]
    )
