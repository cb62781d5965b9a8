"""The filter stage: content scorers write scores (never decisions); a version's rules remove and count."""

from __future__ import annotations

import json
import shutil

import pytest
import skimage.data
from PIL import Image

from etl.executors import ExecutorConfig
from etl.filter.image_type import load_rules
from etl.filter.rules import FilterRule
from etl.filter.scorers import FaceConfig, FaceScorer, MuseumConfig
from etl.filter.stage import FilterConfig, run_filter
from etl.filter.support import build_support
from etl.shards.stage import ShardConfig
from flows import stages
from sample_world.build import BURST_FRAMES
from tests.test_training import MICRO
from warehouse.catalog import open_catalog
from warehouse.stage_runs import succeeded_run
from warehouse.versions import load_manifest


def test_face_scorer_fires_on_the_astronaut_and_not_on_the_cat():
    """Real photographs from scikit-image's wheel, through facenet-pytorch's MTCNN with its shipped weights
    and the paper's thresholds (at the default 224-pixel long side)."""
    scorer = FaceScorer(FaceConfig())
    astronaut, cat = (
        Image.fromarray(f()).convert("RGB") for f in (skimage.data.astronaut, skimage.data.chelsea)
    )
    face, none = scorer.score_batch([astronaut, cat])
    assert face.label == "face" and face.score > 0.95 and face.details["faces"] == 1
    x0, y0, x1, y1 = face.details["boxes"][0]  # in the original image's pixels: her face, upper middle
    assert 150 < (x0 + x1) / 2 < 300 and 50 < (y0 + y1) / 2 < 200
    assert none.label == "none" and none.score == 0.0 and none.details == {"faces": 0}


def test_filter_rules_parse_and_refuse_what_removes_nothing_or_names_nothing():
    assert FilterRule.parse("burst>15") == FilterRule("burst", drop_above=15)
    assert FilterRule.parse("faces > 0") == FilterRule("faces", drop_above=0)
    assert FilterRule.parse("museum_category=label, drawer").drop_labels == ("label", "drawer")
    assert FilterRule("burst", drop_above=15).sql() == "(scorer = 'burst' AND (score > 15.0))"
    for bad, msg in [
        ("burst", "SCORER>NUMBER"),
        ("burst>many", "could not convert"),
        ("nudity>0.5", "unknown scorer"),
        ("museum_category=", "removes nothing"),
    ]:
        with pytest.raises(ValueError, match=msg):
            FilterRule.parse(bad)
    with pytest.raises(ValueError, match="finite"):
        FilterRule("burst", drop_above=float("nan"))
    with pytest.raises(ValueError, match="one filter rule per scorer"):
        ShardConfig("v", filters=(FilterRule("burst", drop_above=15), FilterRule("burst", drop_below=2)))
    with pytest.raises(ValueError, match=r"museum\.model"):
        FilterConfig(scorers=("museum_category",))
    assert FilterConfig(scorers=("faces", "burst")).scorers == ("image_type", "burst", "faces")


def test_image_type_rules_are_a_checked_data_file(tmp_path):
    rules = load_rules()
    assert "PRESERVED_SPECIMEN" in rules.basis_of_record and rules.provenance and len(rules.sha256) == 64
    bad = tmp_path / "rules.yaml"
    bad.write_text("provenance: mine\ncamera_trap: {remarks: [x]}\n")
    with pytest.raises(ValueError, match="camera_trap takes"):
        load_rules(bad)
    bad.write_text("museum_specimen: {basis_of_record: [PRESERVED_SPECIMEN]}\n")
    with pytest.raises(ValueError, match="provenance"):
        load_rules(bad)


@pytest.fixture(scope="module")
def home(curated, tmp_path_factory):
    """A copy of the curated home (the filter stage writes to its lake)."""
    dst = tmp_path_factory.mktemp("filter") / "home"
    shutil.copytree(curated.home, dst, symlinks=True)
    return open_catalog(dst)


def _records(catalog, urls: list[str]) -> set[str]:
    """The record ids of planted image URLs (the world writes them with a placeholder for the server)."""
    suffixes = [u.split("}}", 1)[1] for u in urls]
    with catalog.connect() as con:
        rows = con.execute("SELECT record_id, media_url FROM raw_records").fetchall()
    return {rid for rid, url in rows if url and any(url.endswith(s) for s in suffixes)}


def _scores(catalog, scorer: str) -> dict[str, tuple[float | None, str]]:
    with catalog.connect() as con:
        rows = con.execute("SELECT record_id, score, label FROM filter_scores WHERE scorer = ?", [scorer])
        return {r: (s, label) for r, s, label in rows.fetchall()}


