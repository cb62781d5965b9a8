"""Regression tests for the defects a hostile or careless user found (reliability issue, items 1-13): each one
failed before its fix. Servers are on loopback; "public" hosts are loopback addresses a resolver hook names."""

from __future__ import annotations

import io
import json
import tarfile
import threading
import time
import zipfile
from contextlib import contextmanager
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

import etl.http
from etl.dedup.stage import DedupConfig, eval_images
from etl.fetch.images import ImageConfig, PixelBudget, pixel_budget
from etl.fetch.stage import FetchConfig, fetch_one, fetch_partition
from etl.http import IMAGE_HOSTS
from etl.ingest.sources import IngestConfig
from etl.ingest.stage import run_ingest
from etl.shards.stage import ShardConfig
from flows import stages
from flows.cli import main
from flows.stages import ExecutorConfig
from taxonomy.backbone import latest_backbone, load_backbone
from warehouse.catalog import open_catalog
from warehouse.contracts import check_name
from warehouse.lake import remove_tree
from warehouse.versions import verify_version


def _jpeg(size=(300, 260), color=(120, 30, 200)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG")
    return buf.getvalue()


@contextmanager
def _server(host: str, handler: type[BaseHTTPRequestHandler]):
    srv = ThreadingHTTPServer((host, 0), handler)
    srv.daemon_threads = True
    srv.hits = []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def _coco_export(path: Path, base: str, n: int, bbox: list[int]) -> Path:
    """A COCO export of `n` images at `base/<i>.jpg`, one box each."""
    doc = {
        "images": [{"id": i, "uuid": f"u{i}", "url": f"{base}/{i}.jpg"} for i in range(n)],
        "categories": [{"id": 1, "name": "Sebastes"}],
        "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": bbox} for i in range(n)],
    }
    path.write_text(json.dumps(doc))
    return path


