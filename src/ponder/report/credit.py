"""``ponder credit``: a trace's per-token implicit rewards as a heat map, in HTML and PNG.

Tokens are coloured on a diverging scale (blue: the DPO policy made the token likelier than its
reference did, red: less likely; white: no change), symmetric around 0 and saturating at the
largest |r| of the trace. Each step is a row with its sum in the right margin; the value of each
token shows on hover. The page is self-contained (inline CSS, no script, no network).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Sequence

from ..critics.implicit import Credit
from ..errors import PonderError
from ..io import write_text

POS, NEG = (33, 102, 172), (178, 24, 43)  # blue / red, ColorBrewer RdBu ends
NEWLINE = "\u21b5"  # a visible newline: the stop string that ends a step


def scale_of(values: Sequence[float]) -> float:
    """The |r| at which colours saturate: the largest magnitude (1e-9 when everything is 0)."""
    return max([abs(v) for v in values] + [1e-9])


def colour(r: float, scale: float) -> tuple[float, float, float, float]:
    """(red, green, blue, alpha) in [0, 1]: the sign picks the hue, |r| / scale the strength."""
    c = POS if r >= 0 else NEG
    return (c[0] / 255, c[1] / 255, c[2] / 255, min(1.0, abs(r) / scale) * 0.85)


def rgba(r: float, scale: float) -> str:
    """The CSS form of ``colour``."""
    red, green, blue, a = colour(r, scale)
    return f"rgba({round(255 * red)},{round(255 * green)},{round(255 * blue)},{a:.3f})"


def shown(piece: str) -> str:
    """A token's text as displayed: newlines made visible."""
    return piece.replace("\n", NEWLINE)


def token_spans(pieces: Sequence[tuple[str, float]], scale: float) -> str:
    """HTML spans, one per token, coloured by reward, the value in the hover title."""
    return "".join(
        f'<span class="tok" style="background:{rgba(r, scale)}" title="r = {r:+.4f}  {html.escape(repr(t), quote=True)}">'
        f"{html.escape(shown(t))}</span>"
        for t, r in pieces
    )


def credit_html(credit: Credit, question: str, info: dict[str, str] | None = None, marks: dict[int, str] | None = None) -> str:
    """The page for one trace. ``info``: extra header lines (name -> text); ``marks``: a note per step
    index (e.g. "first bad step")."""
    scale = scale_of(credit.rewards)
    sums = credit.step_sums
    sum_scale = scale_of(sums)
    rows = []
    for s in range(credit.num_steps):
        note = f'<span class="mark">{html.escape(marks[s])}</span>' if marks and s in marks else ""
        rows.append(
            f'<tr><td class="n">{s + 1}</td><td class="text">{token_spans(credit.step_tokens(s), scale)}{note}</td>'
            f'<td class="sum" style="background:{rgba(sums[s], sum_scale)}" title="sum of the step\'s token rewards">'
            f"{sums[s]:+.3f}</td></tr>"
        )
    head = [("question", question), ("beta", f"{credit.beta:g}"), ("total", f"{credit.total:+.4f}"),
            ("colour scale", f"|r| = {scale:.4f} saturates"), *((info or {}).items())]
    meta = "".join(f"<div><b>{html.escape(k)}</b> {html.escape(str(v))}</div>" for k, v in head)
    legend = (f'<div class="legend"><span>{-scale:+.3f}</span><span class="bar"></span><span>{scale:+.3f}</span>'
              '<span class="muted">red: the policy made the token less likely than its reference; blue: likelier</span></div>')
    return _PAGE.format(meta=meta, legend=legend, rows="".join(rows), neg="rgba({},{},{},0.85)".format(*NEG),
                        pos="rgba({},{},{},0.85)".format(*POS))


