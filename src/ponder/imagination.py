"""Imagination written by a model (AlphaLLM's imagine step): a model writes new training problems few-shot
from training examples, and each candidate is kept only if it passes three filters, in order:

1. **format**: its length in characters, that it asks something (a ``?``, or a find / calculate / how ...),
   that it states at least ``min_numbers`` numbers, that it does not give its own answer away (``answer
   is``, ``####``, ``\\boxed``, ``Solution:``), and that the task parses it;
2. **overlap**: the share of its word n-grams (lower case, every number one placeholder, so a test problem
   with its numbers changed is the same text) found in any *one* reference problem, the test and
   validation splits, the training examples the writer is shown and every earlier problem, must not exceed
   ``max_overlap``; a test problem with a name changed keeps most of its n-grams and is caught too;
3. **answerability**: m solutions sampled from the policy (one batched call for a whole batch of
   candidates), the task's answer extraction on each; kept only if the majority answer holds at least
   ``min_agreement`` of the m (a tie for first place is no majority). The majority answer becomes the
   problem's pseudo-reference, which the verifier then checks against, as in AlphaLLM.

Every candidate's verdict (the filter that rejected it and why, or its pseudo-answer and agreement) is
appended to a JSONL file as its batch is judged, so a writer that fails mid-way (a server that drops)
loses at most the batch in flight, and ``write_problems`` on the same file continues where it stopped.
The writer's and the solver's compute are counted per candidate.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

from .compute import Compute
from .config import check_positive, option
from .errors import PonderError
from .io import append_lines, read_rows
from .models.base import SamplingParams
from .tasks import Problem, Task

#: what ``--imagine`` takes (SPEC: a model folder, a .gguf file, smollm2 or an openai: server spec)
IMAGINE_CHOICES = ("auto", "split", "model", "model:SPEC")
#: the filters in the order they judge a candidate
FILTERS = ("format", "overlap", "answerability")
IMAGINE_HELP = (
    "where each iteration's training problems come from: auto (the task's own generator where it has one, "
    "else the train split), split (the train split), model (the policy writes them few-shot from training "
    "examples, each kept only if it passes the filters of --set imagination.FIELD=VALUE; the majority answer "
    "of m solutions becomes its reference), or model:SPEC (another model writes them: a model folder, a .gguf "
    "file, smollm2 or openai:URL)")


def parse_imagine(value) -> tuple[str, str | None]:
    """``--imagine`` as (mode, writer spec): ``"model:smollm2"`` -> ("model", "smollm2"); anything else
    than the choices is a one-line ``PonderError`` listing them."""
    if value in ("auto", "split", "model"):
        return value, None
    if isinstance(value, str) and value.startswith("model:") and value[len("model:"):].strip():
        return "model", value[len("model:"):].strip()
    raise PonderError(f"--imagine: {value!r} is not one of {', '.join(IMAGINE_CHOICES)} (SPEC: a model folder, "
                      "a .gguf file, smollm2 or openai:URL)")


@dataclass
class ImagineConfig:
    """Problems written by a model (--imagine model[:SPEC]): how they are written and the filters that keep them."""

    candidates: int | None = option(None, "most candidates written per iteration (None: 4 x --problems)")
    batch: int = option(16, "candidates written together in one call of the writer, and solved together in one call "
                            "of the policy")
    shots: int = option(4, "training examples shown to the writer in each prompt, drawn at random")
    write_tokens: int = option(160, "most tokens the writer spends on one candidate")
    write_temperature: float = option(1.0, "the writer's sampling temperature")
    top_p: float = option(0.95, "the writer's nucleus sampling mass")
    min_chars: int = option(40, "format filter: fewest characters of a problem")
    max_chars: int = option(1000, "format filter: most characters of a problem (GSM8K's longest is 985)")
    min_numbers: int = option(1, "format filter: fewest numbers a problem states, in digits (2% of GSM8K's "
                                 "training problems state theirs only in words)")
    ngram: int = option(3, "overlap filter: n of the word n-grams compared")
    max_overlap: float = option(
        0.4, "overlap filter: most share of a candidate's n-grams found in any one reference problem (test, "
        "validation, the training examples shown, earlier problems); of 1,000 GSM8K training problems against the "
        "test split, 99.9% share at most 0.38 with their nearest test problem")
    solutions: int = option(4, "answerability filter: m, solutions sampled from the policy per candidate")
    solve_tokens: int = option(256, "answerability filter: most tokens of one solution")
    solve_temperature: float = option(0.7, "answerability filter: temperature of the solutions")
    min_agreement: float = option(0.5, "answerability filter: least share of the m solutions that must give the "
                                       "majority answer (a tie for first place is no majority)")
    seed: int = option(0, "seed of which training examples each prompt shows")

    def __post_init__(self):
        check_positive(self, "batch", "shots", "write_tokens", "min_chars", "max_chars", "ngram", "solutions",
                       "solve_tokens")
        if self.candidates is not None:
            check_positive(self, "candidates")
        if self.min_numbers < 0:
            raise PonderError(f"imagination.min_numbers must be >= 0, got {self.min_numbers}")
        if self.min_chars > self.max_chars:
            raise PonderError(f"imagination.min_chars ({self.min_chars}) is above imagination.max_chars ({self.max_chars})")
        for name in ("max_overlap", "min_agreement"):
            if not 0 <= getattr(self, name) <= 1:
                raise PonderError(f"imagination.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.write_temperature < 0 or self.solve_temperature < 0:
            raise PonderError("imagination.write_temperature and solve_temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise PonderError(f"imagination.top_p must be in (0, 1], got {self.top_p}")


# --- the format filter ------------------------------------------------------------------------------
_LABEL = re.compile(r"^\s*(?:[*#]+\s*)?(?:here\s+is\s+)?(?:an?\s+)?(?:new\s+)?(?:math\s+)?(?:word\s+)?"
                    r"(?:problem|question)\s*\d*\s*[:.)]\s*(?:\*+)?", re.IGNORECASE)
_LEAK = re.compile(r"answer\s*(?:is\b|:)|####|\\boxed|solution\s*:|step\s*1\s*:", re.IGNORECASE)
_ASKS = re.compile(r"\?|\b(?:find|compute|calculate|determine|evaluate|simplify|solve|express|what|how|which)\b",
                   re.IGNORECASE)
_NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")


def parse_written(text: str) -> str:
    """The problem in a writer's output: its first paragraph (blank lines apart) with a question mark (else
    the first that asks something: find, what ...), after
    any label (``Problem 5:``, ``**New problem:**``); a chat model's preamble ("Here is a new problem:") and
    what follows the problem (a solution, more problems) are not part of it. With no paragraph asking
    anything, the first one (which the format filter then rejects)."""
    paragraphs = [_LABEL.sub("", p.strip(), count=1).strip().strip("*").strip()
                  for p in re.split(r"\n\s*\n", text.strip())]
    paragraphs = [p for p in paragraphs if p and not p.endswith(":")]
    asking = [p for p in paragraphs if "?" in p] or [p for p in paragraphs if _ASKS.search(p)] or paragraphs
    return asking[0] if asking else ""


def format_verdict(question: str, task: Task, cfg: ImagineConfig) -> str | None:
    """Why the format filter rejects ``question``, or None if it passes."""
    if not question:
        return "empty"
    if len(question) < cfg.min_chars:
        return f"{len(question)} characters, fewer than min_chars {cfg.min_chars}"
    if len(question) > cfg.max_chars:
        return f"{len(question)} characters, more than max_chars {cfg.max_chars}"
    if m := _LEAK.search(question):
        return f"gives its answer away ({m.group(0)!r})"
    if not _ASKS.search(question):
        return "asks nothing (no '?', no find / calculate / what / how ...)"
    if len(_NUMBER.findall(question)) < cfg.min_numbers:
        return f"states {len(_NUMBER.findall(question))} numbers, fewer than min_numbers {cfg.min_numbers}"
    try:
        task.parse_problem(question)
    except PonderError as e:
        return f"does not parse ({e})"
    return None


# --- the overlap filter -----------------------------------------------------------------------------
_WORD = re.compile(r"<n>|[a-z]+")


def words(text: str) -> list[str]:
    """Lower-case words with every number one placeholder ``<n>``: ``"Tom has 3,500 apples."`` ->
    ``["tom", "has", "<n>", "apples"]``."""
    return _WORD.findall(_NUMBER.sub(" <n> ", text.lower()))


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """The distinct word n-grams of ``text`` (the whole text as one, if it has fewer than n words)."""
    w = words(text)
    if len(w) < n:
        return {tuple(w)} if w else set()
    return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}


class Overlap:
    """An index of reference problems by word n-gram: ``nearest(text)`` is the reference sharing the
    largest share of ``text``'s n-grams, and that share."""

    def __init__(self, n: int = 3):
        self.n = n
        self.names: list[str] = []
        self.index: dict[tuple[str, ...], list[int]] = defaultdict(list)

    def __len__(self) -> int:
        return len(self.names)

    def add(self, name: str, text: str) -> None:
        j = len(self.names)
        self.names.append(name)
        for g in ngrams(text, self.n):
            self.index[g].append(j)

    def nearest(self, text: str) -> tuple[float, str | None]:
        """(share of ``text``'s n-grams found in the reference that shares most, that reference's name)."""
        grams = ngrams(text, self.n)
        counts: Counter[int] = Counter()
        for g in grams:
            counts.update(self.index.get(g, ()))
        if not grams or not counts:
            return 0.0, None
        j, c = counts.most_common(1)[0]
        return c / len(grams), self.names[j]


