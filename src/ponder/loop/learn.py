"""Phase 4, **train**: the policy and the critics, on the data extracted from the search.

The policy by expert iteration (the search's improved policy at every searched state, plus SFT on the
verified traces), by rejection-sampling fine-tuning alone, by SFT then step-level DPO against the
fine-tuned model, or by GRPO on the iteration's training problems (its own samples, not the search's);
in this process, or in data-parallel ones under ``--train-launcher`` (each runs ``train_policy_phase``;
GRPO refuses it). The critics (unlike AlphaLLM's, which stay frozen) by further training on the
new trees (``retrain_critics=False`` freezes them after iteration 1, as in the paper). With
``--rollout-model distill``, the fast rollout model (a smaller tiny model, ``rollout_tiny``) by the same
SFT on the iteration's verified traces (``train_rollout``), after its bootstrap at iteration 0
(``bootstrap_rollout``).
"""

import json
import math
import os
import random
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..errors import PonderError
from ..io import read_rows, write_text
from ..tasks import Problem
from ..tracking import get_tracker
from ..train.parallel import is_main_process
from .improver import GRPO_ONE_PROCESS, Improver
from .run import open_run, problem_rows, say


def train_policy(imp: Improver, i: int, start: str) -> str:
    """SFT on verified traces, then step-DPO against the fine-tuned model; returns the new policy's path."""
    from ..models.hf import render_prompt
    from ..train import save_checkpoint, train_sft
    from ..train.dpo import train_dpo
    from ..train.lora import lora_adapters

    cfg, it = imp.cfg, imp.run.it(i)
    if cfg.policy_update == "none":
        return start
    if cfg.policy_update == "grpo":
        return train_grpo_policy(imp, i, start)
    sft = read_rows(it / "data" / "sft.jsonl")
    pairs = read_rows(it / "data" / "pairs.jsonl") if cfg.policy_update == "sft+dpo" else []
    targets = read_rows(it / "data" / "policy_targets.jsonl") if cfg.policy_update == "expert" else []
    if not sft and not pairs and not targets:
        say(f"iteration {i}: no verified trace and no step pair; the policy stays {start}")
        return start
    policy, info = training_start(imp, start)
    base = info["from"]
    texts = [imp.task.segments(render_prompt(policy.tokenizer, imp.task, Problem.from_dict(r["problem"])), r["steps"])
             for r in sft]
    if targets:
        return train_expert_policy(imp, i, policy, targets, texts, info)
    if sft:
        with lora_adapters(policy, cfg.lora_r):
            batch, sft_cfg = sft_recipe(imp, i, texts, cfg.sft)
            steps = sft_cfg.steps
            say(f"iteration {i}: SFT on {len(texts)} verified traces ({steps} steps)")
            t0 = time.time()
            try:
                losses = train_sft(policy.model, policy.tokenizer, batch, sft_cfg, it / "policy-sft", progress=imp.progress,
                                   tracker=imp.tracker.under(f"sft/iter-{i}"))
            except PonderError as e:  # a NaN loss: this iteration's policy stays the one it started from
                say(f"iteration {i}: {e}; the policy stays {start}")
                if is_main_process():
                    write_text(it / "policy-train.json", json.dumps({"sft": {"error": str(e)}}, indent=2))
                return start
            finally:
                if is_main_process():
                    shutil.rmtree(it / "policy-sft", ignore_errors=True)  # scratch: the policy is saved below
            info["sft"] = {"traces": len(texts), "steps": steps, "loss_first": losses[0], "loss_last": losses[-1],
                           "seconds": round(time.time() - t0, 1)}
    if pairs:
        # the model DPO starts from is its reference: kept so that `ponder credit` and the implicit-reward
        # critic can read r = beta * log(pi / pi_ref) later (the model training started from when there was no SFT)
        info["reference"] = base
        if sft:
            if is_main_process():
                save_checkpoint(policy.model, policy.tokenizer, it / "reference")
            info["reference"] = str(it / "reference")
        with lora_adapters(policy, cfg.lora_r):
            say(f"iteration {i}: step-level DPO on {len(pairs)} sibling pairs")
            t0 = time.time()
            before = {k: v.detach().clone() for k, v in policy.model.state_dict().items()}
            if is_main_process():
                (it / "dpo.losses.jsonl").unlink(missing_ok=True)  # one curve, as in update_and_save
            try:
                info["dpo"] = {**train_dpo(policy, imp.task, pairs, cfg.dpo, it / "dpo.losses.jsonl", imp.progress,
                                           imp.tracker.under(f"dpo/iter-{i}")),
                               "seconds": round(time.time() - t0, 1)}
            except PonderError as e:  # a NaN: back to the weights before DPO, say so, go on
                say(f"iteration {i}: {e}; the policy stays as before DPO")
                policy.model.load_state_dict(before)
                info["dpo"] = {"error": str(e)}
    if is_main_process():
        save_checkpoint(policy.model, policy.tokenizer, it / "policy")
        write_text(it / "policy-train.json", json.dumps(info, indent=2))
    return str(it / "policy")


