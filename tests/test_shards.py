import glob
import json

import pytest
import webdataset as wds

from etl.shards import ShardConfig, build_version
from warehouse.versions import list_versions, verify_version


def test_version_reads_back_with_manifest_counts(curated):
    manifest = json.loads((curated.shards / "t1" / "manifest.json").read_text())
    for split in ("train", "val"):
        urls = sorted(glob.glob(str(curated.shards / "t1" / split / "*.tar")))
        keys = [s["__key__"] for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False)]
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
        build_version(curated, ShardConfig("t1"))
    build_version(curated, ShardConfig("t2", samples_per_shard=64, where="kingdom = 'Plantae'"))
    manifest = json.loads((curated.shards / "t2" / "manifest.json").read_text())
    assert set(manifest["per_kingdom"]) == {"Plantae"}
    shard = curated.shards / "t2" / "train" / manifest["shards"][0]["name"]
    data = bytearray(shard.read_bytes())
    data[2000] ^= 0xFF
    shard.write_bytes(bytes(data))
    problems = verify_version(curated, "t2")
    assert problems and "sha256" in problems[0]
