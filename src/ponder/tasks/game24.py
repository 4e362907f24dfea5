"""Game of 24: combine four numbers with + - * / into 24, one operation per step.

A step is one operation on two of the remaining numbers, written ``4 + 8 = 12 (left: 1 6 12)``.
The model writes the action (``4 + 8``) and, unless ``free_text``, the task writes its observation
(`` = 12 (left: 1 6 12)``), as a calculator would; ``legal_actions`` lists every legal operation, so a
search can score them all. The "left" list is, where the task writes it, the numbers left in ascending order: one
text per state whichever pair was combined, which a critic learns far better from (a value head trained on exact
labels ranks the states one step from unseen puzzles at AUC 0.87 sorted, 0.80 unsorted; ``bench/learnability.py``).
In free text the model writes it, and it is the untouched numbers in their current order, then the result, so a
model copies rather than sorts. Any order is legal. Arithmetic is exact (``fractions.Fraction``), so ``6 / (1 - 3/4)``
works. The puzzles are the 1,362 of Tree of Thoughts (ranked by human solving time); train = ranks
1-900, test = ranks 901-1000, the 100 puzzles ToT reports on. Ranks 1001-1362 belong to neither.

No human or solver-made solution is ever used for training: ``bootstrap_texts`` writes *random
legal* traces, and ``solve`` (brute force) exists only for analysis and the "oracle" benchmark row.
"""

from __future__ import annotations

import csv
import functools
import itertools
import random
import re
from abc import abstractmethod
from fractions import Fraction
from importlib import resources
from pathlib import Path
from typing import Sequence

from ..errors import PonderError
from .base import Problem, Split, Task

TARGET = Fraction(24)
OPS = "+-*/"
_NUM = r"-?\d+(?:\.\d+)?(?:/\d+)?"
_STEP = re.compile(rf"^\s*({_NUM})\s+([-+*/×÷xX])\s+({_NUM})\s*=\s*({_NUM})\s*\(\s*left\s*:\s*([^)]*)\)\s*$")
_ACTION = re.compile(rf"^\s*({_NUM})\s+([-+*/×÷xX])\s+({_NUM})\s*=?\s*$")
_OP_ALIASES = {"×": "*", "x": "*", "X": "*", "÷": "/"}


def fmt(x: Fraction) -> str:
    return str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"


def apply(a: Fraction, op: str, b: Fraction) -> Fraction | None:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return a / b if b != 0 else None


def format_step(a: Fraction, op: str, b: Fraction, left: Sequence[Fraction]) -> str:
    return f"{fmt(a)} {op} {fmt(b)} = {fmt(apply(a, op, b))} (left: {' '.join(fmt(x) for x in left)})\n"


def parse_step(line: str) -> tuple[Fraction, str, Fraction, Fraction, list[Fraction]] | None:
    """``(a, op, b, result, left)`` of a step line, or None if it is not a step."""
    m = _STEP.match(line)
    if not m:
        return None
    try:
        a, b, r = (Fraction(m.group(i)) for i in (1, 3, 4))
        left = [Fraction(t) for t in m.group(5).split()]
    except (ValueError, ZeroDivisionError):
        return None
    return a, _OP_ALIASES.get(m.group(2), m.group(2)), b, r, left


def take(numbers: Sequence[Fraction], *wanted: Fraction) -> list[Fraction] | None:
    """``numbers`` without one occurrence of each wanted number, or None if one is missing."""
    rest = list(numbers)
    for w in wanted:
        if w not in rest:
            return None
        rest.remove(w)
    return rest


def apply_step(numbers: Sequence[Fraction], line: str) -> list[Fraction] | None:
    """The numbers left after a legal step, or None if the step is illegal.

    Legal = both operands are available (distinct occurrences), the result is right, and the
    "left" list is exactly the untouched numbers plus the result (in any order).
    """
    parsed = parse_step(line)
    if parsed is None:
        return None
    a, op, b, r, left = parsed
    rest = take(numbers, a, b)
    if rest is None or apply(a, op, b) != r:
        return None
    after = rest + [r]
    return after if sorted(after) == sorted(left) else None


