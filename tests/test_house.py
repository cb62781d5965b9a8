"""The floor plan holds: what each room may import, catalog writes only in warehouse/, shared facts defined
once, one vocabulary of drop reasons, explicit lineage, and errors where there were silent fallbacks."""

from __future__ import annotations

import ast
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from warehouse.catalog import open_catalog
from warehouse.contracts import DROP_REASONS, reason_key

ROOT = Path(__file__).resolve().parents[1]

# Room -> the rooms of ours it may import (besides itself). The README's layout section shows the same table.
MAY_IMPORT: dict[str, set[str]] = {
    "etl": set(),  # the package itself: a docstring
    "warehouse": set(),
    "etl.http": {"warehouse.contracts"},  # the shared facts: `redact`
    "etl.executors": {"warehouse.contracts"},  # the shared bounds (MAX_WORKERS)
    "etl.ingest": {"etl.http", "warehouse"},
    "etl.fetch": {"etl.http", "etl.executors", "warehouse"},
    "etl.compact": {"etl.executors", "warehouse"},
    "etl.dedup": {"etl.fetch.images", "warehouse"},
    "etl.filter": {
        "etl.executors",
        "etl.fetch.images",
        "evaluation.tasks",
        "evaluation.zero_shot",
        "warehouse",
    },
    "etl.shards": {"etl.executors", "etl.filter.rules", "taxonomy.captions", "warehouse"},
    "taxonomy": {"warehouse"},
    "training": {"warehouse"},
    "evaluation": {"taxonomy.captions", "warehouse"},  # never etl: etl.filter imports evaluation
    "sample_world": {"warehouse.contracts"},
    "flows": {"*"},
}
OURS = ("etl", "taxonomy", "training", "evaluation", "warehouse", "sample_world", "flows")


def _modules() -> dict[str, Path]:
    out = {}
    for top in OURS:
        for path in (ROOT / top).rglob("*.py"):
            rel = path.relative_to(ROOT).with_suffix("")
            out[".".join(p for p in rel.parts if p != "__init__")] = path
    return out


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}  # `from warehouse import writers`
    return found


def _room(module: str) -> str:
    return max((r for r in MAY_IMPORT if module == r or module.startswith(r + ".")), key=len)


def test_each_room_imports_only_what_it_may():
    modules = _modules()
    wrong = []
    for module, path in modules.items():
        room = _room(module)
        allowed = MAY_IMPORT[room]
        for name in _imports(path):
            if name.split(".")[0] not in OURS or (
                name not in modules and name.rsplit(".", 1)[0] not in modules
            ):
                if name.split(".")[0] in ("prefect", "pyspark"):
                    ok = room == "flows" or (name.startswith("pyspark") and module == "etl.executors.spark")
                    if not ok:
                        wrong.append(f"{module} imports {name}")
                continue
            target = name if name in modules else name.rsplit(".", 1)[0]
            if "*" in allowed or _room(target) == room:
                continue
            if not any(target == a or target.startswith(a + ".") for a in allowed):
                wrong.append(f"{module} ({room}) imports {target}")
    assert wrong == []


