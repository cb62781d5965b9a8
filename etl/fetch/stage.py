"""Fetch stage: download, process and hash images. `fetch_partition` is the pure per-partition function
(Arrow batches in, one output row per input row out); executors run it, `run_fetch` wires it to the catalog."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlparse
from urllib.request import url2pathname

import pyarrow as pa
import requests

from etl.executors import LOCAL, ExecutorConfig, Unit
from etl.fetch.images import ImageConfig, process_image, require_pdq
from etl.fetch.optout import POLICY_FILE_BYTES, OptOutPolicy
from etl.http import (
    IMAGE_HOSTS,
    TRANSIENT_KINDS,
    AddressPolicy,
    AddressRefusedError,
    HostThrottle,
    HttpConfig,
    HttpError,
    bounded_request,
    check_http_url,
    guarded_session,
    read_capped,
    request_error,
    retrying,
    status_error,
)
from warehouse.catalog import Catalog
from warehouse.contracts import MAX_THREADS, OPT_OUT_DROP_REASONS, check_bound
from warehouse.lake import read_rows, remove_tree
from warehouse.schemas import IMAGES
from warehouse.stage_runs import StageRun
from warehouse.writers import write_images_part

# What fetching a row gives, the JPEG still in memory; `write_images_part` moves it to the image lake.
FETCH_OUTPUT = pa.schema(
    [f for f in IMAGES if f.name not in ("run_id", "fetched_at", "blob", "blob_offset")]
    + [pa.field("jpeg", pa.binary())]
)
FETCH_RESULT = pa.schema([("status", pa.string()), ("n", pa.int64())])  # what a work unit sends back
RETRIED_ON_RERUN = TRANSIENT_KINDS | {"internal_error"}  # `--retry-failed`: after the bug is fixed, try again


class FailureRateError(RuntimeError):
    """The stage stopped because too many rows failed in a way that means a bug, not bad input."""


@dataclass(frozen=True)
class FetchConfig:
    image: ImageConfig = field(default_factory=ImageConfig, metadata={"flags": ""})
    # timeouts, retries and the per-host rate, per worker process
    http: HttpConfig = field(default=IMAGE_HOSTS, metadata={"flags": ""})
    max_bytes: int = 40 * 1024 * 1024
    max_redirects: int = 5
    deadline: float = field(
        default=60.0,
        metadata={"help": "seconds for one whole download, headers and body: a trickling server ends here"},
    )
    threads: int = field(default=8, metadata={"help": "download threads per worker"})
    allow_private_hosts: bool = field(
        default=False,
        metadata={
            "help": "allow loopback and private addresses (a local mirror); refused otherwise (SSRF guard)"
        },
    )
    local_roots: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "read file:// URLs under DIR (e.g. the BIOSCAN-5M image tree on disk); refused otherwise",
            "flag": "--allow-local-root",
            "metavar": "DIR",
        },
    )
    honour: tuple[str, ...] = field(
        default=tuple(OPT_OUT_DROP_REASONS),
        metadata={
            "help": "an opt-out signal to honour (repeatable; `none` for none): robots (robots.txt), tdmrep "
            "(TDMRep file and header), noai (X-Robots-Tag noai / noimageai)",
            "choices": (*OPT_OUT_DROP_REASONS, "none"),
        },
    )
    # How the stage runs: rows per work unit (each unit is one lake part, written by its worker when done:
    # a kill loses at most the units in flight), and the rerun mode.
    partition_rows: int = field(
        default=1024, metadata={"help": "rows per work unit, each written as one lake part"}
    )
    retry_failed: bool = field(
        default=False, metadata={"help": "retry transient failures (and internal errors) only"}
    )
    max_attempts: int = 3  # with retry_failed: rows tried this often already are left as they are
    # `internal_error` is a bug, not a bad URL: past this fraction of the rows done (after the first
    # `min_rows_for_rate`), the stage stops and fails loudly rather than record a corpus of bugs.
    max_internal_error_rate: float = field(
        default=0.02,
        metadata={"help": "stop and fail when more than this fraction of rows end as internal_error (a bug)"},
    )
    min_rows_for_rate: int = 50

    def __post_init__(self) -> None:
        honour = tuple(self.honour)
        if "none" in honour:
            if len(honour) > 1:
                raise ValueError("honour: `none` cannot be given with a signal")
            honour = ()
        unknown = [h for h in honour if h not in OPT_OUT_DROP_REASONS]
        if unknown:
            raise ValueError(
                f"honour: unknown opt-out signals {unknown}; known: {list(OPT_OUT_DROP_REASONS)}"
            )
        object.__setattr__(self, "honour", honour)  # a recipe's list, or the CLI's `none`, as a tuple
        if self.partition_rows < 1 or self.threads < 1 or self.max_attempts < 1:
            raise ValueError("partition_rows, threads and max_attempts must be >= 1")
        check_bound("threads", self.threads, MAX_THREADS, 1)
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


_policies: dict[tuple[tuple[str, ...], str], OptOutPolicy] = {}


def _policy(config: FetchConfig) -> OptOutPolicy:
    """The process's opt-out policy for these settings: each origin's robots.txt and TDMRep file read once."""
    key = (config.honour, config.http.user_agent)
    with _throttles_guard:
        if key not in _policies:
            _policies[key] = OptOutPolicy(config.honour, config.http.user_agent)
        return _policies[key]


def _policy_file(config: FetchConfig) -> Callable[[str], tuple[int | None, bytes]]:
    """How a policy file is read: one GET (no retries, no opt-out check of its own), small and bounded."""
    small = replace(config, max_bytes=POLICY_FILE_BYTES, honour=())

    def read(url: str) -> tuple[int | None, bytes]:
        try:
            body, status = _get(url, small)
            return status, body
        except HttpError as exc:
            if exc.status is None:  # no answer at all (refused address, timeout, DNS): the image fails alike,
                raise  # with that reason, and nothing is cached for the origin
            return exc.status, b""

    return read


def _session(config: FetchConfig) -> requests.Session:
    """This thread's session; its connections check every address they connect to (etl.http)."""
    sessions = _local.__dict__.setdefault("sessions", {})
    key = (config.allow_private_hosts, config.http.user_agent)
    if key not in sessions:
        sessions[key] = guarded_session(
            AddressPolicy(allow_private=config.allow_private_hosts), config.http.user_agent
        )
    return sessions[key]


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
    policy = _policy(config) if config.honour else None
    with bounded_request(config.deadline) as deadline:
        for _ in range(config.max_redirects + 1):
            host = check_http_url(url)  # addresses are checked when connecting (AddressPolicy)
            if policy is not None:  # every hop: a redirect may lead to another origin
                policy.check_url(url, _policy_file(config))
            with throttle.slot(host) as sent_at:
                try:
                    with session.get(url, stream=True, allow_redirects=False, timeout=timeout) as resp:
                        if resp.is_redirect:
                            url = urljoin(url, resp.headers["Location"])
                            continue
                        if resp.status_code >= 400:
                            raise status_error(resp, url, host, sent_at)
                        if policy is not None:  # before the body: a reserved image is not downloaded
                            policy.check_headers(url, resp.headers)
                        read_capped(resp, config.max_bytes)
                        body = resp.content
                        if deadline.expired:  # cut short, though the framing let it look whole
                            raise HttpError("timeout", "deadline passed during the body")
                        throttle.success(host)
                        return body, resp.status_code
                except AddressRefusedError as exc:
                    raise HttpError(exc.kind, str(exc)) from exc
                except requests.RequestException as exc:
                    raise request_error(exc, url) from exc
        raise HttpError("too_many_redirects", f"more than {config.max_redirects} redirects")


