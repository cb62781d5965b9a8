import glob
import json

import pytest
import webdataset as wds

from etl.executors.local import LocalExecutor
from etl.shards.stage import ShardConfig
from flows import stages
from flows.stages import ExecutorConfig
from warehouse.versions import list_versions, verify_version


def test_version_reads_back_with_manifest_counts(curated):
    manifest = json.loads((curated.shards / "t1" / "manifest.json").read_text())
    for split in ("train", "val"):
        urls = sorted(glob.glob(str(curated.shards / "t1" / split / "*.tar")))
        keys = [s["__key__"] for s in wds.WebDataset(urls, shardshuffle=False)]
        assert len(keys) == len(set(keys)) == manifest["splits"][split]
        sizes = json.loads((curated.shards / "t1" / split / "sizes.json").read_text())
        assert sum(sizes.values()) == manifest["splits"][split]
    assert verify_version(curated, "t1") == []
    assert [v["version"] for v in list_versions(curated)] == ["t1"]


def test_sample_members_follow_the_paper(curated):
    url = sorted(glob.glob(str(curated.shards / "t1" / "train" / "*.tar")))[0]
    sample = next(iter(wds.WebDataset(url, shardshuffle=False).decode("pil")))
    for member in (
        "jpg",
        "json",
        "sci.txt",
        "com.txt",
        "taxon.txt",
        "sci_com.txt",
        "taxon_com.txt",
        "taxontag.txt",
        "scientific_name.txt",
        "common_name.txt",
        "taxonomic_name.txt",
    ):
        assert member in sample, member
    meta = sample["json"]
    assert meta["record_id"].replace(".", "") == sample["__key__"]
    assert sample["taxon.txt"].startswith(f"a photo of {meta['kingdom']}")


def test_split_is_by_occurrence(curated):
    with curated.connect() as con:
        leaks = con.execute("""SELECT coalesce(r.occurrence_id, r.record_id) o FROM shard_samples s
                               JOIN raw_records r USING (record_id) WHERE s.version = 't1'
                               GROUP BY o HAVING count(DISTINCT s.split) > 1""").fetchall()
        n = con.execute("SELECT count(*) FROM shard_samples WHERE version = 't1'").fetchall()[0][0]
    assert leaks == [] and n > 0


def test_versions_are_immutable_and_verify_catches_corruption(curated, tmp_path):
    with pytest.raises(FileExistsError, match="immutable"):
        stages.shard(curated, ShardConfig("t1"))
    stages.shard(curated, ShardConfig("t2", samples_per_shard=64, where="kingdom = 'Plantae'"))
    manifest = json.loads((curated.shards / "t2" / "manifest.json").read_text())
    assert set(manifest["per_kingdom"]) == {"Plantae"}
    shard = curated.shards / "t2" / "train" / manifest["shards"][0]["name"]
    data = bytearray(shard.read_bytes())
    data[2000] ^= 0xFF
    shard.write_bytes(bytes(data))
    problems = verify_version(curated, "t2")
    assert problems and "sha256" in problems[0]
    # Spread over a pool of workers (one unit per shard), the same problems in the manifest's order.
    missing = curated.shards / "t2" / "train" / manifest["shards"][1]["name"]
    missing.unlink()
    in_process = verify_version(curated, "t2")
    assert [p.split(":")[0] for p in in_process] == [f"train/{s['name']}" for s in manifest["shards"][:2]]
    assert in_process[1].endswith("missing")
    assert verify_version(curated, "t2", LocalExecutor(2)) == in_process


def _brace(urls: list[str]) -> str:
    first, last = urls[0].rsplit("-", 1)[1][:5], urls[-1].rsplit("-", 1)[1][:5]
    return urls[0].rsplit("-", 1)[0] + f"-{{{first}..{last}}}.tar"


def test_open_clip_trainer_pipeline_reads_the_version(curated):
    """open_clip's own `get_wds_dataset` reads our shards as they are (it wants `txt` and `sizes.json`)."""
    from types import SimpleNamespace

    import open_clip
    from open_clip_train.data import get_wds_dataset

    manifest = json.loads((curated.shards / "t1" / "manifest.json").read_text())
    urls = sorted(glob.glob(str(curated.shards / "t1" / "train" / "*.tar")))
    args = SimpleNamespace(
        train_data=_brace(urls),
        val_data=_brace(urls),
        train_num_samples=None,
        val_num_samples=None,
        dataset_resampled=False,
        train_data_upsampling_factors=None,
        seed=0,
        batch_size=16,
        workers=0,
        world_size=1,
    )
    _, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32")
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    train_info = get_wds_dataset(args, preprocess, is_train=True, tokenizer=tokenizer)
    assert (
        train_info.dataloader.num_samples >= manifest["splits"]["train"]
    )  # sizes.json found, rounded to batches
    val_info = get_wds_dataset(args, preprocess, is_train=False, tokenizer=tokenizer)
    seen = sum(images.shape[0] for images, texts in val_info.dataloader)
    assert seen == manifest["splits"]["train"]


