"""TRL's own GRPOTrainer on Game of 24 with ponder's verifier: the external GRPO baseline (issue 16, item 3).

    python bench/grpo_trl.py --model MODEL_FOLDER --out runs/grpo-trl [--steps 20 --group-size 8 ...] [--eval]

MODEL_FOLDER is any ordinary Hugging Face model folder (the bootstrap policy of a run, ``RUN/iter-0/policy``,
or one written by ``ponder train``). It trains on the Game-of-24 *training* puzzles (ranks 1-900; never a test
puzzle), saves the model to ``OUT/model`` and prints the ``ponder eval`` command that scores it on the test
split (``--eval`` runs greedy decoding on it right away, through ``ponder.evaluate.run_eval``).

Same settings as ponder's GRPO (``ponder.train.grpo.GRPOConfig``, the same options on this command line):
TRL's ``loss_type="grpo"`` (DeepSeekMath eq. 3: per trace, then per group), the KL term without TRL's
ratio correction (``use_bias_correction_kl=False``, on by default since TRL 1.0), AdamW with betas (0.9, 0.95),
linear warm-up then cosine decay to 10% of the peak (TRL's warm-up starts at lr 0, ponder's at peak / warmup),
the same group size, clip range, KL weight, updates per batch (``num_iterations``) and temperature. One
difference stays: ponder skips the update of a step whose groups all have equal rewards while the policy is
still the reference (a zero gradient); TRL runs it.

How the traces are made is the one thing TRL leaves to the user here: in Game of 24 the model writes the
action (``4 + 8 =``) and the task writes the observation (`` 12 (left: 1 6 12)``), so a trace is a short
multi-turn rollout, which TRL takes through ``rollout_func``. The rollout below samples each action with
transformers' ``generate`` on TRL's own model (not ponder's sampler), appends the task's observation and
marks its tokens with ``env_mask = 0``, so TRL trains on the model's tokens only, as ponder does. The reward
is the task's verifier on the finished trace. ponder's GRPO can instead draw each action from the policy over
the task's listed legal actions (``--actions listed``, its default on Game of 24); TRL cannot, so here every
action is written (``actions`` is recorded as ``written``). Tokens generated (the model's, not the observations) and wall
seconds are counted for compute-matched comparisons.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from ponder.config import add_config_args, config_from
from ponder.errors import PonderError
from ponder.models.hf import encode_prompts, render_prompt
from ponder.tasks import Problem, get_task
from ponder.train.grpo import GRPOConfig


def make_rollout(task, problems: dict[str, Problem], cfg: GRPOConfig, counts: dict):
    """TRL's ``rollout_func``: one trace per prompt (TRL repeats each prompt ``num_generations`` times), the
    model sampling each action up to the task's action stop and the task writing its observation."""
    max_new = cfg.max_step_tokens or task.max_step_tokens

    def rollout(prompts: list[str], trainer) -> dict:
        model, tok = trainer.model, trainer.processing_class
        heads = encode_prompts(tok, prompts)
        rows = [{"problem": problems[p], "ids": [], "mask": [], "steps": [], "done": False} for p in prompts]
        for _ in range(task.max_steps):
            live = [i for i, r in enumerate(rows) if not r["done"] and not task.is_terminal(r["problem"], r["steps"])]
            if not live:
                break
            seqs = [torch.tensor(heads[i] + rows[i]["ids"]) for i in live]
            width = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), width), tok.pad_token_id, dtype=torch.long)
            att = torch.zeros_like(ids)
            for i, s in enumerate(seqs):  # left-padded, as generate wants
                ids[i, width - len(s):], att[i, width - len(s):] = s, 1
            with torch.no_grad():
                out = model.generate(input_ids=ids.to(model.device), attention_mask=att.to(model.device), do_sample=True,
                                     temperature=cfg.temperature, top_p=cfg.top_p, top_k=0, max_new_tokens=max_new,
                                     stop_strings=list(task.action_stop), tokenizer=tok, pad_token_id=tok.pad_token_id)
            for i, gen in zip(live, out[:, width:].tolist()):
                r = rows[i]
                gen = _until_stop(tok, gen, task.action_stop)
                counts["tokens_generated"] += len(gen)
                r["ids"] += gen
                r["mask"] += [1] * len(gen)
                written = tok.decode(gen, skip_special_tokens=True)
                step = task.observe(r["problem"], r["steps"], written.strip()) if any(s in written for s in task.action_stop) else None
                if step is None:  # no action, an illegal one, or end of sequence: the trace ends here, reward 0
                    r["done"] = True
                    continue
                obs = tok(step[len(task.action_of(step)):], add_special_tokens=False)["input_ids"]
                r["ids"] += obs
                r["mask"] += [0] * len(obs)
                r["steps"].append(step)
        for r in rows:
            if not r["ids"]:  # the model ended at once: its end of sequence is the completion (TRL needs one token)
                r["ids"], r["mask"] = [tok.eos_token_id], [1]
        return {"prompt_ids": heads, "completion_ids": [r["ids"] for r in rows],
                # TRL reads sampling log-probs only for vLLM's importance-sampling correction, off here
                "logprobs": [[0.0] * len(r["ids"]) for r in rows],
                "env_mask": [r["mask"] for r in rows], "steps": [r["steps"] for r in rows]}

    return rollout


