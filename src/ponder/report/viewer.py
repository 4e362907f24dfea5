"""``ponder view``: one self-contained HTML page for a saved search tree or an eval run file.

The page needs no network: CSS and JS are inline, the rows' metadata is embedded as JSON in a
``<script type="application/json">`` tag (with ``</`` escaped), and each tree is rendered here as
escaped HTML. To keep big trees (a 256-node MCTS tree) usable only the root's first two levels and
the chosen path start unfolded; clicking a node folds or unfolds its children.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from ..errors import PonderError
from ..search.tree import Node

OPEN_DEPTH = 2  # nodes shallower than this start unfolded (so depth <= 2 is visible)


# --- input ----------------------------------------------------------------------------------------
def load_view_rows(path: Path) -> tuple[str, list[dict[str, Any]]]:
    """("tree" | "run", rows). A tree file becomes one row with no problem metadata."""
    path = Path(path)
    if not path.is_file():
        raise PonderError(f"no such file: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PonderError(f"cannot read {path}: {e}") from None
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None
    if isinstance(whole, dict) and "problem_id" not in whole:
        if "id" not in whole or not isinstance(whole.get("children"), list):
            raise PonderError(f"{path}: neither a ponder tree (a Node dict) nor an eval run file (JSONL rows)")
        return "tree", [{"problem_id": path.stem, "tree": Node.from_dict(whole)}]

    lines = text.split("\n")
    rows = []
    for lineno, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError:
            if lineno == len(lines) and rows:  # a torn last line of a run still being written
                break
            raise PonderError(f"{path}:{lineno}: neither a ponder tree nor an eval run file (not JSON)") from None
        if not isinstance(row, dict) or "problem_id" not in row:
            raise PonderError(f"{path}:{lineno}: neither a ponder tree nor an eval run file (row without 'problem_id')")
        row = dict(row)
        if row.get("tree") is not None:
            try:
                row["tree"] = Node.from_dict(row["tree"])
            except (PonderError, TypeError) as e:
                raise PonderError(f"{path}:{lineno}: bad tree in row: {e}") from None
        rows.append(row)
    if not rows:
        raise PonderError(f"{path}: neither a ponder tree nor an eval run file (no rows)")
    return "run", rows


def chosen_ids(tree: Node, steps: list[str] | None) -> list[str]:
    """Ids of the nodes along ``steps`` from the root, matched by step text (stops where the tree does)."""
    ids, node = ["0"] if steps else [], tree
    for s in steps or []:
        node = node.child_with(s)
        if node is None:
            break
        ids.append(node.id)
    return ids


# --- rendering ------------------------------------------------------------------------------------
def _e(s: Any) -> str:
    return html.escape(str(s), quote=True)


def _num(x: Any, fmt: str = ".3g") -> str:
    try:
        return format(float(x), fmt)
    except (TypeError, ValueError):
        return _e(x)


def _node_html(node: Node, chosen: set[str], out: list[str], credit: dict[str, list[tuple[str, float]]] | None = None) -> None:
    """Depth first, iteratively (deep trees must not hit the recursion limit). ``credit``: node id ->
    its step's (token, implicit reward) pairs, to colour the step's text."""
    from .credit import scale_of, token_spans

    scale = scale_of([r for pieces in (credit or {}).values() for _, r in pieces])
    stack: list[Any] = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
            continue
        n: Node = item
        kids = bool(n.children)
        open_ = kids and (n.depth < OPEN_DEPTH or n.id in chosen)
        cls = ["node"]
        if n.id in chosen:
            cls.append("chosen")
        if kids:
            cls.append("open" if open_ else "folded")
        stats = []
        if n.visits:
            stats.append(f'<span title="visits">N {n.visits}</span><span title="Q = value_sum / visits">Q {_num(n.q)}</span>')
        stats.append(f'<span title="prior">p {_num(n.prior)}</span>')
        if n.depth:
            stats.append(f'<span title="log-probability">lp {_num(n.logprob, ".2f")}</span>'
                         f'<span title="tokens">{n.tokens} tok</span>')
        pieces = (credit or {}).get(n.id)
        if pieces is not None:
            stats.append(f'<span class="score" title="implicit reward of this step: beta * log(pi / pi_ref) summed over '
                         f'its tokens">r {sum(r for _, r in pieces):+.3f}</span>')
        for name, v in (n.scores or {}).items():
            stats.append(f'<span class="score" title="critic {_e(name)}">{_e(name)} {_num(v)}</span>')
        if n.terminal:
            r = n.reward
            kind = "good" if r is not None and r > 0 else ("bad" if r is not None else "term")
            stats.append(f'<span class="badge {kind}">end{"" if r is None else " r=" + _num(r)}</span>')
        if kids:
            stats.append(f'<span class="nkids">{len(n.children)} child{"ren" if len(n.children) != 1 else ""}</span>')
        step = _e(n.step) if n.step else '<i class="muted">root</i>'
        if pieces is not None:
            step = token_spans(pieces, scale)
        if pieces is not None:
            step = token_spans(pieces, scale)
        out.append(
            f'<li class="{" ".join(cls)}"><div class="row"><span class="tog">{"" if not kids else ("▾" if open_ else "▸")}</span>'
            f'<span class="nid">{_e(n.id)}</span><span class="step">{step}</span>'
            f'<span class="stats">{"".join(stats)}</span></div>'
        )
        if kids:
            out.append("<ul>")
            stack.append("</ul></li>")
            stack.extend(reversed(n.children))
        else:
            out.append("</li>")


def _problem_html(i: int, row: dict[str, Any]) -> str:
    tree: Node | None = row.get("tree")
    steps = row.get("steps") or []
    parts = [f'<section class="problem" id="p{i}"{"" if i == 0 else " hidden"}>']
    meta = []
    if "question" in row:
        meta.append(f'<div><b>question</b> <span class="mono">{_e(row["question"])}</span></div>')
    if "answer" in row or "correct" in row:
        ok = row.get("correct")
        mark = "" if ok is None else (' <span class="badge good">✓ correct</span>' if ok else ' <span class="badge bad">✗ wrong</span>')
        ref = f' <span class="muted">(reference {_e(row["reference"])})</span>' if row.get("reference") is not None else ""
        meta.append(f'<div><b>answer</b> <span class="mono">{"(none)" if row.get("answer") is None else _e(row["answer"])}</span>{mark}{ref}</div>')
    c = row.get("compute")
    if isinstance(c, dict):
        cs = ", ".join(f"{_e(k)} {_num(v, ',.4g') if isinstance(v, (int, float)) else _e(v)}" for k, v in c.items())
        meta.append(f'<div><b>compute</b> {cs}</div>')
    if tree is not None:
        meta.append(f'<div><b>tree</b> {tree.size()} nodes</div>')
    if meta:
        parts.append(f'<div class="meta">{"".join(meta)}</div>')
    if steps:
        parts.append('<details class="chosenpath"' + (" open" if tree is None else "") + '><summary>chosen steps</summary><ol>'
                     + "".join(f'<li class="mono">{_e(s)}</li>' for s in steps) + "</ol></details>")
    if tree is None:
        parts.append('<p class="muted">no tree saved in this row (run ponder eval with --save-trees)</p>')
    else:
        out: list[str] = ['<ul class="tree">']
        _node_html(tree, set(chosen_ids(tree, steps)), out, row.get("credit"))
        out.append("</ul>")
        parts.append("".join(out))
    parts.append("</section>")
    return "".join(parts)


def _json_for_script(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False).replace("</", "<\\/")


def render_html(kind: str, rows: list[dict[str, Any]], title: str) -> str:
    meta = [{k: v for k, v in r.items() if k not in ("tree", "credit")} | {"has_tree": r.get("tree") is not None}
            for r in rows]
    select = ""
    if kind == "run":
        opts = []
        for i, r in enumerate(rows):
            ok = r.get("correct")
            mark = "·" if ok is None else ("✓" if ok else "✗")
            q = str(r.get("question", ""))
            q = q if len(q) <= 60 else q[:57] + "..."
            notree = "" if r.get("tree") is not None else " (no tree)"
            opts.append(f'<option value="{i}">{_e(r["problem_id"])} {mark} {_e(q)}{notree}</option>')
        n_ok = sum(1 for r in rows if r.get("correct"))
        select = (f'<label>problem <select id="sel">{"".join(opts)}</select></label>'
                  f'<span class="muted">{len(rows)} problems, {n_ok} correct</span>')
    body = "".join(_problem_html(i, r) for i, r in enumerate(rows))
    return _PAGE.format(title=_e(title), select=select, body=body, data=_json_for_script({"kind": kind, "rows": meta}))


def add_credit(rows: list[dict[str, Any]], reward) -> None:
    """Give each row's tree a ``credit`` map: node id -> its step's (token, implicit reward) pairs.

    A token's reward depends only on the text before it, so reading each leaf's whole path once gives
    every node on it its rewards: one batched call over all leaves of all trees.
    """
    from ..tasks import Problem

    jobs = []  # (row, leaf)
    for row in rows:
        tree = row.get("tree")
        if tree is not None:
            row["credit"] = {}
            jobs += [(row, leaf) for leaf in tree if not leaf.children and leaf.depth]
    problems = [Problem(str(r["problem_id"]), str(r.get("question", "")), r.get("reference"), r.get("meta") or {})
                for r, _ in jobs]
    for (row, leaf), c in zip(jobs, reward.credit(problems, [leaf.steps() for _, leaf in jobs])):
        for node in leaf.path():
            row["credit"][node.id] = c.step_tokens(node.depth - 1)


def view(path: Path | str, out: Path | str | None = None, credit: str | None = None, task: str | None = None) -> Path:
    """Write the page for ``path``; ``credit`` (an implicit-reward spec: ITER or POLICY:REFERENCE) colours
    every step by its per-token implicit reward, for a run file's task (from its meta file) or ``task``."""
    path = Path(path)
    kind, rows = load_view_rows(path)
    if credit:
        from ..critics import load_implicit
        from ..tasks import get_task

        meta_path = path.with_name(path.name + ".meta.json")
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        name = task or meta.get("task")
        if not name:
            raise PonderError(f"--credit needs the task: {path} has no meta file naming it; give --task")
        if kind == "tree":
            raise PonderError(f"--credit needs each tree's problem: {path} is a bare tree; use an eval run file (--save-trees)")
        # the run file's own task, with its data file and knobs, unless --task names another
        own = {} if task else {"data": meta.get("data"), **(meta.get("task_options") or {})}
        add_credit(rows, load_implicit(credit, get_task(name, **own)))
    out = Path(out) if out else path.with_suffix(".html")
    if out.resolve() == path.resolve():
        raise PonderError(f"--out would overwrite the input {path}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(render_html(kind, rows, path.name), encoding="utf-8")
    except OSError as e:
        raise PonderError(f"cannot write {out}: {e}") from None
    return out


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>ponder view: {title}</title>
<style>
body {{ font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #1d2330; background: #f7f8fa; }}
header {{ position: sticky; top: 0; z-index: 2; background: #fff; border-bottom: 1px solid #dde1e8; padding: 8px 16px;
  display: flex; flex-wrap: wrap; gap: 8px 14px; align-items: center; }}
header h1 {{ font-size: 15px; margin: 0; }}
header select {{ max-width: 560px; font: inherit; }}
header button {{ font: inherit; padding: 2px 8px; border: 1px solid #c5cbd6; background: #f3f5f8; border-radius: 4px; cursor: pointer; }}
main {{ padding: 10px 16px 40px; }}
.meta {{ background: #fff; border: 1px solid #dde1e8; border-radius: 6px; padding: 8px 12px; margin-bottom: 8px; }}
.meta div {{ margin: 2px 0; }}
.mono, .step {{ font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 13px; white-space: pre-wrap; }}
.muted {{ color: #7a8394; }}
details.chosenpath {{ margin: 0 0 8px; }} details.chosenpath ol {{ margin: 4px 0; }}
ul.tree, ul.tree ul {{ list-style: none; margin: 0; padding-left: 0; }}
ul.tree ul {{ margin-left: 11px; padding-left: 12px; border-left: 1px solid #d3d8e0; }}
li.folded > ul {{ display: none; }}
.row {{ display: flex; flex-wrap: wrap; align-items: baseline; gap: 2px 8px; padding: 2px 6px; border-radius: 4px; margin: 1px 0; }}
li.open > .row, li.folded > .row {{ cursor: pointer; }}
.row:hover {{ background: #eef1f6; }}
li.chosen > .row {{ background: #fff4cc; box-shadow: inset 3px 0 0 #e0a800; }}
.tog {{ width: 12px; color: #5b6475; flex: none; }}
.nid {{ color: #8a93a3; font-size: 12px; font-family: ui-monospace, monospace; flex: none; }}
.step {{ flex: 0 1 auto; min-width: 0; overflow-wrap: anywhere; }}
.stats {{ display: inline-flex; flex-wrap: wrap; gap: 4px; font-size: 12px; color: #4a5263; }}
.stats span {{ background: #eef0f4; border-radius: 3px; padding: 0 5px; white-space: nowrap; }}
.stats span.score {{ background: #e4eefc; }}
.stats span.nkids {{ background: none; color: #8a93a3; }}
.badge {{ border-radius: 3px; padding: 0 6px; font-size: 12px; white-space: nowrap; }}
.stats span.badge.good, .badge.good {{ background: #d5f2dc; color: #12602a; }}
.stats span.badge.bad, .badge.bad {{ background: #fadbd8; color: #8c1d13; }}
.stats span.badge.term, .badge.term {{ background: #e2e4ea; color: #333; }}
</style></head>
<body>
<header><h1>ponder view: {title}</h1>{select}
<button id="b-path" title="fold everything off the chosen path">chosen path</button>
<button id="b-all">expand all</button><button id="b-none">collapse all</button>
<span class="muted">click a node to fold / unfold</span></header>
<main>{body}</main>
<script type="application/json" id="ponder-data">{data}</script>
<script>
(function () {{
  var data = JSON.parse(document.getElementById("ponder-data").textContent);
  var cur = 0;
  function section() {{ return document.getElementById("p" + cur); }}
  function setOpen(li, open) {{
    if (!li.querySelector(":scope > ul")) return;
    li.classList.toggle("open", open); li.classList.toggle("folded", !open);
    li.querySelector(":scope > .row > .tog").textContent = open ? "\\u25be" : "\\u25b8";
  }}
  document.addEventListener("click", function (ev) {{
    var row = ev.target.closest(".row");
    if (!row) return;
    var li = row.parentElement;
    if (window.getSelection && String(window.getSelection()).length) return;  // selecting text, not folding
    setOpen(li, li.classList.contains("folded"));
  }});
  function each(fn) {{ var s = section(); if (s) s.querySelectorAll("ul.tree li").forEach(fn); }}
  document.getElementById("b-all").onclick = function () {{ each(function (li) {{ setOpen(li, true); }}); }};
  document.getElementById("b-none").onclick = function () {{ each(function (li) {{ setOpen(li, false); }}); }};
  document.getElementById("b-path").onclick = function () {{ each(function (li) {{ setOpen(li, li.classList.contains("chosen")); }}); }};
  var sel = document.getElementById("sel");
  function show(i) {{
    if (!document.getElementById("p" + i)) return;
    section().hidden = true; cur = i; section().hidden = false;
    if (sel) sel.value = String(i);
    document.title = "ponder view: " + data.rows[cur].problem_id;
  }}
  if (sel) sel.onchange = function () {{ show(+sel.value); history.replaceState(null, "", "#p" + cur); }};
  var m = /^#p(\\d+)$/.exec(location.hash);  // page.html#p3 opens the 4th problem
  if (m) show(+m[1]);
}})();
</script>
</body></html>
"""
