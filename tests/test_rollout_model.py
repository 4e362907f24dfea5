"""A fast rollout policy (issue 20): leaf rollouts come from a second, smaller model, its compute is
charged at its own size, its priors stay out of the search policy's cache, the loop distills one each
iteration with ``--rollout-model distill``, and bad specs are one line."""

from __future__ import annotations

import json

import pytest

from conftest import small_tiny_model
from ponder.cli import main
from ponder.compute import Budget
from ponder.errors import PonderError
from ponder.models import HFPolicy, load_rollout_policy
from ponder.search import SearchEnv, State, get_method
from ponder.search.env import check_reads, softmax
from ponder.search.frontier import TreeSearchConfig
from ponder.search.mcts import MCTSConfig
from ponder.tasks import Problem
from ponder.tasks.game24 import Game24

TASK = Game24()


def puzzle(*nums: int, pid: str = "p") -> Problem:
    return Problem(id=pid, question=" ".join(map(str, nums)), meta={"numbers": list(nums)})


PUZZLES = [puzzle(4, 9, 10, 13, pid="a"), puzzle(1, 2, 3, 4, pid="b"), puzzle(5, 5, 5, 1, pid="c")]


class Counting:
    """A real model behind a wrapper that records every call it gets (which kind, which prefixes)."""

    def __init__(self, inner):
        self.inner = inner
        self.calls: list[tuple[str, list[str]]] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def sample(self, prefixes, k, params):
        self.calls.append(("sample", list(prefixes)))
        return self.inner.sample(prefixes, k, params)

    def score(self, prefixes, continuations):
        self.calls.append(("score", list(prefixes)))
        return self.inner.score(prefixes, continuations)


def models():
    """(search policy, rollout policy): two real tiny models of different sizes, each behind a counter."""
    policy = Counting(HFPolicy(*small_tiny_model(seed=0, num_layers=2), name="policy"))
    rollout = Counting(HFPolicy(*small_tiny_model(seed=1, hidden_size=32, num_heads=2, intermediate_size=64),
                                name="rollout"))
    assert policy.flops_per_token > 2 * rollout.flops_per_token
    return policy, rollout


@pytest.mark.parametrize("fast", [False, True])
def test_leaf_rollouts_come_from_the_rollout_model_and_other_rollouts_from_the_policy(fast):
    policy, rollout = models()
    env = SearchEnv(policy, TASK, rollout_policy=rollout)
    traces = env.rollout([State(p) for p in PUZZLES], 2, fast=fast, leaf=True)
    assert [len(t) for t in traces] == [2, 2, 2] and all(len(t) >= 1 for ts in traces for t in ts)
    assert policy.calls == []
    assert rollout.calls and {kind for kind, _ in rollout.calls} == ({"sample"} if fast else {"score"})
    # a sampling method's whole traces (best-of-n, self-consistency) are the policy's own
    rollout.calls.clear()
    env.rollout([State(p) for p in PUZZLES], 2)
    assert rollout.calls == [] and policy.calls


def test_free_text_rollouts_are_one_rollout_model_call():
    policy, rollout = models()
    task = Game24(free_text=True)
    env = SearchEnv(policy, task, rollout_policy=rollout)
    env.rollout([State(p) for p in PUZZLES], 3, leaf=True)
    assert policy.calls == [] and [kind for kind, _ in rollout.calls] == ["sample"]
    assert rollout.calls[0][1] == [task.prompt(p) for p in PUZZLES]  # rendered by the rollout model's own render


def test_mcts_rolls_out_with_the_rollout_model_and_charges_it_at_its_own_size():
    policy, rollout = models()
    env = SearchEnv(policy, TASK, rollout_policy=rollout)
    cfg = MCTSConfig(simulations=6, k=3, k_max=3, rollouts=2, seed=0)
    results = get_method("mcts").run(PUZZLES, env, cfg)
    assert rollout.calls and policy.calls
    # the policy only scored states the tree expanded: every prefix it read is a tree node's state
    for r in results:
        tree_prefixes = {TASK.prompt(r.problem) + "".join(n.steps()) for n in r.tree}
        mine = [x for _, ps in policy.calls for x in ps if x.startswith(TASK.prompt(r.problem))]
        assert mine and set(mine) <= tree_prefixes
    for r in results:
        roll = r.info["rollout_compute"]
        assert roll["tokens_read"] > 0 and roll["tokens_generated"] > 0
        assert roll["flops"] == pytest.approx(rollout.flops_per_token * (roll["tokens_read"] + roll["tokens_generated"]))
        own = r.compute.tokens - roll["tokens_read"] - roll["tokens_generated"]
        assert own > 0
        assert r.compute.flops == pytest.approx(policy.flops_per_token * own + roll["flops"])
    assert env.spent == {} and env.rollout_spent == {}  # taken with each result


