"""``ponder compare``: search methods against each other at matched compute budgets.

    ponder compare --task game24 --model M --methods best-of-n beam=value:DIR mcts --budgets 250,500,1000,2000

Every method searches every problem once per budget, the budget held by the search env: each method
stops expanding a problem once the problem has spent it (``compute.Budget``; generated tokens, or
every model's forward FLOPs with the critics' reading included), so it ends at most one round beyond.
One JSONL row per (method, budget, problem) is appended as each batch finishes, so a killed run
resumes without redoing a finished row, and one with more methods or budgets adds only those.

A method is ``NAME`` or ``NAME=CRITIC`` (any ``--critic`` spec: ``beam=value:DIR``,
``best-of-n=verifier``); methods that rank need a critic and get the verifier without one. Each uses
its own defaults, overridden by ``--set NAME.FIELD=VALUE``, except that the options which would stop
it before the budget does (``n`` traces, ``max_nodes``, ``simulations``, ``max_expansions``) are
raised to ``--cap`` (never lowered) unless set: the budget is what ends the search. A method that finishes on its own
(beam search at the last step) spends less than the budget, and the table says how much it spent.

The table gives, per method and budget, the solve rate with its standard error, sqrt(p (1 - p) / n),
and the mean and largest spend; a paired test compares every two methods at each budget on the
problems both solved or failed (McNemar's exact test: under "the two are equally good", the problems
only one of them solved split like a fair coin). The plot is solve rate against mean spend, and
against seconds per problem.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple, Sequence

from .compute import Budget, Compute, check_unit
from .errors import PonderError
from .io import append_lines, named, write_text
from .tasks import Problem, Task

#: options that would end a method's search before its budget does, and what --cap raises them to
CAPPED = ("n", "max_nodes", "simulations", "max_expansions")


class MethodSpec(NamedTuple):
    """One method to compare: its label in the rows (``beam=value:DIR``), name, critic spec and config."""

    label: str
    name: str
    critic: str | None
    config: Any


def parse_budgets(text: str, unit: str) -> list[Budget]:
    """``250,500,1000``: budgets in ``unit``, each > 0, in the order given (repeats dropped)."""
    check_unit(unit)
    out: list[Budget] = []
    for term in (t.strip() for t in text.split(",")):
        try:
            amount = float(term)
        except ValueError:
            raise PonderError(f"--budgets {text!r}: {term!r} is not a number") from None
        b = Budget(amount, unit)  # checks amount > 0
        if b not in out:
            out.append(b)
    return out


def parse_methods(terms: Sequence[str], sets: Sequence[str], cap: int, seed: int) -> list[MethodSpec]:
    """The methods to compare, checked (names, critics, options) before any model is loaded."""
    from .config import apply_sets, build
    from .critics import parse_critic
    from .search import get_method

    values = apply_sets({}, list(sets))
    out: list[MethodSpec] = []
    for term in terms:
        name, eq, critic = term.partition("=")
        m = get_method(name.strip())
        if eq and not critic.strip():
            raise PonderError(f"--methods {term!r}: no critic after '='")
        critic = critic.strip() or ("verifier" if m.needs_critic else None)
        if critic is not None:
            parse_critic(critic)
        own = values.get(name.strip(), {})
        if not isinstance(own, dict):
            raise PonderError(f"--set {name}: expected {name}.FIELD=VALUE")
        defaults = {f.name: f.default for f in fields(m.config)}
        base = {f: max(cap, defaults[f]) for f in CAPPED if isinstance(defaults.get(f), int)}
        if "seed" in defaults:
            base["seed"] = seed
        cfg = build(m.config, {**base, **own}, name.strip())
        label = name.strip() + (f"={critic}" if eq else "")
        if any(s.label == label for s in out):
            raise PonderError(f"--methods: {label!r} is given twice")
        out.append(MethodSpec(label, name.strip(), critic, cfg))
    unknown = set(values) - {s.name for s in out}
    if unknown:
        raise PonderError(f"--set {', '.join(sorted(unknown))}: not among --methods")
    return out


def _same_run(old: dict, new: dict) -> bool:
    """A run file may grow by methods and budgets, never change what its rows already mean."""
    shared = set(new) - {"configs", "started", "machine"}
    if any(old.get(k) != new[k] for k in shared):
        return False
    return all(old.get("configs", {}).get(k, v) == v for k, v in new["configs"].items())


def run_compare(task: Task, policy, methods: Sequence[MethodSpec], budgets: Sequence[Budget], problems: Sequence[Problem],
                out: Path, critics: dict[str, Any], settings: dict, batch: int = 32, seed: int = 0,
                progress: bool = True, rollout_policy=None) -> list[dict]:
    """Search ``problems`` with every method at every budget, appending rows to ``out`` as batches finish
    (resumed where it stopped); returns the rows of these methods, budgets and problems. ``rollout_policy``:
    the model every method's leaf rollouts come from (None: the policy itself)."""
    from tqdm import tqdm

    from .evaluate import resume_rows, result_row
    from .search import SearchEnv, get_method

    if batch <= 0:
        raise PonderError(f"--batch must be > 0, got {batch}")
    meta = {**settings, "budget_unit": budgets[0].unit, "configs": {m.label: asdict(m.config) for m in methods}}
    rows = resume_rows(out, meta, _same_run)
    meta_path = out.with_name(out.name + ".meta.json")
    old = json.loads(meta_path.read_text())
    if set(meta["configs"]) - set(old.get("configs", {})):  # new methods: the file now also holds theirs
        write_text(meta_path, json.dumps({**old, "configs": {**old.get("configs", {}), **meta["configs"]}}, indent=2))
    done = {(r["method"], r["budget"], r["problem_id"]) for r in rows}
    fh = out.open("a")
    try:
        for m, b in itertools.product(methods, budgets):
            todo = [p for p in problems if (m.label, b.amount, p.id) not in done]
            if not todo:
                continue
            env = SearchEnv(policy, task, critics.get(m.critic), budget=b, rollout_policy=rollout_policy)
            env.seed(seed + len(problems) - len(todo))
            run = get_method(m.name).run
            bar = tqdm(total=len(problems), initial=len(problems) - len(todo), desc=f"{m.label} @ {b.amount:g}",
                       disable=not progress, dynamic_ncols=True)
            for i in range(0, len(todo), batch):
                new = [{**result_row(task, m.label, r), "budget": b.amount, "unit": b.unit, "spent": b.spent(r.compute)}
                       for r in run(todo[i : i + batch], env, m.config)]
                append_lines(fh, [json.dumps(r) + "\n" for r in new])
                rows += new
                bar.update(len(new))
            bar.close()
    finally:
        try:
            fh.close()
        except OSError as e:  # the buffer could not be written either; rows up to the last flush are kept
            raise named(e, out) from None
    want = {(m.label, b.amount) for m, b in itertools.product(methods, budgets)}
    ids = {p.id for p in problems}
    return [r for r in rows if (r["method"], r["budget"]) in want and r["problem_id"] in ids]


