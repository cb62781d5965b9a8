import random

import duckdb
import pytest

from etl.dedup import near_pairs_sql


def _popcount(x: int) -> int:
    return bin(x & (2**64 - 1)).count("1")


def _signed(x: int) -> int:
    return x - 2**64 if x >= 2**63 else x


@pytest.mark.parametrize("k", [2, 4, 6, 8])
def test_band_join_finds_exactly_the_pairs_brute_force_finds(k):
    rng = random.Random(k)
    hashes = [rng.getrandbits(64) for _ in range(600)]
    for i in range(0, 200, 2):  # planted neighbours at distances 0..k+2 (some beyond k on purpose)
        flips = rng.sample(range(64), rng.randint(0, k + 2))
        h = hashes[i]
        for b in flips:
            h ^= 1 << b
        hashes[i + 1] = h
    con = duckdb.connect()
    con.execute("CREATE TABLE t (id VARCHAR, phash BIGINT)")
    con.executemany("INSERT INTO t VALUES (?, ?)", [[f"{i:04d}", _signed(h)] for i, h in enumerate(hashes)])
    got = {(a, b, d) for a, b, d in con.execute(near_pairs_sql("t", "t", k, True)).fetchall()}
    want = {
        (f"{i:04d}", f"{j:04d}", _popcount(hashes[i] ^ hashes[j]))
        for i in range(len(hashes))
        for j in range(i + 1, len(hashes))
        if _popcount(hashes[i] ^ hashes[j]) <= k
    }
    assert got == want and len(want) >= 50


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
