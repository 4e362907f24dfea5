"""GSM8K and MATH-500: file-backed math word problems, one reasoning step per line.

The model is asked to end with ``The answer is X.`` (GSM8K) or ``The answer is $\\boxed{X}$.`` (MATH).
The first line that gives a final answer ends the trace, which keeps ``answer`` consistent with
``is_terminal``: whatever a completion writes after its answer line was never part of the search.

Answers are normalized so that self-consistency can vote on them: GSM8K answers are canonical number
text (``"$1,234.00"`` -> ``"1234"``), MATH answers the stripped ``\\boxed{...}`` content. MATH answers are
checked with math-verify, so ``0.5`` matches ``\\frac{1}{2}``.
"""

from __future__ import annotations

import functools
import re
import threading
from abc import abstractmethod
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, ClassVar, Sequence

from ..errors import PonderError, choice
from .base import Problem, Split, Task, read_jsonl, shared_data_dir

_NUMBER = r"(-?)\s*\$?\s*(\d[\d,]*(?:\.\d+)?)"
_GSM_FINAL = [
    re.compile(r"answer is[^\d\n-]{0,24}?" + _NUMBER, re.IGNORECASE),
    re.compile(r"^\s*####\s*" + _NUMBER),
    re.compile(r"\\boxed\{\s*" + _NUMBER),
]
_BOXED = re.compile(r"\\boxed\s*\{")
_ANSWER_IS = re.compile(r"answer is:?(.*)", re.IGNORECASE)


def canonical_number(sign: str, digits: str) -> str | None:
    """``"-", "1,234.50"`` -> ``"-1234.5"``: one spelling per value, so equal answers vote together."""
    try:
        value = Decimal(sign + digits.replace(",", ""))
    except InvalidOperation:
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def last_boxed(text: str) -> str | None:
    """The stripped content of the last ``\\boxed{...}`` whose braces close, or None."""
    for m in reversed(list(_BOXED.finditer(text))):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            return text[m.end() : i - 1].strip()
    return None


def _timeout() -> int | None:
    """math-verify's timeout: it uses ``signal.alarm``, which only works in the main thread, so worker
    threads must run without one (math-verify raises otherwise)."""
    return 5 if threading.current_thread() is threading.main_thread() else None


@functools.lru_cache(maxsize=65_536)
def _parse_boxed(latex: str) -> list[Any]:
    """math-verify's parse of ``\\boxed{latex}``, cached: votes and rollouts repeat the same answers."""
    from math_verify import parse

    return parse(f"\\boxed{{{latex}}}", parsing_timeout=_timeout())


def math_equal(gold: str, pred: str) -> bool:
    """Whether ``pred`` is mathematically ``gold`` by math-verify; any error or timeout counts as False.

    math-verify is imported here, not at the top, because it pulls in sympy (about 0.6 s), which GSM8K
    never needs.
    """
    from math_verify import verify
    from math_verify.errors import TimeoutException

    try:
        return verify(_parse_boxed(gold), _parse_boxed(pred), timeout_seconds=_timeout())
    except (Exception, TimeoutException):
        return False