@dataclass(frozen=True)
class Cell:
    """One method at one budget: how many problems it solved and what it spent."""

    method: str
    budget: float
    problems: int
    accuracy: float
    stderr: float
    spent: float  # mean per problem, in the budget's unit
    most: float  # the largest one problem spent
    compute: Compute  # mean per problem

    @property
    def seconds(self) -> float:
        return self.compute.seconds


def cells(rows: Sequence[dict], methods: Sequence[str], budgets: Sequence[float]) -> list[Cell]:
    out = []
    for m, b in itertools.product(methods, budgets):
        rs = [r for r in rows if r["method"] == m and r["budget"] == b]
        if not rs:
            continue
        n = len(rs)
        acc = sum(r["correct"] for r in rs) / n
        total = Compute.total(Compute(**r["compute"]) for r in rs)
        mean = Compute(*(getattr(total, f.name) / n for f in fields(Compute)))
        out.append(Cell(m, b, n, acc, math.sqrt(acc * (1 - acc) / n), sum(r["spent"] for r in rs) / n,
                        max(r["spent"] for r in rs), mean))
    return out


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> tuple[int, int, float]:
    """(solved by a only, by b only, two-sided exact p-value) over paired outcomes."""
    from scipy.stats import binomtest

    only_a = sum(x and not y for x, y in zip(a, b))
    only_b = sum(y and not x for x, y in zip(a, b))
    p = binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return only_a, only_b, float(p)


