import json

import numpy as np
import pytest

from etl.dedup.near_dup import (
    Layout,
    brute_force_pairs,
    near_pairs,
    plan_layout,
    prefix_groups,
    prefix_key,
    prefix_order_sql,
    stream_pairs,
)


def _planted(seed: int, n: int, n_pairs: int, max_flips: int) -> np.ndarray:
    """Random hashes with neighbours planted at 0..max_flips bits (some beyond k on purpose)."""
    rng = np.random.default_rng(seed)
    h = rng.integers(0, 2**64, n, dtype=np.uint64)
    for a in range(0, 2 * n_pairs, 2):
        v = h[a]
        for bit in rng.choice(64, rng.integers(0, max_flips + 1), replace=False):
            v ^= np.uint64(1) << np.uint64(bit)
        h[a + 1] = v
    return h


def _as_set(pairs) -> set:
    return set(zip(*(p.tolist() for p in pairs), strict=True))


@pytest.mark.parametrize("k", [0, 2, 4, 6, 8])
@pytest.mark.parametrize("layout_extra", [None, 0, 2])
def test_near_pairs_equal_brute_force_for_every_layout(k, layout_extra):
    h = _planted(k, 1500, 200, k + 2)
    layout = None if layout_extra is None else Layout(k + 1 + layout_extra, 1 + layout_extra)
    got = _as_set(near_pairs(h, k, layout=layout))
    want = _as_set(brute_force_pairs(h, k))
    assert got == want
    assert len(want) >= (40 if k == 0 else 100)


@pytest.mark.parametrize("k", [3, 8])
def test_query_against_corpus_equals_brute_force(k):
    corpus = _planted(10 + k, 2000, 0, 0)
    rng = np.random.default_rng(k)
    queries = corpus[rng.choice(2000, 60, replace=False)] ^ rng.integers(
        0, 2**64, 60, dtype=np.uint64
    ) & np.uint64(0x0101010100000000)
    got = _as_set(near_pairs(corpus, k, other=queries))
    assert got == _as_set(brute_force_pairs(corpus, k, other=queries)) and len(got) >= 30


def test_crowded_keys_and_signed_hashes():
    """A burst of 300 near-identical frames (long runs of equal keys) among random hashes, stored as int64."""
    rng = np.random.default_rng(7)
    base = np.uint64(0xF0F0_1234_ABCD_0F0F)
    burst = base ^ (np.uint64(1) << rng.integers(0, 64, 300).astype(np.uint64))
    h = np.concatenate([burst, rng.integers(0, 2**64, 3000, dtype=np.uint64)]).view(np.int64)
    got = _as_set(near_pairs(h, 2))
    assert got == _as_set(brute_force_pairs(h, 2))
    assert len(got) >= 300 * 299 // 2 * 0.9


def test_layout_is_chosen_from_n_and_is_always_exact():
    small, large = plan_layout(6, 1_000), plan_layout(6, 10_000_000)
    assert small.match == 1 and large.match > 1  # wider keys as N grows
    for layout in (small, large, plan_layout(8, 10_000_000, 2_000)):
        assert layout.segments - layout.match in (6, 8)
    with pytest.raises(ValueError, match="not exact"):
        near_pairs(np.arange(10, dtype=np.uint64), 4, layout=Layout(6, 3))


