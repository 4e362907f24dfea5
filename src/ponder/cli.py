"""The ``ponder`` command line: train, solve, eval, compare, improve, view, credit.

Every user mistake (unknown task/method/model, missing file, bad option value) is one line on stderr
and exit code 2; nothing already written is lost.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from .config import add_config_args, config_from, to_dict
from .errors import PonderError
from .tasks import TASKS


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own errors: one line, exit 2
        raise PonderError(message)


def _positive_int(name: str):
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise PonderError(f"--{name} must be a whole number, got {s!r}") from None
        if v <= 0:
            raise PonderError(f"--{name} must be > 0, got {v}")
        return v

    return parse


def _add_task_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", default="game24", help=f"one of: {', '.join(TASKS)} (default: game24)")
    p.add_argument("--data", help="your own problem file in the task's format (JSONL, or CSV for game24)")
    p.add_argument("--free-text", action="store_true",
                   help="the model writes every step whole; by default, where the task can, the model writes only the "
                        "action and the task its observation, and searches score every legal action")
    _add_task_option_arg(p)


def _add_task_option_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task-option", action="append", default=[], metavar="KEY=VALUE",
                   help="one of the task's own knobs, repeatable: countdown takes n_numbers, min_number, max_number, "
                        "min_target, max_target, test_size, validation_size (e.g. --task-option n_numbers=5); "
                        "arithmetic operands, digits, seed, n_test, n_train; game24 and countdown listed=action|step "
                        "(what the policy's prior over the listed actions reads: the operation, or the whole step "
                        "with the numbers it leaves)")


def _task(args):
    """The task of --task, --data, --free-text and --task-option."""
    from .tasks import get_task, parse_task_options

    return get_task(args.task, args.data, args.free_text, **parse_task_options(args.task_option))


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="a model folder, a .gguf file, 'smollm2', or a server: openai:http://HOST:PORT/v1[?model=NAME&tokenizer=SPEC]")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    p.add_argument("--seed", type=int, default=0, help="seed for sampling (and for methods that take one)")
    p.add_argument("--rollout-model", metavar="SPEC",
                   help="leaf rollouts (mcts, --scorer rollout) from this cheaper model instead of --model: a model "
                        "folder, a .gguf file, 'smollm2' or a server; its compute is charged at its own size")


def _add_ray_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ray", metavar="ADDRESS",
                   help="spread problems over Ray actors that each hold the model: 'auto' (join $RAY_ADDRESS or start a "
                        "local Ray) or a cluster address")
    p.add_argument("--workers", type=_positive_int("workers"),
                   help="Ray actors to start (default: one per GPU for a local model on GPUs, else one per CPU)")


def _method_configs():
    from .search import METHODS

    seen, out = set(), []
    for m in METHODS.values():
        if m.config not in seen:
            seen.add(m.config)
            out.append(m.config)
    return out


def _add_method_args(p: argparse.ArgumentParser) -> None:
    from .critics import CRITICS
    from .search import METHODS

    p.add_argument("--method", default="greedy", help=f"one of: {', '.join(METHODS)} (default: greedy)")
    p.add_argument(
        "--critic", default=None,
        help=f"critic: {', '.join(CRITICS)}, or a weighted mix like 'value:DIR@0.5,prm:DIR@0.5' "
             "(default: verifier for methods that rank; mcts uses one only when given)",
    )
    p.add_argument("--config", help="YAML file with the method's options (command-line options win)")
    _add_budget_args(p)
    names: set[str] = set()
    for cls in _method_configs():
        names |= add_config_args(p, cls, skip=names)


def _add_budget_args(p: argparse.ArgumentParser, many: bool = False) -> None:
    from .compute import BUDGET_UNITS

    if many:
        p.add_argument("--budgets", required=True, metavar="B1,B2,...",
                       help="the budgets per problem to compare the methods at, in --budget-unit, e.g. 250,500,1000,2000")
    else:
        p.add_argument("--budget", type=float, metavar="AMOUNT",
                       help="stop expanding a problem once it has spent this much, in --budget-unit (every method "
                            "honours it; default: no limit beyond the method's own)")
    p.add_argument("--budget-unit", default="tokens", metavar="{" + ",".join(BUDGET_UNITS) + "}",
                   help="tokens: generated tokens; flops: every model's forward FLOPs, the critics' reading included "
                        "(default: tokens)")


def _budget(args):
    """The ``Budget`` of --budget / --budget-unit, checked before any model is loaded (None without --budget)."""
    from .compute import Budget, check_unit

    check_unit(args.budget_unit)  # also without --budget: a wrong unit is a mistake either way
    return None if args.budget is None else Budget(args.budget, args.budget_unit)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="ponder", description="Search over a language model's reasoning steps, guided by critics.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    from .models.tiny import TinyConfig
    from .train import SFTConfig

    t = sub.add_parser("train", help="bootstrap a tiny model from scratch on the task's synthetic traces")
    _add_task_args(t)
    t.add_argument("--out", required=True, help="model folder to write")
    t.add_argument("--init", help="start from this model folder instead of a fresh tiny model")
    t.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    t.add_argument("--report-to", default="none", metavar="{none,tensorboard,mlflow,trackio}",
                   help="log the loss curve, offline, to tensorboard (events in OUT.tracking/tb), mlflow (a local file "
                        "store, OUT.tracking/mlruns) or trackio (its local store); OUT.tracking is rewritten by each "
                        "train to OUT (default: none)")
    add_config_args(t, SFTConfig)
    add_config_args(t, TinyConfig)

    s = sub.add_parser("solve", help="solve one problem given on the command line")
    s.add_argument("problem", help="the problem, e.g. '4 9 10 13' for game24, '3 4 25 50 -> 21' for countdown")
    _add_task_args(s)
    _add_model_args(s)
    _add_method_args(s)

    e = sub.add_parser("eval", help="evaluate a method on a split; one JSONL line per problem")
    _add_task_args(e)
    _add_model_args(e)
    _add_method_args(e)
    e.add_argument("--split", default="test", choices=["train", "validation", "test"],
                   help="the problems to evaluate on (validation: held out like test, for choosing settings; "
                        "countdown has one)")
    e.add_argument("--limit", type=_positive_int("limit"), help="first N problems of the split")
    e.add_argument("--batch", type=_positive_int("batch"), default=32, help="problems searched together (default 32)")
    e.add_argument("--out", help="JSONL run file (appended to and resumed; default: runs/eval/TASK-METHOD.jsonl)")
    e.add_argument("--save-trees", action="store_true", help="store each problem's search tree in its row")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_ray_args(e)

    cp = sub.add_parser("compare", help="search methods against each other at matched compute budgets: a table, "
                        "paired tests and a plot; one JSONL row per method, budget and problem (resumable)")
    _add_task_args(cp)
    _add_model_args(cp)
    cp.add_argument("--methods", nargs="+", required=True, metavar="METHOD[=CRITIC]",
                    help="the methods to compare, e.g. best-of-n beam=value:DIR mcts; methods that rank get the "
                         "verifier where no critic is given")
    _add_budget_args(cp, many=True)
    cp.add_argument("--set", action="append", default=[], metavar="METHOD.FIELD=VALUE",
                    help="a method's option, e.g. --set beam.beam_width=5 --set mcts.k=8 (default: the method's own)")
    cp.add_argument("--cap", type=_positive_int("cap"), default=256,
                    help="where not set, the options that would stop a method before its budget (n, max_nodes, "
                         "simulations, max_expansions) are raised to this (default 256)")
    cp.add_argument("--split", default="test", choices=["train", "test"])
    cp.add_argument("--limit", type=_positive_int("limit"), help="first N problems of the split")
    cp.add_argument("--batch", type=_positive_int("batch"), default=32, help="problems searched together (default 32)")
    cp.add_argument("--out", help="JSONL run file (appended to and resumed; default: runs/compare/TASK-SPLIT.jsonl); "
                    "the plot goes beside it as .png")
    cp.add_argument("--quiet", action="store_true", help="no progress bar")

    i = sub.add_parser("improve", help="the self-improvement loop: imagine -> search -> learn -> evaluate, repeated")
    i.add_argument("--out", help="run folder to create (default: runs/improve)")
    i.add_argument("--resume", metavar="DIR",
                   help="continue the run in DIR after a crash or kill (no other options but --iterations, to extend it)")
    i.add_argument("--config", help="YAML file with the loop's options (nested groups: search, sft, dpo, critic, ...)")
    i.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any option, nested ones too: --set search.simulations=24 --set dpo.beta=0.2")
    i.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_task_option_arg(i)
    _add_ray_args(i)
    i.add_argument("--train-launcher", metavar="CMD",
                   help="train the policy in data-parallel processes: the launcher command, e.g. "
                        "'accelerate launch --multi_gpu --num_processes 8' (run as CMD -m ponder.cli train-policy ...)")
    from .loop import ImproveConfig

    add_config_args(i, ImproveConfig, skip=_nested_fields(ImproveConfig))

    tp = sub.add_parser("train-policy", help="one iteration's policy training of an improve run (what "
                        "--train-launcher runs in every process: CMD -m ponder.cli train-policy RUN --iteration N)")
    tp.add_argument("run", help="the run folder")
    tp.add_argument("--iteration", type=_positive_int("iteration"), required=True, help="the iteration to train")
    tp.add_argument("--quiet", action="store_true", help="no progress bars")

    v = sub.add_parser("view", help="write one self-contained HTML page for a saved tree or an eval run file")
    v.add_argument("file", help="a saved tree (JSON) or an eval run file (JSONL, trees from --save-trees)")
    v.add_argument("--out", help="HTML file to write (default: FILE with an .html suffix)")
    v.add_argument("--credit", metavar="SPEC",
                   help="colour every node's step by the implicit reward of a DPO policy: ITER (an iteration folder "
                        "of ponder improve) or POLICY:REFERENCE; the task is read from FILE.meta.json or --task")
    v.add_argument("--task", help="the task of a bare tree file (with --credit)")

    c = sub.add_parser("credit", help="heat map (HTML + PNG) of a trace's per-token implicit reward under a DPO policy")
    _add_task_args(c)
    c.add_argument("--iteration", metavar="DIR", help="an iteration folder of ponder improve: its policy against the "
                   "model its step-DPO started from, with the run's beta")
    c.add_argument("--model", help="the DPO-trained policy (a model folder, .gguf or smollm2), with --reference")
    c.add_argument("--reference", help="the reference model the policy was trained against")
    c.add_argument("--beta", type=float, help="DPO beta (default: the run's with --iteration, else 0.1)")
    c.add_argument("--problem", help="the problem text, e.g. '4 9 10 13' for game24, '3 4 25 50 -> 21' for countdown")
    c.add_argument("--index", type=int, help="or: problem INDEX (from 0) of --split")
    c.add_argument("--split", default="test", choices=["train", "validation", "test"])
    c.add_argument("--steps", metavar="FILE", help="the trace to read (a text file, split into steps by the task); "
                   "default: the policy's greedy trace")
    c.add_argument("--sample", action="store_true", help="sample the trace at temperature 1 instead of greedy")
    c.add_argument("--seed", type=int, default=0, help="seed for --sample")
    c.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    c.add_argument("--out", help="HTML file to write (default: runs/credit/PROBLEM.html); the PNG goes beside it")
    return parser


def cmd_train(args) -> None:
    import torch

    from .models.tiny import TinyConfig, tiny_model
    from .train import SFTConfig, train_sft

    from .io import check_out_dir
    from .tracking import get_tracker, require

    task = _task(args)
    cfg = config_from(SFTConfig, args)
    require(args.report_to)
    check_out_dir(Path(args.out).parent, f"--out {args.out}")
    if args.init:
        from .models import load_policy
        from .models.server import is_server_spec

        if is_server_spec(args.init):
            raise PonderError("--init needs a local model to train; a server (openai:...) serves search and evaluation only")
        pol = load_policy(args.init, device=args.device)
        model, tok = pol.model, pol.tokenizer
        tiny = None
    else:
        tiny = config_from(TinyConfig, args)
        model, tok = tiny_model(tiny, seed=cfg.seed, device=args.device)
    print(f"training {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters on {task.name} synthetic traces, "
          f"{cfg.steps} steps x {cfg.batch_size} (torch threads: {torch.get_num_threads()})")
    tracking = Path(f"{args.out}.tracking")  # beside the model folder, which each checkpoint replaces whole
    if args.report_to != "none":
        shutil.rmtree(tracking, ignore_errors=True)  # like OUT.losses.jsonl: one train's curve, not a pile of them
    # the run's hyper-parameters: task, init, lr, steps, ..., and a fresh model's tiny.hidden_size, ...
    config = {"task": task.name, "data": args.data, "free_text": task.free_text, "task_options": dict(task.options),
              "init": args.init, **to_dict(cfg),
              **({"tiny": tiny} if tiny else {})}
    tracker = get_tracker(args.report_to, tracking, Path(args.out).name, config)
    try:
        losses = train_sft(model, tok, lambda n, step: task.bootstrap_segments(n, cfg.seed * 1_000_003 + step), cfg,
                           Path(args.out), tracker=tracker.under("train"))
    finally:
        tracker.close()
    where = f"; {args.report_to}: {tracking}" if args.report_to != "none" else ""
    print(f"final loss {losses[-1]:.4f}; model written to {args.out} (loss curve: {args.out}/loss.png{where})")


def _setup(args):
    """Task, method, config and critic spec: everything checked before the (slow) model load."""
    from .critics import parse_critic
    from .search import get_method

    task = _task(args)
    method = get_method(args.method)
    cfg = config_from(method.config, args, args.config, exclusive=True, seed=getattr(args, "seed", None))
    args.budget_obj = _budget(args)
    if args.critic is None and method.needs_critic:
        args.critic = "verifier"
    if args.critic is not None:
        parse_critic(args.critic)
    if not task.checkable and method.uses_verifier:
        # on such a task the verifier needs the gold answer
        print(f"note: the {task.name} verifier reads the gold answer, so {args.method} results are an oracle upper bound "
              "until a learned critic replaces it", file=sys.stderr)
    return task, method, cfg


def _policy_and_critic(args, task):
    from .critics import get_critic
    from .models import load_policy

    policy = load_policy(args.model, device=args.device, dtype=args.dtype, seed=args.seed)
    critic = get_critic(args.critic, task, policy) if args.critic is not None else None
    return policy, critic


def _rolls_out(cfg) -> bool:
    """Whether a method's config values leaves by rollouts: MCTS with --rollouts > 0, a tree search with --scorer rollout."""
    from .search.mcts import MCTSConfig

    return (isinstance(cfg, MCTSConfig) and cfg.rollouts > 0) or getattr(cfg, "scorer", None) == "rollout"


