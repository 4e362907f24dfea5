"""Game of 24: step legality, the verifier, splits, imagined problems, bootstrap traces and user data."""

from __future__ import annotations

from fractions import Fraction as F

import pytest

from ponder.errors import PonderError
from ponder.tasks import get_task
from ponder.tasks.base import Problem
from ponder.tasks.game24 import Game24, apply_step, parse_step, replay, solve

# 6 / (1 - 3/4) = 24, one operation per step, fractions exact
FRACTION_SOLUTION = [
    "3 / 4 = 3/4 (left: 3/4 1 6)\n",
    "1 - 3/4 = 1/4 (left: 1/4 6)\n",
    "6 / 1/4 = 24 (left: 24)\n",
]


@pytest.fixture(scope="module")
def task() -> Game24:
    return get_task("game24")


def puzzle(*nums: int) -> Problem:
    return Game24._problem(nums, "p")


def numbers(*xs) -> list[F]:
    return [F(x) for x in xs]


# --- one step -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "before, step, after",
    [
        ((4, 4, 6, 8), "4 + 8 = 12 (left: 4 6 12)\n", (4, 6, 12)),
        ((4, 4, 6, 8), "4 + 8 = 12 (left: 12 6 4)", (4, 6, 12)),  # any order of the left list
        ((4, 4, 6, 8), "  8 - 4 = 4 (left: 4 4 6)  \n", (4, 4, 6)),
        ((4, 4, 6, 8), "4 * 4 = 16 (left: 6 8 16)\n", (6, 8, 16)),  # two distinct 4s
        ((4, 4, 6, 8), "4 x 6 = 24 (left: 4 8 24)\n", (4, 8, 24)),  # operator alias
        ((4, 4, 6, 8), "6 ÷ 4 = 3/2 (left: 3/2 4 8)\n", ("3/2", 4, 8)),
        ((4, 4, 6, 8), "4 - 6 = -2 (left: -2 4 8)\n", (-2, 4, 8)),
        ((1, 3, 4, 6), "3 / 4 = 0.75 (left: 0.75 1 6)\n", ("3/4", 1, 6)),  # a decimal is the same number
        (("1/4", 6), "6 / 1/4 = 24 (left: 24)\n", (24,)),
        ((1, "3/4", 6), "1 - 3/4 = 1/4 (left: 1/4 6)\n", ("1/4", 6)),
    ],
)
def test_legal_steps(before, step, after):
    assert sorted(apply_step(numbers(*before), step)) == sorted(numbers(*after))


@pytest.mark.parametrize(
    "before, step",
    [
        ((4, 4, 6, 8), "4 + 8 = 13 (left: 4 6 13)\n"),  # wrong result
        ((4, 4, 6, 8), "5 + 8 = 13 (left: 4 4 13)\n"),  # 5 is not available
        ((1, 3, 4, 6), "6 * 6 = 36 (left: 1 3 4 36)\n"),  # 6 used twice, present once
        ((4, 4, 6, 8), "4 + 8 = 12 (left: 6 12)\n"),  # left list misses the other 4
        ((4, 4, 6, 8), "4 + 8 = 12 (left: 4 4 6 12)\n"),  # left list keeps a used number
        ((4, 4, 6, 8), "4 + 8 = 12 (left: 4 6 13)\n"),  # left list has the wrong result
        ((4, 4, 6, 8), "4 + 8 = 12 (left: 4 7 12)\n"),  # left list invents a number
        ((4, 4, 6, 8), "4 + 8 = 12\n"),  # no left list at all
        ((4, 4, 6, 8), "4+8 = 12 (left: 4 6 12)\n"),  # the operator needs spaces (so 3/4 is a number)
        ((1, 3, 4, 6), "3 / 4 = 0.7 (left: 0.7 1 6)\n"),  # a rounded decimal is not exact
        ((0, 4, 6, 8), "4 / 0 = 0 (left: 0 6 8)\n"),  # division by zero
        ((0, 4, 6, 8), "4 / 0 = 1/0 (left: 1/0 6 8)\n"),
        ((4, 4, 6, 8), "the answer is 24\n"),
        ((4, 4, 6, 8), ""),
    ],
)
def test_illegal_steps(before, step):
    assert apply_step(numbers(*before), step) is None


def test_parse_step_reads_fractions_and_aliases():
    assert parse_step("6 / 1/4 = 24 (left: 24)") == (F(6), "/", F(1, 4), F(24), [F(24)])
    assert parse_step("2 × 3 = 6 (left: 6)")[1] == "*"
    assert parse_step("2 + 3 = 5") is None


def test_the_legal_actions_follow_the_state_fractions_included(task):
    p = puzzle(1, 3, 4, 6)
    first, second = (task.action_of(s) for s in FRACTION_SOLUTION[:2])
    assert (first, second) == ("3 / 4 =", "1 - 3/4 =")
    assert first in task.legal_actions(p, []) and task.observe(p, [], first) == "3 / 4 = 3/4 (left: 3/4 1 6)\n"
    assert second not in task.legal_actions(p, []) and task.observe(p, [], second) is None  # 3/4 is not there yet
    assert second in task.legal_actions(p, FRACTION_SOLUTION[:1])
    assert task.observe(p, FRACTION_SOLUTION[:1], second) == "1 - 3/4 = 1/4 (left: 1/4 6)\n"
    assert task.legal_actions(p, ["1 + 1 = 2 (left: 2 4 6)\n"]) == []  # dead state


