"""The report of a ``ponder improve`` run: ``report.md`` (a table per iteration) and two PNG plots,
solve rate per iteration for each decoding method and solve rate against tokens generated."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from ..io import write_text


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def stderr(e: dict) -> float:
    """Binomial standard error of an evaluation's solve rate: sqrt(p (1 - p) / n)."""
    p, n = e["accuracy"], max(1, e.get("problems") or 1)
    return math.sqrt(p * (1 - p) / n)


def noise_note(metrics: Sequence[dict]) -> str:
    """One sentence on how far apart two solve rates of the table must be to mean anything."""
    evals = [e for row in metrics for e in row.get("eval", {}).values()]
    if not evals:
        return ""
    worst = max(evals, key=stderr)
    se = 100 * stderr(worst)
    return (f"Noise: with {worst.get('problems')} test problems one standard error of a solve rate is up to {se:.1f} points "
            f"here (at {_pct(worst['accuracy'])}); the difference of two rates has to exceed about {2 * math.sqrt(2) * se:.0f} "
            "points (two standard errors of a difference) before it means more than luck.")


def table(metrics: Sequence[dict]) -> str:
    """One row per iteration: test solve rate (and tokens per problem) of each method, what search
    found, the data made, the critics' held-out loss, and the collapse watch."""
    methods = list(dict.fromkeys(m for row in metrics for m in row.get("eval", {})))
    head = ["iter"] + [f"{m} (tokens)" for m in methods] + ["search solved", "SFT traces", "DPO pairs",
                                                            "value loss (base)", "val acc", "diversity", "entropy"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in metrics:
        cells = [str(row["iteration"])]
        for m in methods:
            e = row.get("eval", {}).get(m)
            cells.append("-" if e is None else f"{_pct(e['accuracy'])} ({e['tokens_generated']:,.0f})")
        s = row.get("search") or {}
        cells.append(_pct(s.get("solved")) if s else "-")
        d = row.get("data") or {}
        cells += [str(d.get("sft", "-")), str(d.get("pairs", "-"))]
        v = ((row.get("critics") or {}).get("value") or {})
        cells.append(f"{v['holdout_loss']:.3f} ({v['holdout_baseline_loss']:.3f})" if "holdout_loss" in v else "-")
        w = row.get("watch") or {}
        cells += [_pct(w.get("val_accuracy")), f"{w['diversity']:.2f}" if "diversity" in w else "-",
                  f"{w['entropy']:.2f}" if "entropy" in w else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(metrics: Sequence[dict], root: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(m for row in metrics for m in row.get("eval", {})))
    if not methods:
        return []
    fig, ax = plt.subplots(figsize=(6, 4))
    for m in methods:
        pts = [(r["iteration"], 100 * r["eval"][m]["accuracy"], 100 * stderr(r["eval"][m])) for r in metrics if m in r.get("eval", {})]
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3, label=m)
    ax.set_xlabel("iteration (bars: one standard error)")
    ax.set_ylabel("test problems solved (%)")
    ax.set_xticks(sorted({r["iteration"] for r in metrics}))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(root / "solve_rate.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for m in methods:
        pts = [(r["eval"][m]["tokens_generated"], 100 * r["eval"][m]["accuracy"], r["iteration"]) for r in metrics if m in r.get("eval", {})]
        ax.plot([max(p[0], 1) for p in pts], [p[1] for p in pts], marker="o", label=m)
        for x, y, i in pts:
            ax.annotate(str(i), (max(x, 1), y), textcoords="offset points", xytext=(3, 3), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("tokens generated per test problem (log; labels = iteration)")
    ax.set_ylabel("test problems solved (%)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(root / "solve_vs_tokens.png", dpi=120)
    plt.close(fig)
    return ["solve_rate.png", "solve_vs_tokens.png"]


def search_words(cfg: Any) -> str:
    """What the search phase of a run with config ``cfg`` was, in words: MCTS, or best-of-N sampling."""
    if getattr(cfg, "search_method", "mcts") == "best-of-n":
        return f"best-of-{cfg.search_n or cfg.eval_n} sampling (verified samples, no tree search)"
    return "MCTS"


def write_report(root: Path, metrics: Sequence[dict], cfg: Any) -> Path:
    """Rewrite ``root/report.md`` (atomically) and its plots from the metrics so far."""
    root = Path(root)
    pngs = plot(metrics, root)
    warnings = [f"- iteration {r['iteration']}: {w}" for r in metrics for w in (r.get("watch") or {}).get("warnings", [])]
    critics = []
    for r in metrics:
        for kind, c in (r.get("critics") or {}).items():
            if isinstance(c, dict) and "holdout_loss" in c:
                acc = f", accuracy {100 * c['holdout_accuracy']:.0f}%" if "holdout_accuracy" in c else ""
                auc = "-" if c.get("holdout_auc") is None else f"{c['holdout_auc']:.2f}"
                critics.append(f"| {r['iteration']} | {kind} | {c['labels']} | {c['train_loss']:.4f} | "
                               f"{c['holdout_loss']:.4f} | {c['holdout_baseline_loss']:.4f}{acc} | {auc} |")
    parts = [
        f"# ponder improve: {cfg.task}, {len([m for m in metrics if m['iteration'] > 0])} of {cfg.iterations} iterations",
        "",
        "Test solve rate per decoding method (mean tokens generated per problem in brackets); search = "
        f"{search_words(cfg)} over",
        "the iteration's imagined training problems; val = greedy on held-out validation problems (collapse watch).",
        "",
        table(metrics),
        "",
        noise_note(metrics),
        "",
    ]
    if critics:
        parts += ["Critics on held-out search problems (loss vs. always predicting the training mean; AUC: how often a",
                  "state labelled above 0.5 scores above one labelled below, 0.5 = chance, - = one class only):", "",
                  "| iter | critic | labels | train loss | held-out loss | baseline | AUC |", "|---|---|---|---|---|---|---|",
                  *critics, ""]
    parts += ["Collapse watch: " + ("no warnings." if not warnings else ""), *warnings, ""]
    parts += [f"![{p}]({p})" for p in pngs]
    path = root / "report.md"
    write_text(path, "\n".join(parts) + "\n")
    return path