def reference_index(task: Task, n: int, validation: Sequence[Problem], shown: Sequence[Problem],
                    earlier: Sequence[tuple[str, str]] = ()) -> Overlap:
    """The overlap filter's references: the task's test split and its validation split (where it has one),
    the ``validation`` problems held out of the train split, the training examples the writer may be
    ``shown``, and ``earlier`` problems as (name, text)."""
    ov = Overlap(n)
    for split in ("test", "validation"):
        try:
            refs = task.problems(split)
        except PonderError:  # a task without this split
            continue
        for p in refs:
            ov.add(f"{split}:{p.id}", p.question)
    for p in validation:
        ov.add(f"validation:{p.id}", p.question)
    for p in shown:
        ov.add(f"train:{p.id}", p.question)
    for name, text in earlier:
        ov.add(name, text)
    return ov


# --- the answerability filter -----------------------------------------------------------------------
@dataclass(frozen=True)
class Vote:
    """The m solutions' answers (None: a solution gave none) and their majority."""

    answers: tuple[str | None, ...]
    answer: str | None  # the majority answer; None if no solution gave one or two answers tie for first
    share: float  # the majority answer's share of all m solutions
    tie: bool = False


def vote(answers: Sequence[str | None]) -> Vote:
    """The majority of ``answers``; its share counts solutions without an answer against it."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return Vote(tuple(answers), None, 0.0)
    ranked = counts.most_common()
    best, c = ranked[0]
    tie = len(ranked) > 1 and ranked[1][1] == c
    return Vote(tuple(answers), None if tie else best, c / len(answers), tie)


def answerability_verdict(v: Vote, cfg: ImagineConfig) -> str | None:
    """Why the answerability filter rejects a candidate with vote ``v``, or None if it passes."""
    m = len(v.answers)
    if not any(a is not None for a in v.answers):
        return f"none of the {m} solutions gave an answer"
    top = Counter(a for a in v.answers if a is not None).most_common(2)
    if v.share < cfg.min_agreement:
        return (f"the most common answer, {top[0][0]}, has {v.share:.2f} of the {m} solutions, below min_agreement "
                f"{cfg.min_agreement}")
    if v.tie:
        return f"no majority: {top[0][0]} and {top[1][0]} tie at {top[0][1]} of {m}"
    return None


# --- writing ----------------------------------------------------------------------------------------
class WritingPrompt:
    """The writer's few-shot prompt, in the shape ``Policy.render`` reads a task (``prompt`` for plain
    models, ``chat_messages`` where the model has a chat template); the examples are in ``problem.meta["shots"]``."""

    name = "imagine"

    @staticmethod
    def _examples(problem: Problem) -> str:
        return "".join(f"Problem {j}: {q.strip()}\n\n" for j, q in enumerate(problem.meta["shots"], 1))

    def prompt(self, problem: Problem) -> str:
        n = len(problem.meta["shots"]) + 1
        return f"Here are problems, each a new one of the same kind.\n\n{self._examples(problem)}Problem {n}:"

    def chat_messages(self, problem: Problem) -> list[dict[str, str]]:
        return [{"role": "user", "content": (
            f"Here are some example problems.\n\n{self._examples(problem)}Write one new problem of the same kind, with "
            "other people, things and numbers, that has a single final answer. Write only the problem: no solution, "
            "no answer.")}]


WRITING = WritingPrompt()


@dataclass
class Written:
    """What ``write_problems`` gives: the kept problems (pseudo-references set), every candidate's row
    (this call's and earlier calls' on the same file), rejections per filter, and the compute spent."""

    problems: list[Problem]
    rows: list[dict]
    rejected: dict[str, int]
    write: Compute = field(default_factory=Compute)
    solve: Compute = field(default_factory=Compute)

    @property
    def candidates(self) -> int:
        return len(self.rows)

    def summary(self) -> str:
        """One line: how many candidates, which filter took how many, how many were kept."""
        took = ", ".join(f"{f} rejected {self.rejected[f]}" for f in FILTERS)
        return f"{self.candidates} candidates: {took}; {sum(r['verdict'] == 'kept' for r in self.rows)} kept"

    def record(self) -> dict:
        """The phase record's part: counts, and the writer's and the solver's compute."""
        total = self.write + self.solve
        return {"candidates": self.candidates, "kept": sum(r["verdict"] == "kept" for r in self.rows),
                "used": len(self.problems), "rejected": dict(self.rejected), "write": self.write.to_dict(),
                "solve": self.solve.to_dict(), "tokens_generated": total.tokens_generated,
                "tokens_read": total.tokens_read, "seconds": round(total.seconds, 2)}


