"""Task registry and runner: a task names an adapter, a path, a protocol and its options; every value goes to
`eval_results` with the model or run id, and to a JSON file per run and task."""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from evaluation.datasets import (
    LabelledImages,
    detect_adapter,
    load_image_folder,
    load_metadata_folder,
    load_webdataset,
)
from evaluation.emergent import fisher_ratio, orthogonality, separation
from evaluation.fewshot import linear_probe, multi_label_probe, simpleshot
from evaluation.layouts import FISHNET_LABELS, read_darwin_finches, read_fishnet
from evaluation.plots import embedding_maps, variant_directions_3d
from warehouse.catalog import Catalog, fetch_first
from warehouse.contracts import MODEL_SPEC_HELP, TRAINING_TEXT_TYPES, check_name
from warehouse.stage_runs import StageRun
from warehouse.versions import shard_urls
from warehouse.writers import EvalScore, record_scores

DEFAULT_REGISTRY = Path(__file__).with_name("tasks.yaml")


def load_darwin_finches(
    root: str | Path, text_type: str = "asis", cache_dir: Path | None = None
) -> LabelledImages:
    return read_darwin_finches(Path(root))


def load_fishnet_habitat(
    root: str | Path, text_type: str = "asis", cache_dir: Path | None = None
) -> LabelledImages:
    """FishNet's train and test images, classed by habitat: freshwater (1) or not (0)."""
    d = read_fishnet(Path(root))
    col = FISHNET_LABELS.index("freshwater")
    fresh = np.concatenate([d.train_y[:, col], d.test_y[:, col]]).astype(int).tolist()
    paths = [*d.train_paths, *d.test_paths]
    return LabelledImages(
        Path(root), paths, fresh, ["not freshwater", "freshwater"], [{}, {}], [{} for _ in paths]
    )


ADAPTERS: dict[str, Callable[..., LabelledImages]] = {
    "metadata_folder": load_metadata_folder,
    "image_folder": load_image_folder,
    "webdataset": load_webdataset,
    "darwin_finches": load_darwin_finches,
    "fishnet_habitat": load_fishnet_habitat,
}


@dataclass(frozen=True)
class Task:
    name: str
    path: str
    protocol: str
    adapter: str = "metadata_folder"
    text_type: str = "taxon"
    templates: str = "openai"
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_name("task", self.name)  # results are written to eval/<model>/<task>.json
        if self.protocol not in PROTOCOLS:
            raise ValueError(
                f"task {self.name}: unknown protocol {self.protocol!r}; choose one of {sorted(PROTOCOLS)}"
            )
        if self.adapter not in ADAPTERS:
            raise ValueError(
                f"task {self.name}: unknown adapter {self.adapter!r}; choose one of {sorted(ADAPTERS)}"
            )


def load_registry(extra: str | Path | None = None) -> dict[str, Task]:
    tasks: dict[str, Task] = {}
    for path in [DEFAULT_REGISTRY, *([Path(extra)] if extra else [])]:
        doc = yaml.safe_load(Path(path).read_text()) or {}
        for entry in doc.get("tasks", []):
            task = Task(**entry)
            tasks[task.name] = task
    return tasks


MODEL_PREFIXES = ("local-dir:", "hf-hub:")  # what open_clip loads weights from


def resolve_model(catalog: Catalog, spec: str) -> tuple[str, str | None]:
    """(what open_clip loads, the training run id or None). A run id of this home becomes its export; an
    export folder, `local-dir:PATH` and `hf-hub:ORG/NAME` pass as they are. Anything else is an error, not a
    name handed to open_clip (a bare architecture name would load random weights)."""
    with catalog.connect() as con:
        row = fetch_first(con, "SELECT export_path, status FROM training_runs WHERE run_id = ?", [spec])
        runs = [r[0] for r in con.execute("SELECT run_id FROM training_runs").fetchall()]
    if row is not None:
        if not row[0]:
            raise LookupError(f"training run {spec!r} has no export yet (status {row[1]})")
        return row[0], spec
    if spec.startswith(MODEL_PREFIXES) or Path(spec).is_dir():
        return spec, None
    near = difflib.get_close_matches(spec, runs, n=3)
    raise LookupError(
        f"model {spec!r} is not a training run of this home, an export folder, local-dir:PATH or "
        f"hf-hub:ORG/NAME" + (f"; did you mean {', '.join(near)}?" if near else "")
    )