def pairs(rows: Sequence[dict], methods: Sequence[str], budgets: Sequence[float]) -> list[tuple[float, str, str, int, int, float]]:
    """McNemar's test between every two methods at each budget, on the problems both have rows for."""
    by = {(r["method"], r["budget"], r["problem_id"]): bool(r["correct"]) for r in rows}
    out = []
    for b in budgets:
        for x, y in itertools.combinations(methods, 2):
            ids = sorted({pid for (m, bb, pid) in by if m == x and bb == b} & {pid for (m, bb, pid) in by if m == y and bb == b})
            if ids:
                out.append((b, x, y, *mcnemar([by[x, b, i] for i in ids], [by[y, b, i] for i in ids])))
    return out


def _amount(x: float, unit: str) -> str:
    return f"{x:,.0f}" if unit == "tokens" else f"{x:.3g}"


def table(rows: Sequence[dict], methods: Sequence[str], budgets: Sequence[float], unit: str) -> str:
    """The markdown tables: every cell, then the paired tests."""
    lines = [f"| method | budget ({unit}) | problems | solved | mean spent | most spent / budget | tokens generated "
             "| tokens read | FLOPs | seconds / problem |", "|---|---|---|---|---|---|---|---|---|---|"]
    for c in cells(rows, methods, budgets):
        lines.append(
            f"| {c.method} | {_amount(c.budget, unit)} | {c.problems} | {100 * c.accuracy:.1f}% ± {100 * c.stderr:.1f} "
            f"| {_amount(c.spent, unit)} | {c.most / c.budget:.2f} | {c.compute.tokens_generated:,.0f} "
            f"| {c.compute.tokens_read:,.0f} | {c.compute.flops:.3g} | {c.seconds:.2f} |")
    tests = pairs(rows, methods, budgets)
    if tests:
        lines += ["", f"| budget ({unit}) | A | B | solved by A only | by B only | p (McNemar, exact) |", "|---|---|---|---|---|---|"]
        lines += [f"| {_amount(b, unit)} | {x} | {y} | {na} | {nb} | {p:.3g} |" for b, x, y, na, nb, p in tests]
    return "\n".join(lines)


def plot(rows: Sequence[dict], methods: Sequence[str], budgets: Sequence[float], unit: str, path: Path) -> Path:
    """Solve rate against mean spend (left) and seconds per problem (right), one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cs = cells(rows, methods, budgets)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for m in methods:
        mine = sorted((c for c in cs if c.method == m), key=lambda c: c.budget)
        if not mine:
            continue
        acc = [100 * c.accuracy for c in mine]
        err = [100 * c.stderr for c in mine]
        axes[0].errorbar([c.spent for c in mine], acc, yerr=err, marker="o", capsize=3, label=m)
        axes[1].errorbar([c.seconds for c in mine], acc, yerr=err, marker="o", capsize=3, label=m)
    axes[0].set_xlabel(f"mean {'generated tokens' if unit == 'tokens' else 'forward FLOPs'} per problem")
    axes[1].set_xlabel("seconds per problem")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_ylabel("solved (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"solve rate at matched budgets ({unit})")
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path


__all__ = ["CAPPED", "Cell", "MethodSpec", "cells", "mcnemar", "pairs", "parse_budgets", "parse_methods", "plot",
           "run_compare", "table"]
