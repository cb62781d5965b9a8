"""Lake compaction: small parts merged into bounded parts while every reader sees one whole set of parts."""

from __future__ import annotations

import random
import shutil
import time
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from etl.compact import run_compaction
from tests.tolcli import kill_group, sql, start, tol, wait_until
from warehouse.catalog import COMPACTED_PREFIX, Catalog
from warehouse.compaction import (
    CompactionConfig,
    compaction_due,
    merge_unit,
    plan_groups,
    sweep,
    visible_parts,
)
from warehouse.lake import PART_ROW_GROUP_ROWS
from warehouse.schemas import IMAGES

VIEWS = {  # what a user reads, each in an order that makes two answers comparable
    "images_history": "SELECT * FROM images_history ORDER BY record_id, run_id",
    "images": "SELECT * FROM images ORDER BY record_id",
    "image_locations": "SELECT * FROM image_locations ORDER BY record_id",
    "counts": "SELECT count(*), count(DISTINCT record_id), sum(bytes) FROM images_history",
}


def _fetch_part(catalog, rng: random.Random, ids: list[str], run: str, at: datetime, part: str) -> None:
    """One fetch unit's part, as a worker writes it (ids in any order; the writer sorts them)."""
    n = len(ids)
    cols = {f.name: pa.nulls(n, f.type) for f in IMAGES}
    cols |= {
        "record_id": pa.array(ids),
        "source": pa.array(["bioscan"] * n),
        "status": pa.array([rng.choice(["ok", "ok", "http_404"]) for _ in ids]),
        "bytes": pa.array([rng.randrange(1, 10_000) for _ in ids], pa.int64()),
        "blob": pa.array([f"lake/image_blobs/source=bioscan/{part}.jpgs"] * n),
        "blob_offset": pa.array(range(n), pa.int64()),
        "run_id": pa.array([run] * n),
        "fetched_at": pa.array([at] * n, pa.timestamp("us", tz="UTC")),
    }
    catalog.write_part(
        "images_history", pa.table(cols, schema=IMAGES), partition={"source": "bioscan"}, part=part
    )


@pytest.fixture()
def fetched(catalog):
    """A home whose image table is 30 small parts from two fetch runs (the second fetched some ids again)."""
    rng = random.Random(7)
    ids = [f"rec-{i:05d}" for i in range(3000)]
    rng.shuffle(ids)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    for k in range(20):
        _fetch_part(catalog, rng, ids[k * 150 : (k + 1) * 150], "fetch-a", t0, f"part-a-{k:03d}")
    again = rng.sample(ids, 1000)
    for k in range(10):
        part = f"part-b-{k:03d}"
        _fetch_part(catalog, rng, again[k * 100 : (k + 1) * 100], "fetch-b", t0 + timedelta(hours=1), part)
    return catalog


def _read(catalog) -> dict[str, list]:
    with catalog.connect(read_only=True) as con:
        return {name: con.execute(q).fetchall() for name, q in VIEWS.items()}


def _files(catalog) -> list[str]:
    return sorted(p.name for p in (catalog.lake / "images" / "source=bioscan").glob("*.parquet"))


SMALL = CompactionConfig(tables=("images_history",), small_part_rows=200, target_rows=1200, min_small_parts=4)


def test_compaction_merges_small_parts_and_every_view_reads_the_same(fetched):
    before = _read(fetched)
    summary = run_compaction(fetched, SMALL)
    assert _read(fetched) == before
    # 20 parts of 150 rows, then 10 of 100, in runs of at most 1200 rows: 8, 8, 4 + 6 and 4 parts.
    assert (summary["n_in"], summary["n_out"]) == (30, 4)
    assert summary["details"]["tables"]["images_history"] == {"parts_before": 30, "parts_after": 4}
    live = visible_parts(fetched, "images_history")
    (parts,) = live.values()
    assert sorted(p.rows for p in parts) == [400, 1200, 1200, 1200]
    for part in parts:
        assert part.rel.split("/")[-1].startswith(COMPACTED_PREFIX)
        table = pq.read_table(fetched.home / part.rel)
        ids = table.column("record_id").to_pylist()
        assert ids == sorted(ids)  # point lookups skip row groups by record_id
        assert [(f.name, f.type) for f in table.schema] == [(f.name, f.type) for f in IMAGES]
    # The retired parts are still on disk (a query bound before the swap reads them) but read by nobody.
    assert len(_files(fetched)) == 34
    # A second run finds nothing to merge.
    assert run_compaction(fetched, SMALL)["n_in"] == 0
    assert _read(fetched) == before