def _features(catalog: Catalog, model, data: LabelledImages, progress: bool) -> np.ndarray:
    from evaluation.zero_shot import image_features

    return image_features(model, data.paths, cache_dir=catalog.home / "cache" / "features", progress=progress)


def _zero_shot(catalog, model, data, task, out_dir, progress) -> dict[str, Any]:
    from evaluation.zero_shot import zero_shot_scores

    scores = zero_shot_scores(
        model, data, task.templates, cache_dir=catalog.home / "cache" / "features", progress=progress
    )
    return {
        f"zero_shot_{task.text_type}_{k}" if k not in ("n", "n_classes") else k: v for k, v in scores.items()
    }


def _few_shot(catalog, model, data, task, out_dir, progress) -> dict[str, Any]:
    feats = _features(catalog, model, data, progress)
    return simpleshot(
        feats, np.array(data.labels), tuple(task.options.get("ks", (1, 5))), task.options.get("folds", 5)
    )


def _linear_probe(catalog, model, data, task, out_dir, progress) -> dict[str, Any]:
    feats = _features(catalog, model, data, progress)
    return linear_probe(
        feats,
        np.array(data.labels),
        task.options.get("train_fraction", 0.5),
        task.options.get("seed", 0),
        task.options.get("c", 1.0),
    )


TRUE = {"1", "true", "yes", "y", "t"}
FALSE = {"0", "false", "no", "n", "f", ""}


def _multi_label(catalog, model, data, task, out_dir, progress) -> dict[str, Any]:
    """FishNet-style binary traits: `options.labels` names the metadata columns (0/1, true/false, yes/no)."""
    columns = task.options.get("labels") or []
    missing = [c for c in columns if not data.extra or c not in data.extra[0]]
    if not columns or missing:
        raise ValueError(f"task {task.name}: options.labels must name metadata columns; missing {missing}")
    targets = np.zeros((len(data.paths), len(columns)), dtype=int)
    for i, row in enumerate(data.extra):
        for j, col in enumerate(columns):
            value = str(row[col]).strip().lower()
            if value not in TRUE | FALSE:
                raise ValueError(f"task {task.name}: {col}={row[col]!r} on row {i} is not a binary label")
            targets[i, j] = value in TRUE
    feats = _features(catalog, model, data, progress)
    return multi_label_probe(
        feats,
        targets,
        task.options.get("train_fraction", 0.5),
        task.options.get("seed", 0),
        task.options.get("c", 1.0),
    )


def _emergent(catalog, model, data, task, out_dir, progress) -> dict[str, Any]:
    column = task.options.get("variant", "life_stage")
    if not data.extra or column not in data.extra[0]:
        raise ValueError(f"task {task.name}: metadata has no {column!r} column")
    feats = _features(catalog, model, data, progress)
    species, variant = np.array(data.labels), np.array([e[column] for e in data.extra])
    out = {
        **separation(feats, species, variant),
        **orthogonality(feats, species, variant, task.options.get("k", 10)),
    }
    if task.options.get("plots"):
        colour = {
            "class": [data.class_lineages[c].get("class") or "(no class)" for c in data.labels],
            column: variant.tolist(),
        }
        paths = embedding_maps(feats, colour, out_dir / "plots")
        paths.append(variant_directions_3d(feats, species, variant, out_dir / "plots" / f"{column}_3d.png"))
        out["plots"] = [str(p) for p in paths]
    return out


def _beak_order(catalog, model, data, task, out_dir, progress) -> dict[str, Any]:
    """Darwin's finches ordered by beak size (our working definition of the paper's observation): the species'
    mean embeddings projected on their first principal component, Spearman's rho against `options.beak_order`
    (species from smallest to largest beak), absolute because a component's sign is arbitrary."""
    from scipy.stats import spearmanr

    order = list(task.options.get("beak_order") or [])
    present = [s for s in order if s in data.classnames]
    if len(present) < 3:
        raise ValueError(
            f"task {task.name}: options.beak_order must name at least 3 species of the folder; "
            f"found {present} among {sorted(data.classnames)}"
        )
    feats = _features(catalog, model, data, progress)
    labels = np.array(data.labels)
    means = np.stack([feats[labels == data.classnames.index(s)].mean(axis=0) for s in present])
    centred = means - means.mean(axis=0)
    pc1 = np.linalg.svd(centred, full_matrices=False)[2][0]
    proj = centred @ pc1
    rho = float(spearmanr(proj, np.arange(len(present))).statistic)
    return {
        "beak_order_rho": abs(rho),
        "beak_order_n_species": len(present),
        "embedding_order": [present[i] for i in np.argsort(proj if rho >= 0 else -proj)],
    }