def replay(puzzle: Sequence[Fraction], steps: Sequence[str]) -> list[Fraction] | None:
    """The numbers left after all steps, or None at the first illegal step."""
    numbers: list[Fraction] | None = list(puzzle)
    for s in steps:
        numbers = apply_step(numbers, s)
        if numbers is None:
            return None
    return numbers


@functools.lru_cache(maxsize=200_000)
def _solve(key: tuple[Fraction, ...], target: Fraction = TARGET) -> tuple[str, ...] | None:
    """Solution steps from the sorted numbers ``key`` to ``target``, or None (depth-first, memoised)."""
    if len(key) == 1:
        return () if key[0] == target else None
    for i, j in itertools.permutations(range(len(key)), 2):
        rest = [x for k, x in enumerate(key) if k not in (i, j)]
        for op in OPS:
            r = apply(key[i], op, key[j])
            if r is None:
                continue
            tail = _solve(tuple(sorted(rest + [r])), target)
            if tail is not None:
                return (format_step(key[i], op, key[j], rest + [r]),) + tail
    return None


def solve(numbers: Sequence[Fraction | int], target: Fraction | int = TARGET) -> list[str] | None:
    """Brute-force solution steps from these numbers to ``target`` (24 unless given), or None. For analysis
    and oracles only."""
    out = _solve(tuple(sorted(Fraction(x) for x in numbers)), Fraction(target))
    return None if out is None else list(out)


def reachable(numbers: Sequence[Fraction | int], target: Fraction | int) -> bool:
    """Whether some expression over all of ``numbers`` (each once; + - * /, exact) equals ``target``: the
    brute-force yes/no that ``solve`` answers with steps, about 10x faster (2 ms for four numbers 1-99
    against 18 ms), for building Countdown's held-out splits. For analysis only, like ``solve``.

    Meet in the middle: the values every part of the numbers can make (each part split in two in every
    way, its halves' values combined), then for each split of all the numbers in two, whether a value of
    one half and a value of the other combine to the target."""
    xs, t = [Fraction(x) for x in numbers], Fraction(target)
    if len(xs) == 1:
        return xs[0] == t
    memo: dict[int, set[Fraction]] = {}

    def values(mask: int) -> set[Fraction]:  # mask: which of xs the part holds
        if mask not in memo:
            if mask & (mask - 1) == 0:
                memo[mask] = {xs[mask.bit_length() - 1]}
            else:
                memo[mask] = set().union(*(_combined(values(a), values(mask ^ a)) for a in _halves(mask)))
        return memo[mask]

    full = (1 << len(xs)) - 1
    for a in _halves(full):
        small, large = sorted((values(a), values(full ^ a)), key=len)
        for x in small:  # a value y of the other half with x op y = t or y op x = t
            if {t - x, x - t, t + x} & large or (x and {t / x, t * x} & large) or (x and t and x / t in large):
                return True
            if not x and not t:  # 0 * y
                return True
    return False


def _halves(mask: int) -> list[int]:
    """Each split of the part ``mask`` into two non-empty parts, once: the part holding its lowest member."""
    low, out, sub = mask & -mask, [], (mask - 1) & mask
    while sub:
        if sub & low:
            out.append(sub)
        sub = (sub - 1) & mask
    return out


def _combined(xs: set[Fraction], ys: set[Fraction]) -> set[Fraction]:
    """Every ``x op y`` and ``y op x`` of a value of each set (no division by zero)."""
    return {r for x in xs for y in ys for a, b in ((x, y), (y, x)) for op in OPS if (r := apply(a, op, b)) is not None}


def random_play(nums: Sequence[int | Fraction], rng: random.Random,
                max_value: int) -> list[tuple[Fraction, str, Fraction, list[Fraction]]]:
    """Random legal operations until one number is left, each ``(a, op, b, numbers left)``: a random pair,
    then a random operator among those whose result is whole and in [0, max_value] (another pair if none)."""
    numbers = [Fraction(x) for x in nums]
    play = []
    while len(numbers) > 1:
        i, j = rng.sample(range(len(numbers)), 2)
        a, b = numbers[i], numbers[j]
        ops = [op for op in OPS if (r := apply(a, op, b)) is not None and 0 <= r <= max_value and r.denominator == 1]
        if not ops:
            continue
        op = rng.choice(ops)
        numbers = [x for k, x in enumerate(numbers) if k not in (i, j)] + [apply(a, op, b)]
        play.append((a, op, b, numbers))
    return play


