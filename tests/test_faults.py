"""Faults: one process per run folder or run file (a real second process is refused, a lock left by a
``kill -9`` is taken over), output paths that cannot be written (one line, exit 2, before the model
load), and a full disk (one line naming the file, earlier files intact, a rerun continues).

The full-disk tests that need a real small disk mount a tmpfs (root only; skipped elsewhere); the
monkeypatched ones run anywhere.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ponder import lock
from ponder.cli import main
from ponder.errors import PonderError
from ponder.io import read_rows
from ponder.loop.run import SOAK_PAUSE

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
PONDER = [sys.executable, "-m", "ponder.cli"]
HOLD = "import sys, time; from ponder.lock import hold\nwith hold(sys.argv[1], 'it'):\n    print('held', flush=True)\n    time.sleep(600)\n"


def ponder(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*PONDER, *args], env=ENV, capture_output=True, text=True, timeout=timeout)


def one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("ponder: error: "), err
    return lines[0]


def holder(path: Path) -> subprocess.Popen:
    """Another process holding the lock ``path`` (until killed)."""
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], env=ENV, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def kill9(p: subprocess.Popen) -> None:
    p.send_signal(signal.SIGKILL)
    p.wait()


def eval_args(model: Path, out: Path, *extra: str) -> list[str]:
    return ["eval", "--model", str(model), "--task", "game24", "--out", str(out), "--quiet", *extra]


# --- the lock -----------------------------------------------------------------------------------------------
def test_a_second_process_is_refused_with_the_holders_pid_and_host(tmp_path):
    path = tmp_path / "x.lock"
    p = holder(path)
    try:
        with pytest.raises(PonderError) as e:
            lock.acquire(path, "x")
        assert f"x is in use by pid {p.pid} on host {socket.gethostname()}" in str(e.value)
        assert json.loads(path.read_text())["pid"] == p.pid  # the holder's lock is untouched
    finally:
        kill9(p)


def test_a_lock_left_by_kill_9_is_taken_over_with_a_note(tmp_path, capsys):
    path = tmp_path / "x.lock"
    p = holder(path)
    kill9(p)
    with lock.hold(path, "x"):
        assert json.loads(path.read_text())["pid"] == os.getpid()
        err = capsys.readouterr().err
        assert f"took over the lock on x from pid {p.pid} on host {socket.gethostname()}" in err
        assert "no longer running" in err
    assert not path.exists()  # released at the end of the block


def test_the_lock_is_released_at_exit_without_a_with_block(tmp_path):
    path = tmp_path / "x.lock"
    code = f"from ponder.lock import acquire; acquire({str(path)!r}, 'x'); import os; assert os.path.exists({str(path)!r})"
    subprocess.run([sys.executable, "-c", code], env=ENV, check=True)
    assert not path.exists()


def write_lock(path: Path, age_s: float, **info) -> None:
    path.write_text(json.dumps({"pid": 1, "host": socket.gethostname(), "started": "then", **info}))
    os.utime(path, (time.time() - age_s, time.time() - age_s))


def test_another_hosts_lock_is_stale_only_once_its_heartbeat_stops(tmp_path, capsys):
    path = tmp_path / "x.lock"
    write_lock(path, age_s=30, host="node-7", pid=4242)
    with pytest.raises(PonderError, match="x is in use by pid 4242 on host node-7"):
        lock.acquire(path, "x")
    write_lock(path, age_s=lock.STALE_S + 60, host="node-7", pid=4242)
    with lock.hold(path, "x"):
        assert "from pid 4242 on host node-7" in capsys.readouterr().err


def test_a_reused_pid_does_not_keep_a_dead_holders_lock(tmp_path, capsys):
    if lock._proc_start(os.getpid()) is None:
        pytest.skip("no /proc here")
    path = tmp_path / "x.lock"
    write_lock(path, age_s=0, pid=os.getppid(), proc_start="1")  # alive, but not the process that took the lock
    with lock.hold(path, "x"):
        assert "now belongs to another process" in capsys.readouterr().err


def test_a_lock_holder_keeps_its_lock_fresh(tmp_path, monkeypatch):
    monkeypatch.setattr(lock, "HEARTBEAT_S", 0.05)
    path = tmp_path / "x.lock"
    with lock.hold(path, "x"):
        os.utime(path, (0, 0))
        time.sleep(0.5)
        assert time.time() - path.stat().st_mtime < 5


def test_eval_on_a_run_file_in_use_is_refused_before_the_model_load(tmp_path):
    out = tmp_path / "run.jsonl"
    p = holder(tmp_path / "run.jsonl.lock")
    try:
        r = ponder(*eval_args(tmp_path / "no-such-model", out))  # the lock is checked first: no "model not found"
    finally:
        kill9(p)
    assert r.returncode == 2
    line = one_error_line(r.stderr)
    assert f"{out} is in use by pid {p.pid} on host {socket.gethostname()}" in line


SMALL_RUN = ["--problems", "4", "--validation", "2", "--eval-limit", "2", "--eval-n", "2", "--search-batch", "2",
             "--eval-batch", "2", "--iterations", "1", "--eval-methods", "greedy",
             "--set", "tiny.hidden_size=32", "--set", "tiny.num_layers=1", "--set", "tiny.num_heads=2",
             "--set", "tiny.intermediate_size=64", "--set", "bootstrap.steps=4", "--set", "bootstrap.batch_size=4",
             "--set", "bootstrap.warmup=1", "--set", "sft.steps=2", "--set", "sft.batch_size=4", "--set", "sft.warmup=1",
             "--set", "critic.steps=2", "--set", "critic.batch_size=4", "--set", "dpo.batch_size=4",
             "--set", "search.simulations=2", "--set", "search.k=2", "--set", "search.k_max=2",
             "--set", "eval_mcts.simulations=2", "--set", "watch.samples=2", "--quiet"]


def check_finished(run: Path) -> None:
    problems = read_rows(run / "iter-1" / "problems.jsonl")
    ids = [r["problem_id"] for r in read_rows(run / "iter-1" / "search.jsonl")]
    assert len(ids) == len(set(ids)) == len(problems) == 4
    assert [m["iteration"] for m in read_rows(run / "metrics.jsonl")] == [0, 1]
    assert (run / "report.md").is_file() and not (run / "ponder.lock").exists()


def test_improve_two_processes_on_one_run_folder_then_kill_9_and_resume(tmp_path):
    run = tmp_path / "run"
    # The first process waits 120 s as its first phase ends (the soak hook), so that it still holds the
    # folder when the second has started: a tiny run can otherwise finish before a second Python is up.
    first = subprocess.Popen([*PONDER, "improve", "--out", str(run), *SMALL_RUN], env={**ENV, SOAK_PAUSE: "120"},
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.time()
        while not (run / "config.yaml").exists() and first.poll() is None and time.time() - t0 < 120:
            time.sleep(0.1)
        assert first.poll() is None, first.stderr.read()
        second = ponder("improve", "--resume", str(run), "--quiet")
        assert second.returncode == 2
        line = one_error_line(second.stderr)
        assert f"the run folder {run} is in use by pid {first.pid} on host {socket.gethostname()}" in line
    finally:
        kill9(first)
    assert (run / "ponder.lock").exists()  # left behind by the kill
    third = ponder("improve", "--resume", str(run), "--quiet")
    assert third.returncode == 0, third.stderr
    assert f"took over the lock on the run folder {run} from pid {first.pid}" in third.stderr
    check_finished(run)


# --- output paths that cannot be written ----------------------------------------------------------------------
def test_eval_out_under_a_file_is_one_line_before_the_model_load(tmp_path):
    (tmp_path / "afile").write_text("")
    r = ponder(*eval_args(tmp_path / "no-such-model", tmp_path / "afile" / "run.jsonl"))
    assert r.returncode == 2
    assert f"--out: {tmp_path / 'afile'} is a file, not a folder" in one_error_line(r.stderr)
    r = ponder(*eval_args(tmp_path / "no-such-model", tmp_path / "afile" / "deeper" / "run.jsonl"))
    assert r.returncode == 2
    assert "cannot create the folder" in one_error_line(r.stderr) and "Not a directory" in r.stderr


def test_eval_out_that_is_a_folder_is_one_line(tmp_path, capsys):
    assert main(eval_args(tmp_path / "no-such-model", tmp_path)) == 2
    assert "is a folder; give a file name" in one_error_line(capsys.readouterr().err)


@pytest.fixture
def readonly_dir(tmp_path):
    """A folder this process cannot write in: chmod 555, or (as root, who ignores modes) a read-only tmpfs."""
    d = tmp_path / "ro"
    d.mkdir()
    if os.geteuid() != 0:
        d.chmod(0o555)
        yield d
        d.chmod(0o755)
        return
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(d)], capture_output=True).returncode:
        pytest.skip("root, and no read-only tmpfs can be mounted here")
    yield d
    subprocess.run(["umount", "-l", str(d)], check=True)


def test_eval_out_in_a_read_only_folder_is_one_line_before_the_model_load(readonly_dir):
    for out in (readonly_dir / "run.jsonl", readonly_dir / "new" / "deeper" / "run.jsonl"):
        r = ponder(*eval_args(Path("no-such-model"), out))
        assert r.returncode == 2
        line = one_error_line(r.stderr)
        assert "cannot" in line and str(readonly_dir) in line and "model not found" not in line


def test_improve_and_train_out_in_a_read_only_folder_are_one_line(readonly_dir):
    r = ponder("improve", "--out", str(readonly_dir / "run"), "--quiet")
    assert r.returncode == 2 and "cannot create the folder" in one_error_line(r.stderr)
    r = ponder("train", "--out", str(readonly_dir / "model"), "--steps", "1")
    assert r.returncode == 2 and "cannot write" in one_error_line(r.stderr)


def test_eval_out_in_missing_folders_creates_them(tiny_model_dir, tmp_path):
    out = tmp_path / "a" / "b" / "run.jsonl"
    assert main(eval_args(tiny_model_dir, out, "--limit", "1")) == 0
    assert len(read_rows(out)) == 1 and not out.with_name("run.jsonl.lock").exists()


# --- a full disk -----------------------------------------------------------------------------------------------
def test_a_full_disk_in_eval_stops_with_one_line_and_a_rerun_continues(tiny_model_dir, tmp_path, capsys, monkeypatch):
    """Monkeypatched (runs anywhere): the second batch's write tears its line and fails with ENOSPC."""
    from ponder import evaluate

    real, calls = evaluate.append_lines, []

    def full(fh, lines):
        calls.append(1)
        if len(calls) == 2:
            fh.write(lines[0][:10])  # a torn line, as a write cut off by the full disk leaves
            fh.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fh, lines)

    monkeypatch.setattr(evaluate, "append_lines", full)
    out = tmp_path / "run.jsonl"
    args = eval_args(tiny_model_dir, out, "--limit", "4", "--batch", "2")
    assert main(args) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"disk full writing {out}; the files written before it are intact" in line
    assert len(read_rows(out)) == 2  # the first batch; the torn line is cut off
    monkeypatch.setattr(evaluate, "append_lines", real)  # space is back
    assert main(args) == 0
    ids = [r["problem_id"] for r in read_rows(out)]
    assert len(ids) == len(set(ids)) == 4