def test_a_tree_search_scored_by_rollouts_uses_the_rollout_model():
    policy, rollout = models()
    env = SearchEnv(policy, TASK, rollout_policy=rollout)
    cfg = get_method("beam").config(scorer="rollout", rollouts=2)
    assert isinstance(cfg, TreeSearchConfig)
    [r] = get_method("beam").run(PUZZLES[:1], env, cfg)
    assert rollout.calls and r.info["rollout_compute"]["flops"] > 0
    assert all(kind == "score" for kind, _ in policy.calls)


def test_rollout_model_priors_stay_out_of_the_policys_cache():
    policy, rollout = models()
    env = SearchEnv(policy, TASK, rollout_policy=rollout)
    p = PUZZLES[0]
    env.rollout([State(p)], 3, leaf=True)
    assert env._priors.get(p, {}) == {}  # the search policy's cache: untouched
    assert env._roll.priors[p][()][1]  # the rollout model's own cache holds the root's scores
    # the tree's expansion of the root then asks the policy and carries its priors, not the rollout model's
    [props] = env.expand([State(p)], 4, temperature=0)
    assert policy.calls and policy.calls[0][0] == "score"
    legal = TASK.legal_actions(p, [])
    want = softmax(policy.inner.score([TASK.prompt(p)], [legal]).logprobs[0])
    theirs = softmax(rollout.inner.score([TASK.prompt(p)], [legal]).logprobs[0])
    got = [pr.prior for pr in props]
    by_action = {TASK.observe(p, (), a): w for a, w in zip(legal, want)}
    assert got == pytest.approx([by_action[pr.text] for pr in props])
    assert max(abs(a - b) for a, b in zip(want, theirs)) > 1e-4  # the two models differ, so the check can fail
    # without a rollout model, a rollout's scores are the policy's and the tree reuses them
    env2 = SearchEnv(policy.inner, TASK)
    env2.rollout([State(p)], 2, leaf=True)
    assert env2._priors[p][()][1]


def test_the_rollout_model_must_read_the_text_as_written():
    policy, rollout = models()
    check_reads(rollout, "4 * 6 = 24 (left: 24)\n")  # ASCII: the character tokenizer reads it
    with pytest.raises(PonderError, match="--rollout-model rollout: its tokenizer cannot read"):
        check_reads(rollout, "4 × 6 = 24\n")
    env = SearchEnv(policy, TASK, rollout_policy=rollout)
    # a prompt it cannot read, and a step (the policy's) it cannot read, each said in one line
    odd = Problem(id="odd", question="4 9 10 13 — go", meta={"numbers": [4, 9, 10, 13]})
    for state in (State(odd), State(PUZZLES[0], ("9 + 4 = 13 (left: 10 13 13)\u00a0\n",))):
        with pytest.raises(PonderError, match="--rollout-model rollout: its tokenizer cannot read") as e:
            env.rollout([state], 1, leaf=True)
        assert "\n" not in str(e.value).replace("\\n", "")
    env.rollout([State(PUZZLES[0], ("9 + 4 = 13 (left: 10 13 13)\n",))], 1, leaf=True)  # readable: rolls out


def test_a_flops_budget_needs_a_local_rollout_model():
    from ponder.models.server import ServerPolicy

    policy, _ = models()
    server = ServerPolicy("openai:http://127.0.0.1:9/v1?model=x")
    with pytest.raises(PonderError, match="--rollout-model .*--budget-unit flops needs a local rollout model"):
        SearchEnv(policy, TASK, budget=Budget(1e9, "flops"), rollout_policy=server)
    SearchEnv(policy, TASK, budget=Budget(100, "tokens"), rollout_policy=server)  # tokens are counted either way


