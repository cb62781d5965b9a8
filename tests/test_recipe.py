"""Corpus recipes: the shipped example validates and plans without pulling; each kind of mistake is refused
with a message that names the line and says what is wrong."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from flows.demo import SAMPLE_RECIPE
from flows.recipe import RecipeError, load_recipe, plan

TOL = str(Path(sys.executable).parent / "tol")
VARS = {"SAMPLE_WORLD": "/data/world", "SAMPLE_WORLD_URL": "http://127.0.0.1:9"}

GOOD = """\
name: birds
schedule: {cron: "30 2 * * 1", timezone: America/New_York}
sources:
  - name: gbif-aves
    ingest: {source: gbif, params: {taxonKey: "212"}, limit: 1000}
  - name: eol-pages
    ingest: {source: eol, params: {pages: "1,2"}}
curate:
  dedup: {near_k: 5}
  shard: {version: birds-v1, where: "class = 'Aves'"}
train: {preset: cpu-tiny, steps: 10, replay_batch_size: 0}
evaluate: {tasks: [sample-heldout-zero-shot]}
"""


def _problems(tmp_path, text: str, variables=None) -> list[str]:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError) as err:
        load_recipe(path, variables)
    return err.value.problems


def test_the_shipped_recipe_validates_and_plans_without_pulling():
    recipe = load_recipe(SAMPLE_RECIPE, VARS)
    spec = recipe.spec
    assert [p.ingest.source for p in spec.sources] == ["gbif", "eol", "bioscan", "fathomnet"]
    assert spec.curate.shard.version == "sample-v1"
    assert spec.curate.dedup.eval_sets == {"heldout": "/data/world/eval"}
    assert spec.schedule.timezone == "Europe/Paris"
    # Stored as written: the variables' values (paths here, secrets elsewhere) are not in the stored text.
    assert len(recipe.sha256) == 64 and "${SAMPLE_WORLD}/backbone" in recipe.text
    assert "/data/world" not in recipe.text
    params = recipe.train_parameters()
    assert params["dataset_version"] == "sample-v1" and params["overrides"]["replay_batch_size"] == 8
    lines = "\n".join(plan(recipe))  # port 9 answers nothing: a plan that pulled would fail
    assert "gbif-sample" in lines and "first pull" in lines and "sample-v1" in lines
    assert "cron '0 3 * * *' in Europe/Paris" in lines


def test_a_good_recipe_and_its_plan(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(GOOD)
    recipe = load_recipe(path)
    gbif = recipe.spec.sources[0]
    assert gbif.host == "api.gbif.org" and gbif.ingest.limit == 1000 and gbif.retries == 2
    text = "\n".join(plan(recipe))
    assert "https://api.gbif.org (the real service)" in text and "taxonKey=212" in text
    assert "at most 1000 records" in text and "where class = 'Aves'" in text


@pytest.mark.parametrize(
    "edit, expected",
    [
        (
            ("    ingest: {source: gbif,", "    ingest: {sorce: gbif,"),
            r"r.yaml:5: sources[0].ingest.sorce: unknown key",
        ),
        (("source: eol", "source: eool"), r"r.yaml:7: sources[1].ingest: unknown source 'eool'"),
        (
            ("limit: 1000", "limit: lots"),
            r"r.yaml:5: sources[0].ingest.limit: Input should be a valid integer",
        ),
        (("birds-v1", "../birds"), r"r.yaml:10: curate.shard: version name '../birds' is not allowed"),
        (("near_k: 5", "near_k: 40"), r"r.yaml:9: curate.dedup: near_k is a Hamming distance"),
        (('"30 2 * * 1"', '"30 2 * *"'), r"r.yaml:2: schedule.cron: Invalid cron string"),
        (("America/New_York", "Mars/Olympus"), r"r.yaml:2: schedule.timezone: Invalid timezone"),
        (
            ("name: eol-pages", "name: gbif-aves"),
            r"r.yaml:6: sources[1].name: 'gbif-aves' names an earlier pull too",
        ),
        (
            ("name: eol-pages", "name: eol/pages"),
            r"r.yaml:6: sources[1]: source pull name 'eol/pages' is not allowed",
        ),
        (("steps: 10", "stepz: 10"), r"r.yaml:11: train: unknown config key 'stepz'"),
        (("preset: cpu-tiny", "preset: tpu-huge"), r"r.yaml:11: train: unknown preset 'tpu-huge'"),
        (("evaluate:", "evaluation:"), r"r.yaml:12: evaluation: unknown key; known: curate, evaluate"),
        (
            ("name: birds", "name: ${CORPUS}"),
            r"r.yaml:1: ${CORPUS} is not declared: list it under `variables:`",
        ),
        (
            ("name: birds", "variables: [CORPUS]\nname: ${CORPUS}"),
            r"r.yaml:2: ${CORPUS} is not set (pass --var CORPUS=VALUE)",
        ),
        (("sources:", "sources: ["), r"r.yaml:4: not valid YAML"),
    ],
)
def test_each_kind_of_mistake_names_its_line(tmp_path, edit, expected):
    old, new = edit
    assert old in GOOD
    problems = _problems(tmp_path, GOOD.replace(old, new, 1))
    assert any(expected in p for p in problems), problems


def test_every_problem_is_listed_at_once(tmp_path):
    text = GOOD.replace("sorce", "x").replace("ingest: {source: gbif,", "ingest: {sorce: gbif,")
    text = text.replace("dedup: {near_k: 5}", "dedup: {near_kk: 5}")
    problems = _problems(tmp_path, text)
    assert len(problems) == 2 and "near_kk" in problems[1]


def test_a_recipe_without_a_train_section_is_valid(tmp_path):
    """The cpu-tiny preset asks for replay; with no replay set the train flow trains without it."""
    path = tmp_path / "r.yaml"
    path.write_text("name: pulls-only\nsources:\n  - name: g\n    ingest: {source: gbif}\n")
    recipe = load_recipe(path)
    assert "replay   off (no replay_path" in "\n".join(plan(recipe))


def test_not_a_recipe(tmp_path):
    with pytest.raises(RecipeError, match="no such recipe file"):
        load_recipe(tmp_path / "missing.yaml")
    assert "a recipe is a mapping" in _problems(tmp_path, "- a\n- b\n")[0]
    assert "r.yaml:1: name: Field required" in _problems(tmp_path, "sources: []\n")[0]


def test_the_command_line_prints_every_problem_and_fails(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(GOOD.replace("source: eol", "source: eool").replace("near_k: 5", "near_k: 40"))
    out = subprocess.run([TOL, "recipe", "validate", str(path)], capture_output=True, text=True)
    assert out.returncode == 1
    assert "unknown source 'eool'" in out.stderr and "near_k is a Hamming distance" in out.stderr
    path.write_text(GOOD)
    out = subprocess.run(
        [TOL, "--home", str(tmp_path / "h"), "recipe", "plan", str(path)], capture_output=True, text=True
    )
    assert out.returncode == 0 and "gbif-aves" in out.stdout and not (tmp_path / "h").exists()


def test_filter_settings_and_thresholds_are_checked_with_their_lines(tmp_path):
    text = """name: f
curate:
  filter: {scorers: [faces, nudity]}
  shard:
    version: v1
    filters:
      - {scorer: burst, drop_above: 15}
      - {scorer: faces}
"""
    problems = _problems(tmp_path, text)
    assert any(
        p.endswith(
            ":3: curate.filter: unknown scorer(s) nudity; choose from: image_type, burst, faces, museum_category"
        )
        for p in problems
    ), problems
    assert any(":8: curate.shard.filters[1]: the faces rule removes nothing" in p for p in problems), problems
    path = tmp_path / "good.yaml"
    path.write_text(text.replace(", nudity", "").replace("{scorer: faces}", "{scorer: faces, drop_above: 0}"))
    good = load_recipe(path)
    assert [r.as_text() for r in good.spec.curate.shard.filters] == ["burst>15", "faces>0"]
    assert good.spec.curate.filter.scorers == ("image_type", "faces")
    assert "  thresholds burst>15, faces>0" in plan(good)