def _compute(d: dict | None) -> Compute:
    return Compute(**d) if d else Compute()


def _kept_problem(row: dict) -> Problem:
    return Problem(row["id"], row["question"], row["reference"],
                   {"imagined": True, "agreement": row["agreement"], "answers": row["answers"]})


def write_problems(writer, solver, task: Task, cfg: ImagineConfig, want: int, seeds: Sequence[Problem],
                   overlap: Overlap, out: str | Path, tag: str = "imagined", limit: int | None = None,
                   say: Callable[[str], None] | None = None) -> Written:
    """Up to ``want`` new problems written by ``writer`` (a ``Policy``) few-shot from ``seeds``, each kept only
    if it passes the three filters (module docstring); ``solver`` (the policy) samples the m solutions.

    ``overlap`` holds the reference problems (test, validation, seeds, earlier problems); kept problems join
    it, so a later candidate may not repeat one. At most ``limit`` candidates (default ``cfg.candidates``, else
    4 x ``want``) are written in all, counting those already in ``out``: rows found there (an interrupted
    earlier call) are kept, their kept problems reused and their compute counted, and writing continues with
    the next batch. Each batch's rows are appended to ``out`` as soon as the batch is judged.
    """
    if not seeds:
        raise PonderError("imagination: no training example to show the writer")
    shots_per_prompt = min(cfg.shots, len(seeds))
    limit = limit or cfg.candidates or 4 * want
    out = Path(out)
    rows = read_rows(out)
    for r in rows:
        if r["verdict"] == "kept":
            overlap.add(f"earlier:{r['id']}", r["question"])
    batch_no = max((r["batch"] for r in rows), default=-1) + 1
    write_params = SamplingParams(cfg.write_temperature, cfg.top_p, cfg.write_tokens, stop=())
    solve_params = SamplingParams(cfg.solve_temperature, 1.0, cfg.solve_tokens, stop=())
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as fh:
        while sum(r["verdict"] == "kept" for r in rows) < want and len(rows) < limit:
            t0 = time.perf_counter()
            rng = random.Random(f"imagine-{cfg.seed}-{tag}-{batch_no}")
            n = min(cfg.batch, limit - len(rows))
            shots = [rng.sample(range(len(seeds)), shots_per_prompt) for _ in range(n)]
            prompts = [writer.render(WRITING, Problem(f"{tag}-write", "", meta={"shots": [seeds[j].question for j in s]}))
                       for s in shots]
            # a plain prompt's problem ends at the blank line before the next "Problem N:"; a chat model's
            # answer may put a label and a blank line first, so it runs to its end (or write_tokens)
            plain = prompts[0].endswith(WRITING.prompt(Problem("", "", meta={"shots": [seeds[j].question for j in shots[0]]})))
            written = writer.sample(prompts, 1, replace(write_params, stop=("\n\n",)) if plain else write_params)
            new: list[dict] = []
            pending = Overlap(cfg.ngram)  # this batch's survivors so far: two copies of one problem are one problem
            for c, (s, [step], comp) in enumerate(zip(shots, written.steps, written.compute)):
                q = parse_written(step.text)
                row = {"id": f"{tag}-{len(rows) + c}", "batch": batch_no, "text": step.text, "question": q,
                       "shots": [seeds[j].id for j in s], "verdict": "kept", "why": None, "write": comp.to_dict()}
                why = format_verdict(q, task, cfg)
                if why:
                    row.update(verdict="format", why=why)
                else:
                    share, near = max(overlap.nearest(q), pending.nearest(q), key=lambda x: x[0])
                    row["overlap"] = {"share": round(share, 3), "with": near}
                    if share > cfg.max_overlap:
                        row.update(verdict="overlap", why=f"{share:.2f} of its {cfg.ngram}-grams are in {near}, above "
                                                          f"max_overlap {cfg.max_overlap}")
                    else:
                        pending.add(f"earlier:{row['id']}", q)
                new.append(row)
            judged = [r for r in new if r["verdict"] == "kept"]
            if judged:
                problems = [Problem(r["id"], r["question"]) for r in judged]
                solved = solver.sample([solver.render(task, p) for p in problems], cfg.solutions, solve_params)
                for r, p, sols, comp in zip(judged, problems, solved.steps, solved.compute):
                    v = vote([task.answer(p, task.split_steps(s.text)) for s in sols])
                    r.update(answers=list(v.answers), reference=v.answer, agreement=round(v.share, 3),
                             solve=comp.to_dict())
                    why = answerability_verdict(v, cfg)
                    if why:
                        r.update(verdict="answerability", why=why)
                    else:
                        overlap.add(f"earlier:{r['id']}", r["question"])
            append_lines(fh, [json.dumps(r) + "\n" for r in new])
            rows += new
            batch_no += 1
            if say:
                kept = sum(r["verdict"] == "kept" for r in new)
                say(f"imagine: batch {batch_no}: {kept} of {n} candidates kept ({time.perf_counter() - t0:.0f} s); "
                    f"{sum(r['verdict'] == 'kept' for r in rows)} of {want} so far")
    rejected = {f: sum(r["verdict"] == f for r in rows) for f in FILTERS}
    kept = [_kept_problem(r) for r in rows if r["verdict"] == "kept"][:want]
    return Written(kept, rows, rejected, Compute.total(_compute(r.get("write")) for r in rows),
                   Compute.total(_compute(r.get("solve")) for r in rows))
