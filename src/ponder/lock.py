"""One process per output: a lock file beside a run folder or a run file.

``with hold(path, what):`` creates ``path`` with ``O_CREAT | O_EXCL`` (atomic on a local disk and on
NFSv3+) holding the holder's pid, host and start time as JSON. A second process finds the file and
stops with one line naming the holder (``PonderError``: exit 2 from the CLI). The lock is removed when
the block ends, and at interpreter exit (``atexit``) if the block never got to end.

A lock whose holder died (``kill -9``, a lost node) is *stale* and is taken over, with a note on stderr:

- **same host**: stale when ``os.kill(pid, 0)`` says no such process, or the pid now belongs to another
  process (its start time in ``/proc/PID/stat`` differs from the one recorded, where ``/proc`` exists);
- **another host** (a shared file system): a pid there cannot be checked from here, so the holder keeps the
  file's mtime fresh from a daemon thread every ``HEARTBEAT_S`` seconds, and the lock is stale when its
  mtime is older than ``STALE_S``. The assumption: the hosts' clocks agree to well under ``STALE_S``
  (NTP), the file system updates mtimes on ``utime`` (NFS, Lustre, GPFS do), and a holder that is alive
  but cut off from the file system for ``STALE_S`` may lose its lock. Host names must differ between
  machines (containers sharing a hostname on different nodes would be taken for one host).

A takeover renames the stale file aside and checks it is the one judged stale before deleting it, so two
processes that find the same stale lock cannot both win.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import sys
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from .errors import PonderError

HEARTBEAT_S = 60.0  # how often a holder touches its lock file
STALE_S = 600.0  # a lock from another host untouched this long is taken to be dead


def _proc_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid from its holder."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def _read(path: Path) -> dict | None:
    """The holder's record, or None when the file is gone; ``{}`` when it is empty or torn."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        info = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return info if isinstance(info, dict) else {}


def _why_stale(path: Path, info: dict) -> str | None:
    """Why the holder recorded in ``info`` is dead, or None while it may be alive."""
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None
    if not info:  # created but not written: a holder that died between the two, or one writing right now
        return "its lock file is empty" if age > 10 else None
    pid = info.get("pid")
    if info.get("host") != socket.gethostname():
        return f"its lock has not been refreshed for {age / 60:.0f} minutes" if age > STALE_S else None
    if not isinstance(pid, int) or not _alive(pid):
        return "which is no longer running"
    start = _proc_start(pid)
    if info.get("proc_start") and start and start != info["proc_start"]:
        return "which is no longer running (its pid now belongs to another process)"
    return None


def describe(info: dict) -> str:
    return f"pid {info.get('pid', '?')} on host {info.get('host', '?')} (since {info.get('started', '?')})"


def _take_over(path: Path, info: dict) -> bool:
    """Remove the stale lock ``info`` read from ``path``; False if another process got there first."""
    grave = path.with_name(f"{path.name}.stale-{socket.gethostname()}-{os.getpid()}")
    try:
        os.rename(path, grave)
    except FileNotFoundError:
        return False
    if _read(grave) != info:  # a new holder's lock, written since we looked: put it back
        try:
            os.link(grave, path)
        except FileExistsError:
            pass
        os.unlink(grave)
        return False
    os.unlink(grave)
    return True


class Lock:
    """A held lock file; ``release()`` removes it (only if it is still ours)."""

    def __init__(self, path: Path, info: dict):
        self.path, self.info = path, info
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name=f"lock:{path.name}", daemon=True)
        self._beat.start()
        atexit.register(self.release)

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                pass

    def release(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        atexit.unregister(self.release)
        if _read(self.path) == self.info:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass


def acquire(path: str | Path, what: str) -> Lock:
    """Create the lock file ``path`` for ``what`` (e.g. the run folder), or raise a one-line ``PonderError``
    naming the holder. A stale lock is taken over with a note on stderr."""
    path = Path(path)
    info = {"pid": os.getpid(), "host": socket.gethostname(), "proc_start": _proc_start(os.getpid()),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    data = json.dumps(info).encode()
    for _ in range(5):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            held = _read(path)
            if held is None:
                continue  # released in between: try again
            why = _why_stale(path, held)
            if why is None:
                raise PonderError(f"{what} is in use by {describe(held)}; wait for it to end, or stop it") from None
            if _take_over(path, held):
                print(f"ponder: note: took over the lock on {what} from {describe(held)}, {why}", file=sys.stderr)
            continue
        except OSError as e:
            raise PonderError(f"cannot create the lock file {path}: {e.strerror}") from None
        try:
            os.write(fd, data)
            os.fsync(fd)
        except OSError as e:  # a full disk: leave no empty lock behind
            os.close(fd)
            path.unlink()
            raise PonderError(f"cannot write the lock file {path}: {e.strerror}") from None
        os.close(fd)
        return Lock(path, info)
    raise PonderError(f"{what}: could not take the lock {path}; other processes keep taking it")


@contextmanager
def hold(path: str | Path, what: str) -> Iterator[Lock]:
    """``acquire`` for the length of a ``with`` block."""
    lock = acquire(path, what)
    try:
        yield lock
    finally:
        lock.release()