def _rollout_policy(args, configs):
    """The model of --rollout-model (None without it), refused in one line where no method rolls out."""
    from .models import load_rollout_policy

    if args.rollout_model is None:
        return None
    if not any(_rolls_out(c) for c in configs):
        raise PonderError("--rollout-model: no method here rolls out (mcts with --rollouts > 0, or beam/dvts/tot/astar "
                          "with --scorer rollout, does)")
    return load_rollout_policy(args.rollout_model, device=args.device, dtype=args.dtype, seed=args.seed)


def cmd_solve(args) -> None:
    from .search import SearchEnv

    task, method, cfg = _setup(args)
    problem = task.parse_problem(args.problem)
    rollout = _rollout_policy(args, [cfg])
    policy, critic = _policy_and_critic(args, task)
    [r] = method.run([problem], SearchEnv(policy, task, critic, budget=args.budget_obj, rollout_policy=rollout), cfg)
    print("".join(r.steps), end="" if r.steps and r.steps[-1].endswith("\n") else "\n")
    verdict = f"  reward {task.reward(problem, r.steps):.0f}" if task.checkable else ""
    c = r.compute
    print(f"answer: {r.answer}{verdict}  ({c.tokens_generated} tokens generated, {c.tokens_read} read, {c.seconds:.2f}s)")


