"""Fetch stage: download, process and hash images. `fetch_partition` is the pure per-partition function
(Arrow batches in, one output row per input row out); executors run it, `run_fetch` wires it to the catalog."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlparse
from urllib.request import url2pathname

import pyarrow as pa
import pyarrow.compute as pc
import requests

from etl.fetch.images import ImageConfig, process_image, require_pdq
from etl.http import (
    IMAGE_HOSTS,
    TRANSIENT_KINDS,
    AddressPolicy,
    AddressRefusedError,
    Deadline,
    HostThrottle,
    HttpConfig,
    HttpError,
    guarded_session,
    request_error,
    retrying,
    status_error,
)
from warehouse.schemas import IMAGES

FETCH_OUTPUT = pa.schema([f for f in IMAGES if f.name not in ("run_id", "fetched_at")])
RETRIED_ON_RERUN = TRANSIENT_KINDS | {"internal_error"}  # `--retry-failed`: after the bug is fixed, try again


class FailureRateError(RuntimeError):
    """The stage stopped because too many rows failed in a way that means a bug, not bad input."""


@dataclass(frozen=True)
class FetchConfig:
    image: ImageConfig = field(default_factory=ImageConfig)
    http: HttpConfig = IMAGE_HOSTS  # timeouts, retries and the per-host rate, per worker process
    max_bytes: int = 40 * 1024 * 1024
    max_redirects: int = 5
    deadline: float = 60.0  # seconds for one whole request, headers and body (a trickling server ends here)
    threads: int = 8
    allow_private_hosts: bool = False
    local_roots: tuple[str, ...] = ()  # folders whose files may be read through file:// URLs (BIOSCAN-5M)
    # How the stage runs: rows per partition (a finished partition is written at once), and the rerun mode.
    partition_rows: int = 128
    retry_failed: bool = False  # fetch again the rows that ended transient (or internal_error), nothing else
    max_attempts: int = 3  # with retry_failed: rows tried this often already are left as they are
    # `internal_error` is a bug, not a bad URL: past this fraction of the rows done (after the first
    # `min_rows_for_rate`), the stage stops and fails loudly rather than record a corpus of bugs.
    max_internal_error_rate: float = 0.02
    min_rows_for_rate: int = 50

    def __post_init__(self) -> None:
        if self.partition_rows < 1 or self.threads < 1 or self.max_attempts < 1:
            raise ValueError("partition_rows, threads and max_attempts must be >= 1")
        if not 0 <= self.max_internal_error_rate <= 1:
            raise ValueError(f"max_internal_error_rate must be in [0, 1], not {self.max_internal_error_rate}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FetchConfig:
        d = dict(d)
        image = ImageConfig(**d.pop("image", {}))
        http = HttpConfig(**d.pop("http", {})) if "http" in d else IMAGE_HOSTS
        return cls(image=image, http=http, **{**d, "local_roots": tuple(d.get("local_roots", ()))})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_local = threading.local()


_throttles: dict[HttpConfig, HostThrottle] = {}
_throttles_guard = threading.Lock()


def _throttle(config: FetchConfig) -> HostThrottle:
    """The process's throttle for these settings: shared by every thread (and partition) of the worker."""
    with _throttles_guard:
        if config.http not in _throttles:
            _throttles[config.http] = config.http.throttle()
        return _throttles[config.http]


def _session(config: FetchConfig) -> requests.Session:
    """This thread's session; its connections check every address they connect to (etl.http)."""
    sessions = _local.__dict__.setdefault("sessions", {})
    key = (config.allow_private_hosts, config.http.user_agent)
    if key not in sessions:
        sessions[key] = guarded_session(
            AddressPolicy(allow_private=config.allow_private_hosts), config.http.user_agent
        )
    return sessions[key]


def check_url(url: str) -> str:
    """The URL's host; refuses schemes other than http(s) and URLs without a host. Addresses are checked
    when connecting (every hop, the address actually used): see `etl.http.AddressPolicy`."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https"):
        raise HttpError("unsupported_url_scheme", f"scheme {parsed.scheme!r} not allowed")
    host = parsed.hostname or ""
    if not host:
        raise HttpError("bad_url", "URL has no host")
    return host


def read_local(url: str, config: FetchConfig) -> bytes:
    """A file:// URL, read only when it resolves inside one of `config.local_roots` (symlinks followed)."""
    path = Path(url2pathname(urlparse(url).path)).resolve()
    roots = [Path(r).resolve() for r in config.local_roots]
    if not any(path.is_relative_to(root) for root in roots):
        raise HttpError(
            "unsupported_url_scheme", "file:// URLs are read only under a --allow-local-root folder"
        )
    if not path.is_file():
        raise HttpError("http_404", f"{path} does not exist", 404)
    if path.stat().st_size > config.max_bytes:
        raise HttpError("too_large", f"{path.stat().st_size} bytes > {config.max_bytes}")
    return path.read_bytes()


