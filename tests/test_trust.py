"""Inputs from others are data, never code (the trust-model issue, items 1-19): each test failed on c996e51.

`HOSTILE_INPUTS` is the table: each hostile input, the outcome it gets now, and the test that shows it.
Servers are on loopback; a "public" host is a loopback address that a resolver hook calls public."""

from __future__ import annotations

import io
import json
import pickle
import shutil
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
import torch

from etl.http import HttpConfig, HttpError, PoliteClient
from etl.ingest.sources import IngestConfig
from etl.ingest.stage import run_ingest
from flows import stages
from flows.cli import main
from tests.test_hostile import _handler, _jpeg, _server
from tests.test_training import _cfg
from training.loop import train
from warehouse.archives import ArchiveError, extract_zip_member
from warehouse.catalog import open_catalog

HOSTILE_INPUTS = [
    # (item, hostile input, outcome now, test)
    (1, "replay tar with .pyd/.pickle pickle members", "only jpg + txt decoded; nothing unpickled", "test_01_replay_tar_pickles_are_never_unpickled"),
    (2, "GBIF download api_url of another host; a key like ../x", "credentials not sent; key refused", "test_02_gbif_credentials_go_only_to_gbif_and_keys_are_checked"),
    (3, "resume=PATH to a pickle; a poisoned latest.pt", "refused, never unpickled", "test_03_resume_loads_plain_data_of_this_run_only"),
    (4, "executor.spark_master in a run form", "OperatorOnlyError before any stage", "test_04_spark_master_from_a_form_is_refused"),
    (5, "DwC-A header with a \" and stacked SQL", "one odd column name; no statement runs", "test_05_dwca_header_quotes_never_become_sql"),
    (6, "shard --where reading a file / closing the SELECT", "permission error / refused; no file content anywhere", "test_06_shard_where_cannot_read_files_or_escape"),
    (7, "task registry path with {home.__globals__...}", "placeholders replaced literally", "test_07_task_paths_are_not_format_strings"),
    (8, "tol sql COPY TO, read_text, ATTACH, PRAGMA import_database", "refused; catalog and files unchanged", "test_08_tol_sql_is_read_only_for_real"),
    (9, "ingest API on a private address, redirect to one, HTML body", "private_address; body never shown", "test_09_ingest_is_guarded_like_fetch"),
    (10, "HTTP(S)_PROXY set to a proxy that reaches private hosts", "proxy ignored; guard applies", "test_10_proxies_from_the_environment_are_ignored"),
    (11, "home / allow_private_hosts / huge counts in a run form", "absent from forms; refused; bounded", "test_11_operator_settings_are_not_form_fields"),
    (12, "train again under a finished run id", "RunExistsError (a resume: a no-op); metrics kept", "test_12_a_finished_run_is_never_overwritten"),
    (13, "--eval NAME=<empty or half-copied folder>", "refused unless --replace-eval", "test_13_an_empty_or_shrunk_eval_set_is_refused"),
    (14, "shards deleted under training; --overwrite of a version in training", "clear error, lock freed; refused", "test_14_training_on_vanished_shards_fails_instead_of_hanging"),
    (15, "--filter-run A with newer scores of run B", "A's scores decide", "test_15_filter_run_pins_the_scores"),
    (16, "a shard of exactly one sample", "built", "test_16_a_one_sample_shard_is_built"),
    (17, "endless pages, a huge body, a huge COCO file", "too_many_pages / too_large", "test_17_ingest_bodies_and_pages_are_bounded"),
    (18, "zip/tar members over their cap, a '..' member", "ArchiveError, nothing written outside", "test_18_archive_members_are_capped"),
    (19, "recipe ${HOME}, credentials in api_url and error text", "undeclared refused; stored unexpanded; redacted", "test_19_recipes_expand_only_declared_variables_and_secrets_are_redacted"),
    (0, "tol serve --host 0.0.0.0 without an auth string", "refused", "test_00_serving_beyond_loopback_needs_auth"),
    (20, "benchmark CSV listing ../../secret.jpg, /etc/..., a symlink out", "never read; reported missing", "test_20_benchmark_paths_stay_inside_the_benchmark"),
    (21, "tdmrep.json of 100,000 stars, huge or non-JSON policy files", "linear match; capped; ignored", "test_21_hostile_policy_files_cost_linear_time"),
    (22, "ingest --since for a non-GBIF source, or not a date", "refused before any request", "test_22_since_is_checked_in_the_config"),
]  # fmt: skip