def _until_stop(tok, gen: list[int], stops) -> list[int]:
    """The generated ids up to the first that completes a stop string, an end of sequence, or padding."""
    out = []
    for t in gen:
        if t in (tok.eos_token_id, tok.pad_token_id):
            break
        out.append(t)
        if any(s in tok.decode(out) for s in stops):
            break
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a Hugging Face model folder (e.g. RUN/iter-0/policy)")
    ap.add_argument("--out", required=True, help="folder for the trained model (OUT/model), its log and summary")
    ap.add_argument("--problems", type=int, default=900, help="training puzzles used (the first N of ranks 1-900)")
    ap.add_argument("--eval", action="store_true", help="then run greedy decoding on the test split (ponder eval)")
    ap.add_argument("--eval-limit", type=int, default=None, help="test puzzles evaluated (default: all 100)")
    add_config_args(ap, GRPOConfig)
    args = ap.parse_args(argv)
    cfg = config_from(GRPOConfig, args)
    if cfg.actions == "listed":
        raise SystemExit("bench/grpo_trl.py --actions listed: TRL's rollout writes each action token by token; "
                         "only ponder's GRPO draws from the task's listed actions (use written or auto)")
    cfg = replace(cfg, actions="written")  # what this rollout does, recorded as such in summary.json
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is marked experimental
    try:
        import trl
        from datasets import Dataset
        from transformers import AutoTokenizer
    except ImportError as e:
        raise SystemExit(f"bench/grpo_trl.py needs TRL: pip install trl ({e})")

    task = get_task("game24")
    train = task.problems("train")[: args.problems]
    assert not {tuple(sorted(p.meta["numbers"])) for p in train} & task.test_keys  # never a test puzzle
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(args.model)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    problems = {render_prompt(tok, task, p): p for p in train}
    counts = {"tokens_generated": 0}

    def verifier(prompts, completions, steps, **kw) -> list[float]:
        return [task.reward(problems[p], s) for p, s in zip(prompts, steps)]

    batch = cfg.problems_per_step * cfg.group_size
    targs = trl.GRPOConfig(
        output_dir=str(out / "trl"), max_steps=cfg.steps * cfg.updates, per_device_train_batch_size=batch,
        num_generations=cfg.group_size, num_iterations=cfg.updates, loss_type="grpo", beta=cfg.beta,
        epsilon=cfg.epsilon, use_bias_correction_kl=False, temperature=cfg.temperature, top_p=cfg.top_p,
        learning_rate=cfg.lr, warmup_steps=cfg.warmup, lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": 0.1}, adam_beta1=0.9, adam_beta2=0.95, weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.grad_clip, max_completion_length=task.max_steps * (cfg.max_step_tokens or task.max_step_tokens) * 2,
        bf16=False, use_cpu=not torch.cuda.is_available(), report_to=[], logging_steps=1, save_strategy="no",
        seed=cfg.seed, disable_tqdm=False,
    )
    rows = [{"prompt": text} for text in problems]
    trainer = trl.GRPOTrainer(model=args.model, reward_funcs=[verifier], args=targs, processing_class=tok,
                              train_dataset=Dataset.from_list(rows), rollout_func=make_rollout(task, problems, cfg, counts))
    t0 = time.time()
    trainer.train()
    seconds = time.time() - t0
    trainer.save_model(str(out / "model"))
    tok.save_pretrained(out / "model")
    log = [r for r in trainer.state.log_history if "reward" in r]
    with (out / "log.jsonl").open("w") as fh:
        for r in log:
            fh.write(json.dumps(r) + "\n")
    summary = {"trl": trl.__version__, "model": args.model, "config": vars(cfg), "train_problems": len(train),
               "steps": cfg.steps, "tokens_generated": counts["tokens_generated"], "seconds": round(seconds, 1),
               "reward_first": log[0]["reward"] if log else None, "reward_last": log[-1]["reward"] if log else None}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}))
    cmd = f"ponder eval --task game24 --model {out / 'model'} --method greedy --split test --out {out / 'eval-greedy.jsonl'}"
    print(f"model: {out / 'model'}\nevaluate: {cmd}")
    if args.eval:
        from ponder.evaluate import Summary, run_eval
        from ponder.models.hf import load_hf
        from ponder.search.sampling import GreedyConfig

        policy = load_hf(str(out / "model"))
        summary_row, _ = run_eval(task, policy, "greedy", GreedyConfig(), task.problems("test")[: args.eval_limit],
                                  out / "eval-greedy.jsonl", settings={"model": str(out / "model")})
        print(Summary.HEADER)
        print(summary_row.row())


if __name__ == "__main__":
    try:
        main()
    except PonderError as e:
        sys.exit(f"error: {e}")