def _room_graph() -> dict[str, set[str]]:
    """Which top rooms (etl, evaluation, ...) import which others, by the module-level and function-level
    imports of their files alike."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        top = module.split(".")[0]
        for name in _imports(path):
            other = name.split(".")[0]
            if other in OURS and other != top and other != "flows":
                graph.setdefault(top, set()).add(other)
    return graph


def test_no_two_rooms_import_each_other():
    graph = _room_graph()
    cycles = sorted(f"{a} <-> {b}" for a in graph for b in graph[a] if a < b and a in graph.get(b, set()))
    assert cycles == []
    assert "etl" not in graph.get("evaluation", set()), (
        "evaluation imports etl: the arrow runs etl -> evaluation"
    )


CATALOG_TABLES = [
    "stage_runs",
    "taxa",
    "backbones",
    "dataset_versions",
    "shard_samples_stored",
    "training_runs",
    "ingest_checkpoints",
    "eval_results",
]


def test_catalog_writes_live_in_warehouse():
    dml = re.compile(
        r"\b(INSERT(\s+OR\s+REPLACE)?\s+INTO|UPDATE|DELETE\s+FROM|ALTER\s+TABLE|DROP\s+TABLE)\s+("
        + "|".join(CATALOG_TABLES)
        + r")\b",
        re.IGNORECASE,
    )
    offenders = [
        f"{path.relative_to(ROOT)}: {m.group(0)}"
        for module, path in _modules().items()
        if not module.startswith("warehouse")
        for m in dml.finditer(path.read_text())
    ]
    assert offenders == []


def test_lake_parts_are_written_only_through_the_warehouse():
    offenders = [
        str(path.relative_to(ROOT))
        for module, path in _modules().items()
        if not module.startswith("warehouse") and re.search(r"\.lake\s*/\s*\"", path.read_text())
    ]
    # The backbone keeps its raw checklist copies beside the lake tables; nothing else builds lake paths.
    assert offenders == ["taxonomy/backbone.py"]


def test_shared_facts_are_stated_once():
    ranks = re.compile(
        r"""["']kingdom["'],\s*["']phylum["'],\s*["']class["'],\s*["']order["'],\s*["']family"""
    )
    sources = re.compile(r"""["']gbif["'],\s*["']eol["'],\s*["']bioscan["']""")
    for pattern in (ranks, sources):
        holders = [str(p.relative_to(ROOT)) for p in _modules().values() if pattern.search(p.read_text())]
        assert holders == ["warehouse/contracts.py"], pattern.pattern


def test_every_recorded_drop_reason_is_in_the_vocabulary(curated):
    queries = [
        "SELECT DISTINCT drop_reason FROM raw_records WHERE drop_reason IS NOT NULL",
        "SELECT DISTINCT status FROM images WHERE status <> 'ok'",
        "SELECT DISTINCT reason FROM dedup_decisions WHERE reason IS NOT NULL",
        "SELECT DISTINCT unnest(json_keys(dropped_by_reason)) FROM stage_runs",
    ]
    seen = set()
    with curated.connect(read_only=True) as con:
        for q in queries:
            seen |= {r[0] for r in con.execute(q).fetchall()}
        view = dict(con.execute("SELECT reason, meaning FROM drop_reasons").fetchall())
    assert len(seen) >= 12  # the sample world plants reasons of every stage
    assert {reason_key(r) for r in seen} <= set(DROP_REASONS)
    assert {reason_key(r) for r in seen} >= {"http_status", "eval_leak", "no_media_url", "unresolved"}
    assert view == {k: v.meaning for k, v in DROP_REASONS.items()}
    assert {r.stage for r in DROP_REASONS.values()} == {"ingest", "resolve", "fetch", "dedup", "shard"}


def test_an_unknown_drop_reason_is_refused(catalog):
    from warehouse.stage_runs import StageRun

    with pytest.raises(ValueError, match="not a drop reason"), StageRun(catalog, "fetch") as run:
        run.drop("http_404")
        run.drop("eval_leak:heldout")
        run.drop("something_new")
    with pytest.raises(ValueError):
        reason_key("http_99")


def test_lake_writes_are_typed(catalog):
    import pyarrow as pa

    rows = pa.table(
        {
            "eval_set": ["s"],
            "path": ["a.jpg"],
            "md5": ["x"],
            "phash": [1],
            "pdq_hex": ["0" * 64],
            "pdq_quality": [100],
            "run_id": ["r"],
        }
    )
    part = catalog.write_part("eval_hashes", rows, partition={"set": "s"}, part="hashes")
    assert part == catalog.lake / "eval_hashes" / "set=s" / "hashes.parquet"
    with pytest.raises(ValueError, match="partitioned by"):
        catalog.write_part("eval_hashes", rows, partition={"run": "s"}, part="hashes")
    with pytest.raises(ValueError, match="never a path"):
        catalog.write_part("eval_hashes", rows, partition={"set": "../x"}, part="hashes")
    with pytest.raises(ValueError, match="lack column"):
        catalog.write_part("eval_hashes", rows.drop_columns(["md5"]), partition={"set": "s"}, part="p")
    with pytest.raises(ValueError, match="no lake table"):
        catalog.write_part("images", rows, partition={"source": "gbif"}, part="p")


# Explicit lineage ---------------------------------------------------------------------------------------


def test_a_version_records_the_runs_it_was_built_from(curated):
    with curated.connect(read_only=True) as con:
        row = con.execute(
            "SELECT dedup_run_id, resolve_run_id, backbone_version, manifest FROM dataset_versions"
            " WHERE version = 't1'"
        ).fetchall()[0]
        runs = dict(con.execute("SELECT run_id, stage FROM stage_runs WHERE status = 'succeeded'").fetchall())
        backbones = [r[0] for r in con.execute("SELECT backbone_version FROM backbones").fetchall()]
    dedup_run, resolve_run, backbone, manifest = row
    assert runs[dedup_run] == "dedup" and runs[resolve_run] == "resolve"
    assert backbone in backbones
    manifest = __import__("json").loads(manifest)
    assert (manifest["dedup_run"], manifest["resolve_run"]) == (dedup_run, resolve_run)
    assert manifest["backbone_versions"] == [backbone]


def test_shard_takes_its_input_runs_as_arguments(curated, tmp_path):
    from etl.dedup.stage import DedupConfig
    from etl.shards.stage import ShardConfig
    from flows import stages

    shutil.copytree(curated.home, tmp_path / "home", symlinks=True)
    home = open_catalog(tmp_path / "home")
    first = home.query_arrow("SELECT dedup_run_id FROM dataset_versions WHERE version = 't1'")[0][0].as_py()
    stages.dedup(home, DedupConfig(near_k=0))  # a later dedup run, which keeps more near duplicates
    latest = stages.shard(home, ShardConfig("latest", samples_per_shard=64))
    pinned = stages.shard(home, ShardConfig("pinned", samples_per_shard=64), dedup_run=first)
    assert pinned["dedup_run"] == first and latest["dedup_run"] != first
    assert latest["n_samples"] > pinned["n_samples"]
    with pytest.raises(LookupError, match="no stage run 'dedup-nope'"):
        stages.shard(home, ShardConfig("x"), dedup_run="dedup-nope")
    with pytest.raises(ValueError, match="not a succeeded dedup run"):
        stages.shard(home, ShardConfig("x"), dedup_run=latest_resolve(home))
    lineage = home.query_arrow(
        "SELECT dedup_reason, count(*) AS n FROM record_lineage GROUP BY 1 ORDER BY 1"
    ).to_pylist()
    assert {r["dedup_reason"] for r in lineage} >= {None, "exact_duplicate", "no_hash"}


def latest_resolve(catalog) -> str:
    from warehouse.stage_runs import succeeded_run

    return succeeded_run(catalog, "resolve")


# Errors instead of fallbacks -------------------------------------------------------------------------------


def test_a_mistyped_precision_or_device_is_refused():
    from training.config import load_config

    with pytest.raises(ValueError, match="precision must be one of"):
        load_config(preset="cpu-tiny", overrides={"precision": "bf61"})
    with pytest.raises(ValueError, match="device must be"):
        load_config(preset="cpu-tiny", overrides={"device": "gpu"})


def test_bioscan_without_a_path_or_url_says_so(catalog):
    from etl.ingest.sources import IngestConfig
    from flows import stages

    with pytest.raises(ValueError, match="bioscan has no public API"):
        stages.ingest(catalog, IngestConfig("bioscan"))


def test_a_mistyped_model_is_not_handed_to_open_clip(curated):
    from evaluation.tasks import resolve_model

    with pytest.raises(LookupError, match="is not a training run of this home"):
        resolve_model(curated, "ViT-B-16")
    with curated.connect() as con:
        con.execute(
            "INSERT INTO training_runs (run_id, status) VALUES ('train-kept-going', 'running')"
        )  # a row as a crashed run leaves it (written here, in the test, on purpose)
    with pytest.raises(LookupError, match="did you mean train-kept-going"):
        resolve_model(curated, "train-kept-goign")
    with pytest.raises(LookupError, match="has no export yet"):
        resolve_model(curated, "train-kept-going")
    with curated.connect() as con:
        con.execute("DELETE FROM training_runs WHERE run_id = 'train-kept-going'")


def test_a_text_type_an_image_folder_cannot_give_is_refused(tmp_path):
    from PIL import Image

    from evaluation.tasks import adhoc_task

    for name in ("Felis catus", "Canis lupus"):
        (tmp_path / "tree" / name).mkdir(parents=True)
        Image.new("RGB", (32, 32)).save(tmp_path / "tree" / name / "a.jpg")
    assert adhoc_task(str(tmp_path / "tree"), "zero_shot").text_type == "asis"
    with pytest.raises(ValueError, match="ImageFolder tree"):
        adhoc_task(str(tmp_path / "tree"), "zero_shot", text_type="taxon")


def test_a_fetch_whose_rows_all_hit_a_bug_fails_loudly_and_keeps_its_rows(catalog, server, monkeypatch):
    from etl.fetch import stage as fetch_mod
    from etl.fetch.stage import FailureRateError, FetchConfig
    from etl.ingest.sources import IngestConfig
    from flows import stages
    from flows.stages import ExecutorConfig

    stages.ingest(catalog, IngestConfig("bioscan", api_url=server.base_url, allow_private_hosts=True))

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in the image code")

    monkeypatch.setattr(fetch_mod, "process_image", broken)
    cfg = FetchConfig(allow_private_hosts=True, partition_rows=16)
    with pytest.raises(FailureRateError, match="internal_error"):
        stages.fetch(catalog, cfg, ExecutorConfig(workers=1))
    monkeypatch.undo()
    with catalog.connect() as con:
        status, message = con.execute(
            "SELECT status, message FROM stage_runs WHERE stage = 'fetch'"
        ).fetchall()[0]
        bugs = con.execute("SELECT count(*) FROM images WHERE status = 'internal_error'").fetchall()[0][0]
    assert status == "failed" and "--retry-failed" in message and bugs >= 16
    again = stages.fetch(catalog, replace(cfg, retry_failed=True), ExecutorConfig(workers=1))
    assert again["n_in"] == bugs and again["dropped"].get("internal_error", 0) == 0


def test_curation_processes_do_not_import_torch():
    """torch (about 1 GB resident) belongs to training and evaluation; a curation command or worker that
    imported it would pay that floor in every process."""
    import subprocess
    import sys

    modules = ["flows.cli", "flows.stages", "etl.ingest.stage", "etl.fetch.stage", "etl.dedup.stage",
               "etl.filter.stage", "etl.shards.stage", "taxonomy.resolve", "etl.executors.local"]  # fmt: skip
    code = f"import sys\nfor m in {modules!r}: __import__(m)\nprint(sorted({{'torch', 'webdataset'}} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_part_written_by_a_query_has_its_table_schema(catalog):
    import duckdb
    import pyarrow.parquet as pq

    from warehouse.schemas import RESOLUTIONS

    row = """SELECT 'r1' AS record_id, NULL AS taxon_id, 'none' AS match_type, 0 AS confidence,
                    NULL AS query_name, NULL AS reason, 'b1' AS backbone_version, 'resolve-x' AS run_id,
                    NULL AS payload_hash"""
    n = catalog.write_part_from_query("resolutions_history", row, partition={"run": "resolve-x"}, part="p0")
    (path,) = (catalog.lake / "resolved" / "run=resolve-x").glob("*.parquet")
    written = [(f.name, f.type) for f in pq.read_schema(path)]
    assert n == 1 and written == [(f.name, f.type) for f in RESOLUTIONS]  # an int became float32, NULLs typed
    with pytest.raises(duckdb.BinderException):  # a missing column is an error, not a NULL column
        catalog.write_part_from_query(
            "resolutions_history", "SELECT 'r1' AS record_id", partition={"run": "r"}, part="p"
        )
    with pytest.raises(ValueError, match="partitioned by"):
        catalog.write_part_from_query("resolutions_history", row, partition={"source": "x"}, part="p")


# Our modules that import torch or Prefect when imported: a function that needs one imports it where it is
# used, so a curation process or `tol --help` never pays for it.
HEAVY_MODULES = {"evaluation.zero_shot", "training.loop", "training.model", "training.distributed",
                 "flows.pipeline", "flows.demo"}  # fmt: skip
# Function-level imports that break an import cycle within a room, each with why it is one.
CYCLE_IMPORTS = {
    ("etl.executors", "etl.executors.local"): "the executors import the package's Unit and run_bounded",
    (
        "etl.executors",
        "etl.executors.spark",
    ): "as local; and Spark's module is only needed with --executor spark",
    (
        "etl.filter.support",
        "etl.filter.scorers",
    ): "the museum scorer reads the support sets support.py stores",
    ("etl.ingest.sources", "etl.ingest.sources"): "the package's registry of connectors and its modules",
    ("etl.ingest.sources.gbif", "etl.ingest.sources"): "the connector uses the package's shared helpers",
    ("evaluation.tasks", "evaluation.suite"): "the suite runs tasks; a task may name a suite",
}


def test_function_level_imports_are_for_a_cost_or_a_cycle():
    """Module-level imports wherever nothing argues otherwise: one of our modules is imported inside a
    function only when it is heavy (torch, Prefect) or the import would close a cycle listed above."""
    wrong = []
    for module, path in _modules().items():
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                else:
                    continue
                for name in names:
                    if name.split(".")[0] not in OURS or name in HEAVY_MODULES:
                        continue
                    if (module, name) not in CYCLE_IMPORTS:
                        wrong.append(f"{module}:{node.lineno} imports {name} in {fn.name}()")
    assert wrong == []
