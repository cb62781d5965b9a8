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
