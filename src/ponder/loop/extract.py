"""Phase 3, **extract**: training data from the search trees, to ``iter-I/data/``.

Verified traces (SFT) from the trees of every iteration so far; sibling step pairs (DPO), the
search's improved policy at every searched state (expert iteration) and per-step targets for the
critics (value, PRM, ORM) from the trees of the last ``replay`` iterations. A best-of-N search's flat
tree of samples is read the same way, its states' Q being the share of their samples that were verified.
"""

from ..io import read_rows, write_jsonl
from ..tasks import Problem
from .config import CRITIC_KINDS
from .improver import Improver
from .run import say


def extract(imp: Improver, i: int) -> dict:
    """The training data of iteration i, written to ``iter-I/data/``; returns the phase's record (row counts)."""
    from ..search.tree import Node
    from ..train import data

    it = imp.run.it(i)
    sft, pairs, targets = [], [], []
    crit: dict[str, list] = {k: [] for k in CRITIC_KINDS}
    labels = {"prm": data.prm_label(imp.cfg.prm_label), "orm": data.orm_label}
    sampled_prm = data.prm_label("q")  # a sampled tree has no rollouts: its Q is the share of verified samples
    for j in range(1, i + 1):
        rows = read_rows(imp.run.it(j) / "search.jsonl")
        recent = j > i - imp.cfg.replay
        for r in rows:
            problem = Problem(r["problem_id"], r["question"], r.get("reference"), r.get("meta") or {})
            tree = Node.from_dict(r["tree"])
            sft += data.verified_traces(problem, tree, imp.task, [r["steps"]], imp.cfg.traces_per_problem)
            if recent:
                pairs += data.step_pairs(problem, tree, imp.cfg.pair_margin)
                targets += data.policy_targets(problem, tree, imp.task)
                labels["value"] = data.value_label_with_proofs(problem, tree, imp.task)
                for k in CRITIC_KINDS:
                    crit[k] += data.critic_records(problem, tree, sampled_prm if k == "prm" and sampled(r) else labels[k])
    # a problem searched again in a later iteration may find a trace found before: keep it once
    sft = list({(r["problem"]["question"], *r["steps"]): r for r in sft}.values())
    (it / "data").mkdir(exist_ok=True)
    write_jsonl(it / "data" / "sft.jsonl", sft)
    write_jsonl(it / "data" / "pairs.jsonl", pairs)
    write_jsonl(it / "data" / "policy_targets.jsonl", targets)
    for k, recs in crit.items():
        write_jsonl(it / "data" / f"{k}.jsonl", recs)
    counts = {"sft": len(sft), "pairs": len(pairs), "policy_targets": len(targets), **{k: len(v) for k, v in crit.items()}}
    say(f"iteration {i}: data {counts}")
    return counts


def sampled(row: dict) -> bool:
    """Whether a search.jsonl row is a tree of whole sampled traces (``--search-method best-of-n``), whose
    states carry no rollout label: a step's PRM label is then its Q, the share of the samples through it that
    the verifier accepted (Math-Shepherd's label, the samples' own continuations serving as its rollouts)."""
    return row.get("method", "mcts") != "mcts"