@pytest.mark.parametrize("max_rows", [None, 1])
def test_streamed_search_in_small_batches_equals_brute_force(max_rows):
    """The dedup stage's search: hashes sorted by DuckDB on each prefix group's segments, read in batches of
    97 rows (runs of equal prefix values cross batch edges); max_rows=1 forces two-segment prefixes."""
    import duckdb

    k = 4
    h = np.concatenate([_planted(3, 1200, 300, k + 2), np.full(150, 0x0F0F_0F0F_0F0F_0F0F, dtype=np.uint64)])
    layout = Layout(7, 3)
    groups = prefix_groups(layout, h.size, max_rows=max_rows)
    assert {len(p) for p, _ in groups} == ({1} if max_rows is None else {2})
    con = duckdb.connect()
    con.register("t", {"ix": np.arange(h.size, dtype=np.int64), "phash": h.view(np.int64)})
    got = set()
    for prefix, subsets in groups:
        rows = con.sql(
            f"SELECT ix, phash FROM t ORDER BY {prefix_order_sql('phash', layout, prefix)}"
        ).fetchnumpy()
        keys = prefix_key(rows["phash"], layout, prefix)
        runs = 1 + np.count_nonzero(keys[1:] != keys[:-1])
        assert runs == np.unique(keys).size  # the SQL order keeps equal prefix keys together
        batches = [(rows["ix"][i : i + 97], rows["phash"][i : i + 97]) for i in range(0, h.size, 97)]
        for packed in stream_pairs(batches, k, layout, prefix, subsets, workers=2):
            got |= {(int(p >> np.uint64(32)), int(p & np.uint64(0xFFFFFFFF))) for p in packed}
    want = {(i, j) for i, j, _ in zip(*brute_force_pairs(h, k), strict=True)}
    assert got == want and len(want) > 150 * 149 // 2


def test_streamed_search_at_k0_orders_by_the_whole_hash():
    """k = 0 is one 64-bit segment: the ORDER BY must be the hash itself (a combined key would not fit)."""
    import duckdb

    h = _planted(5, 800, 200, 0)  # 200 exact pairs
    layout = Layout(1, 1)
    ((prefix, subsets),) = prefix_groups(layout, h.size)
    con = duckdb.connect()
    con.register("t", {"ix": np.arange(h.size, dtype=np.int64), "phash": h.view(np.int64)})
    rows = con.sql(
        f"SELECT ix, phash FROM t ORDER BY {prefix_order_sql('phash', layout, prefix)}"
    ).fetchnumpy()
    batches = [(rows["ix"][i : i + 50], rows["phash"][i : i + 50]) for i in range(0, h.size, 50)]
    got = set()
    for packed in stream_pairs(batches, 0, layout, prefix, subsets, workers=1):
        got |= {(int(p >> np.uint64(32)), int(p & np.uint64(0xFFFFFFFF))) for p in packed}
    assert got == {(i, j) for i, j, _ in zip(*brute_force_pairs(h, 0), strict=True)} and len(got) >= 200


def test_clusters_in_sql_equal_scipy_connected_components():
    import duckdb
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from etl.dedup.stage import _components

    rng = np.random.default_rng(11)
    n = 3000
    a = rng.integers(0, n, 2500)
    b = rng.integers(0, n, 2500)
    chain = np.arange(200, 260)  # a long path: the slowest case for label propagation
    a, b = np.concatenate([a, chain[:-1]]), np.concatenate([b, chain[1:]])
    keep = a != b
    a, b = np.minimum(a, b)[keep], np.maximum(a, b)[keep]
    con = duckdb.connect()
    con.register("edges", {"a": a.astype(np.int64), "b": b.astype(np.int64)})
    _components(con, "edges")
    got = dict(con.execute("SELECT ix, root FROM comp").fetchall())
    labels = connected_components(coo_matrix((np.ones(a.size), (a, b)), shape=(n, n)), directed=False)[1]
    nodes = np.union1d(a, b)
    assert set(got) == set(nodes.tolist())
    smallest = {}
    for node in nodes.tolist():
        smallest.setdefault(labels[node], node)
    assert all(got[node] == smallest[labels[node]] for node in nodes.tolist())