class _JsonlTask(Task):
    """A task whose problems are the rows of one JSONL file per split."""

    max_steps = 12
    max_step_tokens = 96
    #: split -> default file in the shared data directory
    files: ClassVar[dict[str, str]] = {}
    #: keys every row must have
    required: ClassVar[tuple[str, ...]] = ()

    def __init__(self, data: str | Path | None = None):
        self.data = Path(data) if data else None
        self._loaded: dict[str, list[Problem]] = {}

    def _path(self, split: Split) -> Path:
        if self.data is not None:
            return self.data  # a user's own file serves whichever split is asked for
        if split not in self.files:
            raise PonderError(f"{self.name} has no {split} split; it has only: {', '.join(self.files)}")
        root = shared_data_dir()
        if root is None:
            raise PonderError(f"{self.name}: benchmark data directory not found; set $PONDER_DATA or pass a data file")
        return root / self.files[split]

    def problems(self, split: Split) -> list[Problem]:
        choice("split", split, ("train", "test"))
        if split not in self._loaded:
            path = self._path(split)
            rows = read_jsonl(path, self.required)
            self._loaded[split] = [self._problem(row, f"{path.stem}-{i}", path) for i, row in enumerate(rows)]
        return self._loaded[split]

    @abstractmethod
    def _problem(self, row: dict, pid: str, path: Path) -> Problem:
        """The problem of one row of ``path``."""

    @abstractmethod
    def _instruction(self) -> str:
        """How to lay out the reasoning and the final answer, shared by both prompt styles."""

    def prompt(self, problem: Problem) -> str:
        return f"{self._instruction()}\n\nQuestion: {problem.question}\nAnswer:\n"

    def chat_messages(self, problem: Problem) -> list[dict[str, str]]:
        return [{"role": "user", "content": f"{problem.question}\n\n{self._instruction()}"}]

    @abstractmethod
    def _final_answer(self, line: str) -> str | None:
        """The normalized final answer this line gives, or None."""

    def answer(self, problem: Problem, steps: Sequence[str]) -> str | None:
        """The answer of the first line that gives one (see the module docstring), or None."""
        for step in steps:
            for line in step.splitlines():
                if (found := self._final_answer(line)) is not None:
                    return found
        return None


class GSM8K(_JsonlTask):
    """Grade-school math; the reference is the number after ``####`` in the row's ``answer``."""

    name = "gsm8k"
    files = {"train": "gsm8k_train.jsonl", "test": "gsm8k_test.jsonl"}
    required = ("question", "answer")

    def _problem(self, row: dict, pid: str, path: Path) -> Problem:
        m = re.search(r"####\s*" + _NUMBER, str(row["answer"]))
        reference = m and canonical_number(*m.groups())
        if reference is None:
            raise PonderError(f"{path}: problem {pid}: answer does not end with '#### <number>'")
        return Problem(id=pid, question=row["question"], reference=reference)

    def _instruction(self) -> str:
        return 'Reason step by step, one step per line, and finish with the line "The answer is X." where X is a number.'

    def _final_answer(self, line: str) -> str | None:
        """The number of an "answer is N", "#### N" or "\\boxed{N}" line; where the line goes on with
        arithmetic ("the answer is 16 * 2 = 32"), the last number after an "=" is the result."""
        for pattern in _GSM_FINAL:
            if m := pattern.search(line):
                if result := re.search(r"=\s*" + _NUMBER + r"[^=\d]*$", line[m.start():]):
                    return canonical_number(*result.groups())
                return canonical_number(*m.groups())
        return None

    def reward(self, problem: Problem, steps: Sequence[str]) -> float:
        # Both sides are canonical numbers, so string equality is exact numeric equality; math-verify
        # would add nothing but time.
        return float(self.answer(problem, steps) == problem.reference)


class MATH500(_JsonlTask):
    """The 500 MATH test problems of "Let's Verify Step by Step"; the reference is the row's LaTeX ``answer``."""

    name = "math500"
    files = {"test": "math500_test.jsonl"}
    required = ("problem", "answer")

    def _problem(self, row: dict, pid: str, path: Path) -> Problem:
        meta = {k: row[k] for k in ("subject", "level") if k in row}
        return Problem(id=pid, question=row["problem"], reference=str(row["answer"]).strip(), meta=meta)

    def _instruction(self) -> str:
        return (
            "Reason step by step, one step per line, and finish with the line "
            '"The answer is $\\boxed{X}$." where X is the final answer in LaTeX.'
        )

    def _final_answer(self, line: str) -> str | None:
        """The last closed ``\\boxed{}`` of the line, else what follows "answer is".

        A line with an unclosed box gives no answer rather than a mangled one.
        """
        if "\\boxed" in line:
            return last_boxed(line)
        m = _ANSWER_IS.search(line)
        found = m and m.group(1).strip().rstrip(".").strip().strip("$").strip()
        return found or None

    def reward(self, problem: Problem, steps: Sequence[str]) -> float:
        pred = self.answer(problem, steps)
        if pred is None or problem.reference is None:
            return 0.0
        return float(pred == problem.reference or math_equal(problem.reference, pred))
