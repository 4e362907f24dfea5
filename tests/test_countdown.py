"""Countdown: generation reproducible from its seed, held-out splits no training problem can come from, reachable
held-out problems, observations and legal actions as in Game of 24, the knobs, the user's own file, one-line errors,
and a loop that never asks the solver."""

from __future__ import annotations

import json
import random

import pytest

import ponder.tasks.countdown as cd
import ponder.tasks.game24 as g
from ponder.cli import main
from ponder.errors import PonderError
from ponder.io import read_rows
from ponder.tasks import get_task, parse_task_options
from ponder.tasks.countdown import Countdown, bucket
from ponder.tasks.game24 import apply_step, parse_step, replay, solve

TASK = Countdown()


def problem(*nums: int, target: int):
    return Countdown._problem((tuple(sorted(nums)), target), "p")


def key(p) -> tuple:
    return tuple(p.meta["numbers"]), p.meta["target"]


def forbid_the_solver(monkeypatch) -> None:
    """Every brute-force entry point raises: what runs after this asks no solver."""
    def solver(*a, **k):
        raise AssertionError("the brute-force solver is for analysis and the held-out splits only")

    for name in ("_solve", "solve", "reachable"):
        monkeypatch.setattr(g, name, solver)
    monkeypatch.setattr(cd, "reachable", solver)


@pytest.fixture(scope="module")
def held_out():
    """The real default splits: 1,000 test and 200 validation problems."""
    return TASK.problems("test"), TASK.problems("validation")


# --- generation ------------------------------------------------------------------------------------------
def test_held_out_splits_are_reproducible_reachable_and_a_smaller_one_is_a_prefix(held_out):
    test, val = held_out
    assert len(test) == 1000 and len(val) == 200
    assert [p.id for p in test[:2]] == ["countdown-test-0", "countdown-test-1"]
    assert len({key(p) for p in test}) == 1000 and len({key(p) for p in val}) == 200  # distinct problems
    cd.held_out_split.cache_clear()  # regenerated from the seed, not read from the cache
    assert Countdown().problems("test") == test
    assert Countdown(test_size=50, validation_size=20).problems("test") == test[:50]
    assert Countdown(validation_size=20).problems("validation") == val[:20]
    for p in test + val:
        nums, target = key(p)
        assert len(nums) == 4 and all(1 <= x <= 99 for x in nums) and 10 <= target <= 100
        assert g.reachable(nums, target), p.question  # unreachable problems are kept out
    for p in test[:25]:  # the brute-force solution verifies
        assert TASK.reward(p, solve(p.meta["numbers"], p.meta["target"])) == 1.0
    assert sorted(p.meta["target"] for p in test) != sorted(p.meta["target"] for p in val)  # own seeds
    # the target is drawn uniformly, as in Stream of Search: every decile of 10-100 holds about a tenth
    counts = [sum(lo <= p.meta["target"] < lo + 9 for p in test) for lo in range(10, 91, 9)]
    assert min(counts) > 60 and max(counts) < 140, counts


def test_imagine_is_reproducible_from_its_seed_and_reachable_by_construction():
    a = TASK.imagine(40, seed=1)
    assert a == TASK.imagine(40, seed=1)
    assert a != TASK.imagine(40, seed=2)
    assert len({key(p) for p in a}) == 40
    for p in a:
        nums, target = key(p)
        assert list(nums) == sorted(nums) and len(nums) == 4 and all(1 <= x <= 99 for x in nums)
        assert 10 <= target <= 100 and p.question == f"{' '.join(map(str, nums))} -> {target}"
        assert g.reachable(nums, target)
    assert TASK.bootstrap_texts(20, seed=5) == TASK.bootstrap_texts(20, seed=5) != TASK.bootstrap_texts(20, seed=6)


def test_no_held_out_problem_can_be_generated_for_training(held_out):
    test, val = held_out
    assert {bucket(*key(p)) for p in test} == {0} and {bucket(*key(p)) for p in val} == {1}
    held = {key(p) for p in test + val}
    training = [p for seed in range(5) for p in TASK.imagine(1000, seed)] + TASK.problems("train")
    training += [p for p, _ in TASK.bootstrap_traces(1000, seed=3)]
    assert all(bucket(*key(p)) >= 2 for p in training)  # the held-out buckets are never drawn from
    assert not held & {key(p) for p in training}
    # the guarantee holds for every problem: a held-out one is refused wherever it would be drawn
    assert all(bucket(*k) in (0, 1) for k in held)


