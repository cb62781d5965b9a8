"""`tol predict`: zero-shot top-k among the catalog's taxa, within a clade, or among a label file's names."""

from __future__ import annotations

import csv
import io

import pytest

from flows.cli import main


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    from training.config import TINY_VIT_CFG, load_config
    from training.model import export_untrained

    out = tmp_path_factory.mktemp("model") / "export"
    export_untrained(load_config(overrides={"model_cfg": TINY_VIT_CFG, "replay_batch_size": 0}), out)
    return out


def _rows(capsys) -> list[dict]:
    return list(csv.DictReader(io.StringIO(capsys.readouterr().out)))


def test_predict_within_a_clade_answers_only_inside_it(curated, world, untrained, capsys):
    images = [str(p) for p in sorted(world.eval_dir.rglob("*.jpg"))[:3]]
    order = curated.query_arrow(
        """SELECT t."order" AS o, count(DISTINCT t.species) AS n FROM resolutions s JOIN taxa t USING (taxon_id)
           WHERE t.species IS NOT NULL GROUP BY 1 HAVING n >= 2 ORDER BY n DESC, o LIMIT 1"""
    ).to_pylist()[0]
    home = ["--home", str(curated.home)]
    within = f"\"order\" = '{order['o']}'"
    assert main([*home, "predict", *images, "--model", str(untrained), "--within", within, "--k", "3"]) == 0
    rows = _rows(capsys)
    assert len(rows) == 3 * min(3, order["n"]) and {r["order"] for r in rows} == {order["o"]}
    assert all(0.0 <= float(r["score"]) <= 1.0 for r in rows) and {r["rank"] for r in rows} == {"1", "2", "3"}
    for image in images:  # scores fall with the rank, per image
        scores = [float(r["score"]) for r in rows if r["image"] == image]
        assert scores == sorted(scores, reverse=True)
    # At genus rank the labels are genera of the clade; a label file replaces the catalog's taxa.
    assert (
        main([*home, "predict", images[0], "--model", str(untrained), "--within", within, "--rank", "genus"])
        == 0
    )
    assert all(r["species"] == "" and r["genus"] for r in _rows(capsys))


def test_predict_among_a_label_file_and_hostile_clades(curated, world, untrained, tmp_path, capsys):
    labels = tmp_path / "labels.txt"
    labels.write_text("# my field guide\nred fox\nbarn owl\n\nred fox\n")
    image = str(sorted(world.eval_dir.rglob("*.jpg"))[0])
    home = ["--home", str(curated.home)]
    assert (
        main([*home, "predict", image, "--model", str(untrained), "--labels", str(labels), "--k", "5"]) == 0
    )
    assert {r["label"] for r in _rows(capsys)} == {"red fox", "barn owl"}
    secret = tmp_path / "secret.txt"
    secret.write_text("hunter2")
    for hostile in (
        f"(SELECT content FROM read_text('{secret}')) <> ''",
        "true) --",
        "kingdom = 'x'; DROP TABLE taxa",
    ):
        assert main([*home, "predict", image, "--model", str(untrained), "--within", hostile]) == 1
    assert "hunter2" not in capsys.readouterr().err