def test_planted_duplicates_and_leaks_are_found(curated, world):
    base = None
    with curated.connect() as con:
        base = "/".join(
            con.execute(
                "SELECT media_url FROM raw_records WHERE source = 'gbif' AND media_url IS NOT NULL LIMIT 1"
            )
            .fetchall()[0][0]
            .split("/")[:3]
        )
        decided = {
            url: (kept, reason)
            for url, kept, reason in con.execute(
                """SELECT r.media_url, d.kept, d.reason FROM dedup_decisions d JOIN raw_records r USING (record_id)"""
            ).fetchall()
        }

    def url(u: str) -> str:
        return u.replace("{{BASE_URL}}", base)

    for a, b in world.planted["exact_duplicate_urls"]:
        assert {decided[url(a)][1], decided[url(b)][1]} == {None, "exact_duplicate"}
    for a, b in world.planted["near_duplicate_urls"]:
        reasons = {decided[url(a)][1], decided[url(b)][1]}
        assert "near_duplicate" in reasons or "eval_leak:heldout" in reasons
    for u in world.planted["leak_urls"]:
        assert decided[url(u)] == (False, "eval_leak:heldout")


def test_failed_fetches_pass_through_as_no_hash(curated):
    with curated.connect() as con:
        rows = con.execute("""SELECT i.status, d.kept, d.reason FROM dedup_decisions d JOIN images i USING (record_id)
                              WHERE i.status <> 'ok'""").fetchall()
    assert rows and all(kept is False and reason == "no_hash" for _, kept, reason in rows)


def test_every_image_has_one_decision_per_run(curated):
    with curated.connect() as con:
        n_images, n_decisions, n_distinct = con.execute(
            "SELECT (SELECT count(*) FROM images), count(*), count(DISTINCT record_id) FROM dedup_decisions"
        ).fetchall()[0]
    assert n_images == n_decisions == n_distinct


def test_eval_sets_from_metadata_folder_plain_folder_and_webdataset_shards_hash_alike(world, tmp_path):
    import webdataset as wds

    from etl.dedup.stage import eval_images
    from etl.fetch.images import ImageConfig, process_image

    from_meta = dict(eval_images(world.eval_dir))
    plain = tmp_path / "plain" / "nested"
    plain.mkdir(parents=True)
    shards = tmp_path / "shards"
    shards.mkdir()
    with wds.TarWriter(str(shards / "eval-000000.tar")) as sink:
        for i, (_rel, data) in enumerate(sorted(from_meta.items())):
            (plain / f"{i:04d}.jpg").write_bytes(data)
            sink.write({"__key__": f"{i:06d}", "jpg": data, "json": b"{}"})

    def phashes(items) -> list[int]:
        return sorted(process_image(data, ImageConfig(min_side=1)).phash for _, data in items)

    want = phashes(from_meta.items())
    assert len(want) >= 100
    assert phashes(eval_images(tmp_path / "plain")) == want
    assert phashes(eval_images(shards)) == want
    assert phashes(eval_images(shards / "eval-000000.tar")) == want
    assert all(p.startswith("eval-000000.tar/") for p, _ in eval_images(shards))


