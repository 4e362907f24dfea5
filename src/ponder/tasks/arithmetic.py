"""Multi-step arithmetic: evaluate ``7 + 3 * 2 - 4`` one operation per step, an endless synthetic curriculum.

The expression uses ``+ - *`` on whole numbers of at most ``digits`` digits, no parentheses, with the
usual precedence. The one worked solution does every multiplication first, left to right, then every
addition and subtraction, left to right, so each trace has exactly one correct next step::

    Q: 7 + 3 * 2 - 4
    3 * 2 = 6
    7 + 6 = 13
    13 - 4 = 9
    Answer: 9

``operands`` and ``digits`` are the difficulty knobs. The test split comes from a fixed seed of its own
(the same for every ``seed``, so runs stay comparable); the training split, ``imagine`` and
``bootstrap_texts`` draw from other seeds and reject any expression of the test split. Correct worked
traces are fine as bootstrap data here: this is a curriculum task, not a benchmark.
"""

from __future__ import annotations

import functools
import random
import re
from typing import Sequence

from ..errors import PonderError, choice
from .base import Problem, Split, Task

OPS = "+-*"
_STEP = re.compile(r"^\s*(-?\d+)\s*([-+*])\s*(-?\d+)\s*=\s*(-?\d+)\s*$")
_ANSWER = re.compile(r"Answer:\s*(-?\d+)")
_TEST_SEED = "arithmetic-test"

#: one operation: (left operand, operator, right operand, result)
Op = tuple[int, str, int, int]


def apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def solve(question: str) -> list[Op]:
    """The worked solution of ``"7 + 3 * 2 - 4"``: multiplications first, then + and -, each left to right."""
    tokens = question.split()
    nums, ops = [int(t) for t in tokens[::2]], tokens[1::2]
    out: list[Op] = []
    for wanted in ("*", "+-"):
        i = 0
        while i < len(ops):
            if ops[i] not in wanted:
                i += 1
                continue
            a, op, b = nums[i], ops.pop(i), nums[i + 1]
            out.append((a, op, b, apply(a, op, b)))
            nums[i : i + 2] = [out[-1][3]]
    return out


def format_step(a: int, op: str, b: int, result: int) -> str:
    return f"{a} {op} {b} = {result}\n"


def parse_step(line: str) -> Op | None:
    """``(a, op, b, result)`` of a step line as written (not checked), or None if it is not one."""
    m = _STEP.match(line)
    return None if m is None else (int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4)))