def test_imagine_and_bootstrap_never_ask_the_solver(monkeypatch):
    cd.held_out_split.cache_clear()  # nothing built before: imagine needs no held-out split to avoid it
    forbid_the_solver(monkeypatch)
    t = Countdown()
    assert len(t.imagine(20, seed=3)) == 20
    assert len(t.bootstrap_traces(10, seed=3)) == 10
    assert cd.held_out_split.cache_info().currsize == 0


def test_bootstrap_traces_are_random_legal_play_to_one_number():
    hits = 0
    for p, steps in TASK.bootstrap_traces(60, seed=7):
        assert len(steps) == 3
        left = replay(TASK.numbers(p), steps)
        assert left is not None and len(left) == 1 and TASK.is_terminal(p, steps)
        assert all(parse_step(s)[3].denominator == 1 and 0 <= parse_step(s)[3] <= 1000 for s in steps)
        hits += TASK.reward(p, steps) == 1.0
    assert hits < 30  # they teach the format, not the solution


# --- the knobs ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [3, 5])
def test_numbers_per_problem_and_ranges_are_knobs(n):
    t = get_task("countdown", n_numbers=n, max_number=20, min_target=50, max_target=60, test_size=5, validation_size=2)
    assert t.options == {"n_numbers": n, "max_number": 20, "min_target": 50, "max_target": 60, "test_size": 5,
                         "validation_size": 2}
    assert t.max_steps == n - 1
    for p in t.problems("test") + t.imagine(10, seed=0):
        nums, target = key(p)
        assert len(nums) == n and all(1 <= x <= 20 for x in nums) and 50 <= target <= 60
    p = t.problems("test")[0]
    assert len(t.legal_actions(p, [])) <= 6 * n * (n - 1) // 2
    assert t.reward(p, solve(p.meta["numbers"], p.meta["target"])) == 1.0


@pytest.mark.parametrize(
    "options, message",
    [
        ({"n_numbers": 1}, "n_numbers must be 2-6, got 1"),
        ({"n_numbers": 7}, "n_numbers must be 2-6, got 7"),
        ({"n_numbers": "five"}, "n_numbers must be a whole number, got 'five'"),
        ({"max_number": 2.5}, "max_number must be a whole number"),
        ({"n_numbers": True}, "n_numbers must be a whole number"),
        ({"min_number": 0}, r"need 1 <= min_number <= max_number, got 0 and 99"),
        ({"min_number": 50, "max_number": 10}, r"need 1 <= min_number <= max_number, got 50 and 10"),
        ({"min_target": 100, "max_target": 10}, r"need 1 <= min_target <= max_target, got 100 and 10"),
        ({"test_size": 0}, "test_size must be at least 1"),
        ({"numbers": 5}, r"task 'countdown' has no option 'numbers'; its options: n_numbers, min_number"),
    ],
)
def test_bad_knobs_are_one_line_errors(options, message):
    with pytest.raises(PonderError, match=message) as e:
        get_task("countdown", **options)
    assert "\n" not in str(e.value)


def test_an_unknown_task_option_names_those_the_task_takes():
    with pytest.raises(PonderError, match="task 'game24' has no option 'n_numbers'; its options: listed"):
        get_task("game24", n_numbers=5)
    with pytest.raises(PonderError, match="task 'gsm8k' has no option 'n_numbers'; it takes none"):
        get_task("gsm8k", n_numbers=5)


def test_task_options_are_read_as_yaml_and_checked():
    assert parse_task_options(["n_numbers=5", " max_target = 200"]) == {"n_numbers": 5, "max_target": 200}
    for items, message in ((["n_numbers"], "expected KEY=VALUE"), (["=5"], "expected KEY=VALUE"),
                           (["n_numbers=5", "n_numbers=3"], "given twice"), (["n_numbers=[1"], "cannot read")):
        with pytest.raises(PonderError, match=message):
            parse_task_options(items)


def test_knobs_that_leave_no_problem_are_an_error_not_a_hang():
    t = Countdown(n_numbers=2, max_number=2, min_target=90, max_target=100, test_size=1, validation_size=1)
    with pytest.raises(PonderError, match="no random play of 2 numbers 1-2 ended on a target 90-100"):
        t.imagine(1, seed=0)
    with pytest.raises(PonderError, match="no new reachable test problem for target"):
        t.problems("test")


