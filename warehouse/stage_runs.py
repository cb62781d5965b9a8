"""`stage_runs` bookkeeping: every stage opens a run, counts what it kept and dropped, and closes it."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field, is_dataclass
from datetime import UTC, datetime
from typing import Any

from warehouse.catalog import Catalog, schema_lock
from warehouse.contracts import check_reason, redact
from warehouse.lake import new_run_id
from warehouse.locks import StageLock, mark_interrupted

CODE_VERSION = "0.1.0"

# The recipe driving the stages run in this context (`driven_by`); Prefect copies contextvars into the
# threads that run its tasks, so a flow sets it once for all its tasks.
_RECIPE: ContextVar[str | None] = ContextVar("tol_recipe_sha256", default=None)


@contextmanager
def driven_by(recipe_sha256: str | None) -> Iterator[None]:
    """Stage runs started inside carry `recipe_sha256` (recorded first with `writers.record_recipe`)."""
    token = _RECIPE.set(recipe_sha256)
    try:
        yield
    finally:
        _RECIPE.reset(token)


def _jsonable(config: Any) -> str:
    if is_dataclass(config):
        config = asdict(config)
    return json.dumps(config, default=str, sort_keys=True)


@dataclass
class StageRun:
    """Counts for one execution of a stage; use as a context manager around the stage's work.

    Entering takes the stage's lock (`lock`, default the stage name: one fetch per home at a time; a second
    waits), marks runs whose owner died as `interrupted`, and records this process as the owner."""

    catalog: Catalog
    stage: str
    config: Any = None
    run_id: str = ""
    n_in: int = 0
    n_out: int = 0
    dropped: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    message: str = ""
    details: dict = field(default_factory=dict)
    lock: str = ""
    _t0: float = 0.0
    _lock: StageLock | None = None

    def __post_init__(self) -> None:
        self.run_id = self.run_id or new_run_id(self.stage)
        self.lock = self.lock or self.stage
        self.log = logging.getLogger(f"tol.{self.stage}")

    def __enter__(self) -> StageRun:
        self._lock = StageLock(self.catalog.home, self.lock).acquire(self.run_id)
        try:
            self._t0 = time.perf_counter()
            with self.catalog.connect() as con:
                with schema_lock(self.catalog.db_path):  # two threads must not close the same dead run
                    mark_interrupted(con, self.catalog.home, held=self.lock)
                con.execute(
                    "INSERT INTO stage_runs (run_id, stage, status, config, code_version, started_at, pid,"
                    " host, lock, recipe_sha256) VALUES (?, ?, 'running', ?, ?, ?, ?, ?, ?, ?)",
                    [
                        self.run_id,
                        self.stage,
                        _jsonable(self.config),
                        CODE_VERSION,
                        datetime.now(UTC),
                        os.getpid(),
                        socket.gethostname(),
                        self.lock,
                        _RECIPE.get(),
                    ],
                )
        except BaseException:
            self._release()
            raise
        self.log.info("%s started (run %s)", self.stage, self.run_id)
        return self

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def drop(self, reason: str, n: int = 1) -> None:
        """Count `n` rows dropped for `reason`, which must be in the vocabulary (warehouse.contracts)."""
        self.dropped[check_reason(reason)] += n

    def error(self, kind: str, n: int = 1) -> None:
        self.errors[kind] += n

    @contextmanager
    def timed(self, step: str) -> Iterator[None]:
        """Record the seconds a step takes under `details["seconds"][step]`."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.details.setdefault("seconds", {})[step] = round(time.perf_counter() - t0, 3)

    def __exit__(self, exc_type, exc, tb) -> None:
        status = "succeeded" if exc is None else "failed"
        if isinstance(exc, KeyboardInterrupt):
            status = "interrupted"
        message = self.message if exc is None else f"{exc_type.__name__}: {redact(str(exc))}"
        try:
            self._finish(status, message)
        finally:
            self._release()
        self.log.info("%s %s (run %s): in %d, out %d", self.stage, status, self.run_id, self.n_in, self.n_out)

    def _finish(self, status: str, message: str) -> None:
        with self.catalog.connect() as con:
            con.execute(
                """UPDATE stage_runs SET status = ?, n_in = ?, n_out = ?, n_dropped = ?,
                   dropped_by_reason = ?, errors = ?, seconds = ?, ended_at = ?, message = ?,
                   details = ? WHERE run_id = ?""",
                [
                    status,
                    self.n_in,
                    self.n_out,
                    sum(self.dropped.values()),
                    json.dumps(dict(sorted(self.dropped.items()))),
                    json.dumps(dict(sorted(self.errors.items()))),
                    round(time.perf_counter() - self._t0, 3),
                    datetime.now(UTC),
                    message[:2000],
                    json.dumps(self.details, default=str),
                    self.run_id,
                ],
            )

    def summary(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "stage": self.stage,
            "n_in": self.n_in,
            "n_out": self.n_out,
            "dropped": dict(self.dropped),
            "errors": dict(self.errors),
            **({"details": self.details} if self.details else {}),
        }


_FIRST_STEP = {
    "resolve": "tol resolve",
    "dedup": "tol dedup",
    "fetch": "tol fetch",
    "load_backbone": "tol taxonomy load-backbone PATH",
}


@dataclass(frozen=True)
class SucceededRun:
    run_id: str
    config: dict[str, Any]
    details: dict[str, Any]

    @property
    def chain(self) -> list[str]:
        """The runs this one stands for (itself, then those an incremental run carried rows from)."""
        return self.details.get("chain") or [self.run_id]


def succeeded_runs(catalog: Catalog, stage: str) -> list[SucceededRun]:
    """The succeeded runs of `stage`, newest first: the one reading of "the latest run of X"."""
    with catalog.connect() as con:
        rows = con.execute(
            "SELECT run_id, config, details FROM stage_runs WHERE stage = ? AND status = 'succeeded'"
            " ORDER BY ended_at DESC, run_id DESC",
            [stage],
        ).fetchall()
    return [SucceededRun(r, json.loads(c or "{}"), json.loads(d or "{}")) for r, c, d in rows]


def succeeded_run(catalog: Catalog, stage: str, run_id: str | None = None) -> str:
    """`run_id` checked to be a succeeded run of `stage`, or (None) the latest succeeded one. This is how
    a stage's inputs are chosen: once, by the caller, then passed on and recorded."""
    if run_id is None:
        runs = succeeded_runs(catalog, stage)
        if not runs:
            how = _FIRST_STEP.get(stage, f"the {stage} stage")
            raise LookupError(f"no successful {stage} run: run `{how}` first")
        return runs[0].run_id
    with catalog.connect() as con:
        rows = con.execute("SELECT stage, status FROM stage_runs WHERE run_id = ?", [run_id]).fetchall()
    if not rows:
        raise LookupError(f"no stage run {run_id!r} in the catalog")
    if rows[0] != (stage, "succeeded"):
        raise ValueError(f"run {run_id!r} is a {rows[0][1]} {rows[0][0]} run, not a succeeded {stage} run")
    return run_id


def run_config(catalog: Catalog, run_id: str) -> dict[str, Any]:
    """The settings a run recorded when it started."""
    with catalog.connect() as con:
        rows = con.execute("SELECT config FROM stage_runs WHERE run_id = ?", [run_id]).fetchall()
    if not rows:
        raise LookupError(f"no stage run {run_id!r} in the catalog")
    return json.loads(rows[0][0] or "{}")
