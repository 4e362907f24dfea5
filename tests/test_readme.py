"""The README cannot drift from BENCHMARKS.md, and every ``ponder`` command it shows parses.

1. Every number in the README's Results table (the capability and "today" columns; commands in code
   spans are left out) appears in the BENCHMARKS.md section(s) that its row links to, so a number
   changed by hand on either side, or a row pointing at a section that was renamed, fails here.
2. Every ``ponder ...`` command in a code block of the README, and every command in the Results
   table, is parsed by the real parser (``ponder.cli.build_parser``), without running it. Commands
   quoted inline in the prose are often fragments (``ponder improve --ray``), so for them the
   subcommand and each option name must exist.

3. The rows of the report the README shows `make demo` printing are rows of a BENCHMARKS.md table.

Each check is also run on a copy of the README with a number (or an option) changed, to show that it
catches the change. A number is matched as a token (with its %, x, min or s) anywhere in the linked
section, so a hand edit to a value that the section happens to hold elsewhere goes unseen; every number
of the table is checked to be caught when changed to a value the section does not hold.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BENCH = (ROOT / "BENCHMARKS.md").read_text()

# a number: digits with thousands commas and decimals, not glued to a word ("SmolLM2", "Q4_1"; "iter-3"
# is fine: "-" is not a word character), with its unit when that is %, x, min or s ("1.38x", "18%",
# "59 min"); a wall clock "10 min 54 s" is one number
NUM = re.compile(r"(?<![\w.,])(\d+ min \d+ s|\d+(?:,\d{3})*(?:\.\d+)?)(%|x(?!\w)| min\b| s\b)?")
LINK = re.compile(r"\[([^\]]*)\]\(BENCHMARKS\.md#([^)\s]+)\)")


# ----------------------------------------------------------------------------------------------------
# Markdown helpers


def _headings(text: str):
    """(level, title, line index) of every ## / ### heading outside code fences."""
    fence, out = False, []
    for i, line in enumerate(text.split("\n")):
        if line.startswith("```"):
            fence = not fence
        elif not fence:
            m = re.match(r"^(#{1,6}) (.*)$", line)
            if m:
                out.append((len(m.group(1)), m.group(2).strip(), i))
    return out


