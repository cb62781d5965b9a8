"""Shared, seeded fixtures: one sample world per session, a loopback server, fresh catalogs per test."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from sample_world import build_sample_world, serve_sample_world
from sample_world.build import SampleWorldConfig
from warehouse.catalog import open_catalog
from warehouse.contracts import SOURCES

# Smaller than the demo's world, same shapes: every kind of planted mess is still present.
TEST_WORLD = SampleWorldConfig(
    seed=0,
    gbif_occurrences_per_species=6,
    eol_media_per_species=2,
    eval_images_per_species=4,
    replay_train=64,
    replay_heldout=32,
    leaks=6,
)


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    return build_sample_world(tmp_path_factory.mktemp("world") / "sample_world", TEST_WORLD)


@pytest.fixture()
def server(world):
    with serve_sample_world(world.root) as srv:
        yield srv


@pytest.fixture()
def catalog(tmp_path):
    return open_catalog(tmp_path / "home")


@pytest.fixture(scope="session")
def curated(world, tmp_path_factory):
    """A home with every curation stage run once on the test world (ingest .. shard), shared read-only."""
    from etl.dedup.stage import DedupConfig
    from etl.fetch.stage import FetchConfig
    from etl.ingest.sources import IngestConfig
    from etl.shards.stage import ShardConfig
    from flows import stages
    from flows.stages import ExecutorConfig

    cat = open_catalog(tmp_path_factory.mktemp("curated") / "home")
    with serve_sample_world(world.root) as srv:
        for source in SOURCES:
            stages.ingest(cat, IngestConfig(source, api_url=srv.base_url, allow_private_hosts=True))
        stages.load_backbone(cat, world.backbone)
        stages.resolve(cat)
        stages.fetch(cat, FetchConfig(allow_private_hosts=True), ExecutorConfig(workers=1))
    stages.dedup(cat, DedupConfig(eval_sets={"heldout": str(world.eval_dir)}))
    stages.shard(cat, ShardConfig("t1", samples_per_shard=64, val_fraction=0.1))
    return cat


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect")
    os.environ["PREFECT_HOME"] = str(home)
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield Path(home)


@contextmanager
def log_lines(name: str, level: int = logging.INFO) -> Iterator[list[str]]:
    """The messages logger `name` emits at `level` and above while inside (whatever its own level or the
    handlers others put on it: the CLI stops `tol` propagating to the root logger, where caplog listens)."""

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    lines: list[str] = []
    logger, keep = logging.getLogger(name), Keep(level)
    before = logger.level
    logger.addHandler(keep)
    if before == logging.NOTSET or before > level:
        logger.setLevel(level)
    try:
        yield lines
    finally:
        logger.removeHandler(keep)
        logger.setLevel(before)


@pytest.fixture()
def home_copy(curated, tmp_path):
    """A private copy of the curated home, for tests that change it."""
    shutil.copytree(curated.home, tmp_path / "home", symlinks=True)
    return open_catalog(tmp_path / "home")


@pytest.fixture()
def public_test_host(monkeypatch):
    """`public.test` resolves to 127.0.0.2, which the guard is told is public; 127.0.0.1 stays private."""
    import etl.http

    real_resolve, real_public = etl.http.resolve_host, etl.http.is_public_address
    monkeypatch.setattr(
        etl.http,
        "resolve_host",
        lambda host, port: ["127.0.0.2"] if host == "public.test" else real_resolve(host, port),
    )
    monkeypatch.setattr(etl.http, "is_public_address", lambda ip: ip == "127.0.0.2" or real_public(ip))