# --- observations and legal actions, as in Game of 24 -------------------------------------------------------
def test_every_listed_action_observes_to_a_legal_step_and_nothing_is_missing():
    from test_actions import assert_every_legal_operation_is_listed_once

    p = problem(3, 25, 50, 4, target=21)
    assert len(TASK.legal_actions(p, [])) == 36  # 6 pairs x (+, *, a-b, b-a, a/b, b/a)
    assert_every_legal_operation_is_listed_once(TASK, p)
    assert_every_legal_operation_is_listed_once(TASK, problem(2, 3, 5, 7, 11, target=60))  # five numbers


def test_observations_write_the_result_and_the_numbers_left_sorted():
    p = problem(3, 4, 25, 50, target=21)
    assert TASK.observe(p, [], "25 - 4 =") == "25 - 4 = 21 (left: 3 21 50)\n"
    assert TASK.observe(p, [], "50 / 4 =") == "50 / 4 = 25/2 (left: 3 25/2 25)\n"  # exact fractions
    assert TASK.observe(p, [], "7 + 3 =") is None and TASK.observe(p, [], "three plus four") is None
    for _, steps in TASK.bootstrap_traces(20, seed=0):
        for step in steps:
            assert parse_step(step)[4] == sorted(parse_step(step)[4])
    free = Countdown(free_text=True)  # the model writes the step: untouched numbers in order, then the result
    rng = random.Random(0)
    steps = [s for _ in range(20) for s in free.random_trace((3, 4, 25, 50), rng)]
    assert all(parse_step(s)[4][-1] == parse_step(s)[3] for s in steps)
    assert any(parse_step(s)[4] != sorted(parse_step(s)[4]) for s in steps)
    assert free.legal_actions(p, []) and not free.observes  # the search samples in free text


def test_equal_numbers_once_zero_never_a_divisor_dead_states_have_no_action():
    p = problem(7, 7, 7, target=14)
    assert TASK.legal_actions(p, []) == ["7 + 7 =", "7 - 7 =", "7 * 7 =", "7 / 7 ="]
    s1 = TASK.observe(p, [], "7 - 7 =")
    assert s1 == "7 - 7 = 0 (left: 0 7)\n"
    acts = TASK.legal_actions(p, [s1])
    assert "7 / 0 =" not in acts and "0 / 7 =" in acts and TASK.observe(p, [s1], "7 / 0 =") is None
    assert TASK.legal_actions(p, [s1, "bad step\n"]) == []
    assert not any(a != b and b.startswith(a) for a in TASK.legal_actions(problem(1, 1, 13, 2, target=10), [])
                   for b in TASK.legal_actions(problem(1, 1, 13, 2, target=10), []))


def test_segments_train_on_the_action_only():
    steps = ["25 - 4 = 21 (left: 3 21 50)\n"]
    assert TASK.segments("3 4 25 50 -> 21\n", steps) == [
        ("3 4 25 50 -> 21\n", False), ("25 - 4 =", True), (" 21 (left: 3 21 50)\n", False)]


# --- the verifier, reachability, first bad step -----------------------------------------------------------
def test_the_verifier_reads_the_problem_s_own_target():
    p = problem(3, 4, 25, 50, target=21)
    win = ["25 - 4 = 21 (left: 3 21 50)\n", "50 / 3 = 50/3 (left: 50/3 21)\n", "50/3 * 21 = 350 (left: 350)\n"]
    assert TASK.reward(p, win) == 0.0 and TASK.answer(p, win) == "350"  # legal, but 350 is not the target
    right = TASK.split_steps("50 - 25 = 25 (left: 3 4 25)\n25 - 4 = 21 (left: 3 21)\n21 * 3 = 63 (left: 63)\n")
    assert TASK.reward(problem(3, 4, 25, 50, target=63), right) == 1.0
    assert TASK.reward(problem(3, 4, 25, 50, target=24), right) == 0.0
    assert TASK.is_terminal(p, right) and not TASK.is_terminal(p, right[:2])
    assert TASK.reward(problem(3, 4, 25, 50, target=63), right + ["63 + 0 = 63 (left: 63)\n"]) == 0.0
    assert TASK.reward(p, ["25 - 4 = 22 (left: 3 22 50)\n"]) == 0.0 and TASK.is_terminal(p, ["nonsense\n"])
    assert "reach 21" in TASK.judge_prompt(p, []) and "3 4 25 50" in TASK.judge_prompt(p, [])