def test_retired_parts_are_deleted_only_after_their_grace(fetched):
    run_compaction(fetched, SMALL)
    assert sweep(fetched, 3600) == 0 and len(_files(fetched)) == 34
    assert sweep(fetched, 3600, now=datetime.now(UTC) + timedelta(hours=2)) == 30
    assert len(_files(fetched)) == 4
    with fetched.connect(read_only=True) as con:
        assert con.execute("SELECT DISTINCT state FROM lake_compacted_parts").fetchall() == [("live",)]
    run_compaction(fetched, SMALL)
    assert len(_files(fetched)) == 4


def test_a_snapshot_taken_before_the_swap_keeps_reading_the_old_parts(fetched):
    """`tol sql` and dedup read a snapshot: its copy of the catalog's tables decides which parts it reads, so
    a compaction that finishes while it runs changes nothing for it (no row twice, none missing)."""
    before = _read(fetched)
    with fetched.snapshot() as con:
        run_compaction(fetched, SMALL)
        assert {name: con.execute(q).fetchall() for name, q in VIEWS.items()} == before
    with fetched.snapshot() as con:
        assert {name: con.execute(q).fetchall() for name, q in VIEWS.items()} == before


def test_a_killed_compaction_leaves_the_views_whole_and_its_part_is_removed(fetched):
    before = _read(fetched)
    (parts,) = visible_parts(fetched, "images_history").values()
    group = plan_groups(parts, SMALL)[0]
    unit = {"home": str(fetched.home), "table": "images_history", "parts": [p.rel for p in group],
            "name": f"{COMPACTED_PREFIX}killed-0"}  # fmt: skip
    orphan = merge_unit(unit).column("path")[0].as_py()  # written, never swapped in: killed before the swap
    assert (fetched.home / orphan).exists()
    assert _read(fetched) == before  # written but never listed: nobody reads it
    run_compaction(fetched, SMALL)
    assert not (fetched.home / orphan).exists()
    assert _read(fetched) == before


def test_parts_of_a_merged_part_that_is_still_small_are_merged_again(fetched):
    before = _read(fetched)
    first = CompactionConfig(
        tables=("images_history",), small_part_rows=2000, target_rows=2000, min_small_parts=4
    )
    run_compaction(fetched, first)
    (parts,) = visible_parts(fetched, "images_history").values()
    assert sorted(p.rows for p in parts) == [100, 1950, 1950]  # the last part alone is no merge
    # Now every part is small against a larger threshold: all three are merged, earlier merges included.
    again = CompactionConfig(
        tables=("images_history",), small_part_rows=4000, target_rows=4000, min_small_parts=2
    )
    run_compaction(fetched, again)
    (parts,) = visible_parts(fetched, "images_history").values()
    assert [p.rows for p in parts] == [4000]
    assert _read(fetched) == before
    with fetched.connect(read_only=True) as con:
        states = dict(con.execute("SELECT state, count(*) FROM lake_compacted_parts GROUP BY 1").fetchall())
    assert states == {"live": 1, "retired": 29 + 3}


def test_bad_compaction_settings_are_refused():
    with pytest.raises(ValueError, match="no lake table"):
        CompactionConfig(tables=("images",))
    with pytest.raises(ValueError, match="small_part_rows <= target_rows"):
        CompactionConfig(small_part_rows=10, target_rows=5)
    with pytest.raises(ValueError, match="min_small_parts"):
        CompactionConfig(min_small_parts=1)