def check_listed(listed: str) -> str:
    """``listed`` if it is ``action`` or ``step`` (``NumberGame.listed``), else a one-line error."""
    if listed not in ("action", "step"):
        raise PonderError(f"task option listed must be 'action' or 'step', got {listed!r}")
    return listed


def puzzle_key(numbers: Sequence[int | Fraction]) -> tuple[int, ...]:
    return tuple(sorted(int(x) for x in numbers))


class NumberGame(Task):
    """Combine numbers with + - * / into a target, one operation per step, every number used once: the
    steps, legal actions, observations, verifier and brute-force reachability that Game of 24 and Countdown
    (``countdown.py``) share. A subclass says where its problems come from (``problems``, ``_random_problem``)
    and what each one's ``target`` is; ``problem.meta["numbers"]`` holds a problem's numbers."""

    votable = False
    checkable = True
    action_stop = ("=",)
    #: what each listed action is, so what the policy's prior over them reads (``--task-option listed=step``):
    #: ``action``, the operation (``4 + 8 =``, the task writes the rest), or ``step``, the whole step with its
    #: observation (``4 + 8 = 12 (left: 1 6 12)``: the prior reads the numbers the action leaves; on the first
    #: choice 51% against 32% on unseen puzzles with the same training, BENCHMARKS.md). Free text lists nothing.
    listed = "action"
    #: ``random_trace`` (the bootstrap's random legal play) keeps to whole results in [0, this]
    trace_max_value = 100

    @abstractmethod
    def target(self, problem: Problem) -> Fraction:
        """The number this problem's last step must leave."""

    @abstractmethod
    def _random_problem(self, rng: random.Random) -> Problem:
        """One random training problem (never a held-out one), drawn from ``rng``."""

    def imagine(self, n: int, seed: int) -> list[Problem]:
        """``n`` distinct random problems that are not held out (see ``_random_problem``). Solvable or not: the
        solver never picks training problems, and an unsolvable one teaches the value what a lost state looks
        like. Fewer than ``n`` only when no unused problem is left."""
        rng, seen, out = random.Random(seed), set(), []
        for _ in range(200 * n):
            if len(out) == n:
                break
            p = self._random_problem(rng)
            if p.question not in seen:
                seen.add(p.question)
                out.append(p)
        return out

    def random_trace(self, nums: Sequence[int | Fraction], rng: random.Random, max_value: int | None = None) -> list[str]:
        """Random legal steps until one number is left, with whole results in [0, max_value] (default
        ``trace_max_value``; not aimed at the target).

        Bounding the intermediate results keeps the arithmetic a 4M-parameter model must learn small;
        almost no solution of a 1..13 puzzle needs a larger intermediate number.
        """
        play = random_play(nums, rng, self.trace_max_value if max_value is None else max_value)
        return [self.step_text(a, op, b, left) for a, op, b, left in play]

    def bootstrap_traces(self, n: int, seed: int) -> list[tuple[Problem, list[str]]]:
        """Random legal traces on random training problems: they teach the format (and, in free text, the
        arithmetic), not the solution (on Game of 24 about 1 in 30 happens to reach 24)."""
        rng = random.Random(seed)
        out = []
        for _ in range(n):
            p = self._random_problem(rng)
            out.append((p, self.random_trace(p.meta["numbers"], rng)))
        return out

    def judge_prompt(self, problem: Problem, steps: Sequence[str]) -> str:
        # Tree of Thoughts' value prompt: judge the numbers still left, not the text
        target = fmt(self.target(problem))
        left = replay(self.numbers(problem), steps)
        if left is None:
            return (f"The last step broke the rules of the game. Can {target} still be reached? "
                    "Answer: impossible, likely or sure.")
        nums = " ".join(fmt(x) for x in left)
        return (f"Evaluate if the numbers {nums} can reach {target} using + - * / (each number once). "
                "Answer with one word: sure, likely or impossible.")

    @staticmethod
    def numbers(problem: Problem) -> list[Fraction]:
        return [Fraction(x) for x in problem.meta["numbers"]]

    def answer(self, problem: Problem, steps: Sequence[str]) -> str | None:
        left = replay(self.numbers(problem), steps)
        return fmt(left[0]) if left is not None and len(left) == 1 else None

    def is_terminal(self, problem: Problem, steps: Sequence[str]) -> bool:
        # an illegal step is a dead end: nothing after it can be verified
        left = replay(self.numbers(problem), steps)
        return left is None or len(left) <= 1 or len(steps) >= self.max_steps

    def reward(self, problem: Problem, steps: Sequence[str]) -> float:
        left = replay(self.numbers(problem), steps)
        return float(left is not None and len(left) == 1 and left[0] == self.target(problem))

    def legal_actions(self, problem: Problem, steps: Sequence[str]) -> list[str]:
        """Every operation on two of the numbers left: ``a + b`` and ``a * b`` once per pair, ``a - b`` and
        ``a / b`` in both orders (no division by zero); the same operation on equal numbers is listed once."""
        numbers = replay(self.numbers(problem), steps)
        if numbers is None or len(numbers) <= 1 or len(steps) >= self.max_steps:
            return []
        out: dict[str, None] = {}
        whole = self.listed == "step"  # each action written with its observation, as ``observe`` writes it
        for i, j in itertools.combinations(range(len(numbers)), 2):
            rest = [x for k, x in enumerate(numbers) if k not in (i, j)]
            for a, b in ((numbers[i], numbers[j]), (numbers[j], numbers[i])):
                for op in OPS:
                    if (op in "+*" and (a, b) != (numbers[i], numbers[j])) or (op == "/" and b == 0):
                        continue
                    out.setdefault(self.step_text(a, op, b, rest + [apply(a, op, b)]) if whole else f"{fmt(a)} {op} {fmt(b)} =", None)
        return list(out)

    def step_text(self, a: Fraction, op: str, b: Fraction, left: Sequence[Fraction]) -> str:
        """A whole step as this task writes it: the numbers left sorted where the task observes (see the
        module docstring), as given in free text."""
        return format_step(a, op, b, sorted(left) if self.observes else left)

    def observe(self, problem: Problem, steps: Sequence[str], action: str) -> str | None:
        """``6 + 8 =`` -> ``6 + 8 = 14 (left: 1 4 14)\n`` where both operands are left; None if not. With
        ``listed = "step"`` a whole listed step is its own observation: itself where it is legal, else None."""
        numbers = replay(self.numbers(problem), steps)
        if self.listed == "step" and _STEP.match(action):
            legal = numbers is not None and apply_step(numbers, action) is not None
            return action.rstrip("\n") + "\n" if legal else None
        m = _ACTION.match(action)
        if m is None or numbers is None:
            return None
        try:
            a, b = Fraction(m.group(1)), Fraction(m.group(3))
        except (ValueError, ZeroDivisionError):
            return None
        op = _OP_ALIASES.get(m.group(2), m.group(2))
        rest = take(numbers, a, b)
        if rest is None or apply(a, op, b) is None:
            return None
        return self.step_text(a, op, b, rest + [apply(a, op, b)])

    def action_of(self, step: str) -> str:
        """``4 + 8 = 12 (left: 1 6 12)\n`` -> ``4 + 8 =``: the model's part ends with its action stop, so
        that no action is a prefix of another (``1 + 1 =`` and ``1 + 13 =``) and the priors sum to one. With
        ``listed = "step"`` the whole step is the action."""
        if self.listed == "step":
            return step
        i = step.find("=")
        return step if i < 0 else step[: i + 1]

    def first_bad_step(self, problem: Problem, steps: Sequence[str]) -> int | None:
        """The first step after which the target can no longer be reached (an illegal step included), or None
        if every step keeps it reachable or the problem never was solvable (no step is to blame)."""
        if not self.can_reach(problem, []):
            return None
        return next((i for i in range(len(steps)) if not self.can_reach(problem, steps[: i + 1])), None)

    def can_reach(self, problem: Problem, steps: Sequence[str]) -> bool:
        """Whether the target is still reachable from this state (exact, by brute force)."""
        left = replay(self.numbers(problem), steps)
        return left is not None and reachable(left, self.target(problem))