def test_rerun_without_eval_folder_uses_stored_hashes_and_writes_only_what_changed(curated, tmp_path):
    """A rerun decides the same without the evaluation folder (its hashes are stored) and writes no rows;
    a rerun that changes decisions writes only those, and stands for what a full run decides."""
    import shutil

    from etl.dedup.stage import DedupConfig, run_dedup
    from warehouse.catalog import open_catalog

    shutil.copytree(curated.home, tmp_path / "home")
    cat = open_catalog(tmp_path / "home")
    cols = "record_id, kept, reason, duplicate_of, distance"

    def stands_for(run: str) -> list[tuple]:
        with cat.connect(read_only=True) as con:
            return con.execute(f"SELECT {cols} FROM dedup_decisions_as_of(?) ORDER BY 1", [run]).fetchall()

    def written(run: str) -> int:
        with cat.connect(read_only=True) as con:
            q = "SELECT count(*) FROM dedup_decisions_history WHERE run_id = ?"
            return con.execute(q, [run]).fetchall()[0][0]

    with cat.connect(read_only=True) as con:
        (first,) = con.execute("SELECT run_id FROM stage_runs WHERE stage = 'dedup'").fetchall()[0]
    again = run_dedup(cat)  # no --eval this time: the stored evaluation hashes still apply
    assert again["details"]["base_run"] == first and again["details"]["chain"] == [again["run_id"], first]
    assert written(again["run_id"]) == 0 and again["details"]["carried"] == again["n_in"]
    assert stands_for(again["run_id"]) == stands_for(first)
    decided = stands_for(first)
    assert len(decided) == again["n_in"] and sum(1 for r in decided if r[1]) == again["n_out"]
    assert sum(1 for r in decided if r[2] and r[2].startswith("eval_leak:heldout")) >= 6
    assert '"near_search"' in json.dumps(again["details"])
    with cat.connect(read_only=True) as con:  # the current view is the latest run's
        assert con.execute(f"SELECT {cols} FROM dedup_decisions ORDER BY 1").fetchall() == decided

    strict = run_dedup(cat, DedupConfig(near_k=0))  # fewer near duplicates: some decisions change
    full = run_dedup(cat, DedupConfig(near_k=0), full=True)
    changed = [a for a, b in zip(stands_for(strict["run_id"]), decided, strict=True) if a != b]
    assert changed and written(strict["run_id"]) == len(changed) < len(decided)
    assert stands_for(strict["run_id"]) == stands_for(full["run_id"])
    assert written(full["run_id"]) == len(decided) and full["details"]["chain"] == [full["run_id"]]
    assert (strict["n_in"], strict["n_out"], strict["dropped"]) == (
        full["n_in"],
        full["n_out"],
        full["dropped"],
    )


def test_degenerate_hashes_neither_cluster_nor_leak_by_phash(catalog):
    """Blank frames hash to all zeros: they must not cluster together, nor leak against a blank test image,
    unless the bytes are the same (MD5)."""
    import pyarrow as pa

    from etl.dedup.stage import DedupConfig, run_dedup
    from etl.ingest.records import make_rows
    from warehouse.lake import write_parquet_atomic
    from warehouse.schemas import EVAL_HASHES, IMAGES

    ids = [f"r{i}" for i in range(6)]
    raw = make_rows(
        [{"record_id": r, "source": "gbif", "source_id": r, "media_url": f"https://x/{r}.jpg"} for r in ids],
        "run",
    )
    write_parquet_atomic(raw, catalog.lake / "raw" / "source=gbif" / "ingest=t" / "part-0.parquet")
    rng = np.random.default_rng(0)
    textured = [int(v) for v in rng.integers(-(2**62), 2**62, 2)]
    phashes = [0, 0, 0, textured[0], textured[0] ^ 0b11, textured[1]]  # 3 blank, 2 near twins, 1 other
    md5s = ["blank-a", "blank-b", "blank-test", "t1", "t2", "t3"]
    n = len(ids)
    images = {f.name: [None] * n for f in IMAGES}
    images.update(record_id=ids, source=["gbif"] * n, status=["ok"] * n, md5=md5s, phash=phashes,
                  width=[400] * n, height=[300] * n, attempts=[1] * n)  # fmt: skip
    write_parquet_atomic(pa.table(images).cast(IMAGES), catalog.lake / "images" / "source=gbif" / "p.parquet")
    ev = pa.table({"eval_set": ["test", "test"], "path": ["blank.jpg", "other.jpg"], "md5": ["blank-test", "zz"],
                   "phash": [0, textured[1] ^ (2**40)], "run_id": ["e", "e"], "pdq_hex": [None, None], "pdq_quality": [None, None]})  # fmt: skip
    write_parquet_atomic(ev.cast(EVAL_HASHES), catalog.lake / "eval_hashes" / "set=test" / "hashes.parquet")
    leftover = catalog.home / "work" / "dedup-killed-run" / "near_pairs.parquet"  # a killed run's pairs
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"partial")
    run_dedup(catalog, DedupConfig())
    assert not list((catalog.home / "work").glob("dedup-*"))  # the leftover and the run's own pairs are gone
    with catalog.connect() as con:
        got = dict(con.execute("SELECT record_id, reason FROM dedup_decisions").fetchall())
    assert got["r0"] == got["r1"] == "degenerate_hash"  # kept, flagged, not clustered with each other
    assert got["r2"] == "eval_leak:test"  # the same bytes as the blank test image: a leak by MD5
    assert {got["r3"], got["r4"]} == {None, "near_duplicate"}
    assert got["r5"] == "eval_leak:test"  # one bit from a test image


