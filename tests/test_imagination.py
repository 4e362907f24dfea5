"""Imagination written by a model (``--imagine model[:SPEC]``): the real filters (format, n-gram overlap,
answerability by majority) on candidates from a scripted writer, the verdict file in the run folder, resuming
after a writer that drops, and the one line when every candidate is filtered."""

from __future__ import annotations

import json

import pytest

import ponder.loop.imagine as phase
from ponder.cli import main
from ponder.compute import Compute
from ponder.config import build
from ponder.errors import PonderError
from ponder.imagination import (ImagineConfig, Overlap, WRITING, format_verdict, ngrams, parse_imagine, parse_written,
                                vote, write_problems)
from ponder.io import read_rows
from ponder.loop import ImproveConfig, Improver, open_run
from ponder.models.base import Samples, Step
from ponder.tasks import Problem, get_task

#: a number-dense test problem: without numbers normalised, changing them would hide most of its 3-grams
TEST_Q = ("A store sold 12 shirts at $15 each, 8 hats at $7 each and 23 pairs of socks at $3 each on Monday, and "
          "9 shirts, 14 hats and 30 pairs of socks on Tuesday. How much money did Maria's store make in the two days?")
NUMBERS_CHANGED = ("A store sold 11 shirts at $16 each, 9 hats at $6 each and 21 pairs of socks at $4 each on Monday, "
                   "and 7 shirts, 12 hats and 35 pairs of socks on Tuesday. How much money did Maria's store make in "
                   "the two days?")
NAMES_CHANGED = ("A shop sold 12 shirts at $15 each, 8 caps at $7 each and 23 pairs of socks at $3 each on Monday, and "
                 "9 shirts, 14 caps and 30 pairs of socks on Tuesday. How much money did Tom's shop make in the two days?")
DIFFERENT = ("Lena reads 20 pages of her novel every evening. The novel has 340 pages and she has already read 100 of "
             "them. How many more evenings will she need to finish it?")
OTHER = ("A farmer plants 6 rows of apple trees with 14 trees in each row. A storm knocks down 9 trees. How many "
         "apple trees are still standing?")
THIRD = ("Sam saves $5 every week for 12 weeks and then spends $18 on a game. How much money does he have left "
         "after buying the game?")


def gsm8k_rows(n: int) -> list[dict]:
    subjects = ["marbles", "stickers", "pencils", "cookies", "stamps", "shells", "coins", "cards", "beads", "buttons",
                "ribbons", "crayons", "erasers", "balloons", "candles", "puzzles"]
    return [{"question": f"Ann has {i + 3} {s} in a jar and buys {2 * i + 1} more {s} at a fair on day {i}. "
                         f"How many {s} does she have now?", "answer": f"She has {3 * i + 4}.\n#### {3 * i + 4}"}
            for i, s in enumerate(subjects[:n])]


class Scripted:
    """A fake ``Policy`` that writes the scripted problems in turn when asked to write (a writing prompt)
    and answers a problem with its scripted answers (cycled over the k samples) when asked to solve one.
    ``fail_after``: writing calls that succeed before the next raises, as a server that drops."""

    name = "scripted"

    def __init__(self, problems: list[str], answers: dict[str, list[str | None]] | None = None,
                 fail_after: int | None = None):
        self.problems, self.answers, self.fail_after = problems, answers or {}, fail_after
        self.written = self.write_calls = 0
        self.solve_calls: list[tuple[int, int]] = []  # (prefixes, k) of each solving call

    def render(self, task, problem) -> str:
        return task.prompt(problem)

    def sample(self, prefixes, k, params) -> Samples:
        if WRITING.prompt(Problem("", "", meta={"shots": ["x"]})).split("\n")[0] in prefixes[0]:
            if self.fail_after is not None and self.write_calls >= self.fail_after:
                raise ConnectionError("the server dropped")
            self.write_calls += 1
            texts = []
            for _ in prefixes:
                texts.append(" " + self.problems[self.written % len(self.problems)] + "\n\n")
                self.written += 1
            steps = [[Step(t, (1,) * 10, (0.0,) * 10, "stop")] for t in texts]
            return Samples(steps, [Compute(10, 50, 1, 0.01)] * len(prefixes))
        self.solve_calls.append((len(prefixes), k))
        steps = []
        for p in prefixes:
            q = p.split("Question: ", 1)[1].split("\nAnswer:")[0]
            ans = self.answers.get(q, [None])
            steps.append([Step("Add them.\n" + (f"The answer is {ans[j % len(ans)]}.\n" if ans[j % len(ans)] else "I do not know.\n"),
                               (1,) * 20, (0.0,) * 20, "eos") for j in range(k)])
        return Samples(steps, [Compute(20 * k, 30, k, 0.02)] * len(prefixes))