def test_the_table_names_every_item_and_its_test():
    assert sorted(row[0] for row in HOSTILE_INPUTS) == list(range(23))
    assert all(callable(globals().get(row[3])) for row in HOSTILE_INPUTS), "each row names a test here"


class _Boom:
    """Unpickling it creates `marker`: proof that a file was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


# 0. Serving ------------------------------------------------------------------------------------------------


def test_00_serving_beyond_loopback_needs_auth(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("PREFECT_SERVER_API_AUTH_STRING", raising=False)
    assert main(["--home", str(tmp_path / "h"), "serve", "--host", "0.0.0.0"]) != 0
    assert "PREFECT_SERVER_API_AUTH_STRING" in capsys.readouterr().err
    assert not (tmp_path / "h" / "prefect").exists()  # refused before anything started


# 1. Replay shards ------------------------------------------------------------------------------------------


def test_01_replay_tar_pickles_are_never_unpickled(tmp_path):
    import open_clip

    from training.data import replay_loader

    marker = tmp_path / "ran"
    folder = tmp_path / "replay"
    folder.mkdir()
    with tarfile.open(folder / "000.tar", "w") as tar:
        for i in range(4):
            _tar_member(tar, f"{i:04d}.jpg", _jpeg((40, 40)))
            _tar_member(tar, f"{i:04d}.txt", b"a photo")
            _tar_member(tar, f"{i:04d}.pyd", pickle.dumps(_Boom(marker)))
            _tar_member(tar, f"{i:04d}.pickle", pickle.dumps(_Boom(marker)))
            # (No .pth member: webdataset loads those with torch's weights_only default, which refuses a
            # pickle like this one, so the old loader skipped the sample and drew shards for ever.)
    preprocess = open_clip.image_transform(32, is_train=False)
    images, texts = next(replay_loader(str(folder), preprocess, batch_size=2, seed=0))
    assert images.shape == (2, 3, 32, 32) and texts == ["a photo", "a photo"]
    assert not marker.exists(), "a member was unpickled"


# 2. GBIF credentials --------------------------------------------------------------------------------------


def test_02_gbif_credentials_go_only_to_gbif_and_keys_are_checked(catalog, monkeypatch):
    seen: list[tuple[str, str]] = []
    key = {"value": b"../../../../tmp/evil"}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            seen.append((self.path, self.headers.get("Authorization", "")))
            self.send_response(201)
            self.send_header("Content-Length", str(len(key["value"])))
            self.end_headers()
            self.wfile.write(key["value"])

    monkeypatch.setenv("GBIF_USER", "alice")
    monkeypatch.setenv("GBIF_PWD", "secret")
    monkeypatch.setenv("GBIF_EMAIL", "alice@example.org")
    monkeypatch.delenv("TOL_GBIF_CREDENTIAL_URLS", raising=False)
    with _server("127.0.0.1", Handler) as srv:
        base = f"http://127.0.0.1:{srv.server_address[1]}"
        cfg = IngestConfig("gbif", api_url=base, download=True, allow_private_hosts=True)
        with pytest.raises(HttpError, match="credentials are sent only to"):
            run_ingest(catalog, cfg)
        assert seen == []  # nothing, credentials least of all, went to the unlisted host
        monkeypatch.setenv("TOL_GBIF_CREDENTIAL_URLS", base)  # the operator lists it
        with pytest.raises(HttpError, match="unexpected form"):
            run_ingest(catalog, cfg)
    assert len(seen) == 1 and seen[0][1].startswith("Basic ")
    assert not list(catalog.home.rglob("*evil*"))


# 3. Resume files -------------------------------------------------------------------------------------------


def test_03_resume_loads_plain_data_of_this_run_only(curated, world, tmp_path):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    torch.save({"model": _Boom(marker)}, evil)
    with pytest.raises(ValueError, match=r"resume takes `latest` or a .pt checkpoint of this run"):
        train(curated, _cfg(world, run_id="r-t03a", resume=str(evil)), progress=False)
    # A poisoned checkpoint inside the run's own folder is refused too, not unpickled.
    ckpt = curated.runs / "r-t03b" / "checkpoints" / "latest.pt"
    ckpt.parent.mkdir(parents=True)
    shutil.copy(evil, ckpt)
    with pytest.raises(ValueError, match="not a plain-data checkpoint"):
        train(curated, _cfg(world, run_id="r-t03b", resume="latest"), progress=False)
    assert not marker.exists()


# 4 and 11. Operator-only settings --------------------------------------------------------------------------


@pytest.fixture()
def as_deployment(monkeypatch, tmp_path):
    """Flow runs behave as started by a deployment whose operator fixed the home at tmp_path/op."""
    import flows.trust

    monkeypatch.setattr(flows.trust, "under_deployment", lambda: True)
    monkeypatch.setenv("TOL_HOME", str(tmp_path / "op"))
    monkeypatch.setenv("TOL_ALLOW_PRIVATE_HOSTS", "0")
    return tmp_path / "op"


def test_04_spark_master_from_a_form_is_refused(as_deployment):
    from flows.pipeline import curate_flow
    from flows.stages import ExecutorConfig
    from flows.trust import OperatorOnlyError

    with pytest.raises(OperatorOnlyError, match=r"executor.spark_master is an operator setting"):
        curate_flow.fn(executor=ExecutorConfig(name="spark", spark_master="spark://attacker:7077"))
    assert not as_deployment.exists()  # refused before the home was opened


def test_11_operator_settings_are_not_form_fields(as_deployment, tmp_path):
    from etl.fetch.images import ImageConfig
    from etl.fetch.stage import FetchConfig
    from flows.pipeline import curate_flow, ingest_flow
    from flows.recipe import SourcePull
    from flows.serve import build_deployments
    from flows.stages import ExecutorConfig
    from flows.trust import OPERATOR_ONLY, OperatorOnlyError
    from training.config import TrainConfig

    with pytest.raises(OperatorOnlyError, match=r"fetch.allow_private_hosts"):
        curate_flow.fn(fetch=FetchConfig(allow_private_hosts=True))
    with pytest.raises(OperatorOnlyError, match=r"fetch.local_roots"):
        curate_flow.fn(fetch=FetchConfig(local_roots=("/",)))
    with pytest.raises(OperatorOnlyError, match="home is an operator setting"):
        curate_flow.fn(home=str(tmp_path / "elsewhere"))
    pull = SourcePull("p", IngestConfig("gbif", api_url="http://10.0.0.1", allow_private_hosts=True))
    with pytest.raises(OperatorOnlyError, match=r"pulls\[0\].ingest.allow_private_hosts"):
        ingest_flow.fn(pulls=[pull])
    # Counts have upper bounds.
    for make in (
        lambda: ExecutorConfig(workers=10**6),
        lambda: FetchConfig(threads=10**6),
        lambda: ImageConfig(max_pixels=2**40),
        lambda: TrainConfig(dataset_version="t1", steps=10**12),
    ):
        with pytest.raises(ValueError, match="must be between"):
            make()
    # The deployments' forms and defaults hold none of the operator-only settings, at any depth.
    for d in build_deployments(str(tmp_path / "served")):
        text = json.dumps(d._parameter_openapi_schema.model_dump()) + json.dumps(d.parameters)
        assert not [name for name in OPERATOR_ONLY if f'"{name}"' in text], d.name


# 5. DwC-A headers ------------------------------------------------------------------------------------------


def test_05_dwca_header_quotes_never_become_sql(catalog, tmp_path):
    from tests.test_gbif_dwca import write_dwca

    marker = tmp_path / "written.csv"
    # As the old code pasted it, `"NAME" AS "NAME"` with this NAME first in the header closes the SELECT,
    # runs a COPY, and reopens a SELECT: stacked statements from a column name.
    evil = f"x\" FROM (SELECT 1 AS x) t; COPY (SELECT 42) TO '{marker}'; SELECT \"x"
    write_dwca(tmp_path / "ok.zip")
    with zipfile.ZipFile(tmp_path / "ok.zip") as zf:
        occ = zf.read("occurrence.txt").decode().splitlines()
        mm = zf.read("multimedia.txt")
    occ = [evil + "\t" + occ[0]] + ["\t" + line for line in occ[1:]]
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as zf:
        zf.writestr("occurrence.txt", "\n".join(occ) + "\n")
        zf.writestr("multimedia.txt", mm)
    summary = run_ingest(catalog, IngestConfig("gbif", path=str(tmp_path / "evil.zip")))
    assert not marker.exists(), "a column name ran as SQL"
    assert summary["n_out"] > 0  # the odd name is one more column of the rows, kept in their payload


# 6. shard --where ------------------------------------------------------------------------------------------


def test_06_shard_where_cannot_read_files_or_escape(home_copy, tmp_path):
    from etl.shards.stage import ShardConfig

    secret = tmp_path / "secret.txt"
    secret.write_text("hunter2")
    reads = f"(SELECT content FROM read_text('{secret}')) LIKE '%hunter2%'"
    with pytest.raises(Exception, match=r"(?i)permission|disabled"):
        stages.shard(home_copy, ShardConfig("evil6", where=reads))
    out = tmp_path / "out.csv"
    for escape in (f"true) TO '{out}' (FORMAT csv); --", "true; DROP TABLE taxa", "true -- rest"):
        with pytest.raises(ValueError, match=r"one expression|not a SQL expression"):
            ShardConfig("evil6", where=escape)
    assert not out.exists()
    messages = home_copy.query_arrow("SELECT coalesce(message, '') AS m FROM stage_runs").to_pylist()
    assert not any("hunter2" in r["m"] for r in messages)
    assert stages.shard(home_copy, ShardConfig("ok6", where="kingdom = 'Animalia'", samples_per_shard=64))


# 7. Task registry paths ------------------------------------------------------------------------------------


def test_07_task_paths_are_not_format_strings(catalog, monkeypatch):
    from evaluation import tasks as tasks_mod

    monkeypatch.setenv("TOL_T07_SECRET", "hunter2")
    seen = []

    def adapter(path, *args, **kwargs):
        seen.append(path)
        raise LookupError("stop here")

    monkeypatch.setitem(tasks_mod.ADAPTERS, "metadata_folder", adapter)
    task = tasks_mod.Task(
        "t07", "{home.exists.__globals__[os].environ[TOL_T07_SECRET]}/{data_root}x", "zero_shot"
    )
    with pytest.raises(LookupError, match="stop here"):
        tasks_mod.run_task(catalog, "hf-hub:org/model", task, progress=False, data_root="/d")
    assert seen == ["{home.exists.__globals__[os].environ[TOL_T07_SECRET]}//dx"]


# 8. tol sql ------------------------------------------------------------------------------------------------


def test_08_tol_sql_is_read_only_for_real(home_copy, tmp_path, capsys):
    home = str(home_copy.home)

    def n_runs() -> int:
        return home_copy.query_arrow("SELECT count(*) AS n FROM stage_runs").to_pylist()[0]["n"]

    before, db_bytes = n_runs(), home_copy.db_path.read_bytes()
    out = tmp_path / "export.csv"
    (tmp_path / "dump").mkdir()
    (tmp_path / "dump" / "schema.sql").write_text("CREATE TABLE planted (a INT);")
    (tmp_path / "dump" / "load.sql").write_text("DELETE FROM stage_runs;")
    for query in (
        f"COPY (SELECT * FROM stage_runs) TO '{out}'",
        f"SELECT * FROM read_text('{home_copy.db_path}')",
        f"ATTACH '{home_copy.db_path}' AS c; DELETE FROM c.stage_runs",
        f"PRAGMA import_database('{tmp_path / 'dump'}')",
        "SET enable_external_access = true",
        "SELECT * FROM read_csv('/etc/passwd')",
    ):
        assert main(["--home", home, "sql", query]) == 1, query
    assert not out.exists()
    assert n_runs() == before and home_copy.db_path.read_bytes() == db_bytes
    assert main(["--home", home, "sql", "SELECT count(*) AS n FROM images"]) == 0  # the views still read


# 9 and 10. Ingest's HTTP client ----------------------------------------------------------------------------


def test_09_ingest_is_guarded_like_fetch(public_test_host):
    html = b"<html>SECRET-TOKEN-123 internal page</html>"
    with _server("127.0.0.1", _handler({"/private": (200, {}, b"{}")})) as inner:
        target = f"http://127.0.0.1:{inner.server_address[1]}/private"
        routes = {
            "/hop": (302, {"Location": target}, b""),
            "/html": (200, {"Content-Type": "text/html"}, html),
        }
        with _server("127.0.0.2", _handler(routes)) as outer:
            client = PoliteClient(HttpConfig(max_retries=0))
            with pytest.raises(HttpError) as err:
                client.get_json(target)
            assert err.value.kind == "private_address"
            with pytest.raises(HttpError) as err:
                client.get_json(f"http://public.test:{outer.server_address[1]}/hop")
            assert err.value.kind == "private_address"
            with pytest.raises(HttpError) as err:
                client.get_json(f"http://public.test:{outer.server_address[1]}/html")
            assert err.value.kind == "bad_json" and "SECRET" not in str(err.value)
        assert inner.hits == []


def test_10_proxies_from_the_environment_are_ignored(public_test_host, monkeypatch):
    import urllib.request

    from etl.fetch.stage import FetchConfig, fetch_one

    class Proxy(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # a forward proxy: fetches whatever absolute URL it is asked for
            self.server.hits.append(self.path)
            direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # not through itself
            body = direct.open(self.path, timeout=5).read()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    secret = _jpeg(color=(255, 0, 0))
    with (
        _server("127.0.0.1", _handler({"/secret.jpg": (200, {}, secret)})) as inner,
        _server("127.0.0.2", Proxy) as proxy,
    ):
        url = f"http://public.test:{proxy.server_address[1]}"
        for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
            monkeypatch.setenv(var, url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        target = f"http://127.0.0.1:{inner.server_address[1]}/secret.jpg"
        row = fetch_one({"record_id": "r", "media_url": target}, FetchConfig())
        assert row["status"] == "private_address"
        with pytest.raises(HttpError, match="not a public address"):
            PoliteClient(HttpConfig(max_retries=0)).get(target)
        assert proxy.hits == [] and inner.hits == []


# 12. Training run ids --------------------------------------------------------------------------------------


def test_12_a_finished_run_is_never_overwritten(curated, world):
    from training.loop import RunExistsError

    train(curated, _cfg(world, run_id="r-t12", steps=2), progress=False)
    metrics = (curated.runs / "r-t12" / "metrics.jsonl").read_text()
    ckpt = (curated.runs / "r-t12" / "checkpoints" / "latest.pt").read_bytes()
    with pytest.raises(RunExistsError, match="pass resume=latest"):
        train(curated, _cfg(world, run_id="r-t12", steps=2, lr=0.1), progress=False)
    # Resuming the finished run (the same command again) does nothing and returns its result.
    again = train(curated, _cfg(world, run_id="r-t12", steps=2, resume="latest"), progress=False)
    assert again["steps"] == 2 and again["export_path"].endswith("export")
    assert (curated.runs / "r-t12" / "metrics.jsonl").read_text() == metrics
    assert (curated.runs / "r-t12" / "checkpoints" / "latest.pt").read_bytes() == ckpt
    status = curated.query_arrow("SELECT status FROM training_runs WHERE run_id = 'r-t12'").to_pylist()
    assert status == [{"status": "succeeded"}]


# 13. Evaluation sets ---------------------------------------------------------------------------------------


def test_13_an_empty_or_shrunk_eval_set_is_refused(home_copy, world, tmp_path):
    from etl.dedup.stage import DedupConfig

    def stored() -> int:
        return home_copy.query_arrow(
            "SELECT count(*) AS n FROM eval_hashes WHERE eval_set = 'heldout'"
        ).to_pylist()[0]["n"]

    n = stored()
    assert n > 4
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        stages.dedup(home_copy, DedupConfig(eval_sets={"heldout": str(tmp_path / "empty")}))
    half = tmp_path / "half"  # the same images, half of them missing (a copy cut short)
    shutil.copytree(world.eval_dir, half)
    (half / "metadata.csv").unlink(missing_ok=True)
    images = sorted(p for p in half.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    for p in images[: len(images) // 2]:
        p.unlink()
    with pytest.raises(ValueError, match="--replace-eval"):
        stages.dedup(home_copy, DedupConfig(eval_sets={"heldout": str(half)}))
    assert stored() == n  # the stored hashes are untouched
    stages.dedup(home_copy, DedupConfig(eval_sets={"heldout": str(half)}, replace_eval=True))
    assert stored() == n - len(images) // 2


# 14. Vanished shards ---------------------------------------------------------------------------------------


def test_14_training_on_vanished_shards_fails_instead_of_hanging(home_copy, world):
    from etl.shards.stage import ShardConfig, VersionInUseError
    from training.data import UnreadableShardsError
    from warehouse import writers
    from warehouse.locks import StageLock, train_lock

    for tar in (home_copy.shards / "t1").resolve().rglob("*.tar"):
        tar.write_bytes(b"not a tar any more")
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            train(home_copy, _cfg(world, run_id="r-t14", steps=3), progress=False)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(180)
    assert not thread.is_alive(), "training hung on unreadable shards"
    assert isinstance(outcome[0], UnreadableShardsError)
    status = home_copy.query_arrow("SELECT status FROM training_runs WHERE run_id = 'r-t14'").to_pylist()
    assert status == [{"status": "failed"}]
    # A live training run on t1 (its lock held): --overwrite of t1 is refused.
    writers.training_started(home_copy, "r-t14-live", "t1", {}, 5)
    with (
        StageLock(home_copy.home, train_lock("r-t14-live")),
        pytest.raises(VersionInUseError, match="being trained on"),
    ):
        stages.shard(home_copy, ShardConfig("t1", samples_per_shard=64, val_fraction=0.1, overwrite=True))


# 15. Pinned filter runs ------------------------------------------------------------------------------------


def test_15_filter_run_pins_the_scores(home_copy):
    import time
    from datetime import UTC, datetime

    import pyarrow as pa

    from etl.filter.rules import FilterRule
    from etl.shards.stage import ShardConfig
    from warehouse.schemas import FILTER_SCORES
    from warehouse.stage_runs import StageRun

    ids = [
        r["record_id"]
        for r in home_copy.query_arrow("SELECT record_id FROM dedup_decisions WHERE kept").to_pylist()
    ]
    runs = []
    for score in (0.0, 100.0):  # run A: nothing is a burst; run B, later: everything is
        with StageRun(home_copy, "filter") as run:
            n = len(ids)
            table = pa.table(
                {
                    "record_id": ids,
                    "scorer": ["burst"] * n,
                    "model": ["m"] * n,
                    "model_version": ["1"] * n,
                    "score": [score] * n,
                    "label": [None] * n,
                    "details": [None] * n,
                    "run_id": [run.run_id] * n,
                    "scored_at": [datetime.now(UTC)] * n,
                },
                schema=FILTER_SCORES,
            )
            home_copy.write_part(
                "filter_scores_history", table, partition={"scorer": "burst", "run": run.run_id}, part="p"
            )
        runs.append(run.run_id)
        time.sleep(0.01)
    rule = (FilterRule("burst", drop_above=15),)
    built = stages.shard(
        home_copy, ShardConfig("t15", samples_per_shard=64, filters=rule), filter_run=runs[0]
    )
    assert built["filters"]["filter_run"] == runs[0] and built["filters"]["removed_total"] == 0
    with pytest.raises(ValueError, match="remove every sample"):
        stages.shard(home_copy, ShardConfig("t15b", samples_per_shard=64, filters=rule), filter_run=runs[1])


# 16. One-sample shards -------------------------------------------------------------------------------------


def test_16_a_one_sample_shard_is_built(home_copy):
    from etl.shards.stage import ShardConfig
    from warehouse.versions import verify_version

    one = home_copy.query_arrow(
        "SELECT min(record_id) AS r FROM dedup_decisions d JOIN resolutions USING (record_id)"
        " WHERE d.kept AND taxon_id IS NOT NULL"
    ).to_pylist()[0]["r"]
    manifest = stages.shard(home_copy, ShardConfig("t16", where=f"record_id = '{one}'", val_fraction=0.0))
    assert [s["n"] for s in manifest["shards"]] == [1]
    assert verify_version(home_copy, "t16") == []


# 17. Ingest bounds -----------------------------------------------------------------------------------------


def test_17_ingest_bodies_and_pages_are_bounded(catalog, tmp_path):
    page = json.dumps({"content": [{"uuid": f"u{i}", "url": f"http://x/{i}.jpg"} for i in range(4)]}).encode()
    big = json.dumps({"content": ["x" * 5000]}).encode()

    class Endless(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            body = big if self.path.startswith("/big") else page
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    with _server("127.0.0.1", Endless) as srv:
        base = f"http://127.0.0.1:{srv.server_address[1]}"
        cfg = IngestConfig("fathomnet", api_url=base, page_size=4, max_pages=5, allow_private_hosts=True)
        with pytest.raises(HttpError, match="more than 5 requests"):
            run_ingest(catalog, cfg)
        client = PoliteClient(HttpConfig(max_body_bytes=1000, allow_private_hosts=True, max_retries=0))
        with pytest.raises(HttpError) as err:
            client.get_json(base + "/big")
        assert err.value.kind == "too_large"
    coco = tmp_path / "coco.json"  # a local COCO export is parsed whole: bounded before it is
    coco.write_text(json.dumps({"images": [], "annotations": [], "pad": "x" * 5000}))
    with pytest.raises(HttpError, match="max_document_bytes"):
        run_ingest(catalog, IngestConfig("fathomnet", path=str(coco), max_document_bytes=1000))


# 18. Archive members ---------------------------------------------------------------------------------------


def test_18_archive_members_are_capped(catalog, tmp_path):
    from etl.fetch.images import tar_images
    from tests.test_gbif_dwca import write_dwca

    with zipfile.ZipFile(tmp_path / "a.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("big.txt", b"0" * 100_000)  # compresses to a few hundred bytes
        zf.writestr("../escape.txt", b"x")
    with zipfile.ZipFile(tmp_path / "a.zip") as zf:
        with pytest.raises(ArchiveError, match="over the cap"):
            extract_zip_member(zf, "big.txt", tmp_path / "out", max_bytes=1000)
        with pytest.raises(ArchiveError, match="leaves the folder"):
            extract_zip_member(zf, "../escape.txt", tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()
    with tarfile.open(tmp_path / "t.tar", "w") as tar:
        _tar_member(tar, "x.jpg", b"\xff" * 5000)
    with pytest.raises(ArchiveError, match="over the cap"):
        list(tar_images(tmp_path / "t.tar", max_bytes=1000))
    write_dwca(tmp_path / "dl.zip")
    with pytest.raises(ArchiveError, match=r"occurrence.txt"):
        run_ingest(catalog, IngestConfig("gbif", path=str(tmp_path / "dl.zip"), max_member_bytes=100))


# 19. Recipes and secrets -----------------------------------------------------------------------------------


def test_19_recipes_expand_only_declared_variables_and_secrets_are_redacted(tmp_path, monkeypatch):
    from flows.recipe import RecipeError, SourcePull, load_recipe

    monkeypatch.setenv("TOL_T19_TOKEN", "hunter2")
    path = tmp_path / "r.yaml"
    path.write_text(
        "name: r19\nsources:\n  - name: p\n    ingest: {source: gbif, api_url: 'https://h/${TOL_T19_TOKEN}'}\n"
    )
    with pytest.raises(RecipeError, match=r"\$\{TOL_T19_TOKEN\} is not declared"):
        load_recipe(path)
    path.write_text("variables: [ROOT]\nname: r19\ncurate: {backbone_path: '${ROOT}/backbone'}\n")
    recipe = load_recipe(path, {"ROOT": "/private/data"})
    assert recipe.spec.curate.backbone_path == "/private/data/backbone"
    assert "/private/data" not in recipe.text and "${ROOT}" in recipe.text  # stored unexpanded
    with pytest.raises(ValueError, match="carries credentials"):
        IngestConfig("gbif", api_url="https://bob:hunter2@api.example.org")
    assert SourcePull("p", IngestConfig("gbif", api_url="https://api.example.org:8443/x")).host == (
        "api.example.org:8443"
    )
    # An error naming a URL with a token reaches stage_runs redacted.
    home = open_catalog(tmp_path / "home")
    with pytest.raises(HttpError):
        run_ingest(
            home,
            IngestConfig("gbif", api_url="http://127.0.0.1:9/v1?api_key=hunter2", allow_private_hosts=True),
            PoliteClient(HttpConfig(max_retries=0, allow_private_hosts=True)),
        )
    messages = home.query_arrow("SELECT message FROM stage_runs").to_pylist()
    assert messages and not any("hunter2" in (r["message"] or "") for r in messages)


def test_redaction_keeps_what_is_not_secret():
    from warehouse.contracts import redact

    assert redact("GET https://bob:pw@h.org/a?token=t1&page=2 failed") == (
        "GET https://***@h.org/a?token=***&page=2 failed"
    )
    assert redact("plain text, http://h.org/x") == "plain text, http://h.org/x"


def test_the_readme_states_the_trust_model():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert "## Trust model" in readme
    for words in ("PREFECT_SERVER_API_AUTH_STRING", "operator", "never unpickled"):
        assert words in readme


def test_20_benchmark_paths_stay_inside_the_benchmark(tmp_path):
    from PIL import Image

    from evaluation import layouts

    outside = tmp_path / "secret.jpg"
    Image.new("RGB", (8, 8)).save(outside)
    ma = tmp_path / "bench" / "PLK_Mini"
    (ma / "val" / "a").mkdir(parents=True)
    for i in range(30):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(ma / "val" / "a" / f"{i}.jpg")
    (ma / "val" / "a" / "link.jpg").symlink_to(outside)
    rows = [f"{i},a/{i}.jpg,a" for i in range(30)]
    rows += ["30,../../../secret.jpg,a", f"31,{outside},a", "32,a/link.jpg,a"]
    (ma / "metadata.csv").write_text(",filepath,class\n" + "\n".join(rows) + "\n")
    got = layouts.read_meta_album(ma)
    assert outside not in [p.resolve() for p in got.paths] and len(got.paths) == 30
    assert got.missing == ["../../../secret.jpg", str(outside), "a/link.jpg"]


def test_21_hostile_policy_files_cost_linear_time():
    import time

    from etl.fetch.optout import Location, parse_robots, parse_tdmrep

    stars = json.dumps([{"location": "/" + "*a" * 1000 + "b", "tdm-reservation": 1}]).encode()
    (rule,) = parse_tdmrep(200, stars)
    t0 = time.perf_counter()
    assert not rule[0].match("/" + "a" * 5000)  # a regular expression would backtrack for ages here
    assert time.perf_counter() - t0 < 1.0
    assert parse_tdmrep(200, json.dumps([{"location": "*" * 10_000, "tdm-reservation": 1}]).encode()) == ()
    assert parse_tdmrep(200, b"\xff\xfe not json") == () and parse_tdmrep(200, b'{"a": 1}') == ()
    assert Location.parse("/img/*.jpg$").match("/img/x/y.jpg") and not Location.parse("/img/*.jpg$").match(
        "/img/x.png"
    )
    assert parse_robots(503, b"") is None and parse_robots(404, b"").can_fetch("http://x/a", "tol")


def test_22_since_is_checked_in_the_config():
    from etl.ingest.sources import IngestConfig

    cfg = IngestConfig(source="gbif", since="2024-05-01")
    assert cfg.params["lastInterpreted"] == "2024-05-01,*" and cfg.since is None
    with pytest.raises(ValueError, match="supported for gbif"):
        IngestConfig(source="eol", since="2024-05-01")
    with pytest.raises(ValueError):
        IngestConfig(source="gbif", since="yesterday'; DROP TABLE x")
