"""``ponder view``: a saved tree or a run file becomes one self-contained, escaped HTML page."""

import json
import re

from ponder.cli import main
from ponder.search.tree import Node


def small_tree() -> Node:
    root = Node(visits=4, value_sum=2.0)
    a = root.add("4 + 9 = 13 <b>&\n", tokens=7, logprob=-1.25, prior=0.6, visits=3, value_sum=2.0, scores={"verifier": 0.9})
    root.add("10 - 4 = 6\n", tokens=6, logprob=-2.5, prior=0.4, visits=1, scores={"verifier": 0.1})
    b = a.add("13 + 10 = 23\n", tokens=6, prior=0.5, visits=1, scores={"verifier": 0.2})
    b.add("23 + 1 = 24 </script>\n", tokens=6, terminal=True, reward=1.0)
    a.add("13 - 10 = 3\n", tokens=6, terminal=True, reward=0.0)
    return root


def test_view_tree_file(tmp_path, capsys):
    root = small_tree()
    path, out = tmp_path / "tree.json", tmp_path / "page.html"
    path.write_text(json.dumps(root.to_dict()))
    assert main(["view", str(path), "--out", str(out)]) == 0
    page = out.read_text()
    assert "4 + 9 = 13 &lt;b&gt;&amp;" in page and "<b>&" not in page.split('<script type="application/json"')[0]
    assert "23 + 1 = 24 &lt;/script&gt;" in page
    for node in root:
        if node.step:
            assert node.step.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") in page
        assert f'<span class="nid">{node.id}</span>' in page
    assert page.count("</script>") == 2  # the data tag and the code, nothing smuggled in by a step
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert "http" not in page.lower()
    # default --out: the input with an .html suffix
    assert main(["view", str(path)]) == 0 and (tmp_path / "tree.html").exists()


def test_view_run_file_lists_every_problem(tmp_path):
    root = small_tree()
    steps = ["4 + 9 = 13 <b>&\n", "13 + 10 = 23\n", "23 + 1 = 24 </script>\n"]
    rows = [
        {"problem_id": "p-1", "question": "1 4 9 10", "answer": "24", "correct": 1.0, "steps": steps,
         "compute": {"tokens_generated": 25, "tokens_read": 40, "forward_calls": 3.0, "seconds": 0.1}, "info": {},
         "tree": root.to_dict()},
        {"problem_id": "p-2", "question": "1 1 1 1", "answer": None, "correct": 0.0, "steps": ["1 + 1 = 2 & more\n"],
         "compute": {"tokens_generated": 5, "tokens_read": 8, "forward_calls": 1.0, "seconds": 0.01}, "info": {}},
    ]
    path, out = tmp_path / "run.jsonl", tmp_path / "run.html"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["view", str(path), "--out", str(out)]) == 0
    page = out.read_text()
    assert '<select id="sel">' in page and "p-1 ✓" in page and "p-2 ✗" in page
    assert "1 + 1 = 2 &amp; more" in page  # a row without a tree still shows its steps
    # the chosen path is highlighted down to the terminal leaf, the off-path sibling is not
    chosen = re.findall(r'<li class="node chosen[^"]*"><div class="row"><span class="tog">[^<]*</span><span class="nid">([\d.]+)<', page)
    assert chosen == ["0", "0.0", "0.0.0", "0.0.0.0"]
    data = page.split('<script type="application/json" id="ponder-data">')[1].split("</script>")[0]
    meta = json.loads(data)
    assert [r["problem_id"] for r in meta["rows"]] == ["p-1", "p-2"] and meta["rows"][0]["has_tree"]


def test_view_deep_tree_starts_folded(tmp_path):
    root = Node()
    for i in range(4):
        node = root.add(f"s{i}\n")
        for d in range(5):
            node = node.add(f"s{i}.{d}\n")
    path = tmp_path / "deep.json"
    path.write_text(json.dumps(root.to_dict()))
    assert main(["view", str(path)]) == 0
    page = (tmp_path / "deep.html").read_text()
    assert re.search(r'<li class="node open"><div class="row"><span class="tog">▾</span><span class="nid">0\.0<', page)
    assert re.search(r'<li class="node folded"><div class="row"><span class="tog">▸</span><span class="nid">0\.0\.0<', page)


def test_view_bad_input_is_one_line_error(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"hello": "world"}))
    assert main(["view", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ponder: error:") and err.count("\n") == 1 and "neither" in err
    assert not (tmp_path / "bad.html").exists()
    assert main(["view", str(tmp_path / "missing.json")]) == 2
    assert "no such file" in capsys.readouterr().err
    text = tmp_path / "notes.txt"
    text.write_text("just some words\n")
    assert main(["view", str(text)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