_rng = random.Random()


def download(url: str, config: FetchConfig) -> tuple[bytes, int]:
    """The body and HTTP status of `url` (or a file under `local_roots`), through the shared retry policy."""
    if urlparse(url).scheme == "file" and config.local_roots:
        return read_local(url, config), 200
    return retrying(lambda: _get(url, config), config.http, _throttle(config), _rng)


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


def _inputs_sql(retry_failed: bool, max_attempts: int) -> str:
    """The rows to fetch, sorted by source so that each unit holds one source's rows."""
    if retry_failed:
        transient = ", ".join(f"'{s}'" for s in sorted(RETRIED_ON_RERUN))
        return f"""SELECT i.record_id, r.media_url, r.source, r.crop_box, i.attempts
                  FROM images i JOIN raw_records r USING (record_id)
                  WHERE i.status IN ({transient}) AND i.attempts < {int(max_attempts)}
                  ORDER BY r.source, i.record_id"""
    return """SELECT r.record_id, r.media_url, r.source, r.crop_box, 0 AS attempts
             FROM raw_records r
             WHERE r.drop_reason IS NULL
               AND NOT EXISTS (SELECT 1 FROM images_history i WHERE i.record_id = r.record_id)
             ORDER BY r.source, r.record_id"""


def fetch_unit(unit: Unit, config: FetchConfig) -> pa.Table:
    """One work unit, run by a worker: rows [start, start + n) of the run's input file fetched and written
    as one lake part (bytes and rows) by this worker; only the status counts go back to the driver."""
    inputs = read_rows(unit["inputs"], unit["start"], unit["n"])
    out = pa.Table.from_batches(list(fetch_partition(iter(inputs.to_batches()), config)), schema=FETCH_OUTPUT)
    write_images_part(
        Catalog(Path(unit["home"])), out, run_id=unit["run_id"], source=unit["source"], part=unit["part"]
    )
    counts = Counter(out.column("status").to_pylist())
    return pa.table({"status": list(counts), "n": list(counts.values())}, schema=FETCH_RESULT)