def _handler(routes: dict[str, tuple[int, dict[str, str], bytes]]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.server.hits.append(self.path)
            status, headers, body = routes.get(self.path, (404, {}, b"no"))
            self.send_response(status)
            for k, v in {"Content-Length": str(len(body)), **headers}.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

    return Handler


# 1. A version name is a path -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["..", ".", "", "/tmp/elsewhere", "a/b", ".hidden", "x" * 129, "v 1", "é"])
def test_1_names_are_never_paths(name):
    with pytest.raises(ValueError, match="never a path"):
        check_name("version", name)
    with pytest.raises(ValueError, match="never a path"):
        ShardConfig(name)
    with pytest.raises(ValueError, match="never a path"):
        DedupConfig(eval_sets={name: "/x"})


def test_1_shard_version_dotdot_deletes_nothing(home_copy, capsys):
    before = sorted(p.name for p in home_copy.home.iterdir())
    for bad in ("..", ".", "", str(home_copy.home / "lake")):
        with pytest.raises(SystemExit) as exc:
            main(["--home", str(home_copy.home), "shard", "--version", bad])
        assert exc.value.code == 2
    assert "never a path" in capsys.readouterr().err
    assert sorted(p.name for p in home_copy.home.iterdir()) == before
    assert (home_copy.lake / "images").is_dir() and verify_version(home_copy, "t1") == []


def test_1_flow_parameters_are_checked_before_any_stage(tmp_path):
    from prefect.exceptions import ParameterTypeError

    from flows.pipeline import curate_flow, train_flow

    # What the UI sends: plain JSON, turned into the stage configs (and checked) before the flow starts.
    home = str(tmp_path / "h")
    with pytest.raises(ParameterTypeError, match="never a path"):
        curate_flow.validate_parameters({"home": home, "shard": {"version": ".."}})
    with pytest.raises(ParameterTypeError, match="never a path"):
        curate_flow.validate_parameters({"home": home, "dedup": {"eval_sets": {"held/out": "/x"}}})
    with pytest.raises(ValueError, match="never a path"):
        train_flow.fn(home=str(tmp_path / "h"), dataset_version="../x")
    assert not (tmp_path / "h").exists()


def test_1_removal_only_inside_its_folder(tmp_path):
    (tmp_path / "shards" / "a").mkdir(parents=True)
    (tmp_path / "keep").mkdir()
    for bad in (tmp_path / "shards", tmp_path / "keep", tmp_path / "shards" / "a" / "..", Path("/")):
        with pytest.raises(ValueError, match="refusing"):
            remove_tree(bad, tmp_path / "shards")
    remove_tree(tmp_path / "shards" / "a", tmp_path / "shards")
    assert not (tmp_path / "shards" / "a").exists() and (tmp_path / "keep").exists()


def test_1_killed_overwrite_leaves_the_old_version_whole(home_copy, monkeypatch):
    from etl.shards import stage as shards_mod
    from tests.test_shards import kill_shard_write

    old = stages.shard(home_copy, ShardConfig("ow", samples_per_shard=64), ExecutorConfig(workers=1))
    real = kill_shard_write(monkeypatch, 2)
    new_cfg = ShardConfig("ow", samples_per_shard=32, overwrite=True)
    with pytest.raises(KeyboardInterrupt):
        stages.shard(home_copy, new_cfg, ExecutorConfig(workers=1))
    # The catalog still names the old version, and its files are all there.
    assert verify_version(home_copy, "ow") == []
    with home_copy.connect() as con:
        n = con.execute("SELECT n_shards FROM dataset_versions WHERE version = 'ow'").fetchall()
    assert n == [(len(old["shards"]),)]
    monkeypatch.setattr(shards_mod, "_write_shard", real)
    new = stages.shard(home_copy, new_cfg, ExecutorConfig(workers=1))
    assert verify_version(home_copy, "ow") == [] and len(new["shards"]) > len(old["shards"])
    builds = sorted(p.name for p in (home_copy.shards / ".builds").glob("ow.*"))
    assert len(builds) == 1 and (home_copy.shards / "ow").resolve().name == builds[0]


# 2. A killed backbone load can be retried ------------------------------------------------------------------


def test_2_backbone_load_killed_midway_can_be_rerun(world, tmp_path, monkeypatch):
    import warehouse.writers as writers_mod

    catalog = open_catalog(tmp_path / "home")

    class Dies:
        @staticmethod
        def now(tz=None):
            raise KeyboardInterrupt("killed after the taxa rows, before the backbones row")

    monkeypatch.setattr(writers_mod, "datetime", Dies)  # the backbones row is written after the taxa
    with pytest.raises(KeyboardInterrupt):
        load_backbone(catalog, world.backbone)
    monkeypatch.undo()
    with catalog.connect() as con:
        assert con.execute("SELECT count(*) FROM taxa").fetchall() == [(0,)]  # rolled back
    version = load_backbone(catalog, world.backbone)
    clean = open_catalog(tmp_path / "clean")
    load_backbone(clean, world.backbone)
    count = "SELECT count(*) FROM taxa WHERE backbone_version = ?"
    assert (
        catalog.query_arrow(count, [version]).to_pylist() == clean.query_arrow(count, [version]).to_pylist()
    )


def test_12_empty_backbone_is_refused(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "Taxon.tsv").write_text("taxonID\tscientificName\ttaxonRank\ttaxonomicStatus\n")
    catalog = open_catalog(tmp_path / "home")
    with pytest.raises(ValueError, match="empty backbone"):
        load_backbone(catalog, folder)
    with pytest.raises(LookupError, match="no backbone loaded"):
        latest_backbone(catalog)


# 3. SSRF through a redirect --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ip, public",
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # cloud metadata
        ("100.64.0.1", False),  # carrier-grade NAT
        ("224.0.0.1", False),
        ("239.255.255.250", False),
        ("0.0.0.0", False),
        ("::1", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("ff02::1", False),
        ("::ffff:127.0.0.1", False),  # IPv4-mapped loopback
        ("::ffff:8.8.8.8", True),
        ("2002:7f00:1::1", False),  # 6to4 around 127.0.0.1
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", False),  # Teredo
        ("64:ff9b::7f00:1", False),  # NAT64 of 127.0.0.1
    ],
)
def test_3_public_addresses(ip, public):
    assert etl.http.is_public_address(ip) is public