def sft_recipe(imp: Improver, i: int, texts: list, scfg):
    """(batches, config) of iteration i's SFT on ``texts``: each batch mixes the traces with a ``--sft-mix``
    share of the task's synthetic ones, for at most ``--sft-epochs`` passes over the traces."""
    cfg = imp.cfg
    mix = cfg.sft_mix if imp.task.can_bootstrap else 0.0

    def batch(n: int, step: int) -> list:
        rng = random.Random(scfg.seed * 1_000_003 + step + 7 * i)
        k = round(n * mix)
        extra = imp.task.bootstrap_segments(k, rng.randrange(1 << 30)) if k else []
        return [rng.choice(texts) for _ in range(n - k)] + extra

    per_step = max(1, scfg.batch_size - round(scfg.batch_size * mix))  # traces per step
    steps = max(1, min(scfg.steps, math.ceil(cfg.sft_epochs * len(texts) / per_step)))
    return batch, replace(scfg, steps=steps, warmup=min(scfg.warmup, max(1, steps // 5)))


def bootstrap_rollout(imp: Improver) -> str:
    """Iteration 0's fast rollout model (``--rollout-model distill``): a fresh tiny model of shape ``rollout_tiny``
    trained like the policy's bootstrap (``bootstrap`` options) on the task's synthetic traces; saved in
    ``iter-0/rollout``, returns its path."""
    from ..models.tiny import tiny_model
    from ..train import train_sft

    cfg = imp.cfg
    out = imp.run.it(0) / "rollout"
    model, tok = tiny_model(cfg.rollout_tiny, seed=cfg.seed + 1, device=cfg.device)
    n = sum(p.numel() for p in model.parameters())
    say(f"bootstrap: the fast rollout model ({n / 1e6:.2f}M parameters) on {cfg.bootstrap.steps} x "
        f"{cfg.bootstrap.batch_size} random legal traces")
    seed = cfg.bootstrap.seed
    train_sft(model, tok, lambda k, step: imp.task.bootstrap_segments(k, seed * 1_000_003 + step), cfg.bootstrap, out,
              progress=imp.progress, tracker=imp.tracker.under("rollout-bootstrap"))
    return str(out)


def train_rollout(imp: Improver, i: int) -> str:
    """Iteration i's fast rollout model (``--rollout-model distill``): iteration i-1's, trained on by SFT
    (``rollout_sft``) on the verified traces the policy's SFT read (``iter-I/data/sft.jsonl``), mixed with the
    task's synthetic traces as the policy's are; saved in ``iter-I/rollout`` (the next iteration's search rolls
    out with it) and its path returned. Without a verified trace it stays iteration i-1's."""
    from ..models import load_policy
    from ..models.hf import render_prompt
    from ..train import train_sft

    cfg, it = imp.cfg, imp.run.it(i)
    prev = imp.rollout_spec(i - 1)
    sft = read_rows(it / "data" / "sft.jsonl")
    if not sft:
        say(f"iteration {i}: no verified trace to distill; the rollout model stays {prev}")
        return prev
    model = load_policy(prev, device=cfg.device, seed=cfg.seed)
    texts = [imp.task.segments(render_prompt(model.tokenizer, imp.task, Problem.from_dict(r["problem"])), r["steps"])
             for r in sft]
    batch, rcfg = sft_recipe(imp, i, texts, cfg.rollout_sft)
    say(f"iteration {i}: distill the fast rollout model on {len(texts)} verified traces ({rcfg.steps} steps)")
    t0 = time.time()
    try:
        losses = train_sft(model.model, model.tokenizer, batch, rcfg, it / "rollout", progress=imp.progress,
                           tracker=imp.tracker.under(f"rollout/iter-{i}"))
    except PonderError as e:  # a NaN loss: the rollout model stays the one the iteration searched with
        say(f"iteration {i}: {e}; the rollout model stays {prev}")
        shutil.rmtree(it / "rollout", ignore_errors=True)
        return prev
    write_text(it / "rollout-train.json", json.dumps({"from": prev, "traces": len(texts), "steps": rcfg.steps,
                                                      "loss_first": losses[0], "loss_last": losses[-1],
                                                      "seconds": round(time.time() - t0, 1)}, indent=2))
    imp.rollout_cache = None
    return str(it / "rollout")


def training_start(imp: Improver, start: str) -> tuple[Any, dict[str, Any]]:
    """(the policy to train in place, the start of its policy-train.json record): the iteration's start
    policy, or the initial one with ``--train-from initial``."""
    base = start if imp.cfg.train_from == "previous" else imp.policy_path(0)
    policy = imp.local_policy(base, "policy training")
    imp.policy_cache = None  # the model is trained in place
    return policy, {"processes": int(os.environ.get("WORLD_SIZE", "1")), "from": base}


def train_expert_policy(imp: Improver, i: int, policy, targets: list[dict], texts: list, info: dict) -> str:
    """Expert iteration: the improved policy at every searched state, plus SFT on the verified traces."""
    from ..train.expert import train_expert

    cfg, it = imp.cfg, imp.run.it(i)
    say(f"iteration {i}: expert iteration on {len(targets)} searched states and {len(texts)} verified traces")
    return update_and_save(imp, i, policy, info, "expert", lambda log: train_expert(
        policy, imp.task, targets, texts, replace(cfg.expert, seed=cfg.expert.seed + i), log, imp.progress,
        imp.tracker.under(f"expert/iter-{i}")))


def train_grpo_policy(imp: Improver, i: int, start: str) -> str:
    """GRPO on iteration i's training problems (``iter-I/problems.jsonl``), from its start policy. The reward
    is the verifier where the task can check every problem (a checkable task, or gold answers on every
    training problem), else the newest ORM before this iteration. The search trees are not read; GRPO's
    own compute (tokens sampled, seconds) goes to policy-train.json under ``grpo``."""
    from ..critics import get_critic
    from ..train.grpo import train_grpo

    cfg, it = imp.cfg, imp.run.it(i)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise PonderError(GRPO_ONE_PROCESS)  # launched as `ponder train-policy` under accelerate
    problems = problem_rows(it / "problems.jsonl")
    orm = None
    if not imp.task.checkable and any(p.reference is None for p in problems):
        orm = imp.critic_dir(i - 1, "orm")
        if orm is None:
            raise PonderError(f"--policy-update grpo needs a verifier or an ORM: task {imp.task.name!r} cannot check "
                              f"iteration {i}'s problems without their gold answers, and no ORM was trained before "
                              f"iteration {i}")
    policy, info = training_start(imp, start)
    critic = get_critic(f"orm:{orm}", imp.task, policy) if orm else None
    info["reward"] = f"orm:{orm}" if orm else "verifier" if imp.task.checkable else "gold answers"
    gcfg = replace(cfg.grpo, seed=cfg.grpo.seed + i)
    say(f"iteration {i}: GRPO on {len(problems)} training problems ({gcfg.steps} steps of {gcfg.problems_per_step} "
        f"x {gcfg.group_size} traces, reward: {info['reward']})")
    return update_and_save(imp, i, policy, info, "grpo", lambda log: train_grpo(
        policy, imp.task, problems, gcfg, log, imp.progress, imp.tracker.under(f"grpo/iter-{i}"), critic=critic))


def update_and_save(imp: Improver, i: int, policy, info: dict, name: str, train) -> str:
    """``info[name] = train(log)``: a policy update in place (through LoRA adapters with ``--lora-r``) that
    appends its loss curve to ``log`` (``iter-I/NAME.losses.jsonl``, started afresh: a phase redone after a
    crash has one curve); then the policy and policy-train.json are saved and the new policy's path returned.
    A ``PonderError`` (a NaN loss) keeps the policy the iteration started from."""
    from ..train import save_checkpoint
    from ..train.lora import lora_adapters

    it = imp.run.it(i)
    log = it / f"{name}.losses.jsonl"
    if is_main_process():
        log.unlink(missing_ok=True)
    with lora_adapters(policy, imp.cfg.lora_r):
        try:
            info[name] = train(log)
        except PonderError as e:
            say(f"iteration {i}: {e}; the policy stays {info['from']}")
            if is_main_process():
                write_text(it / "policy-train.json", json.dumps({name: {"error": str(e)}}, indent=2))
            return info["from"]
    if is_main_process():
        save_checkpoint(policy.model, policy.tokenizer, it / "policy")
        write_text(it / "policy-train.json", json.dumps(info, indent=2))
    return str(it / "policy")


def launch_policy_training(imp: Improver, i: int) -> None:
    """Run iteration i's policy training as ``LAUNCHER -m ponder.cli train-policy RUN --iteration i``
    (data-parallel under accelerate); its rank 0 saves the policy and marks the phase done."""
    import shlex
    import subprocess
    import sys

    cmd = [*shlex.split(imp.launcher), "-m", "ponder.cli", "train-policy", str(imp.run.root), "--iteration", str(i)]
    if not imp.progress:
        cmd.append("--quiet")
    say(f"iteration {i}: policy training through: {' '.join(cmd)}")
    imp.policy_cache = None  # the launched processes write a new policy
    try:
        code = subprocess.run(cmd, stdin=subprocess.DEVNULL).returncode
    except FileNotFoundError:
        raise PonderError(f"--train-launcher: {cmd[0]!r} not found (e.g. 'accelerate launch --num_processes 2' "
                          f"with accelerate installed next to {sys.executable})") from None
    if code != 0:
        raise PonderError(f"--train-launcher: policy training exited with code {code}: {' '.join(cmd)}")
    if "policy" not in imp.run.phases(i):
        raise PonderError(f"--train-launcher: {' '.join(cmd)} finished without saving iteration {i}'s policy")


def train_critics(imp: Improver, i: int) -> dict:
    """Iteration i's critics, each trained on to the new labels from the newest one before it (the first one
    from the policy's backbone); returns the phase's record (each critic's metrics)."""
    from ..critics.scalar import ScalarCritic
    from ..train.critic import train_critic

    cfg, it = imp.cfg, imp.run.it(i)
    if not cfg.retrain_critics and i > 1:
        return {"frozen": True}
    log = it / "critics.losses.jsonl"
    log.unlink(missing_ok=True)  # started afresh: a phase redone after a crash has one curve per critic
    out: dict[str, Any] = {}
    for kind in imp.critic_kinds():
        records = read_rows(it / "data" / f"{kind}.jsonl")
        if not records:
            out[kind] = {"skipped": "no labels"}
            continue
        prev = imp.critic_dir(i - 1, kind)
        critic = (ScalarCritic.load(prev, imp.task, device=imp.cfg.device) if prev is not None
                  else ScalarCritic.from_policy(imp.local_policy(imp.policy_path(i), "critic training"), imp.task, kind,
                                                seed=cfg.seed))
        say(f"iteration {i}: train the {kind} critic on {len(records)} paths" + (f" (from {prev})" if prev else ""))
        t0 = time.time()
        try:
            metrics = train_critic(critic, records, replace(cfg.critic, seed=cfg.critic.seed + i),
                                   log, imp.progress, imp.tracker.under(f"{kind}_critic/iter-{i}"))
        except PonderError as e:
            say(f"iteration {i}: {e}; the {kind} critic stays as it was")
            out[kind] = {"error": str(e)}
            continue
        critic.save(it / "critics" / kind)
        out[kind] = {**metrics, "seconds": round(time.time() - t0, 1)}
    return out


def train_policy_phase(root: str | Path, i: int, progress: bool = True) -> None:
    """Iteration i's policy training alone, in every process of a launcher (``ponder train-policy``);
    rank 0 saves the policy and marks the phase done."""
    from ..train.parallel import use_local_gpu

    use_local_gpu()
    run = open_run(root, None, resume=True)
    if "extract" not in run.phases(i):
        raise PonderError(f"{run.it(i)}: no extracted training data yet (phase 'extract' not done)")
    imp = Improver(run, progress and is_main_process())
    if is_main_process():  # the launched processes' loss curves too, from rank 0
        imp.tracker = get_tracker(run.cfg.report_to, run.root, config=run.cfg)
    try:
        path = train_policy(imp, i, imp.start_policy(i))
    finally:
        imp.tracker.close()
    if is_main_process():
        run.mark(i, "policy", path)
