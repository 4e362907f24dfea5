"""Writing files so that a crash (or ``kill -9``) never leaves a half-written one behind."""

from __future__ import annotations

import errno
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import PonderError

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(e: BaseException | None) -> bool:
    """ENOSPC / EDQUOT, also inside another library's error (safetensors and torch only say it in words)."""
    while e is not None:
        if isinstance(e, OSError) and e.errno in DISK_FULL:
            return True
        if any(s in str(e) for s in ("No space left on device", "StorageFull", "Disk quota exceeded", "file write failed")):
            return True
        e = e.__cause__ or e.__context__
    return False


def named(e: BaseException, path: str | Path) -> OSError:
    """The error of a failed write as an ``OSError`` naming ``path`` (a write() error names no file)."""
    if is_disk_full(e):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    if isinstance(e, OSError):
        return OSError(e.errno, e.strerror or str(e), str(path))
    return OSError(errno.EIO, str(e), str(path))


def _probe(folder: Path, what: str) -> None:
    """Create and remove a file in ``folder``: the only test of writability that is true for root, read-only
    mounts and network file systems alike."""
    probe = folder / f".ponder-probe-{os.getpid()}"
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        probe.unlink()
    except OSError as e:
        raise PonderError(f"cannot write {what} in {folder}: {e.strerror}") from None


def _make_folder(folder: Path, what: str) -> None:
    if folder.exists() and not folder.is_dir():
        raise PonderError(f"{what}: {folder} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PonderError(f"cannot create the folder {folder} for {what}: {e.strerror}") from None


def check_out_file(path: str | Path, what: str = "--out") -> Path:
    """Before any work: ``path``'s folder exists (created if missing) and a file can be written there, and
    ``path`` itself, if it exists, is a file that can be appended to. Raises a one-line ``PonderError``."""
    path = Path(path)
    if path.is_dir():
        raise PonderError(f"{what} {path} is a folder; give a file name")
    _make_folder(path.parent, what)
    _probe(path.parent, what)
    if path.exists():
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND))
        except OSError as e:
            raise PonderError(f"cannot write {what} {path}: {e.strerror}") from None
    return path


def check_out_dir(path: str | Path, what: str = "--out") -> Path:
    """Before any work: the folder ``path`` exists (created with its parents if missing) and is writable."""
    path = Path(path)
    _make_folder(path, what)
    _probe(path, what)
    return path


@contextmanager
def atomic_dir(out: str | Path) -> Iterator[Path]:
    """Yield a scratch folder; on success it replaces ``out`` in one rename (the old one is removed after)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)  # a half-written folder; the last complete ``out`` is kept
        if isinstance(e, Exception) and is_disk_full(e):
            raise named(e, out) from e  # also a library's own error (safetensors, torch) for a full disk
        raise
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def write_text(path: str | Path, text: str) -> None:
    """Replace a file's content atomically (write a sibling, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as e:
        tmp.unlink(missing_ok=True)  # the old ``path`` is untouched
        raise named(e, path) from None
    tmp.replace(path)


def append_lines(fh, lines: Iterable[str]) -> None:
    """Append whole lines to an open run file and flush; a failed write (a full disk) names the file. A line
    torn by it is cut off by ``read_rows`` when the run resumes."""
    try:
        fh.writelines(lines)
        fh.flush()
    except OSError as e:
        raise named(e, fh.name) from None


def write_jsonl(path: str | Path, rows: Iterable[Any]) -> None:
    write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def read_rows(path: str | Path) -> list[dict]:
    """Rows of a run file. A torn final line (a crash mid-write) is cut off; a final row that lost only
    its newline gets it back, so the next append starts on a line of its own."""
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")
    rows = []
    for lineno, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            rows.append(json.loads(raw))
        except json.JSONDecodeError:
            if lineno < len(lines):  # not the last line: the file is damaged, not torn
                raise PonderError(f"{path}:{lineno}: malformed line in run file") from None
            with path.open("r+b") as fh:
                fh.truncate(len(data) - len(raw))
            return rows
    if data and not data.endswith(b"\n"):
        with path.open("ab") as fh:
            fh.write(b"\n")
    return rows