def test_bad_rollout_specs_are_one_line(tmp_path, tiny_model_dir, capsys):
    with pytest.raises(PonderError, match=r"^--rollout-model /no/such: model not found"):
        load_rollout_policy("/no/such")
    with pytest.raises(PonderError, match="distill trains the rollout model inside ponder improve"):
        load_rollout_policy("distill")
    base = ["eval", "--model", str(tiny_model_dir), "--limit", "1", "--out", str(tmp_path / "e.jsonl"), "--quiet"]
    for argv, message in [
        (["--method", "mcts", "--rollout-model", "/no/such"], "--rollout-model /no/such: model not found"),
        (["--method", "mcts", "--rollout-model", "distill"], "--rollout-model distill trains"),
        (["--method", "greedy", "--rollout-model", str(tiny_model_dir)], "--rollout-model: no method here rolls out"),
        (["--method", "mcts", "--rollouts", "0", "--value-weight", "1", "--critic", "verifier", "--rollout-model",
          str(tiny_model_dir)], "--rollout-model: no method here rolls out"),
    ]:
        assert main(base + argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err, err
    assert main(["improve", "--out", str(tmp_path / "r"), "--rollout-model", " "]) == 2
    assert "--rollout-model: expected a model spec or 'distill'" in capsys.readouterr().err


def test_eval_cli_rolls_out_with_the_rollout_model(tmp_path, tiny_model_dir, capsys):
    from ponder.io import read_rows
    from ponder.models.tiny import fast_tiny, tiny_model
    from ponder.train import save_checkpoint

    small = tmp_path / "fast"
    save_checkpoint(*tiny_model(fast_tiny(), device="cpu"), small)
    out = tmp_path / "e.jsonl"
    argv = ["eval", "--model", str(tiny_model_dir), "--method", "mcts", "--simulations", "3", "--k", "2", "--k-max",
            "2", "--limit", "2", "--out", str(out), "--quiet", "--rollout-model", str(small)]
    assert main(argv) == 0, capsys.readouterr().err
    rows = read_rows(out)
    assert len(rows) == 2 and all(r["info"]["rollout_compute"]["tokens_read"] > 0 for r in rows)
    per_token = HFPolicy(*tiny_model(fast_tiny(), device="cpu")).flops_per_token
    for r in rows:
        c = r["info"]["rollout_compute"]
        assert c["flops"] == pytest.approx(per_token * (c["tokens_read"] + c["tokens_generated"]))
    assert json.loads(out.with_name(out.name + ".meta.json").read_text())["rollout_model"] == str(small)
    # the same file without the rollout model is another run: refused, not mixed
    assert main(argv[:-2]) == 2
    assert "written with other settings" in capsys.readouterr().err


def test_the_loop_distills_a_smaller_rollout_model_and_the_next_search_rolls_out_with_it(tmp_path, monkeypatch):
    import ponder.loop as loop
    from ponder.io import read_rows, write_jsonl
    from test_improve import small

    real = loop.extract.extract

    def extract(imp, i):  # the small model finds nothing: give the iteration a verified trace to distill from
        counts = real(imp, i)
        p = {"id": "x", "question": "4 6 8 10", "reference": None, "meta": {"numbers": [4, 6, 8, 10]}}
        win = ["6 - 8 = -2 (left: 4 10 -2)\n", "-2 * 10 = -20 (left: 4 -20)\n", "4 - -20 = 24 (left: 24)\n"]
        d = imp.run.it(i) / "data"
        write_jsonl(d / "sft.jsonl", read_rows(d / "sft.jsonl") + [{"problem": p, "steps": win}])
        return counts

    monkeypatch.setattr(loop.extract, "extract", extract)
    seen: list[tuple[int, str, str | None]] = []
    real_run_eval = loop.Improver.run_eval

    def run_eval(self, policy, critic, method, config, problems, out, batch, seed, settings=None, save_trees=False,
                 rollout=None):
        if method == "mcts":
            seen.append((settings["iteration"], settings["phase"], rollout))
            assert self.rollout_policy(rollout).flops_per_token < self.policy(policy).flops_per_token
        return real_run_eval(self, policy, critic, method, config, problems, out, batch, seed, settings, save_trees,
                             rollout)

    monkeypatch.setattr(loop.Improver, "run_eval", run_eval)
    root = tmp_path / "run"
    cfg = small(iterations=1, rollout_model="distill", rollout_tiny={"hidden_size": 16, "num_heads": 2,
                                                                   "intermediate_size": 32},
                rollout_sft={"steps": 3, "batch_size": 4, "warmup": 1})
    loop.improve(root, cfg, progress=False)
    for i in (0, 1):
        conf = json.loads((root / f"iter-{i}" / "rollout" / "config.json").read_text())
        assert (conf["hidden_size"], conf["num_hidden_layers"]) == (16, 2)  # rollout_tiny, the "fast" preset's depth
    assert json.loads((root / "iter-1" / "phases.json").read_text())["rollout"] == str(root / "iter-1" / "rollout")
    train = json.loads((root / "iter-1" / "rollout-train.json").read_text())
    assert train["from"] == str(root / "iter-0" / "rollout") and train["traces"] >= 1 and train["steps"] >= 1
    meta = json.loads((root / "iter-1" / "search.jsonl.meta.json").read_text())
    assert meta["rollout"] == str(root / "iter-0" / "rollout")
    # a second iteration's search rolls out with the model distilled at iteration 1
    loop.improve(root, None, resume=True, progress=False, iterations=2)
    meta = json.loads((root / "iter-2" / "search.jsonl.meta.json").read_text())
    assert meta["rollout"] == str(root / "iter-1" / "rollout")
    assert (0, "eval", str(root / "iter-0" / "rollout")) in seen
    assert (1, "search", str(root / "iter-0" / "rollout")) in seen
    assert (1, "eval", str(root / "iter-1" / "rollout")) in seen
    assert (2, "search", str(root / "iter-1" / "rollout")) in seen
    rows = read_rows(root / "iter-2" / "search.jsonl")
    assert rows and all(r["info"]["rollout_compute"]["flops"] > 0 for r in rows)