def slug(title: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    s = re.sub(r"[^\w\- ]", "", title.strip().lower())
    return s.replace(" ", "-")


def sections(text: str) -> dict[str, str]:
    """Anchor -> the section's text: its heading down to the next heading of the same or a higher level
    (so a ## section includes its ### subsections). Repeated anchors get -1, -2, ... as on GitHub."""
    lines = text.split("\n")
    heads = _headings(text)
    out: dict[str, str] = {}
    for n, (level, title, i) in enumerate(heads):
        end = next((j for lv, _, j in heads[n + 1:] if lv <= level), len(lines))
        a, k = slug(title), 1
        while a in out:
            a, k = f"{slug(title)}-{k}", k + 1
        out[a] = "\n".join(lines[i:end])
    return out


def _section(text: str, title: str) -> str:
    heads = _headings(text)
    for n, (level, t, i) in enumerate(heads):
        if t == title:
            lines = text.split("\n")
            end = next((j for lv, _, j in heads[n + 1:] if lv <= level), len(lines))
            return "\n".join(lines[i:end])
    raise AssertionError(f"README has no '{title}' section")


def _cells(row: str) -> list[str]:
    # split a table row on | outside code spans
    cells, cur, code = [], "", False
    for ch in row.strip().strip("|"):
        if ch == "`":
            code = not code
        if ch == "|" and not code:
            cells.append(cur.strip())
            cur = ""
        else:
            cur += ch
    cells.append(cur.strip())
    return cells


def results_rows(readme: str) -> list[list[str]]:
    """The data rows of the Results table, as cells: capability, today, command, details."""
    lines = [ln for ln in _section(readme, "Results").split("\n") if ln.startswith("|")]
    assert len(lines) > 2 and re.match(r"^\|[-| ]+\|$", lines[1]), "the Results table has no header"
    rows = [_cells(ln) for ln in lines[2:]]
    for r in rows:
        assert len(r) == 4, f"a Results row needs 4 cells (capability, today, command, details): {r}"
    return rows


def _prose(cell: str) -> str:
    """A cell with its code spans, HTML comments and link targets blanked out (same length, so positions
    stay those of the raw cell): what is left is the text whose numbers are claims."""
    blank = lambda m: " " * len(m.group(0))  # noqa: E731
    cell = re.sub(r"<!--.*?-->", blank, cell)
    cell = re.sub(r"`[^`]*`", blank, cell)
    cell = re.sub(r"Game of 24", blank, cell)  # a name, not a number
    return re.sub(r"\]\([^)]*\)", blank, cell)


def _name(cap: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<!--.*?-->", "", cap)).strip()


def _found(num: str, unit: str, text: str) -> bool:
    tail = re.escape(unit) if unit else r"(?![\d]|\.\d)"
    return re.search(r"(?<![\w.,])" + re.escape(num) + tail, text) is not None


def drift(readme: str, bench: str) -> list[str]:
    """Every problem found: a row without a link, a link to no section, a number not in its sections."""
    secs = sections(bench)
    problems = []
    for cap, today, _cmd, details in results_rows(readme):
        anchors = [a for _, a in LINK.findall(details)]
        if not anchors:
            problems.append(f"row '{_name(cap)}' links to no BENCHMARKS.md section")
            continue
        missing = [a for a in anchors if a not in secs]
        if missing:
            problems.append(f"row '{_name(cap)}' links to #{', #'.join(missing)}: no such section in BENCHMARKS.md")
            continue
        text = "\n".join(secs[a] for a in anchors)
        for cell in (cap, today):
            for m in NUM.finditer(_prose(cell)):
                if not _found(m.group(1), m.group(2) or "", text):
                    problems.append(f"row '{_name(cap)}': {m.group(0)} is not in BENCHMARKS.md#{anchors[0]}")
    return problems


# ----------------------------------------------------------------------------------------------------
# the numbers


def test_results_table_has_rows_and_links():
    rows = results_rows(README)
    assert len(rows) >= 10
    caps = [_prose(r[0]).strip() for r in rows]
    assert len(set(caps)) == len(caps), "two Results rows describe the same capability"
    for r in rows:
        assert LINK.search(r[3]), f"row without a BENCHMARKS.md link: {r[0]}"


def test_every_results_number_is_in_its_benchmarks_section():
    assert drift(README, BENCH) == []


def _bumped(num: str, unit: str, text: str) -> str:
    """The number changed as by a hand edit (its last digits up by 1, 2, ...) until it is nowhere in ``text``."""
    m = list(re.finditer(r"\d+", num))[-1]
    for step in range(1, 1000):
        cand = num[:m.start()] + str(int(m.group(0)) + step).rjust(len(m.group(0)), "0") + num[m.end():]
        if not _found(cand, unit, text):
            return cand
    raise AssertionError(f"no changed value of {num} is absent from the section")


def test_a_number_changed_by_hand_is_caught():
    """Change each number of the table in turn, in a copy of the README: the check names it every time."""
    secs = sections(BENCH)
    lines = README.split("\n")
    start = lines.index("## Results")
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("## "))
    checked = 0
    for li in range(start, end):
        line = lines[li]
        if not line.startswith("| ") or line.startswith("|---"):
            continue
        cells = _cells(line)
        if len(cells) != 4 or cells[0] == "capability":
            continue
        text = "\n".join(secs.get(a, "") for _, a in LINK.findall(cells[3]))
        for c in (0, 1):
            for m in NUM.finditer(_prose(cells[c])):
                num, unit = m.group(1), m.group(2) or ""
                new = _bumped(num, unit, text)
                raw = cells[c]
                changed = raw[:m.start(1)] + new + raw[m.end(1):]
                row = list(cells)
                row[c] = changed
                copy = lines[:li] + ["| " + " | ".join(row) + " |"] + lines[li + 1:]
                found = drift("\n".join(copy), BENCH)
                assert any(f"{new}{unit} is not in" in p for p in found), (line, num, new, found)
                checked += 1
    assert checked >= 50, checked


def test_a_hand_edit_of_the_demo_time_is_caught():
    """The concrete case: someone 'rounds' the demo's wall clock in the README's Results table."""
    line = next(ln for ln in README.split("\n") if ln.startswith("|") and "wall clock" in ln and "make demo" in ln)
    m = re.search(r"(\d+) min (\d+) s", _cells(line)[1])
    assert m, line
    secs = sections(BENCH)
    text = "\n".join(secs[a] for _, a in LINK.findall(_cells(line)[3]))
    # the digits of the seconds swapped ("10 min 54 s" -> "10 min 45 s"), else the seconds up by one
    swapped = f"{m.group(1)} min {m.group(2)[::-1]} s"
    new = swapped if swapped != m.group(0) and not _found(swapped, "", text) else _bumped(m.group(0), "", text)
    edited = README.replace(line, line.replace(m.group(0), new, 1))
    assert edited != README
    assert any(f"{new} is not in" in p for p in drift(edited, BENCH))


def test_a_changed_benchmark_number_or_a_renamed_section_is_caught():
    row = results_rows(README)[0]
    anchor = LINK.findall(row[3])[0][1]
    title = next(t for _, t, _ in _headings(BENCH) if slug(t) == anchor)
    renamed = BENCH.replace(title, title + " (renamed)", 1)
    assert any("no such section" in p for p in drift(README, renamed))


def demo_report_rows(readme: str) -> list[str]:
    """The per-iteration rows of the report that the README shows `make demo` printing."""
    lines = readme.split("\n")
    start = next(i for i, ln in enumerate(lines) if ln.startswith("# ponder improve:"))
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("```"))
    return [ln for ln in lines[start:end] if re.match(r"^\| \d+ \|", ln)]