# --- the filters, one by one ---------------------------------------------------------------------------
def test_overlap_rejects_a_test_problem_with_numbers_or_names_changed_and_keeps_a_different_one():
    ov = Overlap(3)
    ov.add("test:t0", TEST_Q)
    ov.add("test:t1", OTHER)
    cfg = ImagineConfig()
    for near in (NUMBERS_CHANGED, NAMES_CHANGED, TEST_Q):
        share, name = ov.nearest(near)
        assert name == "test:t0" and share > cfg.max_overlap, (near, share)
    share, _ = ov.nearest(DIFFERENT)
    assert share <= cfg.max_overlap
    # numbers are one placeholder: the numbers-changed copy has exactly the test problem's n-grams
    assert ngrams(NUMBERS_CHANGED, 3) == ngrams(TEST_Q, 3)


def test_format_filter():
    task, cfg = get_task("gsm8k", data=None), ImagineConfig()
    assert format_verdict(DIFFERENT, task, cfg) is None
    assert "answer" in format_verdict(DIFFERENT + " The answer is 12.", task, cfg)
    assert "characters" in format_verdict("How many are 2 + 2?", task, cfg)
    assert "asks nothing" in format_verdict("Lena reads 20 pages of her novel every evening, and 340 pages in all.", task, cfg)
    assert "numbers" in format_verdict("Lena reads some pages of her novel every evening. How long will it take her?", task, cfg)
    assert parse_written("**Problem 5:** " + DIFFERENT + "\n\nSolution: 12 evenings") == DIFFERENT
    assert parse_written("Here is a new problem:\n\nProblem 5:\n" + DIFFERENT + "\n\nProblem 6: " + OTHER) == DIFFERENT
    assert parse_written("What a fun game! Here are new problems.\n\nProblem 1: " + DIFFERENT) == DIFFERENT


def test_pseudo_reference_is_the_majority_answer():
    v = vote(["7", "12", None, "12"])
    assert (v.answer, v.share, v.tie) == ("12", 0.5, False)
    assert vote(["4", "5", "5", "4"]).answer is None and vote(["4", "5", "5", "4"]).tie
    assert vote([None, None]).answer is None


def test_write_problems_keeps_the_majority_and_rejects_below_agreement(tmp_path):
    task = get_task("gsm8k")
    seeds = [Problem(f"s{i}", q) for i, q in enumerate([OTHER, THIRD, "x" * 50, "y" * 50])]
    ov = Overlap(3)
    ov.add("test:t0", TEST_Q)
    model = Scripted([DIFFERENT, NUMBERS_CHANGED, THIRD + " Then he finds $2.", "No question here, only text about 5."],
                     {DIFFERENT: ["9", "12", "12", "12"], THIRD + " Then he finds $2.": ["44", "3", None, "7"]})
    cfg = ImagineConfig(batch=4, shots=2, solutions=4, min_agreement=0.5)
    out = tmp_path / "imagined.jsonl"
    w = write_problems(model, model, task, cfg, want=4, seeds=seeds, overlap=ov, out=out, limit=4)
    rows = read_rows(out)
    assert [r["verdict"] for r in rows] == ["kept", "overlap", "answerability", "format"]
    assert rows[1]["overlap"]["with"] == "test:t0"
    assert "below min_agreement" in rows[2]["why"] and rows[2]["answers"] == ["44", "3", None, "7"]
    [p] = w.problems
    assert (p.question, p.reference) == (DIFFERENT, "12") and p.meta["agreement"] == 0.75
    assert task.reward(p, ["The answer is 12.\n"]) == 1.0 and task.reward(p, ["The answer is 9.\n"]) == 0.0
    # one solving call for the whole batch's survivors, m solutions each
    assert model.solve_calls == [(2, 4)]
    assert w.rejected == {"format": 1, "overlap": 1, "answerability": 1}
    assert w.write.tokens_generated == 40 and w.solve.tokens_generated == 2 * 80
    # a kept problem joins the references: the same problem written again is an overlap
    w2 = write_problems(Scripted([DIFFERENT]), model, task, cfg, want=2, seeds=seeds, overlap=ov,
                        out=tmp_path / "again.jsonl", limit=1)
    assert w2.rows[0]["verdict"] == "overlap" and w2.rows[0]["overlap"]["with"] == f"earlier:{p.id}"