def _get(url: str, config: FetchConfig) -> tuple[bytes, int]:
    """One attempt: follow redirects by hand (each hop checked like the first, in its own host's slot),
    the whole of it within `config.deadline` seconds."""
    session, throttle = _session(config), _throttle(config)
    timeout = (config.http.connect_timeout, config.http.read_timeout)
    with Deadline(config.deadline) as deadline:
        try:
            for _ in range(config.max_redirects + 1):
                host = check_url(url)
                with throttle.slot(host) as sent_at:
                    try:
                        with session.get(url, stream=True, allow_redirects=False, timeout=timeout) as resp:
                            if resp.is_redirect:
                                url = urljoin(url, resp.headers["Location"])
                                continue
                            if resp.status_code >= 400:
                                raise status_error(resp, url, host, sent_at)
                            body = _read_body(resp, config)
                            if deadline.expired:  # cut short, though the framing let it look whole
                                raise HttpError("timeout", "deadline passed during the body")
                            throttle.success(host)
                            return body, resp.status_code
                    except AddressRefusedError as exc:
                        raise HttpError(exc.kind, str(exc)) from exc
                    except requests.RequestException as exc:
                        raise request_error(exc, url) from exc
            raise HttpError("too_many_redirects", f"more than {config.max_redirects} redirects")
        except HttpError as exc:
            if deadline.expired and exc.kind in ("timeout", "connection_error"):
                raise HttpError(
                    "timeout", f"no complete response within the {config.deadline:g} s deadline"
                ) from exc
            raise


_rng = random.Random()


def download(url: str, config: FetchConfig) -> tuple[bytes, int]:
    """The body and HTTP status of `url` (or a file under `local_roots`), through the shared retry policy."""
    if urlparse(url).scheme == "file" and config.local_roots:
        return read_local(url, config), 200
    return retrying(lambda: _get(url, config), config.http, _throttle(config), _rng)