def test_tol_compact_runs_as_its_own_command_beside_a_reader(fetched):
    home = fetched.home
    counts = sql(home, "SELECT count(*) AS n, count(DISTINCT record_id) AS d FROM images_history")
    out = tol(home, "compact", "--table", "images_history", "--small-part-rows", "200", "--grace", "0").stdout
    assert '"n_in": 30' in out
    assert sql(home, "SELECT count(*) AS n, count(DISTINCT record_id) AS d FROM images_history") == counts
    assert len(_files(fetched)) == 1  # --grace 0: the replaced parts are gone at once
    lookup = sql(home, "SELECT record_id, run_id FROM images WHERE record_id = 'rec-00042'")
    assert len(lookup) == 1
    runs = sql(home, "SELECT stage, status, n_in, n_out FROM stage_runs WHERE stage = 'compact'")
    assert runs == [{"stage": "compact", "status": "succeeded", "n_in": 30, "n_out": 1}]
    meta = pq.read_metadata(home / "lake/images/source=bioscan" / _files(fetched)[0])
    assert meta.num_rows == 4000
    assert max(meta.row_group(g).num_rows for g in range(meta.num_row_groups)) <= PART_ROW_GROUP_ROWS


def test_compaction_is_due_only_when_there_is_work(fetched):
    assert compaction_due(fetched, SMALL)
    run_compaction(fetched, SMALL)
    assert not compaction_due(fetched, SMALL)  # retired parts within their grace are not work yet
    assert compaction_due(fetched, SMALL, now=datetime.now(UTC) + timedelta(hours=2))


@pytest.mark.slow
def test_a_killed_tol_compact_reruns_to_the_uninterrupted_result(catalog, tmp_path):
    """`tol compact` killed with SIGKILL at seeded moments, then run again: the views read what they read
    before, and no part is left unread or read twice."""
    rng = random.Random(11)
    ids = [f"rec-{i:05d}" for i in range(6000)]
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    for k in range(120):
        _fetch_part(catalog, rng, ids[k * 50 : (k + 1) * 50], "fetch-a", t0, f"part-{k:03d}")
    before = _read(catalog)
    args = ["compact", "--small-part-rows", "100", "--target-rows", "200", "--min-small-parts", "2"]
    clean = tmp_path / "clean"
    shutil.copytree(catalog.home, clean)
    t = time.perf_counter()
    tol(clean, *args)
    seconds = time.perf_counter() - t
    killed = 0
    for i in range(3):
        home = tmp_path / f"home-{i}"
        shutil.copytree(catalog.home, home)
        proc = start(home, *args)
        if not wait_until(lambda proc=proc: proc.poll() is not None, rng.uniform(0.3, 1.0) * seconds):
            kill_group(proc)
            killed += 1
        else:
            proc.wait()
        copy = Catalog(home)
        with copy.connect(read_only=True) as con:  # killed: any moment's state reads as before
            assert {name: con.execute(q).fetchall() for name, q in VIEWS.items()} == before
        tol(home, *args)
        with copy.connect(read_only=True) as con:
            assert {name: con.execute(q).fetchall() for name, q in VIEWS.items()} == before
        (parts,) = visible_parts(copy, "images_history").values()
        assert sorted(p.rows for p in parts) == [200] * 30
        assert not sql(home, "SELECT run_id FROM stage_runs WHERE status = 'running'")
    assert killed >= 1, f"no kill landed while tol compact ran ({seconds:.1f} s uninterrupted)"


@pytest.mark.slow
def test_two_tol_compacts_at_once_with_tol_sql_beside_them(fetched):
    """Two compactions of one home at once (the second waits for the `compact` lock, then finds nothing to
    merge) while `tol sql` reads the image table: every command succeeds, every answer is the same."""
    home = fetched.home
    query = "SELECT count(*) AS n, count(DISTINCT record_id) AS d, sum(bytes) AS b FROM images_history"
    want = sql(home, query)
    args = ["compact", "--small-part-rows", "200", "--target-rows", "200", "--min-small-parts", "2"]
    procs = [start(home, *args) for _ in range(2)]
    answers = []
    while any(p.poll() is None for p in procs):
        answers.append(sql(home, query))  # fails the test on a non-zero exit
    for proc in procs:
        out, _ = proc.communicate()
        assert proc.returncode == 0, out
    assert answers and all(a == want for a in answers)
    assert sql(home, query) == want
    runs = sql(home, "SELECT status, n_in FROM stage_runs WHERE stage = 'compact' ORDER BY started_at")
    assert [r["status"] for r in runs] == ["succeeded", "succeeded"]
    # At most 200 rows a part: only the ten parts of 100 rows pair up (a 150-row part fits with none), once.
    assert sorted(r["n_in"] for r in runs) == [0, 10]
