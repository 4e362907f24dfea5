"""``ponder eval``: run a search method over a split, one JSONL line per problem as it finishes.

The run file is append-only and resumable: a rerun with the same settings skips the problems already
written (a torn last line from a crash is dropped), and a rerun with other settings is refused, so
a finished problem is never lost or counted twice. ``FILE.meta.json`` holds the settings.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from .compute import Budget, Compute
from .errors import PonderError
from .io import append_lines, check_out_file, named, read_rows, write_text
from .models import Policy
from .search import SearchEnv, SearchResult, get_method
from .tasks import Problem, Task


@dataclass(frozen=True)
class Summary:
    method: str
    problems: int
    accuracy: float
    tokens_generated: float  # mean per problem
    tokens_read: float  # mean per problem
    seconds: float  # total
    flops: float = 0.0  # mean per problem: every model's forward FLOPs, the critics' included

    def row(self) -> str:
        return (
            f"| {self.method} | {self.problems} | {100 * self.accuracy:.1f}% | {self.tokens_generated:,.0f} "
            f"| {self.tokens_read:,.0f} | {self.flops:.3g} | {self.seconds:.1f} |"
        )

    HEADER = ("| method | problems | accuracy | tokens generated / problem | tokens read / problem | FLOPs / problem | seconds |"
              "\n|---|---|---|---|---|---|---|")


def result_row(task: Task, method: str, r: SearchResult, tree: bool = False) -> dict[str, Any]:
    row = {
        "problem_id": r.problem.id,
        "question": r.problem.question,
        "reference": r.problem.reference,
        "meta": r.problem.meta,
        "method": method,
        "answer": r.answer,
        "correct": task.reward(r.problem, r.steps),
        "steps": list(r.steps),
        "compute": r.compute.to_dict(),
        "info": r.info,
        "tree_size": r.tree.size(),
    }
    if tree:
        row["tree"] = r.tree.to_dict()
    return row


def summarize(method: str, rows: Sequence[dict], seconds: float | None = None) -> Summary:
    n = len(rows)
    total = Compute.total(Compute(**r["compute"]) for r in rows)
    return Summary(
        method,
        n,
        sum(r["correct"] for r in rows) / max(1, n),
        total.tokens_generated / max(1, n),
        total.tokens_read / max(1, n),
        total.seconds if seconds is None else seconds,
        total.flops / max(1, n),
    )


def resume_rows(out: Path, meta: dict, same=None) -> list[dict]:
    """The rows already in run file ``out`` (a torn last line dropped), after checking that it was written
    with the settings ``meta`` (kept in ``OUT.meta.json``, with the start time and machine, when the file
    is new). ``same(old, new)`` decides what "the same settings" means (default: every key of ``meta``
    equal); a file written otherwise is a one-line error, so its rows are never mixed with other ones."""
    meta_path = out.with_name(out.name + ".meta.json")
    if meta_path.exists() and out.exists():
        old = json.loads(meta_path.read_text())
        keys = set(meta) - {"started"}
        if not (same(old, meta) if same else {k: old.get(k) for k in keys} == {k: meta[k] for k in keys}):
            raise PonderError(f"{out} was written with other settings ({meta_path}); use another --out")
    else:
        meta = {**meta, "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "machine": f"{platform.machine()} {platform.processor() or ''} {platform.system()}".strip()}
        write_text(meta_path, json.dumps(meta, indent=2))
    return read_rows(out)


def run_eval(
    task: Task,
    policy: Policy,
    method: str,
    config: Any,
    problems: Sequence[Problem],
    out: Path | None,
    critic=None,
    batch: int = 32,
    seed: int = 0,
    settings: dict | None = None,
    progress: bool = True,
    save_trees: bool = False,
    pool=None,
    budget: Budget | None = None,
    rollout_policy: Policy | None = None,
) -> tuple[Summary, list[dict]]:
    """Run ``method`` over ``problems`` in batches; rows are appended to ``out`` as each batch finishes.

    ``save_trees`` adds each problem's whole search tree to its row (for ``ponder view`` and analysis).
    ``pool`` (a ``distributed.RayPool``) runs the batches on Ray workers instead, each seeded by its
    position in the run; rows are written as batches finish and returned in problem order. ``budget``:
    what each problem may spend (the workers take theirs from the pool's ``WorkerSpec``). ``rollout_policy``:
    the model leaf rollouts come from (``SearchEnv``; None: the policy itself; the workers load the spec's).
    """
    from tqdm import tqdm

    if batch <= 0:
        raise PonderError(f"--batch must be > 0, got {batch}")
    m = get_method(method)
    env = SearchEnv(policy, task, critic, budget=budget, rollout_policy=rollout_policy) if pool is None else None
    rows: list[dict] = []
    if out is not None:
        out = check_out_file(out)
        rows = resume_rows(out, {"method": method, "config": asdict(config), **(settings or {})})
    done = {r["problem_id"] for r in rows}
    todo = [p for p in problems if p.id not in done]
    for pol in (policy, rollout_policy):
        if hasattr(pol, "seed"):
            pol.seed(seed + len(done))
    t0 = time.time()
    bar = tqdm(total=len(problems), initial=len(problems) - len(todo), desc=method, disable=not progress, dynamic_ncols=True)
    fh = out.open("a") if out is not None else None
    size = batch if pool is None else pool.chunk_size(len(todo), batch)
    chunks = [todo[i : i + size] for i in range(0, len(todo), size)]
    if pool is None:
        batches = ([result_row(task, method, r, save_trees) for r in m.run(c, env, config)] for c in chunks)
    else:
        seeds = [seed + len(done) + i * size for i in range(len(chunks))]
        batches = (new for _, new in pool.map(method, config, chunks, seeds, save_trees))
    try:
        for new in batches:
            rows.extend(new)
            if fh:
                append_lines(fh, [json.dumps(row) + "\n" for row in new])
            bar.update(len(new))
            bar.set_postfix(acc=f"{sum(r['correct'] for r in rows) / len(rows):.2f}")
    finally:
        bar.close()
        if fh:
            try:
                fh.close()
            except OSError as e:  # the buffer could not be written either; rows up to the last flush are kept
                raise named(e, out) from None
    order = {p.id: i for i, p in enumerate(problems)}
    rows = sorted((r for r in rows if r["problem_id"] in order), key=lambda r: order[r["problem_id"]])
    return summarize(method, rows), rows