def test_our_training_loader_reads_the_version(curated):
    import torch

    from training.data import bio_loader
    from warehouse.versions import shard_urls

    def preprocess(image):
        return torch.zeros(3, 8, 8)

    manifest = json.loads((curated.shards / "t1" / "manifest.json").read_text())
    images, caps = next(bio_loader(shard_urls(curated, "t1"), preprocess, 4, 0))
    assert images.shape == (4, 3, 8, 8) and set(caps) == {"sci", "com", "taxon", "sci_com", "taxon_com"}
    one_pass = bio_loader(shard_urls(curated, "t1"), preprocess, 16, 0, resampled=False)
    assert sum(batch.shape[0] for batch, _ in one_pass) == manifest["splits"]["train"]


def test_squash_resize_and_txt_member(curated):
    stages.shard(curated, ShardConfig("t3", samples_per_shard=64, image_size=96, txt_caption="sci"))
    url = sorted(glob.glob(str(curated.shards / "t3" / "train" / "*.tar")))[0]
    sample = next(iter(wds.WebDataset(url, shardshuffle=False).decode("pil")))
    assert sample["jpg"].size == (96, 96) and sample["txt"] == sample["sci.txt"]


def kill_shard_write(monkeypatch, n: int):
    """Make the n-th shard write of this process raise KeyboardInterrupt (a kill mid-build); returns the real
    writer, to put back."""
    from etl.shards import stage as shards_mod

    real = shards_mod._write_shard
    calls = {"n": 0}

    def dies(path, samples):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt("killed")
        return real(path, samples)

    monkeypatch.setattr(shards_mod, "_write_shard", dies)
    return real


