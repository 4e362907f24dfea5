"""Phase 1, **imagine**: each iteration's training problems, never a test or a validation one."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Callable

from ..errors import PonderError
from ..io import read_rows, write_jsonl
from ..tasks import Problem, Task
from .config import ImproveConfig
from .run import problem_rows, say

if TYPE_CHECKING:
    from .improver import Improver


def imagine(imp: Improver, i: int) -> dict:
    """Iteration i's training problems, written to ``iter-I/problems.jsonl``; returns the phase's record."""
    problems, again = training_problems(imp, i)
    write_jsonl(imp.run.it(i) / "problems.jsonl", [p.to_dict() for p in problems])
    return {"problems": len(problems), "searched_again": again}


def training_problems(imp: Improver, i: int) -> tuple[list[Problem], int]:
    """Iteration i's training problems and how many of them are earlier ones searched again.

    Fresh problems while any are left; then earlier iterations' problems again, those no search has
    solved yet first, least recently searched first: a long run goes on with what the policy still
    gets wrong instead of stopping."""
    used = {p.question for p in imp.val}
    last: dict[str, tuple[int, Problem]] = {}  # question -> (last iteration that searched it, problem)
    solved: set[str] = set()
    for j in range(1, i):
        solved |= {r["question"] for r in read_rows(imp.run.it(j) / "search.jsonl") if r.get("correct")}
        for p in problem_rows(imp.run.it(j) / "problems.jsonl"):
            last[p.question] = (j, p)
    problems = imp.new_problems(i, used | set(last))
    if len(problems) == imp.cfg.problems:
        return problems, 0
    order = sorted(last, key=lambda q: (q in solved, last[q][0]))
    again = [last[q][1] for q in order][: imp.cfg.problems - len(problems)]
    if not problems and not again:
        raise PonderError(f"{imp.task.name}: no training problem left for iteration {i}")
    say(f"iteration {i}: {len(problems)} fresh problems left; {len(again)} earlier ones are searched again "
        f"(unsolved first)")
    return problems + again, len(again)


def held_out(task: Task, cfg: ImproveConfig) -> tuple[list[Problem], Callable[[int, set[str]], list[Problem]]]:
    """The validation problems and a function giving iteration i's training problems.

    Tasks that can imagine make new problems (never a test one); others draw from the train split.
    Either way validation problems and earlier iterations' problems are never handed out again; the
    function returns fewer than ``cfg.problems`` once no fresh problem is left (Game of 24 with
    numbers 1-13 has only 1,262 puzzles outside the test split), and ``training_problems`` tops the rest up.
    """
    if type(task).imagine is not Task.imagine:
        val = task.imagine(cfg.validation, seed=cfg.seed * 7919 + 1) if cfg.validation else []

        def imagined(i: int, used: set[str]) -> list[Problem]:
            out: list[Problem] = []
            for attempt in range(20):  # fresh seeds until enough unused problems turn up
                seen = used | {p.question for p in out}
                out += [p for p in task.imagine(cfg.problems * 2, cfg.seed * 7919 + 100 + i + 1000 * attempt)
                        if p.question not in seen][: cfg.problems - len(out)]
                if len(out) == cfg.problems:
                    break
            return out

        return val, imagined
    pool = task.problems("train")
    random.Random(cfg.seed).shuffle(pool)
    val = pool[: cfg.validation]

    def from_split(i: int, used: set[str]) -> list[Problem]:
        return [p for p in pool[cfg.validation :] if p.question not in used][: cfg.problems]

    return val, from_split