class Game24(NumberGame):
    """The Tree of Thoughts puzzles: four numbers 1..13, target 24 (see the module docstring)."""

    name = "game24"
    max_step_tokens = 40
    max_steps = 3
    train_ranks = (1, 900)
    test_ranks = (901, 1000)

    def __init__(self, data: str | Path | None = None, free_text: bool = False, listed: str = "action"):
        self.free_text, self.listed = free_text, check_listed(listed)
        self.data = Path(data) if data else None
        self._rows = self._load(self.data)

    @staticmethod
    def _load(path: Path | None) -> list[tuple[int, tuple[int, ...]]]:
        if path is None:
            text = resources.files("ponder.tasks").joinpath("data/game24.csv").read_text()
            where = "game24.csv"
        elif not path.is_file():
            raise PonderError(f"data file not found: {path}")
        else:
            text, where = path.read_text(), str(path)
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames or "Puzzles" not in reader.fieldnames:
            raise PonderError(f"{where}: expected a CSV with a 'Puzzles' column (four numbers per row)")
        rows = []
        for row in reader:
            lineno = reader.line_num
            try:
                nums = tuple(int(x) for x in (row["Puzzles"] or "").split())
                rank = int(row["Rank"]) if row.get("Rank") else None
            except ValueError:
                raise PonderError(f"{where}:{lineno}: malformed row {row['Puzzles']!r}") from None
            if len(nums) != 4:
                raise PonderError(f"{where}:{lineno}: expected four numbers, got {row['Puzzles']!r}")
            rows.append((rank if rank is not None else -lineno, nums))
        if not rows:
            raise PonderError(f"{where}: no puzzles in file")
        return rows

    def problems(self, split: Split) -> list[Problem]:
        if split not in ("train", "test"):
            raise PonderError(f"game24 has no {split} split: train is ranks 1-900, test ranks 901-1000")
        lo, hi = {"train": self.train_ranks, "test": self.test_ranks}[split]
        # A user's own file without ranks is used whole, for either split (its rows carry -line number).
        rows = [(r, n) for r, n in self._rows if r < 0 or lo <= r <= hi]
        if not rows:
            raise PonderError(f"game24: the {split} split is empty")
        return [self._problem(nums, f"game24-{r}" if r > 0 else f"game24-line{-r}") for r, nums in rows]

    @staticmethod
    def _problem(nums: Sequence[int], pid: str) -> Problem:
        return Problem(id=pid, question=" ".join(map(str, nums)), meta={"numbers": list(nums)})

    def target(self, problem: Problem) -> Fraction:
        return TARGET

    @functools.cached_property
    def test_keys(self) -> frozenset[tuple[int, ...]]:
        lo, hi = self.test_ranks
        return frozenset(n for r, n in self._rows if lo <= r <= hi)

    def _random_problem(self, rng: random.Random) -> Problem:
        """A random puzzle of four numbers 1..13 that is not a test puzzle."""
        while True:
            nums = puzzle_key(rng.randint(1, 13) for _ in range(4))
            if nums not in self.test_keys:
                return self._problem(nums, f"game24-imagined-{'-'.join(map(str, nums))}")

    def parse_problem(self, text: str) -> Problem:
        try:
            nums = [int(x) for x in text.replace(",", " ").split()]
        except ValueError:
            nums = []
        if len(nums) != 4:
            raise PonderError(f"game24: a puzzle is four whole numbers, like '4 9 10 13'; got {text!r}")
        return self._problem(nums, "cli")

    def prompt(self, problem: Problem) -> str:
        return problem.question + "\n"

    def chat_messages(self, problem: Problem) -> list[dict[str, str]]:
        return self.one_shot(
            "Use the four numbers and + - * / to reach 24. Write one operation per line, "
            "in the form 'a op b = c (left: remaining numbers)'.",
            "4 4 6 8\n4 + 8 = 12 (left: 4 6 12)\n6 - 4 = 2 (left: 12 2)\n12 * 2 = 24 (left: 24)\n",
            f"Now solve: {problem.question}",
        )
