"""Countdown: combine n numbers with + - * / into a given target, one operation per step, every number once.

The open-ended generalisation of Game of 24 (``game24.py``), and the task of Stream of Search (Gandhi et al.
2024), APR (Pan et al. 2025) and TinyZero. The steps, the legal actions, the observations (the task writes the
result and the numbers left, sorted: ``25 - 4 = 21 (left: 3 21 50)``), the exact arithmetic and the verifier are
Game of 24's (``NumberGame``); only the problems differ. A problem is ``n_numbers`` whole numbers in
[``min_number``, ``max_number``] and a target in [``min_target``, ``max_target``] (by default 4 numbers 1-99,
targets 10-100, as in Stream of Search), shown as ``3 4 25 50 -> 21``. The knobs are constructor options, from
the command line ``--task-option n_numbers=5``.

Where problems come from, and why no training signal comes from a solver:

- **Held out** (``test``, 1,000 problems; ``validation``, 200, for choosing settings without the test split):
  Stream of Search's recipe: draw the target uniformly, then draw numbers until the brute-force check
  (``game24.reachable``, exact, + - * / with fractions and negatives allowed) says the target can be reached,
  so an unreachable problem never enters them. Each split comes from its own fixed seed (the same for every run,
  so runs stay comparable; a smaller split is a prefix of a larger one) and from its own share of the problem
  space: a problem's bucket is a hash of its (sorted numbers, target), bucket 0 of 16 is test, bucket 1
  validation. The solver builds these two splits and nothing else.
- **Training** (``imagine``, the ``train`` split, the bootstrap's problems): from buckets 2-15 only, so no
  held-out problem can ever be generated for training (checked without building the held-out splits, so no
  solver is asked). Imagined problems are reachable by construction: the target is drawn uniformly, then numbers
  are drawn until a random legal play of them (whole results in [0, ``trace_max_value``], the bootstrap's random
  play) ends on it; the play is thrown away. No training problem was picked by a solver, and the target marginal
  is the test one's, but numbers with many ways to the target are favoured: one random play solves 4.7% of
  imagined problems on average against 2.2% of test ones, so training problems are easier (BENCHMARKS.md,
  "Countdown"). Bootstrap traces are fresh random legal play on uniformly random problems, reachable or not (they
  teach the format, as in Game of 24).

The reference papers' rules forbid negatives and fractions (``b - a`` only for ``b >= a``, ``a / b`` only when
exact); ours allow them, so every problem of their recipe is reachable here too and a few of ours need them.

``--data FILE``: JSONL rows ``{"numbers": [3, 4, 25, 50], "target": 21}``, used whole for every split (reachable
or not), each checked against the knobs' ranges; ``imagine`` then also avoids the file's problems.
"""

from __future__ import annotations

import functools
import hashlib
import random
from collections import Counter
from fractions import Fraction
from pathlib import Path
from typing import Any, Sequence

from ..errors import PonderError, choice
from .base import Problem, Split, read_jsonl
from .game24 import NumberGame, check_listed, random_play, reachable

#: a problem's bucket is one of this many shares of the problem space; bucket 0 is test, 1 validation
BUCKETS = 16
HELD_OUT = {"test": 0, "validation": 1}
#: most numbers per generated problem: the held-out splits' brute-force check grows factorially with it
MAX_NUMBERS = 6
#: draws of numbers for one held-out target before the generator gives up on the knobs (none could reach it)
MAX_DRAWS = 200_000
#: random plays ``imagine`` makes for n problems at most: ``PLAYS`` + ``PLAYS_PER_PROBLEM`` * n (with the default
#: knobs a play ends on a given target about once in 500 plays, and n problems take about 5 n + 2,000 plays)
PLAYS, PLAYS_PER_PROBLEM = 20_000, 50

Key = tuple[tuple[int, ...], int]  # (sorted numbers, target)


def bucket(numbers: Sequence[int], target: int) -> int:
    """The problem's share of the problem space (0 = test, 1 = validation, 2.. = training): a hash of the
    sorted numbers and the target, the same in every process and Python version."""
    text = f"{' '.join(map(str, sorted(numbers)))} -> {target}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big") % BUCKETS


