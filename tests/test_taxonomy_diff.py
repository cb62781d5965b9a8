"""`tol taxonomy diff`: two resolutions of the same records against two backbones, compared rank by rank."""

from __future__ import annotations

import csv
import json
import shutil

from flows import stages
from flows.cli import main
from warehouse.stage_runs import succeeded_runs


def _moved_family_backbone(world, tmp_path) -> tuple[str, str]:
    """The world's backbone with one genus moved to a new family (what a new checklist release does)."""
    folder = tmp_path / "backbone-v2"
    shutil.copytree(world.backbone, folder)
    path = folder / "Taxon.tsv"
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    genus = next(r["genus"] for r in rows if r["taxonRank"] == "species" and r["genus"])
    for r in rows:
        if r["genus"] == genus:
            r["family"] = "Novidae"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), delimiter="\t", quoting=csv.QUOTE_NONE)
        writer.writeheader()
        writer.writerows(rows)
    return str(folder), genus


def test_diff_of_two_backbones_names_the_rank_that_changed(home_copy, world, tmp_path, capsys):
    run_a = succeeded_runs(home_copy, "resolve")[0].run_id
    folder, genus = _moved_family_backbone(world, tmp_path)
    v2 = stages.load_backbone(home_copy, folder)
    run_b = stages.resolve(home_copy, [v2], full=True)["run_id"]
    out = tmp_path / "changed.csv"
    assert main(["--home", str(home_copy.home), "taxonomy", "diff", run_a, run_b, "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    moved = home_copy.query_arrow(
        "SELECT count(*) AS n FROM resolutions_as_of(?) s JOIN taxa t USING (taxon_id, backbone_version)"
        " WHERE t.genus = ?",
        [run_a, genus],
    ).to_pylist()[0]["n"]
    assert moved > 0 and summary["records_changed"] == moved
    assert summary["changed_at_rank"]["family"] == moved
    assert {r: n for r, n in summary["changed_at_rank"].items() if n} == {"family": moved}
    assert summary["images_moving_between_species"] == 0  # a new family, the same species
    assert len(summary["backbones"]) == 2 and summary["records_compared"] > moved
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == moved and {r["first_changed"] for r in rows} == {"family"}
    assert {r["family_b"] for r in rows} == {"Novidae"} and all(
        r["genus_a"] == r["genus_b"] == genus for r in rows
    )
    # The same run twice changes nothing.
    assert main(["--home", str(home_copy.home), "taxonomy", "diff", run_a, run_a]) == 0
    assert json.loads(capsys.readouterr().out)["records_changed"] == 0