def test_interrupted_build_resumes_and_reuses_finished_shards(curated, monkeypatch):
    from etl.shards import stage as shards_mod

    real = kill_shard_write(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        stages.shard(curated, ShardConfig("t4", samples_per_shard=32), ExecutorConfig(workers=1))
    monkeypatch.setattr(shards_mod, "_write_shard", real)
    manifest = stages.shard(curated, ShardConfig("t4", samples_per_shard=32), ExecutorConfig(workers=1))
    with curated.connect() as con:
        details = json.loads(
            con.execute("""SELECT details FROM stage_runs WHERE stage = 'shard' AND status = 'succeeded'
                                            ORDER BY ended_at DESC LIMIT 1""").fetchall()[0][0]
        )
    assert details["reused_shards"] == 2 and verify_version(curated, "t4") == []
    reference = stages.shard(
        curated, ShardConfig("t1", samples_per_shard=64, val_fraction=0.1, overwrite=True)
    )
    assert manifest["n_samples"] == reference["n_samples"]


@pytest.mark.spark
@pytest.mark.slow
def test_spark_executor_writes_identical_shards(curated):
    local = stages.shard(curated, ShardConfig("t5", samples_per_shard=64), ExecutorConfig(workers=1))
    spark = stages.shard(
        curated, ShardConfig("t6", samples_per_shard=64), ExecutorConfig("spark", spark_master="local[2]")
    )
    assert [s["sha256"] for s in local["shards"]] == [s["sha256"] for s in spark["shards"]]


def _reference_plan(rows: list[dict], cfg: ShardConfig) -> dict[str, tuple[str, str]]:
    """The planner as it was when it held every row in Python: the SQL plan must assign the same split and
    shard to every sample for the same seed, so a version rebuilt by this code is the same version."""
    from etl.shards.stage import _bucket

    for row in rows:
        row["split"] = "val" if _bucket(row["occurrence_id"], cfg.seed) < cfg.val_fraction else "train"
        row["order_key"] = _bucket(row["record_id"], cfg.seed + 1)
    out = {}
    for split in ("train", "val"):
        part = sorted((r for r in rows if r["split"] == split), key=lambda r: r["order_key"])
        count = size = index = 0
        for r in part:
            estimate = r["jpeg_bytes"] + 2048
            if count and (count >= cfg.samples_per_shard or size + estimate > cfg.max_shard_bytes):
                count, size, index = 0, 0, index + 1
            out[r["record_id"]] = (split, f"{split}/shard-{index:05d}.tar")
            count, size = count + 1, size + estimate
    return out


@pytest.mark.parametrize("seed", [0, 7])
def test_sql_plan_assigns_what_the_python_planner_did(curated, seed):
    import pyarrow.parquet as pq

    from warehouse.versions import version_root

    cfg = ShardConfig(f"p{seed}", samples_per_shard=40, max_shard_bytes=600_000, val_fraction=0.2, seed=seed)
    manifest = stages.shard(curated, cfg)
    plan = pq.read_table(version_root(curated, cfg.version) / "plan.parquet").to_pylist()
    expected = _reference_plan([dict(r) for r in plan], cfg)
    assert {r["record_id"]: (r["split"], r["shard"]) for r in plan} == expected
    assert len({r["shard"] for r in plan}) == len(manifest["shards"]) > 2 * 2  # the byte cap cut shards too
    assert [r["shard"] for r in plan] == sorted(r["shard"] for r in plan)  # one contiguous range per shard


def test_the_driver_never_reads_an_image(curated, monkeypatch):
    """References in: only the workers (separate processes here) read JPEG bytes; the driver plans."""
    from etl.shards import stage as shards_mod

    def refuse(*args, **kwargs):
        raise AssertionError("the driver read image bytes")

    monkeypatch.setattr(shards_mod, "read_image_blobs", refuse)
    manifest = stages.shard(curated, ShardConfig("nobytes", samples_per_shard=64), ExecutorConfig(workers=2))
    assert verify_version(curated, "nobytes") == [] and manifest["n_samples"] > 0


def test_shard_samples_are_read_from_the_build_plans(curated):
    """`shard_samples` is a view over each version's plan: the catalog file holds none of its rows, and an
    overwritten version's rows switch with it."""
    stages.shard(curated, ShardConfig("plan-view", samples_per_shard=64, where="kingdom = 'Animalia'"))
    with curated.connect() as con:
        per_version = dict(con.execute("SELECT version, count(*) FROM shard_samples GROUP BY 1").fetchall())
        expected = dict(con.execute("SELECT version, n_samples FROM dataset_versions").fetchall())
        stored = con.execute("SELECT count(*) FROM shard_samples_stored").fetchall()[0][0]
    assert per_version == expected and stored == 0
    old = (curated.shards / "plan-view").resolve()
    stages.shard(
        curated, ShardConfig("plan-view", samples_per_shard=64, where="kingdom = 'Plantae'", overwrite=True)
    )
    assert not old.exists()
    with curated.connect(read_only=True) as con:
        kingdoms = con.execute("""SELECT DISTINCT t.kingdom FROM shard_samples s
                                  JOIN taxa t USING (taxon_id) WHERE s.version = 'plan-view'""").fetchall()
        n = con.execute("SELECT count(*) FROM shard_samples WHERE version = 'plan-view'").fetchall()[0][0]
        n_samples = con.execute(
            "SELECT n_samples FROM dataset_versions WHERE version = 'plan-view'"
        ).fetchall()
    assert kingdoms == [("Plantae",)] and [(n,)] == n_samples


def test_stored_shard_samples_of_older_versions_stay_until_a_plan_covers_them(catalog):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from warehouse.catalog import register_shard_samples, retire_stored_samples

    build = catalog.shards / ".builds" / "planned.abc"
    build.mkdir(parents=True)
    plan = pa.table(
        {
            c: ["train", "train/shard-00000.tar", "k1", "r1", "t1"][i : i + 1]
            for i, c in enumerate(["split", "shard", "key", "record_id", "taxon_id"])
        }
    )
    pq.write_table(plan, build / "plan.parquet")
    with catalog.connect() as con:
        for version, path in (("legacy", "/elsewhere/legacy"), ("planned", "shards/.builds/planned.abc")):
            con.execute("INSERT INTO dataset_versions (version, path) VALUES (?, ?)", [version, path])
            con.execute(
                "INSERT INTO shard_samples_stored VALUES (?, 'val', 'val/shard-00000.tar', 'k0', 'r0', 't0')",
                [version],
            )
        register_shard_samples(con, catalog.home)
        seen = con.execute("SELECT version, split, record_id FROM shard_samples ORDER BY 1").fetchall()
        assert seen == [("legacy", "val", "r0"), ("planned", "train", "r1")]  # the plan wins
        assert retire_stored_samples(con, catalog.home) == 1
        left = con.execute("SELECT version FROM shard_samples_stored").fetchall()
    assert left == [("legacy",)]
