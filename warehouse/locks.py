"""Per-home stage locks: at most one run of a stage kind (one fetch, one dedup, ...) works on a home at once.

A lock is an `flock` on `HOME/locks/<name>.lock`, held for the life of the run. The kernel drops it when the
holder dies, however it dies (kill -9 included), so a lock that can be taken again means its last holder is
gone: that is also how a run left `running` in the catalog is recognised as interrupted.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from datetime import UTC, datetime
from pathlib import Path

from warehouse.contracts import check_name

log = logging.getLogger("tol.locks")


class StageBusyError(RuntimeError):
    """Another run holds the lock and the wait allowed for it has run out."""


def lock_wait_default() -> float | None:
    """Seconds to wait for a busy stage lock: `TOL_LOCK_WAIT` (0 refuses at once), else no bound."""
    value = os.environ.get("TOL_LOCK_WAIT")
    return float(value) if value not in (None, "") else None


def lock_path(home: Path, name: str) -> Path:
    return Path(home) / "locks" / f"{check_name('lock', name)}.lock"


class StageLock:
    """An exclusive, non-inheritable flock; `holder` describes who holds it while we wait."""

    def __init__(self, home: Path, name: str, wait: float | None = None, poll: float = 0.2) -> None:
        self.path = lock_path(home, name)
        self.name = name
        self.wait = lock_wait_default() if wait is None else wait
        self.poll = poll
        self._fd: int | None = None

    def holder(self) -> str:
        try:
            info = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return "another process"
        return f"pid {info.get('pid')} on {info.get('host')} (run {info.get('run_id')}, since {info.get('since')})"

    def acquire(self, run_id: str = "") -> StageLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        t0 = time.monotonic()
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                waited = time.monotonic() - t0
                if self.wait is not None and waited >= self.wait:
                    os.close(fd)
                    raise StageBusyError(
                        f"{self.name} is running on this home: {self.holder()}; waited {waited:.0f} s "
                        "(TOL_LOCK_WAIT sets how long to wait)"
                    ) from None
                if not told:
                    log.warning("%s is busy (%s); waiting for it to finish", self.name, self.holder())
                    told = True
                time.sleep(self.poll)
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "run_id": run_id,
            "since": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> StageLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def is_held(home: Path, name: str) -> bool:
    """Whether some open file description (this process's included) holds the lock now."""
    path = lock_path(home, name)
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a lock we took
    return False


def mark_interrupted(con, home: Path, held: str | None = None) -> list[str]:
    """Mark `running` stage and training runs whose owner is gone as `interrupted`; returns their run ids.

    An owner is gone when nobody holds its lock. `held` is the lock this process holds now: other `running`
    rows under it belong to a dead predecessor. Rows from before owners were recorded use the stage name."""
    done = []
    now = datetime.now(UTC)
    for run_id, lock in con.execute(
        "SELECT run_id, coalesce(lock, stage) FROM stage_runs WHERE status = 'running'"
    ).fetchall():
        if lock == held or not is_held(home, lock):
            con.execute(
                "UPDATE stage_runs SET status = 'interrupted', ended_at = ?, message = ? WHERE run_id = ?",
                [now, "its process ended without closing the run (killed or crashed)", run_id],
            )
            done.append(run_id)
    for (run_id,) in con.execute("SELECT run_id FROM training_runs WHERE status = 'running'").fetchall():
        lock = train_lock(run_id)
        if lock == held or not is_held(home, lock):
            con.execute(
                "UPDATE training_runs SET status = 'interrupted', ended_at = ? WHERE run_id = ?",
                [now, run_id],
            )
            done.append(run_id)
    return done


def train_lock(run_id: str) -> str:
    """The lock a training run holds: runs of different ids may train side by side, one id at a time."""
    return f"train-{run_id}"
