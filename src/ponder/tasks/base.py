"""The Task protocol: problems + prompt format + step rule + answer extraction + verifier.

A *state* is a problem plus the reasoning steps written so far. Each step is the exact text the model
wrote, ending with the task's step stop string (a newline for every built-in task), so
``prompt + "".join(steps)`` is the text the model continues from.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Literal, Mapping, Sequence

from ..errors import PonderError

#: "validation" is held out like "test", for choosing settings without looking at the test split; only
#: tasks that have one (countdown) serve it
Split = Literal["train", "validation", "test"]


@dataclass(frozen=True)
class Problem:
    """One problem. ``reference`` is the gold answer when the task has one (Game of 24 has none)."""

    id: str
    question: str
    reference: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "question": self.question, "reference": self.reference, "meta": self.meta}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Problem":
        return Problem(d["id"], d["question"], d.get("reference"), d.get("meta") or {})


class Task(ABC):
    """What a search needs to know about a kind of problem."""

    name: str = ""
    #: a step ends when the model writes one of these (the stop string stays in the step's text)
    step_stop: tuple[str, ...] = ("\n",)
    #: most tokens one step may take
    max_step_tokens: int = 48
    #: a trace is terminal after this many steps, answered or not
    max_steps: int = 8
    #: whether answers are voted on by self-consistency (Game of 24 answers are always "24")
    votable: bool = True
    #: whether ``reward`` can check a trace without the gold answer (Game of 24: yes, by arithmetic).
    #: Where it cannot, a search that reads the verifier is an oracle upper bound, not a test result.
    checkable: bool = False
    #: an action (the part of a step the model writes) ends at one of these; the task then writes the
    #: step's observation (``observe``). None: the task observes nothing, the model writes whole steps.
    action_stop: tuple[str, ...] | None = None
    #: the model writes every step whole, observations included (set per instance; see ``observes``)
    free_text: bool = False
    #: the task's own knobs as ``get_task`` was given them (``--task-option``; e.g. countdown's ``n_numbers``),
    #: set per instance, so that a Ray worker or a resumed run rebuilds the same task
    options: Mapping[str, Any] = MappingProxyType({})

    # --- data -------------------------------------------------------------------------------------
    @abstractmethod
    def problems(self, split: Split) -> list[Problem]:
        """The problems of a split; raises ``PonderError`` if the split is empty or unknown."""

    def imagine(self, n: int, seed: int) -> list[Problem]:
        """New training problems, never one of the test split. Tasks that cannot imagine raise."""
        raise PonderError(f"task {self.name!r} cannot imagine new problems")

    def bootstrap_traces(self, n: int, seed: int) -> list[tuple[Problem, list[str]]]:
        """Synthetic (problem, steps) traces for a model trained from scratch."""
        raise PonderError(f"task {self.name!r} has no synthetic traces for bootstrapping a model")

    def bootstrap_texts(self, n: int, seed: int) -> list[str]:
        """``bootstrap_traces`` as whole texts (prompt + steps)."""
        return [self.prompt(p) + "".join(steps) for p, steps in self.bootstrap_traces(n, seed)]

    def bootstrap_segments(self, n: int, seed: int) -> list[list[tuple[str, bool]]]:
        """Bootstrap traces as ``segments`` (observations not trained on), or whole texts, all trained on,
        from a task that only writes texts."""
        if type(self).bootstrap_traces is Task.bootstrap_traces:
            return [[(t, True)] for t in self.bootstrap_texts(n, seed)]
        return [self.segments(self.prompt(p), steps) for p, steps in self.bootstrap_traces(n, seed)]

    @property
    def can_bootstrap(self) -> bool:
        return type(self).bootstrap_traces is not Task.bootstrap_traces or type(self).bootstrap_texts is not Task.bootstrap_texts

    def segments(self, prompt: str, steps: Sequence[str]) -> list[tuple[str, bool]]:
        """A trace as (text, trained on) pieces: where the task observes, only the model's part of each
        step is trained on; the prompt and the observations are read, never learned. In free text every
        token after the prompt is the model's."""
        out = [(prompt, False)]
        for s in steps:
            a = self.action_of(s) if self.observes else s
            out += [(a, True), (s[len(a):], False)] if s.startswith(a) and s != a else [(s, True)]
        return out

    def parse_problem(self, text: str) -> Problem:
        """A problem typed on the command line (``ponder solve``)."""
        return Problem(id="cli", question=text.strip())

    # --- format -----------------------------------------------------------------------------------
    @abstractmethod
    def prompt(self, problem: Problem) -> str:
        """The plain-text prompt a base or from-scratch model continues with steps."""

    def chat_messages(self, problem: Problem) -> list[dict[str, str]]:
        """The messages for an instruct model with a chat template (the steps follow the assistant tag)."""
        return [{"role": "user", "content": self.prompt(problem)}]

    def judge_prompt(self, problem: Problem, steps: Sequence[str]) -> str:
        """The LLM judge's value prompt for a state (answered with sure / likely / impossible)."""
        work = "".join(steps).strip() or "(no steps yet)"
        return (
            f"Problem: {problem.question}\nPartial solution:\n{work}\n"
            "Can this partial solution still lead to a correct final answer? "
            "Answer with one word: sure, likely or impossible."
        )

    @staticmethod
    def one_shot(instruction: str, example: str, ask: str) -> list[dict[str, str]]:
        """A chat prompt: the instruction, one worked example, then the problem."""
        return [{"role": "user", "content": f"{instruction}\nExample:\n{example}{ask}"}]

    def split_steps(self, text: str) -> list[str]:
        """Cut a whole completion into steps at the stop strings, keeping each stop string.

        A stop string ends a step only once the step has content, as in the step sampler, so blank
        lines join the step that follows them.
        """
        steps: list[str] = []
        start = pos = 0
        while True:
            hits = [(i, s) for s in self.step_stop if (i := text.find(s, pos)) >= 0]
            if not hits:
                break
            i, stop = min(hits)
            pos = i + len(stop)
            if text[start:i].strip():
                steps.append(text[start:pos])
                start = pos
        if text[start:].strip():
            steps.append(text[start:])
        return steps

    # --- checking ---------------------------------------------------------------------------------
    @abstractmethod
    def answer(self, problem: Problem, steps: Sequence[str]) -> str | None:
        """The final answer written in ``steps``, or None if there is none yet."""

    @abstractmethod
    def reward(self, problem: Problem, steps: Sequence[str]) -> float:
        """The verifier: a reward in [0, 1] for a finished trace (1 = correct)."""

    def is_terminal(self, problem: Problem, steps: Sequence[str]) -> bool:
        """A trace ends when it has an answer or reaches ``max_steps``."""
        return len(steps) >= self.max_steps or self.answer(problem, steps) is not None

    # --- actions and observations -------------------------------------------------------------------
    @property
    def observes(self) -> bool:
        """Whether steps are action + observation: the model writes the action, the task its consequence
        (as a tool or a calculator would). Off with ``free_text``, where the model writes everything."""
        return self.action_stop is not None and not self.free_text

    def legal_actions(self, problem: Problem, steps: Sequence[str]) -> list[str] | None:
        """Every legal next action of this state (an empty list for a finished one), or None where the
        task cannot list them (free text: the policy's samples are the only proposals)."""
        return None

    def observe(self, problem: Problem, steps: Sequence[str], action: str) -> str | None:
        """The whole step for ``action`` taken in this state: the action, then the task's observation
        (ending with the step stop string), or None if the action is not legal here or its consequence
        cannot be computed (e.g. a division by zero)."""
        raise PonderError(f"task {self.name!r} writes no observations")

    def action_of(self, step: str) -> str:
        """The part of a step the model wrote (with observations, the rest is the task's)."""
        return step

    def first_bad_step(self, problem: Problem, steps: Sequence[str]) -> int | None:
        """Index of the first step that made a correct answer unreachable, or None if no step did:
        the ground truth that credit assignment is measured against. Only tasks that can decide it
        exactly implement it."""
        raise PonderError(f"task {self.name!r} cannot tell a trace's first bad step")