def test_a_full_disk_while_saving_a_checkpoint_keeps_the_old_one(tmp_path):
    """Monkeypatched: a library's own disk-full error inside ``atomic_dir`` names the folder; the old one stays."""
    from ponder.io import atomic_dir

    out = tmp_path / "model"
    with atomic_dir(out) as tmp:
        (tmp / "weights").write_text("old")
    with pytest.raises(OSError) as e:
        with atomic_dir(out) as tmp:
            (tmp / "weights").write_text("half")
            raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(out)
    assert (out / "weights").read_text() == "old" and not out.with_name("model.tmp").exists()


@pytest.fixture
def small_disk(tmp_path):
    """A real 32 MiB disk (tmpfs, root only) and ``fill(leave)``, a ballast file that leaves ``leave`` bytes free."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    d = tmp_path / "disk"
    d.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(d)], capture_output=True).returncode:
        pytest.skip("no tmpfs can be mounted here")

    def fill(leave: int) -> Path:
        ballast = d / "ballast"
        st = os.statvfs(d)
        with ballast.open("wb") as fh:
            fh.write(b"\0" * (st.f_bavail * st.f_frsize - leave))
        return ballast

    yield d, fill
    subprocess.run(["umount", "-l", str(d)], check=True)


def test_a_real_full_disk_in_eval(tiny_model_dir, small_disk):
    disk, fill = small_disk
    out = disk / "run.jsonl"
    args = eval_args(tiny_model_dir, out, "--limit", "40", "--batch", "1", "--method", "greedy")
    ballast = fill(12 * 1024)  # the lock and meta files, and a page of rows
    r = ponder(*args)
    assert r.returncode == 2, r.stderr
    assert f"disk full writing {disk}" in one_error_line(r.stderr)
    kept = [r["problem_id"] for r in read_rows(out)] if out.exists() else []
    assert 0 < len(kept) < 40
    ballast.unlink()  # space is back
    r = ponder(*args)
    assert r.returncode == 0, r.stderr
    ids = [r["problem_id"] for r in read_rows(out)]
    assert len(ids) == len(set(ids)) == 40 and ids[: len(kept)] == kept


def test_a_real_full_disk_in_improve_then_resume(small_disk):
    disk, fill = small_disk
    run = disk / "run"
    ballast = fill(160 * 1024)  # the bootstrap fits, the first iteration does not
    r = ponder("improve", "--out", str(run), *SMALL_RUN)
    assert r.returncode == 2, r.stderr
    line = [x for x in r.stderr.splitlines() if x.startswith("ponder: error: ")]
    assert "Traceback" not in r.stderr and len(line) == 1, r.stderr
    assert f"disk full writing {run}" in line[0]
    for f in run.rglob("*.jsonl"):
        read_rows(f)  # every data file reads (a torn last line is cut off)
    assert not list(run.rglob("*.tmp"))  # no half-written file or checkpoint folder is left in place
    ballast.unlink()
    r = ponder("improve", "--resume", str(run), "--quiet")
    assert r.returncode == 0, r.stderr
    check_finished(run)


# --- the kill soak's hook, and what a resume redoes ------------------------------------------------------------
def test_the_soak_pause_is_nothing_unless_asked(monkeypatch):
    import ponder.loop.run as run_mod

    slept = []
    monkeypatch.setattr(run_mod.time, "sleep", slept.append)
    monkeypatch.delenv(run_mod.SOAK_PAUSE, raising=False)
    run_mod.soak_pause()
    monkeypatch.setenv(run_mod.SOAK_PAUSE, "0.25")
    run_mod.soak_pause()
    assert slept == [0.25]


def test_the_soak_pause_comes_after_each_phase_s_files_and_before_its_record_and_a_resume_reports_once(
        tmp_path, monkeypatch):
    """``PONDER_SOAK_PAUSE`` (bench/kill_soak.py): the loop waits once per phase, when the phase's files are written
    and it is not yet in phases.json; for the report, when the metrics line is there and report.md does not name
    the iteration yet. A resume of the finished run rewrites the report once, not once per iteration."""
    import ponder.loop.run as run_mod
    import ponder.report.run_report as run_report

    run = tmp_path / "run"

    def state() -> tuple:
        done = tuple(tuple(json.loads(p.read_text())) if (p := run / f"iter-{i}" / "phases.json").exists() else ()
                     for i in (0, 1))
        report = (run / "report.md").read_text().split("\n", 1)[0] if (run / "report.md").exists() else ""
        return done, tuple(m["iteration"] for m in read_rows(run / "metrics.jsonl")), report

    class Clock:  # ponder.loop.run's time, its sleeps noted with the run's state
        def __getattr__(self, name):
            return getattr(time, name)

        def sleep(self, s):
            pauses.append((s, state(), (run / "iter-1" / "problems.jsonl").exists()))

    pauses: list = []
    monkeypatch.setattr(run_mod, "time", Clock())
    monkeypatch.setenv(run_mod.SOAK_PAUSE, "0.01")
    assert main(["improve", "--out", str(run), *SMALL_RUN]) == 0
    zero = ("policy", "bootstrap", "eval", "watch")
    one = ("imagine", "search", "extract", "policy", "critics", "eval", "watch")
    want = [((zero[:k], ()), (), "") for k in range(4)]
    want += [((zero, ()), (0,), "")]  # the metrics line written, the report not yet
    want += [((zero, one[:k]), (0,), "# ponder improve: game24, 0 of 1 iterations") for k in range(7)]
    want += [((zero, one), (0, 1), "# ponder improve: game24, 0 of 1 iterations")]
    assert [(done, its, report) for _, (done, its, report), _ in pauses] == want
    assert {s for s, _, _ in pauses} == {0.01}
    assert [written for *_, written in pauses][5:] == [True] * 8  # imagine's file is written before its pause
    assert state()[2] == "# ponder improve: game24, 1 of 1 iterations"

    monkeypatch.delenv(run_mod.SOAK_PAUSE)
    real, reports = run_report.write_report, []
    monkeypatch.setattr(run_report, "write_report", lambda *a: reports.append(a) or real(*a))
    assert main(["improve", "--resume", str(run), "--quiet"]) == 0
    assert len(reports) == 1
    # a kill after the last metrics line and before its report: the resume writes it
    real(run, read_rows(run / "metrics.jsonl")[:1], run_mod.open_run(run, None, resume=True).cfg)
    assert main(["improve", "--resume", str(run), "--quiet"]) == 0
    assert len(reports) == 2 and state()[2] == "# ponder improve: game24, 1 of 1 iterations"
