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
def _solve(key: tuple[Fraction, ...]) -> tuple[str, ...] | None:
    if len(key) == 1:
        return () if key[0] == TARGET else None
    for i, j in itertools.permutations(range(len(key)), 2):
        rest = [x for k, x in enumerate(key) if k not in (i, j)]
        for op in OPS:
            r = apply(key[i], op, key[j])
            if r is None:
                continue
            tail = _solve(tuple(sorted(rest + [r])))
            if tail is not None:
                return (format_step(key[i], op, key[j], rest + [r]),) + tail
    return None


def solve(numbers: Sequence[Fraction | int]) -> list[str] | None:
    """Brute-force solution steps from these numbers to 24, or None. For analysis and oracles only."""
    out = _solve(tuple(sorted(Fraction(x) for x in numbers)))
    return None if out is None else list(out)


def puzzle_key(numbers: Sequence[int | Fraction]) -> tuple[int, ...]:
    return tuple(sorted(int(x) for x in numbers))


class Game24(Task):
    name = "game24"
    max_step_tokens = 40
    max_steps = 3
    votable = False
    checkable = True
    action_stop = ("=",)
    train_ranks = (1, 900)
    test_ranks = (901, 1000)

    def __init__(self, data: str | Path | None = None, free_text: bool = False):
        self.free_text = free_text
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
        lo, hi = {"train": self.train_ranks, "test": self.test_ranks}[split]
        # A user's own file without ranks is used whole, for either split (its rows carry -line number).
        rows = [(r, n) for r, n in self._rows if r < 0 or lo <= r <= hi]
        if not rows:
            raise PonderError(f"game24: the {split} split is empty")
        return [self._problem(nums, f"game24-{r}" if r > 0 else f"game24-line{-r}") for r, nums in rows]

    @staticmethod
    def _problem(nums: Sequence[int], pid: str) -> Problem:
        return Problem(id=pid, question=" ".join(map(str, nums)), meta={"numbers": list(nums)})

    @functools.cached_property
    def test_keys(self) -> frozenset[tuple[int, ...]]:
        lo, hi = self.test_ranks
        return frozenset(n for r, n in self._rows if lo <= r <= hi)

    def _random_puzzle(self, rng: random.Random) -> tuple[int, ...]:
        while True:
            nums = puzzle_key(rng.randint(1, 13) for _ in range(4))
            if nums not in self.test_keys:
                return nums

    def imagine(self, n: int, seed: int) -> list[Problem]:
        """``n`` distinct random puzzles (numbers 1..13) that are not test puzzles. Solvable or not: the
        solver never picks training problems, and an unsolvable puzzle teaches the value what a lost
        state looks like. Fewer than ``n`` only when no unused puzzle is left."""
        rng, seen, out = random.Random(seed), set(), []
        for _ in range(200 * n):
            if len(out) == n:
                break
            nums = self._random_puzzle(rng)
            if nums not in seen:
                seen.add(nums)
                out.append(self._problem(nums, f"game24-imagined-{'-'.join(map(str, nums))}"))
        return out

    def random_trace(self, nums: Sequence[int], rng: random.Random, max_value: int = 100) -> list[str]:
        """Three random legal steps with whole results in [0, max_value] (not aimed at 24).

        Bounding the intermediate results keeps the arithmetic a 4M-parameter model must learn small;
        almost no solution of a 1..13 puzzle needs a larger intermediate number.
        """
        numbers = [Fraction(x) for x in nums]
        steps = []
        while len(numbers) > 1:
            i, j = rng.sample(range(len(numbers)), 2)
            a, b = numbers[i], numbers[j]
            ops = [op for op in OPS if (r := apply(a, op, b)) is not None and 0 <= r <= max_value and r.denominator == 1]
            if not ops:
                continue
            op = rng.choice(ops)
            rest = [x for k, x in enumerate(numbers) if k not in (i, j)] + [apply(a, op, b)]
            steps.append(self.step_text(a, op, b, rest))
            numbers = rest
        return steps

    def bootstrap_traces(self, n: int, seed: int) -> list[tuple[Problem, list[str]]]:
        """Random legal traces on random non-test puzzles: they teach the format (and, in free text, the
        arithmetic), not the solution (about 1 in 30 happens to reach 24)."""
        rng = random.Random(seed)
        out = []
        for _ in range(n):
            nums = self._random_puzzle(rng)
            out.append((self._problem(nums, ""), self.random_trace(nums, rng)))
        return out

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

    def judge_prompt(self, problem: Problem, steps: Sequence[str]) -> str:
        # Tree of Thoughts' value prompt: judge the numbers still left, not the text
        left = replay(self.numbers(problem), steps)
        if left is None:
            return "The last step broke the rules of the game. Can 24 still be reached? Answer: impossible, likely or sure."
        nums = " ".join(fmt(x) for x in left)
        return (f"Evaluate if the numbers {nums} can reach 24 using + - * / (each number once). "
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
        return float(left is not None and len(left) == 1 and left[0] == TARGET)

    def legal_actions(self, problem: Problem, steps: Sequence[str]) -> list[str]:
        """Every operation on two of the numbers left: ``a + b`` and ``a * b`` once per pair, ``a - b`` and
        ``a / b`` in both orders (no division by zero); the same operation on equal numbers is listed once."""
        numbers = replay(self.numbers(problem), steps)
        if numbers is None or len(numbers) <= 1 or len(steps) >= self.max_steps:
            return []
        out: dict[str, None] = {}
        for i, j in itertools.combinations(range(len(numbers)), 2):
            for a, b in ((numbers[i], numbers[j]), (numbers[j], numbers[i])):
                for op in OPS:
                    if (op in "+*" and (a, b) != (numbers[i], numbers[j])) or (op == "/" and b == 0):
                        continue
                    out.setdefault(f"{fmt(a)} {op} {fmt(b)} =", None)
        return list(out)

    def step_text(self, a: Fraction, op: str, b: Fraction, left: Sequence[Fraction]) -> str:
        """A whole step as this task writes it: the numbers left sorted where the task observes (see the
        module docstring), as given in free text."""
        return format_step(a, op, b, sorted(left) if self.observes else left)

    def observe(self, problem: Problem, steps: Sequence[str], action: str) -> str | None:
        """``6 + 8 =`` -> ``6 + 8 = 14 (left: 1 4 14)\n`` where both operands are left; None if not."""
        m = _ACTION.match(action)
        numbers = replay(self.numbers(problem), steps)
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
        that no action is a prefix of another (``1 + 1 =`` and ``1 + 13 =``) and the priors sum to one."""
        i = step.find("=")
        return step if i < 0 else step[: i + 1]

    def first_bad_step(self, problem: Problem, steps: Sequence[str]) -> int | None:
        """The first step after which 24 can no longer be reached (an illegal step included), or None if
        every step keeps it reachable or the puzzle never was solvable (no step is to blame)."""
        if not self.can_reach(problem, []):
            return None
        return next((i for i in range(len(steps)) if not self.can_reach(problem, steps[: i + 1])), None)

    def can_reach(self, problem: Problem, steps: Sequence[str]) -> bool:
        """Whether 24 is still reachable from this state (exact, by brute force)."""
        left = replay(self.numbers(problem), steps)
        return left is not None and _solve(tuple(sorted(left))) is not None
