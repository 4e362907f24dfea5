"""Writing files so that a crash (or ``kill -9``) never leaves a half-written one behind."""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import PonderError


@contextmanager
def atomic_dir(out: str | Path) -> Iterator[Path]:
    """Yield a scratch folder; on success it replaces ``out`` in one rename (the old one is removed after)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    yield tmp
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
    with tmp.open("w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


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