def test_pdq_leak_check_at_10_and_eol_pages_listed_by_id(world, server, tmp_path):
    """The paper's leak check, PDQ within 10 of 256 bits, beside the pHash one, and a benchmark listed by EOL
    page id. (PDQ alone misses one planted re-encoded copy here: it lies 12 bits away.)"""
    from etl.dedup.stage import DedupConfig, run_dedup
    from etl.fetch.images import ImageConfig
    from etl.fetch.stage import FetchConfig
    from etl.ingest.sources import IngestConfig
    from flows import stages
    from flows.stages import ExecutorConfig
    from warehouse.catalog import open_catalog

    cat = open_catalog(tmp_path / "home")
    for source in ("gbif", "eol"):
        stages.ingest(cat, IngestConfig(source, api_url=server.base_url, allow_private_hosts=True))
    stages.load_backbone(cat, world.backbone)
    stages.resolve(cat)
    stages.fetch(
        cat, FetchConfig(image=ImageConfig(pdq=True), allow_private_hosts=True), ExecutorConfig(workers=2)
    )
    with cat.connect() as con:
        pages = [
            r[0]
            for r in con.execute(
                "SELECT DISTINCT occurrence_id FROM raw_records WHERE source = 'eol' AND drop_reason IS NULL ORDER BY 1 LIMIT 2"
            ).fetchall()
        ]
        on_pages = {
            r[0]
            for r in con.execute(
                "SELECT i.record_id FROM images i JOIN raw_records r USING (record_id)"
                " WHERE r.occurrence_id IN (SELECT unnest(?)) AND r.source = 'eol' AND i.status = 'ok'",
                [pages],
            ).fetchall()
        }
    listed = tmp_path / "rare_species.csv"
    listed.write_text("page_id,name\n" + "".join(f"{p},x\n" for p in pages))
    cfg = DedupConfig(
        pdq_leak_k=10,
        eval_sets={"heldout": str(world.eval_dir)},
        eval_eol_pages={"rare": str(listed)},
    )
    summary = run_dedup(cat, cfg)
    with cat.connect() as con:
        decided = dict(
            con.execute(
                "SELECT r.media_url, d.reason FROM dedup_decisions d JOIN raw_records r USING (record_id)"
            ).fetchall()
        )
        by_id = dict(con.execute("SELECT record_id, reason FROM dedup_decisions").fetchall())
    base = next(u for u in decided if u and u.startswith("http")).split("/")[:3]
    leaks = ["/".join(base) + u.split("}}", 1)[1] for u in world.planted["leak_urls"]]
    assert all(decided[u] == "eval_leak:heldout" for u in leaks), [decided[u] for u in leaks]
    assert summary["details"]["pdq_leak_pairs"] >= len(leaks) // 2
    assert on_pages and all(by_id[r] == "eval_leak:rare" for r in on_pages)
    # Without PDQ hashes the check refuses to run rather than check nothing.
    cat2 = open_catalog(tmp_path / "home2")
    stages.ingest(cat2, IngestConfig("eol", api_url=server.base_url, allow_private_hosts=True))
    stages.load_backbone(cat2, world.backbone)
    stages.resolve(cat2)
    stages.fetch(cat2, FetchConfig(allow_private_hosts=True), ExecutorConfig(workers=1))
    with pytest.raises(ValueError, match="fetch with --pdq"):
        run_dedup(cat2, DedupConfig(pdq_leak_k=10, eval_sets={"heldout": str(world.eval_dir)}))