def test_can_reach_and_first_bad_step_are_exact():
    p = problem(3, 4, 25, 50, target=63)
    assert TASK.can_reach(p, []) and TASK.can_reach(p, ["50 - 25 = 25 (left: 3 4 25)\n"])
    assert not TASK.can_reach(p, ["50 * 25 = 1250 (left: 3 4 1250)\n", "1250 * 4 = 5000 (left: 3 5000)\n"])
    assert TASK.first_bad_step(p, ["50 - 25 = 25 (left: 3 4 25)\n", "25 * 4 = 100 (left: 3 100)\n"]) == 1
    assert TASK.first_bad_step(p, ["50 - 25 = 25 (left: 3 4 25)\n"]) is None
    assert TASK.first_bad_step(problem(1, 1, target=100), ["1 + 1 = 2 (left: 2)\n"]) is None  # never solvable


def test_reachable_agrees_with_the_step_by_step_solver():
    rng = random.Random(0)
    for _ in range(300):
        nums = [rng.randint(0, 30) for _ in range(rng.randint(1, 4))]
        target = rng.choice([0, 1, rng.randint(1, 100)])
        assert g.reachable(nums, target) == (solve(nums, target) is not None), (nums, target)


# --- problems from the user -------------------------------------------------------------------------------
def test_parse_problem():
    p = TASK.parse_problem(" 3, 4, 25, 50 -> 21 ")
    assert p.question == "3 4 25 50 -> 21" and p.meta == {"numbers": [3, 4, 25, 50], "target": 21}
    assert TASK.prompt(p) == "3 4 25 50 -> 21\n"
    assert "3 4 25 50 -> 21" in TASK.chat_messages(p)[0]["content"]
    for text, message in (("3 4 25 50", "like '3 4 25 50 -> 21'"), ("a b -> 3", "like"), ("3 4 -> x", "like"),
                          ("3 4 -> 500", "target 500 is outside 10-100"), ("3 -> 21", "at least two"),
                          ("3 400 -> 21", "number 400 is outside 1-99")):
        with pytest.raises(PonderError, match=message):
            TASK.parse_problem(text)


def test_user_file_serves_every_split_and_is_kept_out_of_training(tmp_path):
    path = tmp_path / "mine.jsonl"
    rows = [{"numbers": [50, 25, 4, 3], "target": 21}, {"numbers": [1, 1], "target": 99}, {"numbers": [2, 3, 5, 7, 11], "target": 60}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    t = get_task("countdown", path)
    for split in ("train", "validation", "test"):
        assert [p.question for p in t.problems(split)] == ["3 4 25 50 -> 21", "1 1 -> 99", "2 3 5 7 11 -> 60"]
    assert [p.id for p in t.problems("test")] == ["countdown-mine-0", "countdown-mine-1", "countdown-mine-2"]
    assert t.max_steps == 4  # the longest row has five numbers
    assert t._data_keys == {key(p) for p in t.problems("test")}
    t._data_keys = frozenset(key(p) for p in TASK.imagine(10, seed=4))  # pretend the file held these
    assert not t._data_keys & {key(p) for p in t.imagine(10, seed=4)}


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"numbers": [3, 4, 25, 50]}', r"mine\.jsonl:2: missing key\(s\) target"),
        ('{"target": 21}', r"mine\.jsonl:2: missing key\(s\) numbers"),
        ('{"numbers": [3, 4, 250, 50], "target": 21}', r"mine\.jsonl:2: number 250 is outside 1-99"),
        ('{"numbers": [3, 4, 0, 50], "target": 21}', r"mine\.jsonl:2: number 0 is outside 1-99"),
        ('{"numbers": [3, 4, 25, 50], "target": 101}', r"mine\.jsonl:2: target 101 is outside 10-100"),
        ('{"numbers": [3, 4, 25, 50], "target": 2.5}', r"mine\.jsonl:2: target must be a whole number"),
        ('{"numbers": [21], "target": 21}', r"mine\.jsonl:2: numbers must be a list of at least two"),
        ('{"numbers": "3 4", "target": 21}', r"mine\.jsonl:2: numbers must be a list of at least two"),
        ('{"numbers": [3, 4.5], "target": 21}', r"mine\.jsonl:2: numbers must be a list of at least two whole"),
        ('{"numbers": [3, 4], "target": 21', r"mine\.jsonl:2: malformed JSON"),
    ],
)
def test_bad_rows_are_one_line_errors_naming_file_and_line(tmp_path, line, message):
    path = tmp_path / "mine.jsonl"
    path.write_text('{"numbers": [3, 4, 25, 50], "target": 21}\n' + line + "\n")
    with pytest.raises(PonderError, match=message) as e:
        get_task("countdown", path)
    assert "\n" not in str(e.value)