def _units(catalog: Catalog, inputs: Path, run_id: str, partition_rows: int) -> list[Unit]:
    """Row ranges of the input file, one source per unit (the file is sorted by source)."""
    with catalog.connect(read_only=True) as con:
        per_source = con.execute(
            "SELECT source, count(*) FROM read_parquet(?) GROUP BY source ORDER BY source", [str(inputs)]
        ).fetchall()
    units: list[Unit] = []
    start = 0
    for source, count in per_source:
        for offset in range(0, count, partition_rows):
            units.append(
                {
                    "home": str(catalog.home),
                    "inputs": str(inputs),
                    "start": start + offset,
                    "n": min(partition_rows, count - offset),
                    "source": source,
                    "run_id": run_id,
                    "part": f"part-{run_id}-{len(units):05d}",
                }
            )
        start += count
    return units


def _check_failure_rate(run, done: int, config: FetchConfig) -> None:
    bugs = run.dropped.get("internal_error", 0)
    if done >= config.min_rows_for_rate and bugs > config.max_internal_error_rate * done:
        raise FailureRateError(
            f"{bugs} of {done} rows ended as internal_error (limit {config.max_internal_error_rate:.0%}): "
            "a bug, not bad input; the rows done are kept, fix the cause and rerun with --retry-failed "
            "(see images.error for the exception)"
        )


def run_fetch(
    catalog: Catalog,
    config: FetchConfig | None = None,
    *,
    executor: ExecutorConfig = LOCAL,
    progress: bool = True,
) -> dict[str, Any]:
    """Fetch every usable record not fetched yet (or, with `retry_failed`, transient failures again).
    The driver writes the rows to fetch to a scratch file and hands workers row ranges of it; each worker
    writes its unit's lake part itself, so a killed run loses at most the units in flight; a run stopped by the internal-error limit keeps what it wrote and fails with FailureRateError."""
    from tqdm import tqdm

    config = config or FetchConfig()
    if config.image.pdq:
        require_pdq()  # fail before any download, not once per row
    settings = {"executor": executor.name, "workers": executor.workers, **config.to_dict()}
    with StageRun(catalog, "fetch", config=settings) as run:
        work = catalog.work_dir(run.run_id)
        for stale in work.parent.glob("fetch-*"):  # scratch of killed runs (the fetch lock is held now)
            remove_tree(stale, work.parent)
        try:
            inputs = work / "inputs.parquet"
            run.n_in = catalog.export_parquet(_inputs_sql(config.retry_failed, config.max_attempts), inputs)
            units = _units(catalog, inputs, run.run_id, config.partition_rows)
            bar = tqdm(total=run.n_in, unit="img", desc="fetch", disable=not progress, mininterval=1.0)
            t0 = time.perf_counter()
            results = executor.build().run_units(partial(fetch_unit, config=config), units)
            try:
                for idx, table in results:
                    for status, n in zip(
                        table.column("status").to_pylist(), table.column("n").to_pylist(), strict=True
                    ):
                        if status == "ok":
                            run.n_out += n
                        else:
                            run.drop(status, n)
                    bar.update(units[idx]["n"])
                    _check_failure_rate(run, bar.n, config)
                    rate = bar.n / max(1e-6, time.perf_counter() - t0)
                    bar.set_postfix(ok=run.n_out, failed=sum(run.dropped.values()), ips=f"{rate:.0f}")
            finally:
                results.close()  # a stop: units not started are not started
                bar.close()
            _check_failure_rate(
                run, bar.n, replace(config, min_rows_for_rate=0)
            )  # the whole run, however small
            run.details = {
                "images_per_second": round(run.n_in / max(1e-6, time.perf_counter() - t0), 1),
                "units": len(units),
            }
        finally:
            remove_tree(work, work.parent)
    return run.summary()