@functools.lru_cache(maxsize=32)
def held_out_split(kind: str, size: int, n_numbers: int, min_number: int, max_number: int, min_target: int,
                   max_target: int) -> tuple[Key, ...]:
    """The first ``size`` problems of a held-out split (``test`` or ``validation``), by Stream of Search's recipe:
    a uniform target, then numbers drawn until one set of them lands in the split's bucket and can reach the
    target (brute force), distinct problems only. Cached per process: every task with these knobs shares it."""
    want = HELD_OUT[kind]
    rng = random.Random(f"countdown-{kind}-{n_numbers}-{min_number}-{max_number}-{min_target}-{max_target}")
    seen: set[Key] = set()
    out: list[Key] = []
    while len(out) < size:
        target = rng.randint(min_target, max_target)
        for _ in range(MAX_DRAWS):
            nums = tuple(sorted(rng.randint(min_number, max_number) for _ in range(n_numbers)))
            key = (nums, target)
            if bucket(nums, target) == want and key not in seen and reachable(nums, target):
                break
        else:
            raise PonderError(
                f"countdown: no new reachable {kind} problem for target {target} in {MAX_DRAWS:,} draws of "
                f"{n_numbers} numbers {min_number}-{max_number} ({len(out)} of {size} found); widen the ranges "
                f"or lower {kind}_size")
        seen.add(key)
        out.append(key)
    return tuple(out)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class Countdown(NumberGame):
    """Reach the target from n numbers (see the module docstring)."""

    name = "countdown"
    max_step_tokens = 64

    def __init__(self, data: str | Path | None = None, free_text: bool = False, n_numbers: int = 4, min_number: int = 1,
                 max_number: int = 99, min_target: int = 10, max_target: int = 100, test_size: int = 1000,
                 validation_size: int = 200, listed: str = "action"):
        knobs = {"n_numbers": n_numbers, "min_number": min_number, "max_number": max_number, "min_target": min_target,
                 "max_target": max_target, "test_size": test_size, "validation_size": validation_size}
        for knob, value in knobs.items():
            if not _whole(value):
                raise PonderError(f"countdown: {knob} must be a whole number, got {value!r}")
        if not 2 <= n_numbers <= MAX_NUMBERS:
            raise PonderError(f"countdown: n_numbers must be 2-{MAX_NUMBERS}, got {n_numbers}")
        for low, high in (("min_number", "max_number"), ("min_target", "max_target")):
            if knobs[low] < 1 or knobs[high] < knobs[low]:
                raise PonderError(f"countdown: need 1 <= {low} <= {high}, got {knobs[low]} and {knobs[high]}")
        for knob in ("test_size", "validation_size"):
            if knobs[knob] < 1:
                raise PonderError(f"countdown: {knob} must be at least 1, got {knobs[knob]}")
        self.n_numbers, self.min_number, self.max_number = n_numbers, min_number, max_number
        self.min_target, self.max_target = min_target, max_target
        self.sizes = {"test": test_size, "validation": validation_size, "train": test_size}
        self.free_text, self.listed = free_text, check_listed(listed)
        # whole intermediate results up to ten times the largest number or target: room for 99 * 9 - 97
        self.trace_max_value = 10 * max(max_number, max_target)
        self.data = Path(data) if data else None
        self._rows = None if self.data is None else self._load(self.data)
        longest = max([n_numbers] + [len(nums) for nums, _ in self._rows or ()])
        self.max_steps = longest - 1  # each step combines two numbers into one

    # --- problems ---------------------------------------------------------------------------------------
    def check(self, numbers: Any, target: Any) -> Key:
        """``(sorted numbers, target)`` of a problem in this task's ranges, or a one-line ``PonderError``."""
        if not isinstance(numbers, list) or len(numbers) < 2 or not all(_whole(x) for x in numbers):
            raise PonderError(f"numbers must be a list of at least two whole numbers, got {numbers!r}")
        if not _whole(target):
            raise PonderError(f"target must be a whole number, got {target!r}")
        for x in numbers:
            if not self.min_number <= x <= self.max_number:
                raise PonderError(f"number {x} is outside {self.min_number}-{self.max_number} (widen it with "
                                  "--task-option min_number=N / max_number=N)")
        if not self.min_target <= target <= self.max_target:
            raise PonderError(f"target {target} is outside {self.min_target}-{self.max_target} (widen it with "
                              "--task-option min_target=N / max_target=N)")
        return tuple(sorted(numbers)), target

    def _load(self, path: Path) -> list[Key]:
        rows = read_jsonl(path, ("numbers", "target"), lambda row: self.check(row["numbers"], row["target"]))
        return [self.check(row["numbers"], row["target"]) for row in rows]

    @staticmethod
    def _problem(key: Key, pid: str) -> Problem:
        nums, target = key
        return Problem(id=pid, question=f"{' '.join(map(str, nums))} -> {target}",
                       meta={"numbers": list(nums), "target": target})

    def _knobs(self) -> tuple[int, ...]:
        return self.n_numbers, self.min_number, self.max_number, self.min_target, self.max_target

    def problems(self, split: Split) -> list[Problem]:
        """``test`` and ``validation``: the held-out splits; ``train``: a fixed sample of the training distribution
        (the loop imagines its own). With ``--data``, the file's problems for every split."""
        choice("split", split, ("train", "validation", "test"))
        if self._rows is not None:
            return [self._problem(key, f"countdown-{self.data.stem}-{i}") for i, key in enumerate(self._rows)]
        if split == "train":
            return self.imagine(self.sizes["train"], seed=-1)
        keys = held_out_split(split, self.sizes[split], *self._knobs())
        return [self._problem(key, f"countdown-{split}-{i}") for i, key in enumerate(keys)]

    def target(self, problem: Problem) -> Fraction:
        return Fraction(problem.meta["target"])

    @functools.cached_property
    def _data_keys(self) -> frozenset[Key]:
        return frozenset(self._rows or ())

    def _training(self, key: Key) -> bool:
        """Whether a problem may be generated for training: outside the held-out buckets and the user's file."""
        return bucket(*key) not in HELD_OUT.values() and key not in self._data_keys

    def imagine(self, n: int, seed: int) -> list[Problem]:
        """``n`` distinct reachable training problems, none held out, none asked of a solver: ``n`` uniform targets,
        then random legal plays of uniform numbers (``random_play``, whole results in [0, ``trace_max_value``]); a
        play that ends on a target still waiting gives it its numbers. The same problems as drawing numbers for one
        target until a play ends on it, a hundred times faster. Fewer than ``n`` only if some targets are never
        reached within the plays allowed (``PLAYS``); none at all is an error (the knobs admit no problem)."""
        rng = random.Random(seed)
        targets = [rng.randint(self.min_target, self.max_target) for _ in range(n)]
        waiting = Counter(targets)
        found: dict[int, list[Key]] = {t: [] for t in waiting}
        seen: set[Key] = set()
        for _ in range(PLAYS + PLAYS_PER_PROBLEM * n):
            if not waiting:
                break
            nums = [rng.randint(self.min_number, self.max_number) for _ in range(self.n_numbers)]
            end = int(random_play(nums, rng, self.trace_max_value)[-1][3][0])  # whole: the play keeps to those
            key = (tuple(sorted(nums)), end)
            if waiting[end] and key not in seen and self._training(key):
                seen.add(key)
                found[end].append(key)
                waiting[end] -= 1
                waiting += Counter()  # drops the targets no longer waiting
        if n and not seen:
            raise PonderError(
                f"countdown: no random play of {self.n_numbers} numbers {self.min_number}-{self.max_number} ended on "
                f"a target {self.min_target}-{self.max_target}; widen the ranges")
        out = []
        for t in targets:  # in the order the targets were drawn
            if found[t]:
                k = found[t].pop(0)
                out.append(self._problem(k, f"countdown-imagined-{'-'.join(map(str, k[0]))}-to-{k[1]}"))
        return out

    def _random_problem(self, rng: random.Random) -> Problem:
        """A uniformly random training problem, reachable or not: what the bootstrap's random legal play is written
        on (it teaches the format, for which the target does not matter)."""
        while True:
            key = (tuple(sorted(rng.randint(self.min_number, self.max_number) for _ in range(self.n_numbers))),
                   rng.randint(self.min_target, self.max_target))
            if self._training(key):
                return self._problem(key, f"countdown-random-{'-'.join(map(str, key[0]))}-to-{key[1]}")

    def parse_problem(self, text: str) -> Problem:
        head, arrow, tail = text.partition("->")
        try:
            nums = [int(x) for x in head.replace(",", " ").split()]
            target = int(tail.strip())
        except ValueError:
            arrow = ""
        if not arrow:
            raise PonderError(f"countdown: a problem is numbers, '->' and the target, like '3 4 25 50 -> 21'; got {text!r}")
        try:
            return self._problem(self.check(nums, target), "cli")
        except PonderError as e:
            raise PonderError(f"countdown: {e}") from None

    # --- format -------------------------------------------------------------------------------------------
    def prompt(self, problem: Problem) -> str:
        return problem.question + "\n"

    def chat_messages(self, problem: Problem) -> list[dict[str, str]]:
        nums, target = " ".join(map(str, problem.meta["numbers"])), problem.meta["target"]
        return self.one_shot(
            "Use every one of the numbers once, with + - * /, to reach the target after '->'. Write one operation "
            "per line, in the form 'a op b = c (left: remaining numbers)'.",
            "2 5 8 40 -> 90\n2 + 8 = 10 (left: 5 10 40)\n5 * 10 = 50 (left: 40 50)\n40 + 50 = 90 (left: 90)\n",
            f"Now solve: {nums} -> {target}",
        )