def test_a_wider_range_admits_the_row(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text('{"numbers": [3, 4, 250, 50], "target": 500}\n')
    t = get_task("countdown", path, max_number=300, max_target=1000)
    assert t.problems("test")[0].question == "3 4 50 250 -> 500"


def test_missing_file():
    with pytest.raises(PonderError, match="data file not found"):
        get_task("countdown", "/nonexistent/mine.jsonl")


# --- the command line -----------------------------------------------------------------------------------
def test_cli_bad_task_options_fail_before_the_model_loads(tmp_path, capsys):
    nowhere = str(tmp_path / "no-model")  # a bad option must be reported first, not the missing model
    for extra, message in ((["--task-option", "n_numbers=9"], "n_numbers must be 2-6, got 9"),
                           (["--task-option", "n_number=5"], "has no option 'n_number'"),
                           (["--task-option", "n_numbers"], "expected KEY=VALUE")):
        assert main(["eval", "--task", "countdown", "--model", nowhere, *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    assert main(["improve", "--task", "countdown", "--out", str(tmp_path / "r"), "--task-option", "n_numbers=1"]) == 2
    assert "n_numbers must be 2-6" in capsys.readouterr().err and not (tmp_path / "r").exists()  # said before the folder


def test_cli_eval_on_the_validation_split_records_the_knobs(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "cd.jsonl"
    args = ["eval", "--task", "countdown", "--task-option", "n_numbers=3", "--task-option", "validation_size=3",
            "--split", "validation", "--model", str(tiny_model_dir), "--limit", "3", "--out", str(out), "--quiet"]
    assert main(args) == 0
    rows = read_rows(out)
    assert [r["problem_id"] for r in rows] == ["countdown-validation-0", "countdown-validation-1", "countdown-validation-2"]
    assert all(len(r["question"].split(" -> ")[0].split()) == 3 for r in rows)
    meta = json.loads(out.with_name(out.name + ".meta.json").read_text())
    assert meta["task"] == "countdown" and meta["task_options"] == {"n_numbers": 3, "validation_size": 3}
    # the same file with other knobs is another run: refused, not mixed
    assert main([a if a != "validation_size=3" else "validation_size=4" for a in args]) == 2
    assert "other settings" in capsys.readouterr().err


# --- the loop ---------------------------------------------------------------------------------------------
def test_the_loop_runs_on_countdown_and_never_asks_the_solver(tmp_path, monkeypatch):
    """``ponder improve --task countdown`` end to end with the solver made to raise. The held-out splits are built
    first (the brute-force check is what defines them: reachable problems only); from then on nothing in the loop,
    imagine, search, training or evaluation, asks the solver."""
    from test_improve import small

    from ponder.loop import improve

    knobs = {"test_size": 2, "validation_size": 2}
    Countdown(**knobs).problems("test")
    forbid_the_solver(monkeypatch)
    improve(tmp_path / "run", small(iterations=1, task="countdown", task_options=knobs), progress=False)
    metrics = read_rows(tmp_path / "run" / "metrics.jsonl")
    assert [m["iteration"] for m in metrics] == [0, 1]
    assert metrics[1]["eval"]["greedy"]["problems"] == 2
    searched = read_rows(tmp_path / "run" / "iter-1" / "search.jsonl")
    assert searched and all(" -> " in r["question"] for r in searched)
    assert read_rows(tmp_path / "run" / "iter-1" / "data" / "value.jsonl")  # the critics learned from its search
    assert (tmp_path / "run" / "iter-1" / "critics" / "value" / "critic.json").exists()