def _read_body(resp: requests.Response, config: FetchConfig) -> bytes:
    declared = int(resp.headers.get("Content-Length") or 0)
    if declared > config.max_bytes:
        raise HttpError("too_large", f"Content-Length {declared} > {config.max_bytes}")
    chunks, size = [], 0
    for chunk in resp.iter_content(1 << 16):
        size += len(chunk)
        if size > config.max_bytes:
            raise HttpError("too_large", f"body over {config.max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def fetch_one(row: dict[str, Any], config: FetchConfig) -> dict[str, Any]:
    t0 = time.perf_counter()
    out: dict[str, Any] = {
        "record_id": row["record_id"],
        "source": row.get("source"),
        "media_url": row["media_url"],
        "attempts": int(row.get("attempts") or 0) + 1,
    }
    try:
        data, http_status = download(row["media_url"] or "", config)
        out["http_status"] = http_status
        out["original_bytes"] = len(data)
        processed = process_image(data, config.image, row.get("crop_box"))
        out.update(asdict(processed))
        out["bytes"] = len(processed.jpeg) if processed.jpeg else None
    except HttpError as exc:
        out.update(status=exc.kind, error=str(exc), http_status=exc.status)
    except Exception as exc:  # one bad row must never stop a partition
        out.update(status="internal_error", error=f"{type(exc).__name__}: {exc}"[:300])
    out["seconds"] = round(time.perf_counter() - t0, 4)
    return out


def fetch_partition(batches: Iterator[pa.RecordBatch], config: FetchConfig) -> Iterator[pa.RecordBatch]:
    """Per-partition function: rows with record_id, media_url, source, optional crop_box (and attempts) in,
    one `FETCH_OUTPUT` row per input row out, in input order."""
    with ThreadPoolExecutor(max_workers=config.threads) as pool:
        for batch in batches:
            rows = batch.to_pylist()
            results = list(pool.map(lambda r: fetch_one(r, config), rows))
            cols = {f.name: [r.get(f.name) for r in results] for f in FETCH_OUTPUT}
            yield pa.RecordBatch.from_pydict(cols, schema=FETCH_OUTPUT)


def _select_inputs(catalog, retry_failed: bool, max_attempts: int) -> pa.Table:
    if retry_failed:
        transient = ", ".join(f"'{s}'" for s in sorted(RETRIED_ON_RERUN))
        sql = f"""SELECT i.record_id, r.media_url, r.source, r.crop_box, i.attempts
                  FROM images i JOIN raw_records r USING (record_id)
                  WHERE i.status IN ({transient}) AND i.attempts < {int(max_attempts)}
                  ORDER BY r.source, i.record_id"""
    else:
        sql = """SELECT r.record_id, r.media_url, r.source, r.crop_box, 0 AS attempts
                 FROM raw_records r
                 WHERE r.drop_reason IS NULL
                   AND NOT EXISTS (SELECT 1 FROM images_history i WHERE i.record_id = r.record_id)
                 ORDER BY r.source, r.record_id"""
    return catalog.query_arrow(sql)


def _check_failure_rate(run, done: int, config: FetchConfig) -> None:
    bugs = run.dropped.get("internal_error", 0)
    if done >= config.min_rows_for_rate and bugs > config.max_internal_error_rate * done:
        raise FailureRateError(
            f"{bugs} of {done} rows ended as internal_error (limit {config.max_internal_error_rate:.0%}): "
            "a bug, not bad input; the rows done are kept, fix the cause and rerun with --retry-failed "
            "(see images.error for the exception)"
        )


def run_fetch(
    catalog,
    config: FetchConfig | None = None,
    *,
    executor: str = "local",
    workers: int = 2,
    spark_master: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Fetch every usable record not fetched yet (or, with `retry_failed`, transient failures again).
    Each finished partition is written at once, so a killed run loses at most the partitions in flight;
    a run stopped by the internal-error limit keeps what it wrote and fails with FailureRateError."""
    from datetime import UTC, datetime
    from functools import partial

    from tqdm import tqdm

    from etl.executors import get_executor
    from warehouse.stage_runs import StageRun

    config = config or FetchConfig()
    if config.image.pdq:
        require_pdq()  # fail before any download, not once per row
    settings = {"executor": executor, "workers": workers, **config.to_dict()}
    partition_rows = config.partition_rows
    with StageRun(catalog, "fetch", config=settings) as run:
        inputs = _select_inputs(catalog, config.retry_failed, config.max_attempts)
        run.n_in = inputs.num_rows
        partitions: list[pa.Table] = []
        for source in sorted(set(inputs.column("source").to_pylist())):
            part = inputs.filter(pc.equal(inputs.column("source"), source))
            partitions += [part.slice(o, partition_rows) for o in range(0, part.num_rows, partition_rows)]
        fn = partial(fetch_partition, config=config)
        bar = tqdm(total=inputs.num_rows, unit="img", desc="fetch", disable=not progress, mininterval=1.0)
        t0 = datetime.now(UTC)
        for idx, table in get_executor(executor, workers, spark_master).map_partitions(
            fn, partitions, FETCH_OUTPUT
        ):
            now = datetime.now(UTC)
            table = table.append_column("run_id", pa.array([run.run_id] * table.num_rows, pa.string()))
            table = table.append_column(
                "fetched_at", pa.array([now] * table.num_rows, IMAGES.field("fetched_at").type)
            )
            source = table.column("source")[0].as_py() if table.num_rows else "none"
            catalog.write_part(
                "images_history", table, partition={"source": source}, part=f"part-{run.run_id}-{idx:05d}"
            )
            for status in table.column("status").to_pylist():
                if status == "ok":
                    run.n_out += 1
                else:
                    run.drop(status)
            bar.update(table.num_rows)
            _check_failure_rate(run, bar.n, config)
            rate = bar.n / max(1e-6, (now - t0).total_seconds())
            bar.set_postfix(ok=run.n_out, failed=sum(run.dropped.values()), ips=f"{rate:.0f}")
        bar.close()
        _check_failure_rate(run, bar.n, replace(config, min_rows_for_rate=0))  # the whole run, however small
        run.details = {
            "images_per_second": round(run.n_in / max(1e-6, (datetime.now(UTC) - t0).total_seconds()), 1)
        }
    return run.summary()