def test_filter_scores_bursts_faces_and_types_and_the_version_removes_and_counts(home, world):
    dedup_run = succeeded_run(home, "dedup")
    out = run_filter(
        home,
        FilterConfig(scorers=("burst", "faces"), partition_rows=128),
        dedup_run,
        executor=ExecutorConfig(workers=2),
    )
    with home.connect() as con:
        kept = {
            r[0]
            for r in con.execute(
                "SELECT record_id FROM dedup_decisions_as_of(?) WHERE kept", [dedup_run]
            ).fetchall()
        }
    types, bursts, faces = (_scores(home, s) for s in ("image_type", "burst", "faces"))
    assert set(types) == kept and set(faces) == kept  # every kept image has a type and a face score
    assert out["details"]["scored_now"]["faces"] == len(kept)
    with home.connect() as con:
        burst_records = {
            r[0]
            for r in con.execute(
                "SELECT record_id FROM raw_records WHERE source = 'gbif' AND source_id IN (SELECT unnest(?))",
                [world.planted["burst_occurrences"]],
            ).fetchall()
        }
    assert len(burst_records) == 2 * BURST_FRAMES
    for rid in burst_records & kept:
        assert bursts[rid] == (BURST_FRAMES, "camera_trap") and types[rid][1] == "camera_trap"
    assert max(s for rid, (s, _) in bursts.items() if rid not in burst_records) <= 15
    planted_faces = _records(home, world.planted["face_urls"])
    assert planted_faces and all(faces[r][1] == "face" for r in planted_faces)

    # The rerun scores nothing again: faces are per image and model version.
    again = run_filter(home, FilterConfig(scorers=("faces",)), dedup_run, executor=ExecutorConfig(workers=1))
    assert again["details"]["scored_now"]["faces"] == 0

    base = stages.shard(home, ShardConfig("nofilter", samples_per_shard=128))
    rules = (FilterRule("burst", drop_above=15), FilterRule("faces", drop_above=0))
    m = stages.shard(home, ShardConfig("filtered", samples_per_shard=128, filters=rules))
    f = m["filters"]
    assert f["filter_run"] == again["run_id"] or f["filter_run"] == out["run_id"]
    assert f["removed"]["burst"]["removed"] == len(burst_records & kept & _shippable(home, base))
    assert f["removed"]["burst"]["by_image_type"] == {"camera_trap": f["removed"]["burst"]["removed"]}
    assert f["removed"]["faces"]["matched"] >= len(planted_faces)
    assert m["n_samples"] == base["n_samples"] - f["removed_total"] and f["removed_total"] > 0
    assert load_manifest(home, "filtered")["config"]["filters"][0] == {
        "scorer": "burst",
        "drop_above": 15,
        "drop_below": None,
        "drop_labels": [],
    }
    with home.connect() as con:
        dropped = json.loads(
            con.execute(
                "SELECT dropped_by_reason FROM stage_runs WHERE stage = 'shard' AND status = 'succeeded'"
                " ORDER BY ended_at DESC LIMIT 1"
            ).fetchone()[0]
        )
        in_version = {
            r[0]
            for r in con.execute("SELECT record_id FROM shard_samples WHERE version = 'filtered'").fetchall()
        }
    assert dropped == {f"filtered:{k}": v["removed"] for k, v in f["removed"].items() if v["removed"]}
    assert not in_version & burst_records and not in_version & planted_faces

    # A rule whose scorer never ran is refused with the command to run, not applied to nothing.
    with pytest.raises(LookupError, match="tol filter run"):
        stages.shard(
            home, ShardConfig("museum", filters=(FilterRule("museum_category", drop_labels=("label",)),))
        )


def _shippable(catalog, manifest) -> set[str]:
    with catalog.connect() as con:
        rows = con.execute("SELECT record_id FROM shard_samples WHERE version = ?", [manifest["version"]])
        return {r[0] for r in rows.fetchall()}


def test_museum_scorer_sends_planted_labels_to_the_label_category_with_a_trained_tiny_model(home, world):
    from training.config import load_config

    cfg = load_config(
        preset="cpu-tiny",
        overrides={
            "dataset_version": "t1",
            "model_cfg": MICRO,
            "batch_size": 16,
            "steps": 30,
            "warmup_steps": 2,
            "replay_batch_size": 0,
            "run_id": "museum-tiny",
            "log_every": 10,
        },
    )
    trained = stages.train(home, cfg, progress=False)
    support = build_support(home, world.support, name="museum", model=trained["run_id"], k=3)
    assert support["details"]["images"] == {"drawer": 12, "label": 12, "organism": world.planted["n_species"]}
    out = run_filter(
        home,
        FilterConfig(scorers=("museum_category",), museum=MuseumConfig(model=trained["run_id"])),
        succeeded_run(home, "dedup"),
        executor=ExecutorConfig(workers=1),
    )
    scores = _scores(home, "museum_category")
    types = _scores(home, "image_type")
    assert set(scores) == {r for r, (_, t) in types.items() if t == "museum_specimen"}  # its domain only
    labels = _records(home, world.planted["label_urls"]) & set(scores)
    drawers = _records(home, world.planted["drawer_urls"]) & set(scores)
    assert labels and {scores[r][1] for r in labels} == {"label"}
    assert {scores[r][1] for r in drawers} <= {"drawer", "label"}
    assert out["details"]["labels"]["museum_category"]["organism"] > 0