# --- the verifier -----------------------------------------------------------------------------------------
def test_fraction_solution_verifies(task):
    p = puzzle(1, 3, 4, 6)
    assert task.reward(p, FRACTION_SOLUTION) == 1.0
    assert task.answer(p, FRACTION_SOLUTION) == "24"
    assert task.is_terminal(p, FRACTION_SOLUTION)
    for i in range(3):
        assert not task.is_terminal(p, FRACTION_SOLUTION[:i])
        assert task.answer(p, FRACTION_SOLUTION[:i]) is None
        assert task.reward(p, FRACTION_SOLUTION[:i]) == 0.0
    assert task.can_reach(p, FRACTION_SOLUTION[:2])
    assert not task.can_reach(p, ["1 + 3 = 4 (left: 4 4 6)\n", "4 + 4 = 8 (left: 6 8)\n"])


def test_legal_trace_to_another_number_gets_no_reward(task):
    p = puzzle(4, 4, 6, 8)
    steps = ["4 + 4 = 8 (left: 6 8 8)\n", "8 + 8 = 16 (left: 6 16)\n", "6 + 16 = 22 (left: 22)\n"]
    assert task.reward(p, steps) == 0.0
    assert task.answer(p, steps) == "22"
    assert task.is_terminal(p, steps)


def test_illegal_step_is_terminal_with_reward_zero(task):
    p = puzzle(4, 4, 6, 8)
    bad = ["4 + 8 = 12 (left: 4 6 12)\n", "6 * 6 = 36 (left: 4 12 36)\n"]
    assert task.is_terminal(p, bad)
    assert task.reward(p, bad) == 0.0
    assert task.answer(p, bad) is None
    # a "solution" after an illegal step still earns nothing: the replay stops at the first bad step
    cheat = ["4 + 4 = 9 (left: 6 8 9)\n", "6 + 9 = 15 (left: 8 15)\n", "15 + 9 = 24 (left: 24)\n"]
    assert replay(task.numbers(puzzle(4, 4, 6, 8)), cheat) is None
    assert task.reward(p, cheat) == 0.0


def test_solution_steps_after_the_answer_are_not_a_solution(task):
    p = puzzle(4, 4, 6, 8)
    good = ["4 + 8 = 12 (left: 4 6 12)\n", "6 - 4 = 2 (left: 2 12)\n", "2 * 12 = 24 (left: 24)\n"]
    assert task.reward(p, good) == 1.0
    assert task.reward(p, good + ["24 + 0 = 24 (left: 24)\n"]) == 0.0


def test_solve_finds_a_verified_solution_for_every_test_puzzle(task):
    test = task.problems("test")
    assert len(test) == 100
    for p in test:
        steps = solve(p.meta["numbers"])
        assert steps is not None, p.question
        assert len(steps) == 3 and task.reward(p, steps) == 1.0, (p.question, steps)
    assert task.reward(puzzle(1, 3, 4, 6), solve([1, 3, 4, 6])) == 1.0
    assert solve([1, 1, 1, 1]) is None


# --- splits, imagination, bootstrap ---------------------------------------------------------------------
def test_splits(task):
    train, test = task.problems("train"), task.problems("test")
    assert len(train) == 900 and len(test) == 100
    assert [p.id for p in test] == [f"game24-{r}" for r in range(901, 1001)]
    assert [p.id for p in train] == [f"game24-{r}" for r in range(1, 901)]
    assert (train[0].question, train[-1].question) == ("1 1 4 6", "1 3 3 11")
    assert (test[0].question, test[-1].question) == ("4 5 6 10", "4 9 10 13")
    assert all(task.prompt(p) == p.question + "\n" and len(p.meta["numbers"]) == 4 for p in test)


def test_imagine_avoids_test_puzzles_and_is_deterministic(task):
    test_keys = {tuple(sorted(p.meta["numbers"])) for p in task.problems("test")}
    a = task.imagine(300, seed=1)
    assert a == task.imagine(300, seed=1)
    assert a != task.imagine(300, seed=2)
    keys = [tuple(p.meta["numbers"]) for p in a]
    assert len(set(keys)) == 300
    assert not set(keys) & test_keys
    assert all(1 <= x <= 13 for k in keys for x in k)
    assert any(solve(k) is None for k in keys)  # the solver does not choose training problems


def test_imagine_never_asks_the_solver(task, monkeypatch):
    import ponder.tasks.game24 as g

    def no_solver(*a):
        raise AssertionError("the brute-force solver is for analysis only")

    monkeypatch.setattr(g, "_solve", no_solver)
    monkeypatch.setattr(g, "reachable", no_solver)
    assert len(task.imagine(50, seed=3)) == 50
    assert len(task.bootstrap_traces(50, seed=3)) == 50


