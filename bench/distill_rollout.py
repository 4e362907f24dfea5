"""Distill the fast rollout model on a run's verified traces the way `--rollout-model distill` does each
iteration (ponder.loop.learn.sft_recipe + train_sft, rollout_sft defaults), one pass per iteration."""
import sys
from pathlib import Path
from types import SimpleNamespace

from ponder.io import read_rows
from ponder.loop.config import ImproveConfig
from ponder.loop.learn import sft_recipe
from ponder.models import load_policy
from ponder.models.hf import render_prompt
from ponder.tasks import Problem, get_task
from ponder.train import train_sft

# usage: python bench/distill_rollout.py START_MODEL RUN_DIR OUT_DIR  (Game of 24; iterations 1 and 2 of RUN_DIR)
src, run, out = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
cfg = ImproveConfig()
task = get_task("game24")
imp = SimpleNamespace(cfg=cfg, task=task)
prev = src
for i in (1, 2):
    pol = load_policy(prev, device="cpu")
    rows = read_rows(run / f"iter-{i}" / "data" / "sft.jsonl")
    texts = [task.segments(render_prompt(pol.tokenizer, task, Problem.from_dict(r["problem"])), r["steps"]) for r in rows]
    batch, rcfg = sft_recipe(imp, i, texts, cfg.rollout_sft)
    dest = Path(out) / f"iter-{i}"
    losses = train_sft(pol.model, pol.tokenizer, batch, rcfg, dest, progress=False)
    print(i, len(texts), rcfg.steps, losses[0], losses[-1], flush=True)
    prev = str(dest)