def test_the_demo_report_shown_is_a_measured_one():
    """The table the README shows `make demo` printing is, row for row, a table of BENCHMARKS.md."""
    rows = demo_report_rows(README)
    assert len(rows) >= 2
    bench_lines = set(BENCH.split("\n"))
    assert [r for r in rows if r not in bench_lines] == []
    cells = rows[-1].split(" | ")
    cells[1] = "1" + cells[1]  # the last iteration's greedy solve rate, e.g. 6% -> 16%, by hand
    edited = README.replace(rows[-1], " | ".join(cells), 1)
    assert edited != README
    assert [r for r in demo_report_rows(edited) if r not in bench_lines] != []


# ----------------------------------------------------------------------------------------------------
# the commands


def _ponder_argv(line: str) -> list[str] | None:
    """The argv after ``ponder`` (or ``-m ponder.cli``) in one shell line, or None."""
    try:
        words = shlex.split(line, comments=True)
    except ValueError:
        return None
    for i, w in enumerate(words):
        if w == "ponder" and i + 1 < len(words) and not words[i + 1].startswith("-"):
            if i == 0 or words[i - 1] in ("&&", ";", "|", "then", "do"):
                return _cut(words[i + 1:])
        if w == "ponder.cli" and i > 0 and words[i - 1] == "-m":
            return _cut(words[i + 1:])
    return None


def _cut(argv: list[str]) -> list[str]:
    for j, w in enumerate(argv):
        if w in ("&&", ";", "|", "||"):
            return argv[:j]
    return argv


def commands(readme: str) -> tuple[list[list[str]], list[list[str]]]:
    """(whole commands: code blocks and the Results table's command cells, fragments: inline in prose)."""
    whole, fragments = [], []
    fence, lang, buf = False, "", ""
    for line in readme.split("\n"):
        if line.startswith("```"):
            fence, lang = (not fence), line[3:].strip()
            continue
        if fence:
            if lang not in ("", "bash", "sh", "shell"):
                continue
            buf += line.rstrip()
            if buf.endswith("\\"):
                buf = buf[:-1] + " "
                continue
            argv = _ponder_argv(buf) if not buf.lstrip().startswith("#") else None
            buf = ""
            if argv:
                whole.append(argv)
            continue
        for span in re.findall(r"`([^`]+)`", line):
            argv = _ponder_argv(span)
            if argv:
                is_cmd_cell = line.startswith("|") and len(_cells(line)) == 4 and f"`{span}`" in _cells(line)[2]
                (whole if is_cmd_cell else fragments).append(argv)
    return whole, fragments


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    act = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(act.choices)


def command_problems(readme: str) -> list[str]:
    from ponder.cli import build_parser
    from ponder.errors import PonderError

    parser = build_parser()
    subs = _subparsers(parser)
    whole, fragments = commands(readme)
    problems = []
    for argv, full in [(a, True) for a in whole] + [(a, False) for a in fragments]:
        shown = "ponder " + " ".join(argv)
        if argv[0] not in subs:
            problems.append(f"{shown}: no subcommand {argv[0]!r}")
            continue
        known = subs[argv[0]]._option_string_actions
        for w in argv[1:]:
            name = w.split("=", 1)[0]
            if name.startswith("--") and name != "--" and name not in known:
                problems.append(f"{shown}: {argv[0]} has no option {name}")
        if full:
            try:
                parser.parse_args([w for w in argv if w not in ("-h", "--help")])
            except (PonderError, SystemExit) as e:
                problems.append(f"{shown}: {e}")
    return problems


def test_readme_shows_commands():
    whole, fragments = commands(README)
    subs = {a[0] for a in whole}
    assert {"eval", "compare", "improve", "train", "solve", "view", "credit"} <= subs, subs
    assert len(whole) >= 20 and fragments


def test_every_readme_command_parses():
    assert command_problems(README) == []


def test_a_wrong_option_or_subcommand_is_caught():
    assert "--budgets 500" in README
    bad_option = README.replace("--budgets 500", "--budgtes 500")
    assert any("no option --budgtes" in p for p in command_problems(bad_option))
    bad_sub = README.replace("ponder improve --out runs/mine ", "ponder improv --out runs/mine ", 1)
    assert bad_sub != README
    assert any("no subcommand 'improv'" in p for p in command_problems(bad_sub))
    # a value the parser refuses, in a whole command
    bad_value = README.replace("--limit 100", "--limit 0", 1)
    assert bad_value != README
    assert any("--limit must be > 0" in p for p in command_problems(bad_value))