def _habitat_separation(catalog, model, data, task, out_dir, progress) -> dict[str, Any]:
    """FishNet habitat: the Fisher ratio between freshwater and other fish over all images (higher = more
    separated), and a t-SNE/UMAP map coloured by habitat."""
    feats = _features(catalog, model, data, progress)
    labels = np.array(data.labels)
    if len(set(labels.tolist())) < 2:
        raise ValueError(f"task {task.name}: every image has the same freshwater label")
    paths = embedding_maps(feats, {"habitat": [data.classnames[c] for c in labels]}, out_dir / "plots")
    return {
        "habitat_fdr": fisher_ratio(feats, labels),
        "habitat_n_freshwater": int(labels.sum()),
        "plots": [str(p) for p in paths],
    }


PROTOCOLS: dict[str, Callable[..., dict[str, Any]]] = {
    "beak_order": _beak_order,
    "habitat_separation": _habitat_separation,
    "zero_shot": _zero_shot,
    "few_shot": _few_shot,
    "linear_probe": _linear_probe,
    "emergent": _emergent,
    "multi_label": _multi_label,
}


def task_path(path: str, home: str | Path, data_root: str | Path | None) -> str:
    """A registry path with its two placeholders, `{home}` and `{data_root}`, replaced literally. Never
    `str.format`: a registry is a file others write, and format fields reach attributes and globals."""
    return path.replace("{home}", str(home)).replace("{data_root}", str(data_root or ""))