def credit_png(credit: Credit, out: str | Path, title: str = "", width: int = 88) -> Path:
    """The same heat map as a PNG: one block of lines per step (wrapped at ``width`` characters), the
    step sums in the right margin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    scale = scale_of(credit.rewards)
    sums = credit.step_sums
    lines: list[tuple[int, list[tuple[int, str, float]]]] = []  # (step, [(column, text, reward)])
    for s in range(credit.num_steps):
        col, cur = 0, []
        for t, r in credit.step_tokens(s):
            t = shown(t)
            if col + len(t) > width and cur:
                lines.append((s, cur))
                col, cur = 0, []
            cur.append((col, t, r))
            col += len(t)
        lines.append((s, cur))
    margin, left = 10, 4
    font = 10.0
    unit = 0.6 * font / 72  # inches per character: a monospace glyph is 0.6 em wide
    line = 0.25  # inches per line
    head = 0.35  # inches for the title
    fig_w, axes_h = (left + width + margin) * unit, line * max(1, len(lines))
    fig = plt.figure(figsize=(fig_w, axes_h + head))
    ax = fig.add_axes((0, 0, 1, axes_h / (axes_h + head)))
    ax.set_xlim(-left, width + margin)
    ax.set_ylim(max(1, len(lines)), 0)
    ax.axis("off")
    seen = set()
    for y, (s, toks) in enumerate(lines):
        if s not in seen:
            seen.add(s)
            ax.text(-3.5, y + 0.5, f"{s + 1}", va="center", ha="left", family="monospace", fontsize=9, color="#777")
            ax.add_patch(Rectangle((width + 1, y + 0.08), margin - 1, 0.84, color=colour(sums[s], scale_of(sums))))
            ax.text(width + margin - 0.5, y + 0.5, f"{sums[s]:+.3f}", va="center", ha="right", family="monospace", fontsize=9)
        for col, t, r in toks:
            ax.add_patch(Rectangle((col, y + 0.08), len(t), 0.84, color=colour(r, scale), linewidth=0))
            ax.text(col, y + 0.5, t, va="center", ha="left", family="monospace", fontsize=font)
    fig.text(0.01, 1 - 0.5 * head / (axes_h + head), title or f"implicit reward per token (beta {credit.beta:g}, total "
             f"{credit.total:+.3f}; blue: likelier than under the reference, red: less; saturates at |r| = {scale:.3f})",
             fontsize=9, va="center")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return out


_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>ponder credit</title>
<style>
body {{ font: 14px/1.45 system-ui, sans-serif; margin: 24px; color: #222; }}
.meta div {{ margin: 2px 0; }}
.legend {{ display: flex; gap: 8px; align-items: center; margin: 12px 0; font: 12px monospace; }}
.legend .bar {{ width: 220px; height: 12px; background: linear-gradient(to right, {neg}, white, {pos}); border: 1px solid #ccc; }}
.muted {{ color: #777; font-family: system-ui, sans-serif; }}
table.credit {{ border-collapse: collapse; }}
table.credit td {{ padding: 3px 6px; vertical-align: top; border-bottom: 1px solid #eee; }}
td.n {{ color: #999; font: 12px monospace; text-align: right; }}
td.text {{ font: 15px/1.9 ui-monospace, monospace; white-space: pre-wrap; max-width: 70em; }}
td.sum {{ font: 13px monospace; text-align: right; min-width: 6em; }}
span.tok {{ border-radius: 2px; }}
span.tok:hover {{ outline: 1px solid #333; }}
span.mark {{ margin-left: 12px; font: 12px system-ui, sans-serif; color: #b2182b; }}
</style></head><body>
<h2>implicit reward per token: r = beta &middot; (log &pi; &minus; log &pi;<sub>ref</sub>)</h2>
<div class="meta">{meta}</div>
{legend}
<table class="credit"><tr><th>step</th><th>text (hover a token for its reward)</th><th>step sum</th></tr>{rows}</table>
</body></html>
"""


def credit_report(reward, task, problem, out: str | Path, steps: Sequence[str] | None = None, sample: bool = False,
                  seed: int = 0):
    """Write ``out`` (HTML) and its PNG for one trace of ``problem``: ``steps`` if given, else the
    policy's own trace (greedy, or sampled at temperature 1). Returns (html path, png path, credit)."""
    from ..models.hf import HFPolicy
    from ..search import SearchEnv, get_method

    if steps is None:
        policy = HFPolicy(reward.policy, reward.tokenizer, name="policy", seed=seed)
        method = get_method("sampling" if sample else "greedy")
        cfg = method.config(n=1) if sample else method.config()
        [result] = method.run([problem], SearchEnv(policy, task), cfg)
        steps = list(result.steps)
        if not steps:
            raise PonderError(f"the policy wrote no step for {problem.id}; give a trace with --steps FILE")
    [credit] = reward.credit([problem], [steps])
    info = {"verdict": "correct" if task.reward(problem, steps) > 0 else "wrong"}
    marks = {}
    try:
        bad = task.first_bad_step(problem, steps)
        info["first bad step"] = "none" if bad is None else str(bad + 1)
        if bad is not None:
            marks[bad] = "first bad step"
    except PonderError:
        pass  # the task cannot tell
    sums = credit.step_sums
    if sums:
        low = min(range(len(sums)), key=sums.__getitem__)
        marks[low] = (marks.get(low, "") + " \u00b7 lowest step reward").lstrip(" \u00b7")
    out = Path(out)
    write_text(out, credit_html(credit, problem.question, info, marks))
    png = credit_png(credit, out.with_suffix(".png"))
    return out, png, credit
