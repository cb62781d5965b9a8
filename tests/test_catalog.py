import json

import duckdb
import pytest

from warehouse.catalog import MIGRATIONS, apply_migrations, open_catalog
from warehouse.schemas import IMAGES, LAKE_TABLES, RAW_RECORDS
from warehouse.stage_runs import StageRun


def test_migrations_apply_once(tmp_path):
    cat = open_catalog(tmp_path)
    con = duckdb.connect(str(cat.db_path))
    assert apply_migrations(con) == []  # second application is a no-op
    versions = [r[0] for r in con.execute("SELECT version FROM schema_migrations").fetchall()]
    con.close()
    assert versions == [m[0] for m in MIGRATIONS]


def test_views_exist_and_are_typed_before_any_data(catalog):
    with catalog.connect() as con:
        for view in [
            *LAKE_TABLES,
            "raw_records",
            "images",
            "resolutions",
            "dedup_decisions",
            "record_lineage",
        ]:
            assert con.execute(f"SELECT count(*) FROM {view}").fetchall() == [(0,)]
        cols = {r[0]: r[1] for r in con.execute("DESCRIBE raw_records").fetchall()}
        assert set(cols) == set(RAW_RECORDS.names)
        assert cols["crop_box"] == "INTEGER[]"
        image_cols = {r[0] for r in con.execute("DESCRIBE images").fetchall()}
        assert image_cols == set(IMAGES.names) - {"jpeg"}  # bytes live in `image_bytes` only


def test_stage_run_records_success_and_failure(catalog):
    with StageRun(catalog, "unit", config={"a": 1}) as run:
        run.n_in, run.n_out = 3, 2
        run.drop("too_small")
    with pytest.raises(RuntimeError), StageRun(catalog, "unit") as failing:
        raise RuntimeError("boom")
    with catalog.connect() as con:
        rows = dict(con.execute("SELECT run_id, status FROM stage_runs").fetchall())
        dropped = con.execute(
            "SELECT dropped_by_reason FROM stage_runs WHERE run_id = ?", [run.run_id]
        ).fetchall()
        message = con.execute("SELECT message FROM stage_runs WHERE run_id = ?", [failing.run_id]).fetchall()
    assert rows[run.run_id] == "succeeded" and rows[failing.run_id] == "failed"
    assert json.loads(dropped[0][0]) == {"too_small": 1}
    assert "boom" in message[0][0]


def test_threads_of_one_process_open_and_write_a_fresh_home_at_once(tmp_path):
    """A flow's concurrent tasks share one DuckDB instance: opening a fresh home (migrations) and the first
    part of a lake table (the views are rebuilt) must not fail with a write-write conflict."""
    import threading

    home = tmp_path / "home"
    n = 8
    start = threading.Barrier(n)
    errors: list[BaseException] = []

    def task(i: int) -> None:
        try:
            start.wait()
            cat = open_catalog(home)
            with StageRun(cat, "ingest", lock=f"ingest-t{i}") as run:
                for t, (table, spec) in enumerate(LAKE_TABLES.items()):
                    # Each thread adds parts of every table, so each changes the views' state under the others.
                    partition = dict.fromkeys(spec.partitions, f"t{i}")
                    cat.write_part(table, spec.schema.empty_table(), partition=partition, part=f"p{t}")
                    with cat.connect() as con:
                        con.execute(f"SELECT count(*) FROM {table}").fetchall()
                run.n_out = i
        except BaseException as exc:  # collected: the assertion below shows every thread's error
            errors.append(exc)

    threads = [threading.Thread(target=task, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with open_catalog(home).connect() as con:
        rows = con.execute("SELECT status, count(*) FROM stage_runs GROUP BY status").fetchall()
    assert rows == [("succeeded", n)]


def test_a_home_without_a_work_folder_can_spill(catalog):
    """DuckDB creates its spill folder but not the folder above it: a fresh home (no `work/`) must still spill
    a sort bigger than the memory cap rather than fail ("Failed to create directory")."""
    import shutil

    shutil.rmtree(catalog.home / "work", ignore_errors=True)
    with catalog.snapshot() as con:
        con.execute("SET memory_limit = '64MB'")
        con.execute("SET preserve_insertion_order = false")
        n = con.execute(
            "SELECT count(*) FROM (SELECT i, md5(i::VARCHAR) AS s FROM range(3000000) t(i) ORDER BY s)"
        ).fetchone()[0]
    assert n == 3_000_000


def test_every_history_table_has_a_current_view_and_an_as_of_macro(curated):
    from warehouse.views import HISTORY_VIEWS

    runs = {  # each stage's first run (by start: run ids of one second sort by their random tail)
        r["stage"]: r["run_id"]
        for r in curated.query_arrow(
            "SELECT stage, arg_min(run_id, started_at) AS run_id FROM stage_runs WHERE status = 'succeeded'"
            " GROUP BY stage"
        ).to_pylist()
    }
    for v in HISTORY_VIEWS:
        n = curated.query_arrow(f"SELECT count(*) AS n FROM {v.view}").to_pylist()[0]["n"]
        if v.stage not in runs:
            continue
        pinned = curated.query_arrow(
            f"SELECT count(*) AS n FROM {v.view}_as_of(?)", [runs[v.stage]]
        ).to_pylist()[0]["n"]
        assert 0 < pinned <= n, v.view
    # The first ingest run stands for its own source's records only; all four together are the view.
    first = curated.query_arrow(
        "SELECT count(DISTINCT source) AS n FROM raw_records_as_of(?)", [runs["ingest"]]
    ).to_pylist()[0]["n"]
    assert first == 1