def read_jsonl(path: str | Path, required: Sequence[str], check: Callable[[dict], Any] | None = None) -> list[dict]:
    """Read a JSONL file; a malformed line or a missing key is a one-line error naming file and line, and so
    is a row that ``check`` refuses (by raising ``PonderError``: its message, after the file and line)."""
    path = Path(path)
    if not path.is_file():
        raise PonderError(f"data file not found: {path}")
    rows = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise PonderError(f"{path}:{lineno}: malformed JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise PonderError(f"{path}:{lineno}: expected a JSON object")
            missing = [k for k in required if k not in row]
            if missing:
                raise PonderError(f"{path}:{lineno}: missing key(s) {', '.join(missing)}")
            if check is not None:
                try:
                    check(row)
                except PonderError as e:
                    raise PonderError(f"{path}:{lineno}: {e}") from None
            rows.append(row)
    if not rows:
        raise PonderError(f"{path}: no problems in file")
    return rows


def shared_data_dir() -> Path | None:
    """``../shared/data`` next to the repository, or ``$PONDER_DATA``, where the benchmark files live."""
    import os

    env = os.environ.get("PONDER_DATA")
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve()
    candidates += [p / "shared" / "data" for p in here.parents]
    candidates += [Path.cwd() / ".." / "shared" / "data", Path.cwd() / "shared" / "data"]
    for c in candidates:
        if c.is_dir():
            return c
    return None