def test_3_redirect_to_a_private_address_is_refused(public_test_host):
    secret = _jpeg(color=(255, 0, 0))
    with _server(
        "127.0.0.1", _handler({"/secret.jpg": (200, {"Content-Type": "image/jpeg"}, secret)})
    ) as inner:
        target = f"http://127.0.0.1:{inner.server_address[1]}/secret.jpg"
        routes = {
            "/evil.jpg": (302, {"Location": target}, b""),
            "/hop.jpg": (301, {"Location": "/fine.jpg"}, b""),
            "/fine.jpg": (200, {"Content-Type": "image/jpeg"}, _jpeg()),
            "/file.jpg": (302, {"Location": "file:///etc/passwd"}, b""),
            "/loop.jpg": (302, {"Location": "/loop.jpg"}, b""),
        }
        with _server("127.0.0.2", _handler(routes)) as outer:
            base = f"http://public.test:{outer.server_address[1]}"
            strict = FetchConfig()

            def status(path):
                return fetch_one({"record_id": path, "media_url": base + path}, strict)

            assert status("/fine.jpg")["status"] == "ok"  # the hook makes the first hop public
            assert status("/hop.jpg")["status"] == "ok"  # a redirect within public hosts is followed
            evil = status("/evil.jpg")
            assert evil["status"] == "private_address" and "127.0.0.1" in evil["error"]
            assert status("/file.jpg")["status"] == "unsupported_url_scheme"
            assert status("/loop.jpg")["status"] == "too_many_redirects"
        assert inner.hits == []  # the private server was never reached


def test_3_a_name_with_any_private_address_is_refused(monkeypatch):
    monkeypatch.setattr(etl.http, "resolve_host", lambda host, port: ["93.184.216.34", "127.0.0.1"])
    out = fetch_one({"record_id": "r", "media_url": "http://mixed.test/x.jpg"}, FetchConfig())
    assert out["status"] == "private_address"


# 4. Tar slip in evaluation ---------------------------------------------------------------------------------


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_4_tar_member_names_never_become_paths(tmp_path):
    from evaluation.datasets import load_webdataset

    outside = tmp_path / "outside"
    evil = _tar(
        tmp_path / "evil.tar",
        {
            f"{outside}/abs.jpg": _jpeg(),
            f"{outside}/abs.cls": b"a",
            "../../escape.jpg": _jpeg(color=(0, 255, 0)),
            "../../escape.cls": b"b",
            "fine.jpg": _jpeg(color=(0, 0, 255)),
            "fine.cls": b"c",
        },
    )
    cache = tmp_path / "deep" / "er" / "cache"
    data = load_webdataset(evil, "asis", cache_dir=cache)
    assert len(data.paths) == 3
    assert all(p.resolve().is_relative_to(cache.resolve()) for p in data.paths)
    assert not outside.exists() and not (tmp_path / "deep" / "escape.jpg").exists()
    assert not (cache.parent.parent / "escape.jpg").exists()


# 5. Evaluation set names -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["held/out", "held:out", "x/../../../../elsewhere/y", "..", ""])
def test_5_bad_eval_set_names_are_refused_at_the_cli(curated, name, tmp_path, capsys):
    assert main(["--home", str(curated.home), "dedup", "--eval", f"{name}={tmp_path}"]) == 1
    assert "evaluation set name" in capsys.readouterr().err


def test_5_images_with_extra_dots_in_tar_sets_are_hashed(tmp_path):
    members = {f"img{i}.jpg": _jpeg(color=(i * 40, 10, 10)) for i in range(4)}
    members["a.v2.jpg"] = _jpeg(color=(1, 200, 1))
    members["b.final.crop.png"] = _jpeg(color=(1, 1, 200))
    members["notes.txt"] = b"not an image"
    names = [name for name, _ in eval_images(_tar(tmp_path / "set.tar", members))]
    assert len(names) == 6 and "set.tar/a.v2.jpg" in names


# 6. `tol fetch` as its own command ------------------------------------------------------------------------