def cmd_eval(args) -> None:
    from .io import check_out_file
    from .lock import hold

    task, method, cfg = _setup(args)
    problems = task.problems(args.split)[: args.limit]
    out = check_out_file(args.out or f"runs/eval/{task.name}-{args.split}-{args.method}.jsonl")
    with hold(out.with_name(out.name + ".lock"), str(out)):  # one process per run file, taken before the model load
        _eval(args, task, method, cfg, problems, out)


def _eval(args, task, method, cfg, problems, out: Path) -> None:
    from .evaluate import Summary, run_eval

    pool = None
    if args.ray:
        from .distributed import RayPool, WorkerSpec

        if args.rollout_model is not None and not _rolls_out(cfg):
            _rollout_policy(args, [cfg])  # the one-line refusal
        spec = WorkerSpec(task.name, args.data, args.model, args.device, args.dtype, args.critic, args.seed, task.free_text,
                          budget=args.budget_obj, task_options=dict(task.options), rollout_model=args.rollout_model)
        pool = RayPool(spec, args.ray, args.workers)
        policy, critic, rollout = None, None, None  # the workers hold them
    elif args.workers:
        raise PonderError("--workers needs --ray")
    else:
        rollout = _rollout_policy(args, [cfg])
        policy, critic = _policy_and_critic(args, task)
    settings = {"task": task.name, "data": args.data, "split": args.split, "model": args.model, "seed": args.seed,
                "critic": args.critic}
    settings["rollout_model"] = args.rollout_model  # None reads as absent: older run files still resume
    if task.options:  # absent otherwise, so run files written before task options existed still resume
        settings["task_options"] = dict(task.options)
    if args.budget_obj is not None:  # absent otherwise, so run files written before budgets existed still resume
        settings["budget"] = [args.budget_obj.amount, args.budget_obj.unit]
    t0 = time.time()
    try:
        summary, _ = run_eval(task, policy, args.method, cfg, problems, out, critic, args.batch, args.seed, settings,
                              not args.quiet, args.save_trees, pool, args.budget_obj, rollout)
    finally:
        if pool is not None:
            pool.close()
    print(Summary.HEADER)
    print(summary.row())
    if pool is not None:
        print(f"\nRay: {len(pool.stats)} workers, {time.time() - t0:.1f} s wall (the table's seconds are summed over workers)")
        print(pool.report())
    print(f"rows: {out}")


