"""Every dataset version has a card (README.md beside its manifest) whose counts are the catalog's."""

from __future__ import annotations

import re

from flows.cli import main


def _table(card: str, title: str) -> dict[str, int]:
    """The `| value | images | ... |` rows under `## title`."""
    section = card.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| ([^|]+?) \| (\d+) \|", section, re.M)
    return {k: int(v) for k, v in rows}


def test_the_card_counts_equal_the_catalogs(curated, capsys):
    card_path = (curated.shards / "t1").resolve() / "README.md"
    card = card_path.read_text()
    assert main(["--home", str(curated.home), "versions", "show", "t1", "--card"]) == 0
    assert capsys.readouterr().out.strip() == card.strip()

    def catalog_counts(column: str, table: str) -> dict[str, int]:
        rows = curated.query_arrow(
            f"SELECT coalesce(CAST(x.{column} AS VARCHAR), 'unknown') AS v, count(*) AS n FROM shard_samples s "
            f"JOIN {table} x USING (record_id) WHERE s.version = 't1' GROUP BY 1"
        ).to_pylist()
        return {r["v"]: r["n"] for r in rows}

    assert _table(card, "Images by source") == catalog_counts("source", "raw_records")
    assert _table(card, "Licences") == catalog_counts("license", "raw_records")
    kingdoms = curated.query_arrow(
        "SELECT t.kingdom AS v, count(*) AS n FROM shard_samples s JOIN taxa t USING (taxon_id)"
        " WHERE s.version = 't1' GROUP BY 1"
    ).to_pylist()
    assert _table(card, "Images by kingdom") == {r["v"]: r["n"] for r in kingdoms}
    removed = curated.query_arrow(
        "SELECT reason, count(*) AS n FROM dedup_decisions_as_of((SELECT dedup_run_id FROM dataset_versions"
        " WHERE version = 't1')) WHERE NOT kept GROUP BY 1"
    ).to_pylist()
    left_out = _table(card, "Left out")
    assert {r["reason"]: r["n"] for r in removed} == {
        k: v for k, v in left_out.items() if ":" in k or "_" in k
    }
    assert any(k.startswith("eval_leak:") for k in left_out)
    assert "import webdataset as wds" in card and "pretty_name: t1" in card