class Arithmetic(Task):
    name = "arithmetic"

    def __init__(self, operands: int = 3, digits: int = 1, seed: int = 0, n_test: int = 200, n_train: int = 2000):
        for knob, value, least in (("operands", operands, 2), ("digits", digits, 1), ("n_test", n_test, 1), ("n_train", n_train, 1)):
            if value < least:
                raise PonderError(f"arithmetic: {knob} must be at least {least}, got {value}")
        self.operands, self.digits, self.seed, self.n_test, self.n_train = operands, digits, seed, n_test, n_train
        # Without this bound the distinct-problem samplers below would never finish.
        if n_test + n_train > self.n_distinct:
            raise PonderError(
                f"arithmetic: only {self.n_distinct} distinct problems with operands={operands}, digits={digits}; "
                f"n_test + n_train = {n_test + n_train}"
            )
        self.max_steps = operands + 2  # operands - 1 operations, the answer line, one step of slack
        # A step holds three numbers of at most operands*digits digits and a sign each, " op ", " = ", "\n":
        # an upper bound even for a character-level tokenizer.
        self.max_step_tokens = 3 * (operands * digits + 1) + 7

    @property
    def n_distinct(self) -> int:
        return 10 ** (self.digits * self.operands) * len(OPS) ** (self.operands - 1)

    # --- data -------------------------------------------------------------------------------------
    def _expression(self, rng: random.Random) -> str:
        parts = [str(rng.randrange(10**self.digits))]
        for _ in range(self.operands - 1):
            parts += [rng.choice(OPS), str(rng.randrange(10**self.digits))]
        return " ".join(parts)

    def _random_expression(self, rng: random.Random) -> str:
        while True:
            q = self._expression(rng)
            if q not in self.test_questions:
                return q

    @staticmethod
    def _problem(question: str) -> Problem:
        return Problem(id=f"arithmetic-{question.replace(' ', '')}", question=question, reference=str(solve(question)[-1][3]))

    def _distinct(self, n: int, rng: random.Random, exclude: frozenset[str]) -> list[Problem]:
        seen: set[str] = set()
        out = []
        while len(out) < n:
            q = self._expression(rng)
            if q not in seen and q not in exclude:
                seen.add(q)
                out.append(self._problem(q))
        return out

    @functools.cached_property
    def _test(self) -> list[Problem]:
        return self._distinct(self.n_test, random.Random(f"{_TEST_SEED}-{self.operands}-{self.digits}"), frozenset())

    @functools.cached_property
    def test_questions(self) -> frozenset[str]:
        return frozenset(p.question for p in self._test)

    @functools.cached_property
    def _train(self) -> list[Problem]:
        return self._distinct(self.n_train, random.Random(f"arithmetic-train-{self.seed}"), self.test_questions)

    def problems(self, split: Split) -> list[Problem]:
        return {"train": self._train, "test": self._test}[choice("split", split, ("train", "test"))]

    def imagine(self, n: int, seed: int) -> list[Problem]:
        """``n`` distinct fresh problems, none of the test split."""
        if n + self.n_test > self.n_distinct:
            raise PonderError(f"arithmetic: cannot imagine {n} problems; only {self.n_distinct - self.n_test} are not test problems")
        return self._distinct(n, random.Random(f"arithmetic-imagine-{seed}"), self.test_questions)

    def worked_steps(self, problem: Problem) -> list[str]:
        """The correct steps, the answer line included."""
        return [format_step(*op) for op in solve(problem.question)] + [f"Answer: {problem.reference}\n"]

    def bootstrap_texts(self, n: int, seed: int) -> list[str]:
        """Correct worked traces on random non-test problems (repeats allowed, so ``n`` is unbounded)."""
        rng = random.Random(f"arithmetic-bootstrap-{seed}")
        out = []
        for _ in range(n):
            problem = self._problem(self._random_expression(rng))
            out.append(self.prompt(problem) + "".join(self.worked_steps(problem)))
        return out

    # --- format -----------------------------------------------------------------------------------
    def prompt(self, problem: Problem) -> str:
        return f"Q: {problem.question}\n"

    def chat_messages(self, problem: Problem) -> list[dict[str, str]]:
        return self.one_shot(
            "Compute the expression step by step. Do multiplications first, then additions and subtractions, "
            "each from left to right. Write one operation per line in the form 'a op b = c', then finish with "
            "a line 'Answer: N'.",
            "Q: 7 + 3 * 2 - 4\n3 * 2 = 6\n7 + 6 = 13\n13 - 4 = 9\nAnswer: 9\n",
            f"Now compute: {problem.question}",
        )

    # --- checking ---------------------------------------------------------------------------------
    def answer(self, problem: Problem, steps: Sequence[str]) -> str | None:
        for step in steps:
            if m := _ANSWER.search(step):
                return str(int(m.group(1)))
        return None

    def reward(self, problem: Problem, steps: Sequence[str]) -> float:
        return float(self.answer(problem, steps) == problem.reference)

    def first_bad_step(self, problem: Problem, steps: Sequence[str]) -> int | None:
        """Index of the first step that differs from the worked solution, or None if all agree so far.

        Steps are compared by value (operands, operator, result), so spacing does not matter; the answer
        step must give the right number, and any step after it is bad. Credit assignment uses this as the
        ground truth for where a trace went wrong.
        """
        want = solve(problem.question)
        for i, step in enumerate(steps):
            if i < len(want):
                if parse_step(step) != want[i]:
                    return i
            elif i > len(want) or self.answer(problem, [step]) != problem.reference:
                return i
        return None