def test_resume_keeps_what_was_written(tmp_path):
    task = get_task("gsm8k")
    seeds = [Problem(f"s{i}", q) for i, q in enumerate([OTHER, "x" * 50])]
    answers = {DIFFERENT: ["20"] * 4, THIRD: ["42"] * 4}
    cfg = ImagineConfig(batch=1, shots=1)
    out = tmp_path / "imagined.jsonl"
    dropping = Scripted([DIFFERENT, THIRD], answers, fail_after=1)
    with pytest.raises(ConnectionError):
        write_problems(dropping, dropping, task, cfg, want=2, seeds=seeds, overlap=Overlap(3), out=out)
    first = read_rows(out)
    assert [(r["id"], r["verdict"], r["reference"]) for r in first] == [("imagined-0", "kept", "20")]
    again = Scripted([THIRD], answers)
    w = write_problems(again, again, task, cfg, want=2, seeds=seeds, overlap=Overlap(3), out=out)
    assert again.write_calls == 1  # only the missing candidate is written
    assert [(p.id, p.question, p.reference) for p in w.problems] == [("imagined-0", DIFFERENT, "20"),
                                                                     ("imagined-1", THIRD, "42")]
    assert read_rows(out)[0] == first[0] and [r["batch"] for r in read_rows(out)] == [0, 1]
    assert w.write.tokens_generated == 20  # the first call's writing is counted too


# --- in the loop ---------------------------------------------------------------------------------------
def make_improver(tmp_path, model: Scripted, rows: int = 12, **kw) -> Improver:
    data = tmp_path / "gsm8k.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in gsm8k_rows(rows)))
    cfg = build(ImproveConfig, {"task": "gsm8k", "data": str(data), "model": "scripted", "imagine": "model",
                                "problems": 2, "validation": 2, **kw})
    run = open_run(tmp_path / "run", cfg, resume=False)
    run.mark(0, "policy", "scripted")
    imp = Improver(run, progress=False)
    imp.policy = lambda spec: model  # the writer and the solver
    return imp


def test_the_imagine_phase_writes_verdicts_and_pseudo_references_to_the_run_folder(tmp_path):
    model = Scripted([DIFFERENT, "Too short?", OTHER], {DIFFERENT: ["20"] * 4, OTHER: ["75", "75", "74", "75"]})
    imp = make_improver(tmp_path, model, imagination={"batch": 3, "shots": 2})
    record = phase.imagine(imp, 1)
    it = imp.run.it(1)
    verdicts = read_rows(it / "imagined.jsonl")
    assert [r["verdict"] for r in verdicts] == ["kept", "format", "kept"]
    problems = [json.loads(line) for line in (it / "problems.jsonl").read_text().splitlines()]
    assert [(p["question"], p["reference"]) for p in problems] == [(DIFFERENT, "20"), (OTHER, "75")]
    im = record["imagined"]
    assert im["candidates"] == 3 and im["kept"] == 2 and im["rejected"]["format"] == 1
    assert im["tokens_generated"] == 3 * 10 + 2 * 80 and im["write"]["tokens_generated"] == 30


def test_the_phase_resumes_after_the_writer_drops(tmp_path):
    answers = {DIFFERENT: ["20"] * 4, OTHER: ["75"] * 4}
    model = Scripted([DIFFERENT, OTHER], answers, fail_after=1)
    imp = make_improver(tmp_path, model, imagination={"batch": 1, "shots": 1})
    with pytest.raises(ConnectionError):
        phase.imagine(imp, 1)
    assert [r["question"] for r in read_rows(imp.run.it(1) / "imagined.jsonl")] == [DIFFERENT]
    model2 = Scripted([OTHER], answers)
    imp.policy = lambda spec: model2
    record = phase.imagine(imp, 1)
    assert model2.write_calls == 1 and record["imagined"]["candidates"] == 2
    assert [p.question for p in phase.problem_rows(imp.run.it(1) / "problems.jsonl")] == [DIFFERENT, OTHER]


