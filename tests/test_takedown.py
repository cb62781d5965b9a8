"""Takedown requests: recorded with who, when and why; every version built afterwards leaves the records out
and counts them; the versions that still hold them are listed; a re-ingest changes nothing."""

from __future__ import annotations

import json

from etl.ingest.sources import IngestConfig
from etl.shards.stage import ShardConfig
from flows import stages
from flows.cli import main


def _run(capsys, *argv):
    assert main(list(argv)) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_a_taken_down_record_leaves_the_next_version_and_is_listed_in_the_old(home_copy, server, capsys):
    home = ["--home", str(home_copy.home)]
    t1 = home_copy.query_arrow(
        "SELECT record_id FROM shard_samples WHERE version = 't1' ORDER BY 1"
    ).to_pylist()
    one = t1[0]["record_id"]
    holder = home_copy.query_arrow(
        "SELECT rights_holder AS h, count(*) AS n FROM raw_records r JOIN shard_samples s USING (record_id)"
        " WHERE s.version = 't1' AND rights_holder IS NOT NULL GROUP BY 1 ORDER BY n, h LIMIT 1"
    ).to_pylist()[0]
    req = _run(
        capsys, *home, "takedown", "add", "--record", one, "--reason", "owner asked", "--by", "owner@x"
    )
    assert req["records"] == 1
    where = f"rights_holder = '{holder['h'].replace(chr(39), chr(39) * 2)}'"
    by_holder = _run(capsys, *home, "takedown", "add", "--where", where, "--reason", "licence withdrawn")
    assert by_holder["records"] >= holder["n"]
    stored = home_copy.query_arrow(
        "SELECT DISTINCT request_id, reason, requested_by FROM takedowns"
    ).to_pylist()
    assert {(r["reason"], r["requested_by"]) for r in stored} == {
        ("owner asked", "owner@x"),
        ("licence withdrawn", None),
    }
    # The old version still holds them: listed as affected.
    affected = {a["version"]: a for a in _run(capsys, *home, "takedown", "affected")}
    assert affected["t1"]["taken_down"] == 1 + holder["n"]
    # A re-ingest of the same records changes nothing about the takedowns.
    stages.ingest(home_copy, IngestConfig("gbif", api_url=server.base_url, allow_private_hosts=True))
    # The next version leaves them out and counts them.
    manifest = stages.shard(
        home_copy, ShardConfig("t-after-takedown", samples_per_shard=64, val_fraction=0.1)
    )
    assert (
        manifest["taken_down"] == 1 + holder["n"]
        and manifest["n_samples"] == len(t1) - manifest["taken_down"]
    )
    t2 = {
        r["record_id"]
        for r in home_copy.query_arrow(
            "SELECT record_id FROM shard_samples WHERE version = 't-after-takedown'"
        ).to_pylist()
    }
    assert one not in t2
    assert (
        "By takedown requests: " + str(manifest["taken_down"])
        in (home_copy.shards / "t-after-takedown").resolve().joinpath("README.md").read_text()
    )
    after = {a["version"] for a in _run(capsys, *home, "takedown", "affected")}
    assert "t1" in after and "t-after-takedown" not in after and after == set(affected)


def test_bad_takedowns_record_nothing(home_copy, tmp_path, capsys):
    home = ["--home", str(home_copy.home)]
    secret = tmp_path / "s.txt"
    secret.write_text("hunter2")
    for argv in (
        ["--record", "no-such-record", "--reason", "x"],
        ["--where", "source = 'nowhere'", "--reason", "x"],
        ["--where", f"(SELECT content FROM read_text('{secret}')) <> ''", "--reason", "x"],
        ["--where", "true; DELETE FROM takedowns", "--reason", "x"],
        ["--record", "a", "--where", "true", "--reason", "x"],
        ["--where", "true", "--reason", " "],
    ):
        assert main([*home, "takedown", "add", *argv]) == 1, argv
    assert "hunter2" not in capsys.readouterr().err
    assert home_copy.query_arrow("SELECT count(*) AS n FROM takedowns").to_pylist() == [{"n": 0}]