def cmd_compare(args) -> None:
    from .compare import parse_budgets, parse_methods, plot, run_compare, table
    from .critics import get_critic
    from .io import check_out_file
    from .lock import hold
    from .models import load_policy

    task = _task(args)
    budgets = parse_budgets(args.budgets, args.budget_unit)
    methods = parse_methods(args.methods, args.set, args.cap, args.seed)
    problems = task.problems(args.split)[: args.limit]
    out = check_out_file(args.out or f"runs/compare/{task.name}-{args.split}.jsonl")
    with hold(out.with_name(out.name + ".lock"), str(out)):
        rollout = _rollout_policy(args, [m.config for m in methods])
        policy = load_policy(args.model, device=args.device, dtype=args.dtype, seed=args.seed)
        from .search import SearchEnv

        # a FLOPs budget for a server policy (or rollout model) fails here, before any search
        SearchEnv(policy, task, budget=budgets[0], rollout_policy=rollout)
        critics = {m.critic: get_critic(m.critic, task, policy) for m in methods if m.critic is not None}
        settings = {"task": task.name, "data": args.data, "free_text": task.free_text, "split": args.split,
                    "model": args.model, "seed": args.seed}
        if task.options:  # absent otherwise, so run files written before task options existed still resume
            settings["task_options"] = dict(task.options)
        settings["rollout_model"] = args.rollout_model  # None reads as absent: older run files still resume
        rows = run_compare(task, policy, methods, budgets, problems, out, critics, settings, args.batch, args.seed,
                           not args.quiet, rollout)
    labels, amounts = [m.label for m in methods], [b.amount for b in budgets]
    print(table(rows, labels, amounts, args.budget_unit))
    print(f"\nrows: {out}\nplot: {plot(rows, labels, amounts, args.budget_unit, out.with_suffix('.png'))}")


