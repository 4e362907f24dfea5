"""Phase 1, **imagine**: each iteration's training problems, never a test or a validation one."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Callable

from ..errors import PonderError
from ..imagination import Written, parse_imagine, reference_index, write_problems
from ..io import read_rows, write_jsonl
from ..tasks import Problem, Task
from .config import ImproveConfig
from .run import problem_rows, say

if TYPE_CHECKING:
    from .improver import Improver


def imagine(imp: Improver, i: int) -> dict:
    """Iteration i's training problems, written to ``iter-I/problems.jsonl``; returns the phase's record.

    With ``--imagine model[:SPEC]`` a model writes them (``written_problems``; every candidate's verdict in
    ``iter-I/imagined.jsonl``); where it writes nothing usable the iteration falls back to the train split."""
    mode, _ = parse_imagine(imp.cfg.imagine)
    fresh, record = imp.new_problems, {}
    if mode == "model":
        written = written_problems(imp, i)
        record["imagined"] = {"writer": imp.cfg.imagine, **written.record()}
        if written.problems:
            fresh = lambda i, used: [p for p in written.problems if p.question not in used]  # noqa: E731
        else:
            say(f"iteration {i}: --imagine {imp.cfg.imagine} wrote nothing usable ({written.summary()}); "
                "falling back to the train split")
            record["imagined"]["fell_back"] = True
    try:
        problems, again = training_problems(imp, i, fresh)
    except PonderError as e:
        if "fell_back" not in record.get("imagined", {}):
            raise
        raise PonderError(f"--imagine {imp.cfg.imagine} wrote nothing usable in iteration {i} ({written.summary()}), "
                          f"and the train split has nothing to fall back on ({e})") from None
    write_jsonl(imp.run.it(i) / "problems.jsonl", [p.to_dict() for p in problems])
    return {"problems": len(problems), "searched_again": again, **record}


def written_problems(imp: Improver, i: int) -> Written:
    """Iteration i's problems written by the policy (``--imagine model``) or by ``--imagine model:SPEC``,
    few-shot from the train split (validation problems never shown), each kept only if it passes the
    filters of ``--set imagination.FIELD=VALUE`` (``ponder.imagination``). The overlap filter's references:
    the test split, the validation problems (and the task's validation split, where it has one), the
    training examples the writer may be shown, and every problem of earlier iterations. Candidates and
    their verdicts go to ``iter-I/imagined.jsonl`` as they are judged; a resumed run reuses them."""
    from ..models import load_policy

    cfg, task = imp.cfg, imp.task
    _, spec = parse_imagine(cfg.imagine)
    solver = imp.policy(imp.start_policy(i))
    if spec is None:
        writer = solver
    else:
        if imp.writer is None or imp.writer[0] != spec:
            imp.writer = (spec, load_policy(spec, device=cfg.device, seed=cfg.seed))
        writer = imp.writer[1]
    val = {p.question for p in imp.val}
    seeds = [p for p in task.problems("train") if p.question not in val]
    if not seeds:
        raise PonderError(f"--imagine {cfg.imagine}: no training example is left to show the writer: the train split's "
                          f"{len(task.problems('train'))} problems are all validation problems (--validation {cfg.validation})")
    earlier = []
    for j in range(1, i):
        earlier += [(f"earlier:{p.id}", p.question) for p in problem_rows(imp.run.it(j) / "problems.jsonl")]
        earlier += [(f"earlier:{r['id']}", r["question"]) for r in read_rows(imp.run.it(j) / "imagined.jsonl")
                    if r["verdict"] == "kept"]
    overlap = reference_index(task, cfg.imagination.ngram, imp.val, seeds, earlier)
    out = imp.run.it(i) / "imagined.jsonl"
    if out.exists():
        say(f"iteration {i}: resuming imagination: {len(read_rows(out))} candidates already judged in {out}")
    written = write_problems(writer, solver, task, cfg.imagination, cfg.problems, seeds, overlap, out,
                             tag=f"imagined-{i}", say=say)
    say(f"iteration {i}: imagination by {writer.name}: {written.summary()}")
    return written


def training_problems(imp: Improver, i: int, fresh=None) -> tuple[list[Problem], int]:
    """Iteration i's training problems and how many of them are earlier ones searched again.

    Fresh problems (``fresh(i, used)``, by default ``imp.new_problems``) while any are left; then earlier
    iterations' problems again, those no search has solved yet first, least recently searched first: a
    long run goes on with what the policy still gets wrong instead of stopping."""
    used = {p.question for p in imp.val}
    last: dict[str, tuple[int, Problem]] = {}  # question -> (last iteration that searched it, problem)
    solved: set[str] = set()
    for j in range(1, i):
        solved |= {r["question"] for r in read_rows(imp.run.it(j) / "search.jsonl") if r.get("correct")}
        for p in problem_rows(imp.run.it(j) / "problems.jsonl"):
            last[p.question] = (j, p)
    problems = (fresh or imp.new_problems)(i, used | set(last))
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

    Tasks that can imagine make new problems (never a test one) under ``--imagine auto``; others, and every
    task under ``--imagine split``, draw from the train split, which is also where ``--imagine model``
    takes its validation problems, its few-shot examples and its fallback from.
    Either way validation problems and earlier iterations' problems are never handed out again; the
    function returns fewer than ``cfg.problems`` once no fresh problem is left (Game of 24 with
    numbers 1-13 has only 1,262 puzzles outside the test split), and ``training_problems`` tops the rest up.
    """
    mode, _ = parse_imagine(cfg.imagine)
    if mode == "model" and not task.votable:
        raise PonderError(f"--imagine {cfg.imagine}: {task.name}'s answers are not voted on, so a written problem "
                          "gets no pseudo-reference; use --imagine auto or split")
    if mode == "auto" and type(task).imagine is not Task.imagine:
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
    try:
        pool = task.problems("train")
    except PonderError as e:
        if mode != "model":
            raise
        raise PonderError(f"--imagine {cfg.imagine} shows the writer training examples and holds validation problems "
                          f"out of the train split, and {e}; give your own problems with --data FILE") from None
    random.Random(cfg.seed).shuffle(pool)
    val = pool[: cfg.validation]

    def from_split(i: int, used: set[str]) -> list[Problem]:
        return [p for p in pool[cfg.validation :] if p.question not in used][: cfg.problems]

    return val, from_split
