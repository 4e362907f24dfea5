"""The text tasks: generated arithmetic, GSM8K and MATH-500 (data from ../shared/data)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from ponder.errors import PonderError
from ponder.tasks import get_task
from ponder.tasks.arithmetic import solve
from ponder.tasks.base import Problem, shared_data_dir

DATA = shared_data_dir()
needs_data = pytest.mark.skipif(DATA is None or not (DATA / "gsm8k_test.jsonl").is_file(), reason="no shared data")


# --- arithmetic ---------------------------------------------------------------------------------------
def test_arithmetic_worked_solution_respects_precedence():
    assert solve("7 + 3 * 2 - 4") == [(3, "*", 2, 6), (7, "+", 6, 13), (13, "-", 4, 9)]
    assert solve("2 - 3 * 4 * 5") == [(3, "*", 4, 12), (12, "*", 5, 60), (2, "-", 60, -58)]
    task = get_task("arithmetic")
    p = Problem(id="x", question="7 + 3 * 2 - 4", reference="9")
    assert task.prompt(p) == "Q: 7 + 3 * 2 - 4\n"
    assert task.worked_steps(p) == ["3 * 2 = 6\n", "7 + 6 = 13\n", "13 - 4 = 9\n", "Answer: 9\n"]


def test_arithmetic_is_deterministic_and_test_split_never_leaks():
    a = get_task("arithmetic", operands=3, digits=1, seed=0)
    b = get_task("arithmetic", operands=3, digits=1, seed=0)
    other_seed = get_task("arithmetic", operands=3, digits=1, seed=1)
    assert a.problems("test") == b.problems("test") == other_seed.problems("test")
    assert a.problems("train") == b.problems("train") != other_seed.problems("train")
    assert a.imagine(50, seed=3) == b.imagine(50, seed=3)
    assert a.bootstrap_texts(5, seed=3) == b.bootstrap_texts(5, seed=3)

    test = {p.question for p in a.problems("test")}
    assert len(test) == 200 and len(a.problems("train")) == 2000
    assert not test & {p.question for p in a.problems("train")}
    imagined = a.imagine(3000, seed=7)
    assert len({p.question for p in imagined}) == 3000 and not test & {p.question for p in imagined}
    boot = a.bootstrap_texts(3000, seed=7)
    assert not test & {t.split("\n")[0].removeprefix("Q: ") for t in boot}

    for p in a.problems("test")[:50]:
        assert len(p.question.split()) == 5 and p.reference == str(eval(p.question))


def test_arithmetic_bootstrap_traces_are_correct():
    task = get_task("arithmetic", operands=4, digits=2)
    for text in task.bootstrap_texts(20, seed=0):
        question = text.split("\n")[0].removeprefix("Q: ")
        p = Problem(id="x", question=question, reference=str(eval(question)))
        steps = task.split_steps(text.removeprefix(task.prompt(p)))
        assert len(steps) == 4 and steps[-1] == f"Answer: {p.reference}\n"
        assert task.reward(p, steps) == 1.0 and task.first_bad_step(p, steps) is None
        assert task.is_terminal(p, steps) and not task.is_terminal(p, steps[:-1])


def test_arithmetic_reward_answer_and_first_bad_step():
    task = get_task("arithmetic")
    p = Problem(id="x", question="7 + 3 * 2 - 4", reference="9")
    right = ["3 * 2 = 6\n", "7 + 6 = 13\n", "13 - 4 = 9\n", "Answer: 9\n"]
    assert task.answer(p, right) == "9" and task.reward(p, right) == 1.0
    assert task.answer(p, right[:3]) is None and task.reward(p, right[:3]) == 0.0
    wrong_answer = right[:3] + ["Answer: 10\n"]
    assert task.reward(p, wrong_answer) == 0.0 and task.first_bad_step(p, wrong_answer) == 3
    left_to_right = ["7 + 3 = 10\n", "10 * 2 = 20\n", "20 - 4 = 16\n", "Answer: 16\n"]
    assert task.first_bad_step(p, left_to_right) == 0
    slip = ["3 * 2 = 6\n", "7 + 6 = 14\n", "14 - 4 = 10\n", "Answer: 10\n"]
    assert task.first_bad_step(p, slip) == 1
    assert task.first_bad_step(p, ["3*2=6\n"]) is None  # spacing does not matter; a prefix is fine
    assert task.first_bad_step(p, right + ["extra\n"]) == 4
    assert task.first_bad_step(p, ["Answer: 9\n"]) == 0


def test_arithmetic_knobs_are_validated():
    for kw in ({"operands": 1}, {"digits": 0}, {"n_test": 0}, {"n_train": -1}, {"operands": 2, "n_train": 200}):
        with pytest.raises(PonderError, match="arithmetic"):
            get_task("arithmetic", **kw)
    with pytest.raises(PonderError, match="no --data"):
        get_task("arithmetic", data="x.jsonl")
    small = get_task("arithmetic", operands=2, n_test=100, n_train=200)  # all 300 problems
    assert {p.question for p in small.problems("train")} | {p.question for p in small.problems("test")} == {
        f"{a} {op} {b}" for a in range(10) for op in "+-*" for b in range(10)
    }


# --- GSM8K --------------------------------------------------------------------------------------------
@needs_data
def test_gsm8k_references_from_real_rows():
    task = get_task("gsm8k")
    test = task.problems("test")
    assert len(test) == 1319 and test[0].id == "gsm8k_test-0"
    assert test[0].question.startswith("Janet") and test[0].reference == "18"
    rows = [json.loads(line) for line in (DATA / "gsm8k_test.jsonl").read_text().splitlines()]
    raw = [row["answer"].split("####")[-1].strip() for row in rows]
    assert any("," in r for r in raw)  # the comma case below is real
    assert [p.reference for p in test] == [r.replace(",", "") for r in raw]
    assert len(task.problems("train")) == 7473


@pytest.mark.parametrize(
    "line, expected",
    [
        ("The answer is 18.\n", "18"),
        ("So the answer is $1,234.\n", "1234"),
        ("The answer is 18.0\n", "18"),
        ("The final answer is: $\\boxed{18.50}$\n", "18.5"),
        ("The answer is -$5.\n", "-5"),
        ("#### 1,234\n", "1234"),
        ("\\boxed{42}\n", "42"),
        ("She makes 9 * 2 = 18 dollars.\n", None),
        ("The answer is unclear.\n", None),
        ("So the answer is 16 * 2 = 32.\n", "32"),  # the result of arithmetic on the answer line
    ],
)
def test_gsm8k_answer_extraction(line, expected):
    task = get_task("gsm8k", data="unused.jsonl")
    p = Problem(id="x", question="q", reference="18")
    steps = ["16 - 3 - 4 = 9 eggs are sold.\n", line]
    assert task.answer(p, steps) == expected
    assert task.is_terminal(p, steps) == (expected is not None)


def test_gsm8k_reward():
    task = get_task("gsm8k", data="unused.jsonl")
    p = Problem(id="x", question="q", reference="1234")
    assert task.reward(p, ["Add them.\n", "The answer is $1,234.\n"]) == 1.0
    assert task.reward(p, ["The answer is 1234.00\n"]) == 1.0
    assert task.reward(p, ["The answer is 1235.\n"]) == 0.0
    assert task.reward(p, ["1234 is the total.\n"]) == 0.0  # no final line, no answer
    # the first answer line is the trace's answer; what follows it was never part of the trace
    assert task.answer(p, ["The answer is 7.\n", "The answer is 1234.\n"]) == "7"


def test_gsm8k_prompts_ask_for_the_answer_line():
    task = get_task("gsm8k", data="unused.jsonl")
    p = Problem(id="x", question="How many eggs?", reference="18")
    assert task.prompt(p).endswith("Question: How many eggs?\nAnswer:\n") and "The answer is X." in task.prompt(p)
    (msg,) = task.chat_messages(p)
    assert msg["role"] == "user" and "How many eggs?" in msg["content"] and "one step per line" in msg["content"]


def test_user_file_serves_any_split_and_bad_lines_name_file_and_line(tmp_path: Path):
    good = tmp_path / "mine.jsonl"
    good.write_text(json.dumps({"question": "1+1?", "answer": "2\n#### 2"}) + "\n")
    task = get_task("gsm8k", data=good)
    assert task.problems("train") == task.problems("test") == [Problem(id="mine-0", question="1+1?", reference="2")]

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "answer": "#### 1"}) + "\n{not json\n")
    with pytest.raises(PonderError, match=rf"{bad}:2: malformed JSON"):
        get_task("gsm8k", data=bad).problems("test")
    no_ref = tmp_path / "noref.jsonl"
    no_ref.write_text(json.dumps({"question": "q", "answer": "two"}) + "\n")
    with pytest.raises(PonderError, match="#### <number>"):
        get_task("gsm8k", data=no_ref).problems("test")
    with pytest.raises(PonderError, match="not found"):
        get_task("math500", data=tmp_path / "missing.jsonl").problems("test")
    no_key = tmp_path / "nokey.jsonl"
    no_key.write_text(json.dumps({"answer": "1"}) + "\n")
    with pytest.raises(PonderError, match=rf"{no_key}:1: missing key\(s\) problem"):
        get_task("math500", data=no_key).problems("test")


def test_missing_data_dir_is_a_clear_error(monkeypatch, tmp_path: Path):
    monkeypatch.setattr("ponder.tasks.math_word.shared_data_dir", lambda: None)
    with pytest.raises(PonderError, match="data directory not found"):
        get_task("gsm8k").problems("test")
    monkeypatch.setattr("ponder.tasks.math_word.shared_data_dir", lambda: tmp_path)
    with pytest.raises(PonderError, match="gsm8k_test.jsonl"):
        get_task("gsm8k").problems("test")


# --- MATH-500 -----------------------------------------------------------------------------------------
@needs_data
def test_math500_test_split_and_no_train_split():
    task = get_task("math500")
    test = task.problems("test")
    assert len(test) == 500 and test[0].reference == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert test[0].meta["subject"] == "Precalculus"
    with pytest.raises(PonderError, match="math500 has no train split"):
        task.problems("train")
    with pytest.raises(PonderError, match="unknown split"):
        task.problems("dev")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "line, expected",
    [
        ("The answer is $\\boxed{\\frac{1}{2}}$.\n", "\\frac{1}{2}"),
        ("So \\boxed{ 3 } or rather \\boxed{\\frac{\\pi}{2}}\n", "\\frac{\\pi}{2}"),
        ("The answer is $\\frac{1}{2}$.\n", "\\frac{1}{2}"),
        ("The answer is \\boxed{\\frac{1}{2}\n", None),  # the box never closes
        ("Then x = 3.\n", None),
    ],
)
def test_math500_answer_extraction(line, expected):
    task = get_task("math500", data="unused.jsonl")
    assert task.answer(Problem(id="x", question="q", reference="1"), [line]) == expected


@pytest.mark.parametrize(
    "reference, line, reward",
    [
        ("\\frac{1}{2}", "The answer is $\\boxed{0.5}$.", 1.0),
        ("\\frac{1}{2}", "The answer is $\\boxed{\\dfrac12}$.", 1.0),
        ("\\frac{1}{2}", "The answer is $\\boxed{\\frac{1}{3}}$.", 0.0),
        ("\\frac{\\pi}{2}", "\\boxed{\\frac{\\pi}{2}}", 1.0),
        ("\\frac{\\pi}{2}", "The answer is \\pi/2.", 1.0),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "The answer is $\\boxed{(3, \\frac{\\pi}{2})}$.", 1.0),
        ("5", "The answer is $\\boxed{}$.", 0.0),
        ("5", "The answer is \\boxed{\\frac{}.", 0.0),
        ("5", "I do not know.", 0.0),
    ],
)
def test_math500_reward(reference, line, reward):
    task = get_task("math500", data="unused.jsonl")
    assert task.reward(Problem(id="x", question="q", reference=reference), ["Think.\n", line + "\n"]) == reward


def test_math500_reward_works_in_worker_threads():
    task = get_task("math500", data="unused.jsonl")
    p = Problem(id="x", question="q", reference="\\frac{3}{4}")
    out: list[float] = []
    worker = threading.Thread(target=lambda: out.append(task.reward(p, ["The answer is $\\boxed{0.75}$.\n"])))
    worker.start()
    worker.join()
    assert out == [1.0]


def test_math500_prompts_ask_for_a_boxed_answer():
    task = get_task("math500", data="unused.jsonl")
    p = Problem(id="x", question="What is $1+1$?", reference="2")
    assert "\\boxed{X}" in task.prompt(p) and task.prompt(p).endswith("Answer:\n")
    assert "\\boxed{X}" in task.chat_messages(p)[0]["content"]
    assert task.step_stop == ("\n",) and task.max_steps == 12 and task.max_step_tokens == 96