def cmd_train_policy(args) -> None:
    from .loop import train_policy_phase

    train_policy_phase(args.run, args.iteration, progress=not args.quiet)


def _nested_fields(cls) -> set[str]:
    """The config's option groups (fields holding another config), set through --set or YAML, not flat options."""
    import dataclasses

    return {f.name for f in dataclasses.fields(cls) if f.default_factory is not dataclasses.MISSING}


def cmd_improve(args) -> None:
    import yaml

    from .config import apply_sets, build
    from .loop import ImproveConfig, improve

    given = {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg_") and v is not None}
    if args.resume:
        more = given.pop("iterations", None)
        if given or args.config or args.set or args.out or args.task_option:
            raise PonderError("--resume takes the run's own config; give no other options but --iterations (start a new --out instead)")
        report = improve(args.resume, None, resume=True, progress=not args.quiet, iterations=more, ray=args.ray,
                         workers=args.workers, launcher=args.train_launcher)
    else:
        values: dict = {}
        if args.config:
            path = Path(args.config)
            if not path.is_file():
                raise PonderError(f"config file not found: {path}")
            try:
                values = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError as e:
                raise PonderError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        for k, v in given.items():
            values[k] = [x.strip() for x in v.split(",")] if k in ("critics", "eval_methods") else v
        if args.task_option:
            from .tasks import parse_task_options

            values["task_options"] = {**(values.get("task_options") or {}), **parse_task_options(args.task_option)}
        cfg = build(ImproveConfig, apply_sets(values, args.set))
        report = improve(args.out or "runs/improve", cfg, progress=not args.quiet, ray=args.ray, workers=args.workers,
                         launcher=args.train_launcher)
    print()
    print(report.read_text())
    print(f"report: {report}")


def cmd_view(args) -> None:
    from .io import check_out_file
    from .report.viewer import view

    if args.out:
        check_out_file(args.out)
    print(f"wrote {view(args.file, args.out, credit=args.credit, task=args.task)}")


def cmd_credit(args) -> None:
    from .critics.implicit import ImplicitReward
    from .io import check_out_file
    from .report.credit import credit_report

    task = _task(args)
    if args.out:
        check_out_file(args.out)
    if args.iteration and (args.model or args.reference):
        raise PonderError("give either --iteration or --model with --reference, not both")
    if args.iteration:
        reward = ImplicitReward.from_iteration(args.iteration, task, args.device)
    elif args.model and args.reference:
        reward = ImplicitReward.load(args.model, args.reference, task, device=args.device)
    else:
        raise PonderError("ponder credit needs the models: --iteration DIR, or --model POLICY --reference REFERENCE")
    if args.beta is not None:
        if args.beta <= 0:
            raise PonderError(f"--beta must be > 0, got {args.beta}")
        reward.beta = args.beta
    if (args.problem is None) == (args.index is None):
        raise PonderError("give the problem: --problem TEXT or --index N (of --split)")
    if args.problem is not None:
        problem = task.parse_problem(args.problem)
    else:
        problems = task.problems(args.split)
        if not 0 <= args.index < len(problems):
            raise PonderError(f"--index {args.index} is out of range: the {args.split} split has {len(problems)} problems")
        problem = problems[args.index]
    steps = None
    if args.steps:
        path = Path(args.steps)
        if not path.is_file():
            raise PonderError(f"--steps file not found: {path}")
        steps = task.split_steps(path.read_text())
        if not steps:
            raise PonderError(f"{path}: no steps in the file")
    out = Path(args.out or f"runs/credit/{problem.id}.html")
    html_path, png_path, credit = credit_report(reward, task, problem, out, steps, args.sample, args.seed)
    sums = ", ".join(f"{x:+.3f}" for x in credit.step_sums)
    print(f"step sums: {sums}  (total {credit.total:+.3f}, beta {reward.beta:g})")
    print(f"wrote {html_path} and {png_path}")


def _file_in(tb) -> str | None:
    """The file a failed write was writing, for an ``OSError`` that names none (``write()`` and ``close()``
    do not): the innermost open file object or path variable in the traceback's frames."""
    import io
    import traceback

    for frame, _ in reversed(list(traceback.walk_tb(tb))):
        for v in frame.f_locals.values():
            if isinstance(v, io.IOBase) and isinstance(getattr(v, "name", None), str):
                return v.name
        for name in ("path", "filename", "file", "out", "save_directory"):
            v = frame.f_locals.get(name)
            if isinstance(v, (str, Path)):
                return str(v)
    return None


def _write_error(e: Exception) -> str | None:
    """One line for a full disk (any error that says so) or a refused write (read-only, no permission);
    None for any other error, which is a bug and keeps its traceback."""
    import errno

    from .io import is_disk_full

    refused = isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS)
    if not (refused or is_disk_full(e)):
        return None
    name = (e.filename if isinstance(e, OSError) else None) or _file_in(e.__traceback__) or "a file"
    if refused:
        return f"cannot write {name}: {e.strerror}"
    return (f"disk full writing {name}; the files written before it are intact: free some space, then run the same "
            "command again (ponder improve --resume DIR) to continue")


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # our own bars are enough; transformers' loading bars are noise
    try:
        args = build_parser().parse_args(argv)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the env variable above covers the hub's bars, not the loading bars
        {"train": cmd_train, "solve": cmd_solve, "eval": cmd_eval, "compare": cmd_compare, "improve": cmd_improve, "view": cmd_view,
         "credit": cmd_credit, "train-policy": cmd_train_policy}[args.command](args)
    except PonderError as e:
        print(f"ponder: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        line = _write_error(e)
        if line is None:
            raise
        print(f"ponder: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ponder: interrupted; finished rows are kept and a rerun resumes", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