def test_every_candidate_filtered_says_which_filter_took_them_and_falls_back(tmp_path, capsys):
    # too short; a copy of a validation/test problem (the --data file serves every split); no majority
    copy = gsm8k_rows(12)[5]["question"].replace("Ann", "Bea")
    model = Scripted(["Too short?", copy, DIFFERENT], {DIFFERENT: ["1", "2", "3", "4"]})
    imp = make_improver(tmp_path, model, imagination={"batch": 3, "shots": 2, "candidates": 6})
    record = phase.imagine(imp, 1)
    line = [ln for ln in capsys.readouterr().out.splitlines() if "wrote nothing usable" in ln]
    assert len(line) == 1
    assert ("6 candidates: format rejected 2, overlap rejected 2, answerability rejected 2; 0 kept); "
            "falling back to the train split") in line[0]
    assert record["imagined"]["fell_back"] and record["problems"] == 2
    val = {p.question for p in imp.val}
    assert all(p.question not in val and p.reference for p in phase.problem_rows(imp.run.it(1) / "problems.jsonl"))


def test_no_split_to_write_from_stops_with_one_line(tmp_path):
    imp = make_improver(tmp_path, Scripted(["Too short?"]), rows=4, validation=4)
    with pytest.raises(PonderError, match="no training example is left to show the writer") as e:
        phase.imagine(imp, 1)
    assert "\n" not in str(e.value)
    cfg = build(ImproveConfig, {"task": "math500", "imagine": "model"})
    with pytest.raises(PonderError, match="math500 has no train split.*--data FILE") as e:
        phase.held_out(get_task("math500"), cfg)
    assert "\n" not in str(e.value)


def test_imagine_choices(tmp_path, capsys):
    assert parse_imagine("model:openai:http://host:8000/v1") == ("model", "openai:http://host:8000/v1")
    assert parse_imagine("auto") == ("auto", None)
    with pytest.raises(PonderError, match="auto, split, model, model:SPEC"):
        build(ImproveConfig, {"imagine": "writer"})
    assert main(["improve", "--out", str(tmp_path / "r"), "--imagine", "modle"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "auto, split, model, model:SPEC" in err[0]
    with pytest.raises(PonderError, match="imagination.max_overlap"):
        build(ImproveConfig, {"imagination": {"max_overlap": 1.5}})
    # the task's own generator stays the default; --imagine model on an unvoted task is refused
    cfg = build(ImproveConfig, {"imagine": "model"})
    with pytest.raises(PonderError, match="not voted on"):
        phase.held_out(get_task("game24"), cfg)


def test_improve_with_imagine_model_through_the_command_line(tmp_path, tiny_model_dir, capsys, monkeypatch):
    """``ponder improve --imagine model --set imagination.FIELD=V`` reaches the phase: the untrained tiny model
    writes nothing usable, the iteration says so and falls back to the split; the verdicts are in the run
    folder and the phase's record counts the writing. (The run skips iteration 0's evaluation and stops at the
    search, which are not under test.)"""
    import ponder.loop as loop

    class Stop(Exception):
        pass

    def search(imp, i, start):
        raise Stop

    monkeypatch.setattr(loop.search, "search", search)
    monkeypatch.setattr(loop, "evaluate_and_watch", lambda imp, i: None)  # iteration 0's evaluation: not under test
    data = tmp_path / "gsm8k.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in gsm8k_rows(10)))
    out = tmp_path / "run"
    argv = ["improve", "--task", "gsm8k", "--data", str(data), "--model", str(tiny_model_dir), "--imagine", "model",
            "--iterations", "1", "--problems", "2", "--validation", "2", "--eval-limit", "1", "--eval-methods", "greedy",
            "--out", str(out), "--quiet"]
    for s in ["imagination.batch=4", "imagination.candidates=4", "imagination.write_tokens=16", "imagination.shots=2",
              "imagination.solve_tokens=16", "imagination.solutions=2", "watch.samples=1"]:
        argv += ["--set", s]
    with pytest.raises(Stop):
        main(argv)
    assert "falling back to the train split" in capsys.readouterr().out
    rows = read_rows(out / "iter-1" / "imagined.jsonl")
    assert len(rows) == 4 and all(r["verdict"] != "kept" and r["why"] for r in rows)
    rec = json.loads((out / "iter-1" / "phases.json").read_text())["imagine"]
    assert rec["imagined"]["fell_back"] and rec["imagined"]["write"]["tokens_generated"] > 0
    assert rec["problems"] == 2 and len(rows[0]["shots"]) == 2