def test_bootstrap_texts_are_legal_off_test_and_deterministic(task):
    test_keys = {tuple(sorted(p.meta["numbers"])) for p in task.problems("test")}
    texts = task.bootstrap_texts(300, seed=5)
    assert texts == task.bootstrap_texts(300, seed=5)
    assert texts != task.bootstrap_texts(300, seed=6)
    for text in texts:
        head, rest = text.split("\n", 1)
        nums = [int(x) for x in head.split()]
        assert len(nums) == 4 and tuple(sorted(nums)) not in test_keys
        p = puzzle(*nums)
        steps = task.split_steps(rest)
        assert len(steps) == 3 and "".join(steps) == rest
        left = replay(task.numbers(p), steps)
        assert left is not None and len(left) == 1, text
        assert task.is_terminal(p, steps)


# --- text handling ----------------------------------------------------------------------------------------
def test_split_steps_leading_blank_lines_and_no_final_newline(task):
    text = "\n\n4 + 8 = 12 (left: 4 6 12)\n6 - 4 = 2 (left: 2 12)\n2 * 12 = 24 (left: 24)"
    steps = task.split_steps(text)
    assert steps == ["\n\n4 + 8 = 12 (left: 4 6 12)\n", "6 - 4 = 2 (left: 2 12)\n", "2 * 12 = 24 (left: 24)"]
    assert task.reward(puzzle(4, 4, 6, 8), steps) == 1.0
    assert task.split_steps("") == [] and task.split_steps("\n \n") == []
    assert task.split_steps("a\n\n\nb\n") == ["a\n", "\n\nb\n"]


@pytest.mark.parametrize("text", ["1 2 3", "1 2 3 4 5", "a b c d", "1.5 2 3 4", "", "   "])
def test_parse_problem_rejects(task, text):
    with pytest.raises(PonderError, match="four whole numbers"):
        task.parse_problem(text)


def test_parse_problem_accepts_commas(task):
    p = task.parse_problem(" 4, 9, 10, 13 ")
    assert p.question == "4 9 10 13" and p.meta["numbers"] == [4, 9, 10, 13]
    assert task.prompt(p) == "4 9 10 13\n"


# --- the user's own CSV -----------------------------------------------------------------------------------
def test_user_csv_with_ranks(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text("Rank,Puzzles\n1,1 2 3 4\n2,2 2 6 6\n950,1 3 4 6\n1200,13 13 13 13\n")
    t = get_task("game24", data=path)
    assert [p.id for p in t.problems("train")] == ["game24-1", "game24-2"]
    assert [(p.id, p.question) for p in t.problems("test")] == [("game24-950", "1 3 4 6")]
    assert all(tuple(p.meta["numbers"]) != (1, 3, 4, 6) for p in t.imagine(400, seed=0))


def test_user_csv_without_ranks_serves_both_splits(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text("Puzzles\n1 3 4 6\n4 4 6 8\n")
    t = get_task("game24", data=str(path))
    for split in ("train", "test"):
        assert [p.question for p in t.problems(split)] == ["1 3 4 6", "4 4 6 8"]
        assert [p.id for p in t.problems(split)] == ["game24-line2", "game24-line3"]  # ids unique even for repeated puzzles


def test_user_csv_only_outside_a_split_is_an_error(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text("Rank,Puzzles\n1,1 2 3 4\n")
    with pytest.raises(PonderError, match="test split is empty"):
        get_task("game24", data=path).problems("test")


@pytest.mark.parametrize(
    "content, message",
    [
        ("Rank,Puzzles\n1,1 2 3 4\n2,1 2 x 4\n", r"mine\.csv:3: malformed row"),
        ("Rank,Puzzles\n1,1 2 3 4\n2,1 2 3\n", r"mine\.csv:3: expected four numbers"),
        ("Rank,Puzzles\nx,1 2 3 4\n", r"mine\.csv:2: malformed row"),
        ("Numbers\n1 2 3 4\n", r"mine\.csv: expected a CSV with a 'Puzzles' column"),
        ("Rank,Puzzles\n", r"mine\.csv: no puzzles"),
    ],
)
def test_user_csv_errors_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "mine.csv"
    path.write_text(content)
    with pytest.raises(PonderError, match=message):
        get_task("game24", data=path)


def test_user_csv_missing_file(tmp_path):
    with pytest.raises(PonderError, match="data file not found"):
        get_task("game24", data=tmp_path / "nope.csv")


def test_user_csv_error_line_after_blank_line(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text("Rank,Puzzles\n1,1 2 3 4\n\n2,1 2 x 4\n")  # the bad row is on line 4
    with pytest.raises(PonderError, match=r"mine\.csv:4: malformed row"):
        get_task("game24", data=path)


def test_user_csv_short_row_is_a_ponder_error(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text("Rank,Puzzles\n1,1 2 3 4\n7\n")
    with pytest.raises(PonderError, match=r"mine\.csv:3"):
        get_task("game24", data=path)