def run_task(
    catalog: Catalog,
    model_spec: str,
    task: Task,
    *,
    progress: bool = True,
    json_out: str | Path | None = None,
    data_root: str | Path | None = None,
) -> dict[str, Any]:
    """Run one task. A task path may use {home} and {data_root} (the folder given with --data-root)."""
    from evaluation.zero_shot import load_model

    if "{data_root}" in task.path and not data_root:
        raise ValueError(f"task {task.name} reads {task.path}: give --data-root DIR")

    spec, run_id = resolve_model(catalog, model_spec)
    label = run_id or hashlib.sha1(spec.encode()).hexdigest()[:12]
    out_dir = catalog.home / "eval" / label
    with StageRun(catalog, "evaluate", config={"model": spec, "run_id": run_id, **asdict(task)}) as stage:
        data = ADAPTERS[task.adapter](
            task_path(task.path, catalog.home, data_root),
            task.text_type,
            cache_dir=catalog.home / "cache" / "datasets",
        )
        model = load_model(spec)
        scores = PROTOCOLS[task.protocol](catalog, model, data, task, out_dir, progress)
        scores = {
            "task": task.name,
            "protocol": task.protocol,
            "model": spec,
            "run_id": run_id,
            "n": len(data.paths),
            **scores,
        }
        details = {"protocol": task.protocol, "options": task.options}
        record_scores(
            catalog,
            [
                EvalScore(run_id, spec, task.name, metric, float(value), len(data.paths), details)
                for metric, value in scores.items()
                if isinstance(value, float | int) and not isinstance(value, bool) and metric != "n"
            ],
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        text = json.dumps(scores, indent=1, default=str)
        (out_dir / f"{task.name}.json").write_text(text)
        if json_out:
            Path(json_out).write_text(text)
        stage.n_in = stage.n_out = len(data.paths)
        stage.details = {k: v for k, v in scores.items() if not isinstance(v, list)}
    return scores


@dataclass(frozen=True)
class EvaluateOptions:
    """What `tol evaluate` (and the evaluate wiring) is asked: registered tasks, an ad-hoc folder with a
    protocol, or a benchmark suite over a data root."""

    model: str | None = field(default=None, metadata={"help": MODEL_SPEC_HELP})
    task: tuple[str, ...] = field(
        default=(), metadata={"help": "a registered task (repeatable; `?` lists them)"}
    )
    registry: str | None = field(default=None, metadata={"help": "an extra task registry YAML file"})
    suite: str | None = field(
        default=None,
        metadata={
            "help": "run a benchmark suite: every benchmark found under --data-root, with the paper's protocols",
            "choices": ("bioclip2",),
        },
    )
    data_root: str | None = field(
        default=None,
        metadata={
            "help": "--suite: the folder holding the benchmarks (nabirds/, newt/, ...); also what {data_root} "
            "means in a registered task's path"
        },
    )
    data: str | None = field(
        default=None,
        metadata={
            "help": "an ad-hoc dataset instead of --task: metadata.csv folder, ImageFolder tree or .tar shards"
        },
    )
    protocol: str = field(
        default="zero_shot",
        metadata={"help": "the protocol for --data", "choices": tuple(PROTOCOLS)},
    )
    labels: str | None = field(
        default=None,
        metadata={"help": "multi_label: comma-separated binary metadata columns (FishNet-style traits)"},
    )
    variant: str | None = field(
        default=None, metadata={"help": "emergent: the intra-species metadata column (default life_stage)"}
    )
    text_type: str | None = field(
        default=None,
        metadata={
            "help": "class text: asis (the class names) or a caption type; default taxon, asis for an ImageFolder",
            "choices": ("asis", *TRAINING_TEXT_TYPES),
        },
    )
    templates: str = field(
        default="openai", metadata={"help": "zero-shot prompt templates", "choices": ("openai", "single")}
    )
    json: str | None = field(default=None, metadata={"help": "also write the scores to this file"})

    def adhoc(self) -> Task:
        """The ad-hoc task `--data` asks for."""
        options: dict[str, Any] = {}
        if self.labels:
            options["labels"] = [c.strip() for c in self.labels.split(",") if c.strip()]
        if self.variant:
            options["variant"] = self.variant
        return adhoc_task(self.data, self.protocol, self.text_type, self.templates, options)


def adhoc_task(
    data: str,
    protocol: str,
    text_type: str | None = None,
    templates: str = EvaluateOptions.templates,
    options: dict | None = None,
) -> Task:
    """A task for a folder given on the command line; the adapter is detected from what the folder holds.
    `text_type` None means what the data carries: `asis` (folder names) for an ImageFolder, else `taxon`."""
    adapter = detect_adapter(data)
    if adapter == "image_folder" and text_type not in (None, "asis"):
        raise ValueError(
            f"{data} is an ImageFolder tree: its classes are folder names, so --text-type {text_type} cannot be "
            "made from them; leave --text-type out (or asis), or give a metadata.csv with the 7 rank columns"
        )
    if text_type is None:
        text_type = "asis" if adapter == "image_folder" else "taxon"
    return Task(
        name=f"adhoc-{re.sub(r'[^A-Za-z0-9._-]', '_', Path(data).resolve().name)[:80]}-{protocol}",
        path=str(Path(data).resolve()),
        protocol=protocol,
        adapter=adapter,
        text_type=text_type,
        templates=templates,
        options=options or {},
    )


def heldout_name(version: str) -> str:
    return f"heldout-{version}"


def heldout_task(catalog: Catalog, version: str) -> Task:
    """Zero-shot on a dataset version's own held-out (val) split, its shards as written: top-1/top-5 at
    species and the accuracy at each rank (the version carries every caption type). A version without a
    val split has nothing held out: a clear error."""
    urls = shard_urls(catalog, check_name("version", version), "val")
    if not urls:
        raise LookupError(f"version {version} has no held-out (val) shards to evaluate on (val_fraction 0?)")
    return Task(
        name=heldout_name(version),
        path=str(Path(urls[0]).parent),
        protocol="zero_shot",
        adapter="webdataset",
        text_type="taxon",
    )


def compare(catalog: Catalog, models: list[str] | None = None) -> list[dict[str, Any]]:
    """Latest value of each (task, metric) per model or run, one row per metric, models as columns."""
    rows = catalog.query_arrow(
        """SELECT coalesce(run_id, model) AS who, task, metric, value FROM eval_results
           QUALIFY row_number() OVER (PARTITION BY coalesce(run_id, model), task, metric
                                      ORDER BY created_at DESC) = 1
           ORDER BY task, metric"""
    ).to_pylist()
    if models:
        rows = [r for r in rows if r["who"] in models]
    who = sorted(
        {r["who"] for r in rows}, key=lambda w: (models or []).index(w) if models and w in models else 0
    )
    table: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        table.setdefault((r["task"], r["metric"]), {"task": r["task"], "metric": r["metric"]})[r["who"]] = r[
            "value"
        ]
    from evaluation.suite import published_value

    out = [{**row, **{w: row.get(w) for w in who}} for row in table.values()]
    if any(published_value(r["task"], r["metric"]) is not None for r in out):
        # the reference column: the paper's published figures, as fractions like the stored values
        for r in out:
            r["BioCLIP 2 (published)"] = published_value(r["task"], r["metric"])
    return out