def test_6_every_stage_command_runs_as_its_own_process(tmp_path):
    """`tol fetch` crashed when run alone (pyarrow.compute was imported only by other stages)."""
    from tests.tolcli import sql, tol

    routes = {
        f"/{i}.jpg": (200, {"Content-Type": "image/jpeg"}, _jpeg(color=(i * 30, 9, 9))) for i in range(4)
    }
    with _server("127.0.0.1", _handler(routes)) as srv:
        coco = _coco_export(
            tmp_path / "coco.json", f"http://127.0.0.1:{srv.server_address[1]}", 4, [0, 0, 250, 250]
        )
        home = tmp_path / "home"
        tol(home, "ingest", "fathomnet", "--path", str(coco))
        tol(home, "fetch", "--allow-private-hosts", "--workers", "1")
    assert sql(home, "SELECT status, count(*) AS n FROM images GROUP BY 1") == [{"status": "ok", "n": 4}]


# 7. No overall download deadline ---------------------------------------------------------------------------


class _Trickle(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", "100000")
        self.end_headers()
        try:
            for _ in range(150):  # 30 s at most: the test's bound, not the server's
                self.wfile.write(b"\xff")
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:
            pass


def test_7_a_trickling_server_ends_at_the_deadline():
    with _server("127.0.0.1", _Trickle) as srv:
        url = f"http://127.0.0.1:{srv.server_address[1]}/slow.jpg"
        slow = replace(IMAGE_HOSTS, read_timeout=10, max_retries=0)
        cfg = FetchConfig(allow_private_hosts=True, deadline=2.0, http=slow)
        result = {}
        t0 = time.monotonic()
        worker = threading.Thread(
            target=lambda: result.update(fetch_one({"record_id": "s", "media_url": url}, cfg))
        )
        worker.start()
        worker.join(30)
        elapsed = time.monotonic() - t0
    assert not worker.is_alive(), "the download was still running after 30 s"
    assert result["status"] == "timeout" and "deadline" in result["error"] and elapsed < 8


# 8. tol sql is read-only unless --write --------------------------------------------------------------------


def test_8_sql_cannot_delete_unless_write(home_copy, capsys):
    home = str(home_copy.home)
    n = home_copy.query_arrow("SELECT count(*) AS n FROM taxa").to_pylist()
    assert main(["--home", home, "sql", "DELETE FROM taxa"]) == 1
    assert "read-only" in capsys.readouterr().err
    assert home_copy.query_arrow("SELECT count(*) AS n FROM taxa").to_pylist() == n
    assert main(["--home", home, "sql", "--write", "CREATE TABLE notes AS SELECT 1 AS a"]) == 0
    assert home_copy.query_arrow("SELECT a FROM notes").to_pylist() == [{"a": 1}]


# 9. Training resume ----------------------------------------------------------------------------------------


def _interrupt_at(monkeypatch, at_step: int):
    import training.loop as loop

    real = loop.cosine_lr

    def lr(step, cfg):
        if step == at_step:
            raise KeyboardInterrupt(f"killed at step {at_step}")
        return real(step, cfg)

    monkeypatch.setattr(loop, "cosine_lr", lr)


def test_9_training_killed_before_and_between_checkpoints_resumes(curated, world, monkeypatch):
    from tests.test_training import _cfg
    from training.loop import train

    # Before its first checkpoint: the same run id runs again (it failed on a duplicate key).
    _interrupt_at(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        train(curated, _cfg(world, run_id="r-k0", steps=4, checkpoint_every=3), progress=False)
    monkeypatch.undo()
    out = train(
        curated, _cfg(world, run_id="r-k0", steps=4, checkpoint_every=3, resume="latest"), progress=False
    )
    assert out["steps"] == 4
    # Killed twice between the same two checkpoints, then resumed: every step logged once.
    cfg = {"run_id": "r-k2", "steps": 6, "checkpoint_every": 2}
    for _ in range(2):
        _interrupt_at(monkeypatch, 3)
        with pytest.raises(KeyboardInterrupt):
            train(curated, _cfg(world, **cfg, resume="latest"), progress=False)
        monkeypatch.undo()
    train(curated, _cfg(world, **cfg, resume="latest"), progress=False)
    steps = [
        json.loads(x)["step"] for x in (curated.runs / "r-k2" / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == [1, 2, 3, 4, 5, 6]
    with curated.connect() as con:
        rows = con.execute(
            "SELECT status, count(*) FROM stage_runs WHERE run_id LIKE 'stage-r-k2-%' GROUP BY 1 ORDER BY 1"
        ).fetchall()
        final = con.execute("SELECT status FROM training_runs WHERE run_id = 'r-k2'").fetchall()
    assert rows == [("interrupted", 2), ("succeeded", 1)] and final == [("succeeded",)]


# 10. FathomNet COCO ids across exports ---------------------------------------------------------------------


def test_10_two_coco_exports_numbered_from_one_keep_both(catalog, tmp_path):
    def export(prefix: str) -> Path:
        doc = {
            "images": [{"id": 1, "uuid": f"{prefix}-img", "coco_url": f"https://x.org/{prefix}.png"}],
            "categories": [{"id": 1, "name": "Sebastes"}],
            "annotations": [
                {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 30, 40]},
                {"id": 2, "image_id": 1, "category_id": None, "bbox": [5, 5, 30, 40]},
            ],
        }
        path = tmp_path / f"{prefix}.json"
        path.write_text(json.dumps(doc))
        return path

    for prefix in ("dive1", "dive2"):
        run_ingest(catalog, IngestConfig("fathomnet", path=str(export(prefix))))
    rows = catalog.query_arrow("SELECT media_url, drop_reason FROM raw_records ORDER BY 1, 2").to_pylist()
    assert len(rows) == 4  # the second export replaced every row of the first
    assert sorted(r["drop_reason"] or "" for r in rows) == ["", "", "unlabelled", "unlabelled"]


# 11. Orphaned workers: tests/test_faults.py checks that every killed stage's workers die with it. ---------


def test_11_fetch_workers_die_with_a_killed_main_process(tmp_path):
    import os
    import signal

    from tests.tolcli import alive, children, start, tol, wait_until

    with _server("127.0.0.1", _Trickle) as srv:
        coco = _coco_export(
            tmp_path / "coco.json", f"http://127.0.0.1:{srv.server_address[1]}", 8, [0, 0, 9, 9]
        )
        home = tmp_path / "home"
        tol(home, "ingest", "fathomnet", "--path", str(coco))
        proc = start(home, "fetch", "--allow-private-hosts", "--workers", "2", "--partition-rows", "2")
        try:
            assert wait_until(lambda: len(children(proc.pid)) >= 2, 60), "no pool workers appeared"
            time.sleep(1.0)
            kids = children(proc.pid)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            assert wait_until(lambda: not any(alive(k) for k in kids), 5), "workers outlived tol fetch"
        finally:
            if proc.poll() is None:
                proc.kill()
            for k in children(proc.pid):
                os.kill(k, signal.SIGKILL)


# 12. Smaller defects ---------------------------------------------------------------------------------------


def test_12_simple_csv_download_is_named(catalog, tmp_path):
    path = tmp_path / "0009886-250127130748423.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("0009886-250127130748423.csv", "gbifID\tdatasetKey\n1\tx\n")
    with pytest.raises(ValueError, match=r"SIMPLE_CSV download.*format DWCA"):
        run_ingest(catalog, IngestConfig("gbif", path=str(path)))
    real = Path(__file__).parents[2] / "shared" / "samples" / "rgbif__0009886-250127130748423_simplecsv.zip"
    if real.exists():
        with pytest.raises(ValueError, match="SIMPLE_CSV"):
            run_ingest(catalog, IngestConfig("gbif", path=str(real)))


def test_12_a_where_that_selects_nothing_makes_no_version(home_copy):
    with pytest.raises(ValueError, match="empty"):
        stages.shard(home_copy, ShardConfig("none", where="kingdom = 'Nonexistia'"))
    with pytest.raises(ValueError, match="empty"):
        ShardConfig("blank", where="   ")
    with home_copy.connect() as con:
        assert con.execute("SELECT count(*) FROM dataset_versions WHERE version = 'none'").fetchall() == [
            (0,)
        ]


def test_12_damaged_epithets_say_so():
    import tempfile

    from taxonomy.resolve import Query, load_index, resolve_query
    from tests.test_taxonomy_hard_cases import BACKBONE

    catalog = open_catalog(Path(tempfile.mkdtemp()) / "home")
    index = load_index(catalog, load_backbone(catalog, BACKBONE))

    def res(name, kingdom=None):
        return resolve_query(index, Query(None, name, kingdom, None, None, None, None, None))

    cyrillic = res("Puma c\u043encolor")
    assert cyrillic.match_type == "higherrank" and "CYRILLIC" in cyrillic.reason and cyrillic.confidence < 1
    assert "invisible U+200B" in res("Puma con\u200bcolor").reason
    assert "stray quotes" in res('Puma "concolor"').reason
    conflict = res("Calopteryx splendens", "Plantae")
    assert conflict.match_type == "higherrank" and "contradicts" in conflict.reason
    assert index.lineage[conflict.taxon_id]["kingdom"] == "Plantae"


def test_12_decoded_pixels_in_flight_are_bounded(tmp_path):
    budget = PixelBudget(3)
    inside, peak = [], []

    def work():
        with budget.hold(2):
            inside.append(1)
            peak.append(len(inside))
            time.sleep(0.05)
            inside.pop()

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert max(peak) == 1 and budget.peak == 2
    with budget.hold(10):  # larger than the whole budget: runs, alone
        assert budget.used == 3
    # Through the fetch stage: 12 photos of 1.2 Mpx, 8 threads, a budget of 2.5 Mpx.
    root = tmp_path / "photos"
    root.mkdir()
    rows = []
    for i in range(12):
        Image.new("RGB", (1200, 1000), (i * 20, 90, 90)).save(root / f"{i}.png")
        rows.append({"record_id": str(i), "media_url": (root / f"{i}.png").as_uri(), "source": "gbif"})
    import pyarrow as pa

    cap = 2_500_000
    cfg = FetchConfig(image=ImageConfig(max_pixels_in_flight=cap), local_roots=(str(root),), threads=8)
    out = [
        r for b in fetch_partition(iter(pa.Table.from_pylist(rows).to_batches()), cfg) for r in b.to_pylist()
    ]
    assert [r["status"] for r in out] == ["ok"] * 12
    assert 1_200_000 <= pixel_budget(cap).peak <= cap


# 13. Taxonomy against GBIF's matcher: the kingdom and misspelt-genus cases are rows of
# tests/test_taxonomy_hard_cases.py (Calopteryx splendens / Puma concolor recorded as plants, Carasius auratus
# without a family); this is the case where the answer is not unambiguous.


def test_13_a_misspelt_genus_near_two_genera_with_the_epithet_says_why(tmp_path):
    from taxonomy.resolve import Query, load_index, resolve_query

    header = "taxonID\tacceptedNameUsageID\tscientificName\tcanonicalName\ttaxonRank\ttaxonomicStatus\tkingdom\tgenus"
    rows = [
        ("1", "", "Animalia", "Animalia", "kingdom", "accepted", "Animalia", ""),
        ("2", "", "Abcus", "Abcus", "genus", "accepted", "Animalia", "Abcus"),
        ("3", "", "Abdus", "Abdus", "genus", "accepted", "Animalia", "Abdus"),
        ("4", "", "Abcus vulgaris", "Abcus vulgaris", "species", "accepted", "Animalia", "Abcus"),
        ("5", "", "Abdus vulgaris", "Abdus vulgaris", "species", "accepted", "Animalia", "Abdus"),
        ("6", "", "Abdus rarus", "Abdus rarus", "species", "accepted", "Animalia", "Abdus"),
    ]
    folder = tmp_path / "bb"
    folder.mkdir()
    (folder / "Taxon.tsv").write_text("\n".join([header, *("\t".join(r) for r in rows)]) + "\n")
    catalog = open_catalog(tmp_path / "home")
    index = load_index(catalog, load_backbone(catalog, folder))

    def res(name):
        return resolve_query(index, Query(None, name, None, None, None, None, None, None))

    tie = res("Abxus vulgaris")  # one edit from Abcus and from Abdus, both with `vulgaris`
    assert tie.taxon_id is None and "as close to each of Abcus vulgaris, Abdus vulgaris" in tie.reason
    unique = res("Abxus rarus")  # only Abdus has `rarus`
    assert unique.match_type == "fuzzy" and index.lineage[unique.taxon_id]["scientific_name"] == "Abdus rarus"
