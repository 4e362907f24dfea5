"""What a search algorithm is given: callables over batches of states, never a model.

``SearchEnv`` wraps a policy, a task and a critic into three batched calls (expand: k distinct next
steps; roll out k whole completions; score states) and charges every call's compute to the problems
it served, the critic's included, so each result carries its own cost. Given a ``Budget``, it says
how much more work a problem can afford (``affordable``), and every search method stops expanding it
before it would overspend.

**The one expansion path.** Every search method gets its children from ``expand``:

- where the task lists the legal actions of a state and the policy can score continuations, the
  policy scores every legal action in one batched pass (exact priors) and k distinct ones are drawn
  without replacement by Gumbel-top-k (Kool et al. 2019; Gumbel MuZero): perturb each log-prior by
  independent Gumbel noise and keep the k largest, which samples k actions without replacement in
  proportion to the prior; at temperature 0 the k likeliest are taken;
- otherwise the policy samples steps, again and again until it has k distinct ones or has spent
  ``distinct_rounds`` sampler calls on the state;
- where the task observes (``Task.observes``), the model writes only the action and the task writes
  the rest of the step, so observation tokens are never sampled; an action the task cannot observe
  (not legal, division by zero) stays as written and ends the trace with reward 0.

Rollouts go through the same path one step at a time where actions are listed, so they are legal too.

**A rollout policy.** Leaf rollouts (MCTS's leaf values, ``--scorer rollout`` in the tree searches) may
come from a second, cheaper model (``rollout_policy``; AlphaLLM's fast rollout policy) instead of the
search policy. Each model is a ``_Model`` here: its own prompts, rendered by its own ``render`` (its own
chat template, or none), its own exact priors per state, and its own way to expand (scoring listed
actions where it can, else sampling). The env hands every model *text* (its prompt + the steps so far),
which the model tokenizes itself, so the rollout model's tokenizer need not be the policy's; it must
only read that text as written, which is checked once per prompt and per step text (``check_reads``).
Its calls are charged to the problems they served like every other call, at its own FLOPs per token,
and also tallied apart (``rollout_compute``). Its priors never enter the search policy's cache, which
the tree reuses when it expands a state a rollout went through.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace
from typing import Sequence

from ..compute import Budget, Compute
from ..critics import Critic, scored
from ..errors import PonderError
from ..models import Policy, SamplingParams
from ..models.base import ActionScorer, Finish
from ..tasks import Problem, Task
from .tree import Node


@dataclass(frozen=True)
class State:
    """A problem and the steps written so far."""

    problem: Problem
    steps: tuple[str, ...] = ()


@dataclass(frozen=True)
class Proposal:
    """One proposed next step. ``text``: the whole step (action and, where the task observes, its
    observation); ``num_tokens``: the tokens the model wrote or scored for it; ``logprob``: log pi of
    those tokens; ``prior``: the exact probability of the action among every legal one where the task
    lists them, else None; ``finish``: why the model's part ended."""

    text: str
    num_tokens: int
    logprob: float
    prior: float | None = None
    finish: Finish = "stop"


def gumbel_top_k(logits: Sequence[float], k: int, rng: random.Random, temperature: float = 1.0) -> list[int]:
    """k distinct indices drawn without replacement with probability proportional to softmax(logits / T),
    best first: argtop-k of logits / T + Gumbel noise (Kool et al. 2019). T = 0 takes the k largest."""
    if temperature == 0:
        keys = list(logits)
    else:
        keys = [x / temperature - math.log(-math.log(rng.random() or 1e-300)) for x in logits]
    return sorted(range(len(keys)), key=lambda i: -keys[i])[:k]


def softmax(xs: Sequence[float]) -> list[float]:
    top = max(xs)
    e = [math.exp(x - top) for x in xs]
    z = sum(e)
    return [x / z for x in e]


def check_reads(policy, text: str) -> None:
    """A one-line error naming ``--rollout-model`` where the rollout model's tokenizer cannot read ``text`` as
    written (a character it has no token for, which it would read as unknown); a model without a local
    tokenizer (a server) is trusted to read any text."""
    tok = getattr(policy, "tokenizer", None)
    if tok is None or not text:
        return
    ids = tok(text, add_special_tokens=False)["input_ids"]
    if tok.decode(ids) != text:
        bad = next((c for c in text if tok.decode(tok(c, add_special_tokens=False)["input_ids"]) != c), text[:20])
        raise PonderError(f"--rollout-model {getattr(policy, 'name', '')}: its tokenizer cannot read the task's text "
                          f"as written ({bad!r} in {text[:40]!r}); rollouts read the policy's steps, so use a model "
                          "whose tokenizer covers them")


class _Model:
    """One model the env calls: the search policy, or the rollout policy. Keeps its own prompts (rendered by
    its own ``render``) and the exact priors it gave each state, per problem: valid while the model is not
    trained, which never happens mid-search. ``check``: check that it reads each prompt and step as written."""

    def __init__(self, policy: Policy, task: Task, check: bool = False):
        self.policy, self.check = policy, check
        #: whether expansions score the task's legal actions (else the model samples steps)
        self.lists_actions = isinstance(policy, ActionScorer) and not task.free_text and \
            type(task).legal_actions is not Task.legal_actions
        self.prompts: dict[str, str] = {}
        self.priors: dict[Problem, dict[tuple[str, ...], tuple[list[str], list[float], list[int]]]] = {}
        self._read: set[str] = set()  # step texts already checked

    def prompt(self, task: Task, problem: Problem) -> str:
        if problem.id not in self.prompts:
            text = self.policy.render(task, problem)
            if self.check:
                check_reads(self.policy, text)
            self.prompts[problem.id] = text
        return self.prompts[problem.id]

    def prefix(self, task: Task, state: State) -> str:
        if self.check:
            for step in state.steps:
                if step not in self._read:
                    check_reads(self.policy, step)
                    self._read.add(step)
        return self.prompt(task, state.problem) + "".join(state.steps)


class SearchEnv:
    def __init__(self, policy: Policy, task: Task, critic: Critic | None = None, distinct_rounds: int = 3,
                 budget: Budget | None = None, rollout_policy: Policy | None = None):
        self.policy, self.task, self.critic = policy, task, critic
        if budget is not None and budget.unit == "flops" and not hasattr(policy, "flops_per_token"):
            raise PonderError(f"--budget-unit flops needs a local model: the FLOPs of {getattr(policy, 'name', 'this policy')!r} "
                              "are not known (use --budget-unit tokens)")
        if rollout_policy is not None and not all(callable(getattr(rollout_policy, f, None)) for f in ("render", "sample")):
            raise PonderError(f"--rollout-model: {rollout_policy!r} is not a model (it needs render and sample)")
        if budget is not None and budget.unit == "flops" and rollout_policy is not None and \
                not hasattr(rollout_policy, "flops_per_token"):
            raise PonderError(f"--rollout-model {getattr(rollout_policy, 'name', '')!r}: --budget-unit flops needs a local "
                              "rollout model, a server's FLOPs are not known (use --budget-unit tokens)")
        #: what each problem may spend (None: no limit beyond each method's own)
        self.budget = budget
        #: sampler calls a state may take to reach k distinct steps where the task lists no actions
        self.distinct_rounds = distinct_rounds
        self.rng = random.Random(0)
        self._main = _Model(policy, task)
        #: the model leaf rollouts come from (None: the search policy), and what its calls cost per problem
        self.rollout_policy = rollout_policy
        self._roll = self._main if rollout_policy is None else _Model(rollout_policy, task, check=True)
        self.rollout_spent: dict[str, Compute] = {}
        self.spent: dict[str, Compute] = {}
        # the task's verdicts on traces already checked, per problem (dropped with the problem's compute):
        # a search asks about the same trace several times (terminal? reward? a rollout's prefixes), and
        # a check can be costly (Game of 24 replays every step in exact arithmetic, GSM8K parses answers)
        self._verdicts: dict[Problem, dict[tuple[str, tuple[str, ...]], object]] = {}
        # per problem, each state's legal actions with the search policy's log-probs and token counts
        # (dropped with the problem's compute); the rollout policy keeps its own (``_Model.priors``)
        self._priors = self._main.priors

    @property
    def lists_actions(self) -> bool:
        """Whether the search policy's expansions score the task's legal actions (else it samples steps)."""
        return self._main.lists_actions

    @lists_actions.setter
    def lists_actions(self, value: bool) -> None:
        self._main.lists_actions = value

    # --- bookkeeping ------------------------------------------------------------------------------
    def prompt(self, problem: Problem) -> str:
        return self._main.prompt(self.task, problem)

    def prefix(self, state: State) -> str:
        return self._main.prefix(self.task, state)

    def charge(self, states: Sequence[State], costs: Sequence[Compute], m: _Model | None = None) -> None:
        """Add each state's cost to its problem's; a call of the rollout policy (``m``) is tallied apart too."""
        rollout = m is not None and m is not self._main
        for s, c in zip(states, costs):
            self.spent[s.problem.id] = self.spent.get(s.problem.id, Compute()) + c
            if rollout:
                self.rollout_spent[s.problem.id] = self.rollout_spent.get(s.problem.id, Compute()) + c

    def rollout_compute(self, problem: Problem) -> Compute:
        """What the rollout policy has spent on ``problem`` so far (part of its compute; zero without one)."""
        return self.rollout_spent.get(problem.id, Compute())

    def seed(self, seed: int) -> None:
        """Reseed the env's Gumbel draws and the policy's sampler (if it can be seeded), the rollout policy's too."""
        self.rng.seed(seed)
        for pol in (self.policy, self.rollout_policy):
            if pol is not None and hasattr(pol, "seed"):
                pol.seed(seed)

    def affordable(self, problem: Problem, done: int) -> float:
        """How many more pieces of work (expansions, simulations, traces) the rest of ``problem``'s budget
        buys at the mean cost of the ``done`` so far: unlimited without a budget or before anything is
        known, 0 once it is spent. Searches stop a problem where this falls below 1, so it ends within
        its budget but for the one piece tried first."""
        if self.budget is None:
            return math.inf
        spent = self.budget.spent(self.spent.get(problem.id, Compute()))
        left = self.budget.amount - spent
        if left <= 0:
            return 0.0
        return math.inf if done == 0 or spent == 0 else left * done / spent

    def take_compute(self, problem: Problem) -> Compute:
        self._verdicts.pop(problem, None)
        for m in (self._main, self._roll):
            m.priors.pop(problem, None)
        self.rollout_spent.pop(problem.id, None)
        return self.spent.pop(problem.id, Compute())

    # --- the task's verdicts, remembered (tasks are pure functions of problem and steps) -----------
    def is_terminal(self, problem: Problem, steps: Sequence[str]) -> bool:
        return self._verdict("terminal", problem, steps)

    def reward(self, problem: Problem, steps: Sequence[str]) -> float:
        return self._verdict("reward", problem, steps)

    def _verdict(self, what: str, problem: Problem, steps: Sequence[str]):
        memo = self._verdicts.setdefault(problem, {})
        key = (what, tuple(steps))
        if key not in memo:
            fn = self.task.is_terminal if what == "terminal" else self.task.reward
            memo[key] = fn(problem, key[1])
        return memo[key]

    # --- the callables search uses ----------------------------------------------------------------
    def expand(self, states: Sequence[State], k: int | Sequence[int], temperature: float = 1.0,
               top_p: float = 1.0) -> list[list[Proposal]]:
        """Up to k distinct next steps for each state (see the module docstring), or up to ``k[i]`` for state
        i: one scoring call for all states where the task lists actions, else sampler calls until each has
        its distinct steps."""
        return self._expand(self._main, states, k, temperature, top_p)

    def _expand(self, m: _Model, states: Sequence[State], k: int | Sequence[int], temperature: float,
                top_p: float, distinct: bool = True) -> list[list[Proposal]]:
        ks = [k] * len(states) if isinstance(k, int) else list(k)
        if m.lists_actions:
            return self._expand_listed(m, states, ks, temperature, distinct)
        return self._expand_sampled(m, states, ks, temperature, top_p)

    def _expand_listed(self, m: _Model, states: Sequence[State], ks: Sequence[int], temperature: float,
                       distinct: bool = True) -> list[list[Proposal]]:
        """k listed actions of each state: distinct ones by Gumbel-top-k, or (``distinct`` False) k independent
        draws from the policy renormalised over the legal actions at ``temperature`` (repeats allowed)."""
        out: list[list[Proposal]] = [[] for _ in states]
        fresh = self._score_actions(m, states)
        for i, s in enumerate(states):
            legal, lps, ntok = m.priors[s.problem][s.steps]
            if not legal:
                continue
            prior = softmax(lps)
            drawn = gumbel_top_k(lps, ks[i], self.rng, temperature) if distinct else \
                [gumbel_top_k(lps, 1, self.rng, temperature)[0] for _ in range(ks[i])]
            for a in drawn:
                text = self.task.observe(s.problem, s.steps, legal[a])
                if text is None:
                    raise PonderError(f"task {self.task.name!r} listed {legal[a]!r} as legal but cannot observe it")
                out[i].append(Proposal(text, ntok[a], lps[a], prior[a]))
            if i in fresh:
                # the drawn actions count as generated, as the same steps sampled would; every other token
                # the scoring pass processed (the prefix once, the actions not drawn) counts as read. An action
                # drawn twice was scored once: its tokens count once, so the total is what the pass processed
                cost, gen = fresh.pop(i), sum(ntok[a] for a in set(drawn))
                self.charge([s], [replace(cost, tokens_generated=gen, tokens_read=cost.tokens_read - gen)], m)
        return out

    def priors(self, states: Sequence[State]) -> list[tuple[list[str], list[float], list[int]]]:
        """(legal actions, the policy's log-probs, their token counts) of each state, in one scoring call for
        those not scored yet."""
        fresh = self._score_actions(self._main, states)
        self.charge([states[i] for i in fresh], list(fresh.values()))
        return [self._priors[s.problem][s.steps] for s in states]

    def _score_actions(self, m: _Model, states: Sequence[State]) -> dict[int, Compute]:
        """Score the legal actions of every state not scored before in this search (one call); returns the
        cost of each newly scored state by its index. A state met again (a rollout's state that the tree
        later expands, a leaf expanded again to widen) reuses its scores at no cost; each model (``m``) keeps
        its own scores."""
        todo: dict[State, int] = {}
        for i, s in enumerate(states):
            memo = m.priors.setdefault(s.problem, {})
            if s.steps not in memo and s not in todo:
                legal = self.task.legal_actions(s.problem, s.steps)
                memo[s.steps] = (legal, [], [])
                if legal:
                    todo[s] = i
        if not todo:
            return {}
        scores = m.policy.score([m.prefix(self.task, s) for s in todo], [m.priors[s.problem][s.steps][0] for s in todo])
        for s, lps, ntok in zip(todo, scores.logprobs, scores.tokens):
            m.priors[s.problem][s.steps] = (m.priors[s.problem][s.steps][0], lps, ntok)
        return dict(zip(todo.values(), scores.compute))

    def _expand_sampled(self, m: _Model, states: Sequence[State], ks: Sequence[int], temperature: float,
                        top_p: float) -> list[list[Proposal]]:
        out: list[list[Proposal]] = [[] for _ in states]
        seen: list[set[str]] = [set() for _ in states]
        want = list(range(len(states)))
        for _ in range(self.distinct_rounds if temperature > 0 else 1):
            # one sampler call draws as many per state as the state that wants most (the sampler takes one k)
            for i, props in zip(want, self._sample(m, [states[i] for i in want], max(ks[i] for i in want), temperature, top_p)):
                for p in props:
                    if p.text not in seen[i] and len(out[i]) < ks[i]:
                        seen[i].add(p.text)
                        out[i].append(p)
            # a state whose samples are all blank has ended its trace: sampling it again finds nothing new
            want = [i for i in want if len(out[i]) < ks[i] and any(p.text.strip() for p in out[i])]
            if not want:
                break
        return out

    def _sample(self, m: _Model, states: Sequence[State], k: int, temperature: float, top_p: float) -> list[list[Proposal]]:
        """k sampled next steps per state in one sampler call (repeats allowed); where the task observes,
        the model writes the action and the task the rest."""
        observes = self.task.observes
        stop = self.task.action_stop if observes else self.task.step_stop
        params = SamplingParams(temperature, top_p, self.task.max_step_tokens, stop)
        samples = m.policy.sample([m.prefix(self.task, s) for s in states], k, params)
        self.charge(states, samples.compute, m)
        return [[Proposal(self._observed(s, x.text) if observes and x.finish == "stop" else x.text, x.num_tokens, x.logprob,
                          None, x.finish) for x in steps] for s, steps in zip(states, samples.steps)]

    def _observed(self, state: State, written: str) -> str:
        """The whole step for an action the model wrote up to the action stop; a blank one stays blank (the
        model ended the trace), and one the task cannot observe is kept as written and ended, so the trace
        stops there with reward 0."""
        if not written.strip():
            return written
        return self.task.observe(state.problem, state.steps, written.strip()) or written.rstrip() + self.task.step_stop[0]

    def rollout(self, states: Sequence[State], k: int, temperature: float = 1.0, top_p: float = 1.0,
                fast: bool = False, leaf: bool = False, distinct: bool = True) -> list[list[tuple[str, ...]]]:
        """k whole continuations of each state to the end of the trace, cut into steps.

        Where the task lists actions, each continuation is drawn one step at a time through ``expand``
        (one scoring call per step for every unfinished continuation, so every step is legal; the continuations
        at one state take distinct actions where there are enough, or with ``distinct`` False independent
        draws from the policy over the legal actions, as GRPO needs), unless
        ``fast``: then, as wherever the task observes sampled actions, one step at a time through the
        sampler (the model writes each action, a few tokens, instead of scoring every legal one; an
        action that is not legal ends the rollout with reward 0). Else in one sampler call for the whole
        completion. Steps after the trace became terminal are dropped.

        ``leaf``: these are a leaf evaluation's rollouts (MCTS, ``--scorer rollout``), drawn from the
        rollout policy where the env has one (which expands by its own means: scoring listed actions where
        it can score, else sampling); otherwise (a sampling method's whole traces) from the search policy.
        """
        m = self._roll if leaf else self._main
        if m.lists_actions or self.task.observes:
            return self._rollout_stepwise(m, states, k, temperature, top_p, fast and self.task.observes, distinct)
        budget = self.task.max_step_tokens * max(1, self.task.max_steps - min(len(s.steps) for s in states))
        params = SamplingParams(temperature, top_p, budget, stop=())
        out = m.policy.sample([m.prefix(self.task, s) for s in states], k, params)
        self.charge(states, out.compute, m)
        return [[self.finish(s, self.task.split_steps(x.text)) for x in samples] for s, samples in zip(states, out.steps)]

    def _rollout_stepwise(self, m: _Model, states: Sequence[State], k: int, temperature: float, top_p: float,
                          sampled: bool, distinct: bool = True) -> list[list[tuple[str, ...]]]:
        rows = [s.steps for s in states for _ in range(k)]
        problems = [s.problem for s in states for _ in range(k)]
        ended: set[int] = set()  # rows whose model ended the trace (a blank step or end-of-sequence)
        for _ in range(self.task.max_steps):
            # the continuations at one state are drawn from one expansion, without replacement where there
            # are enough distinct steps (so the k rollouts of a fresh leaf differ where they can)
            groups: dict[State, list[int]] = {}
            for r, (p, steps) in enumerate(zip(problems, rows)):
                if r not in ended and not self.is_terminal(p, steps):
                    groups.setdefault(State(p, steps), []).append(r)
            if not groups:
                break
            uniq = list(groups)
            if sampled:
                step = self._sample(m, uniq, max(map(len, groups.values())), temperature, top_p)
            else:  # each state draws as many steps as it has continuations, so no more are charged as generated
                step = self._expand(m, uniq, [len(groups[s]) for s in uniq], temperature, top_p, distinct)
            for s, props in zip(uniq, step):
                for j, r in enumerate(groups[s]):
                    p = props[j % len(props)] if props else None
                    if p is None or not p.text.strip():
                        ended.add(r)
                        continue
                    rows[r] = (*s.steps, p.text)
                    if p.finish == "eos":
                        ended.add(r)
        return [[self.finish(s, rows[i * k + j][len(s.steps):]) for j in range(k)] for i, s in enumerate(states)]

    def finish(self, state: State, new_steps: Sequence[str]) -> tuple[str, ...]:
        """``state``'s steps plus ``new_steps`` up to the first terminal state."""
        steps = list(state.steps)
        for step in new_steps:
            if self.is_terminal(state.problem, steps):
                break
            steps.append(step)
        return tuple(steps)

    def score(self, states: Sequence[State]) -> list[float]:
        """The critic's score of each state (one batched critic call), its cost charged to each state's problem."""
        if self.critic is None:
            raise ValueError("this search needs a critic")
        scores, cost = scored(self.critic, [s.problem for s in states], [list(s.steps) for s in states])
        self.charge(states, cost)
        return scores


def step_key(step: str) -> str:
    """The key under which sibling steps merge: lowercased, whitespace collapsed and stripped."""
    return " ".join(step.lower().split())


def set_priors(node: Node, per_token: bool) -> None:
    """P(s, a) over all of ``node``'s children (again after widening): the exact action probabilities
    renormalised over the children where the task listed the actions (``per_token`` False), else
    softmax_a(logprob(a) / max(1, tokens(a))), so a long sampled step is not penalised for its length."""
    if node.children:
        z = [c.logprob / (max(1, c.tokens) if per_token else 1) for c in node.children]
        for c, p in zip(node.children, softmax(z)):
            c.prior = p


def add_children(env: SearchEnv, problem: Problem, node: Node, proposals: Sequence[Proposal], room: int,
                 merge: bool = True) -> list[Node]:
    """Attach ``proposals`` to ``node``: the one rule every search method grows its tree by.

    Blank steps (the model ended the trace) and steps already among the children (equal up to case and
    whitespace, or exactly with ``merge=False``) are skipped; at most ``room`` children are added, each
    with the task's terminal flag and reward (an end-of-sequence step is terminal); then every child's
    prior is set by ``set_priors``. Returns the new children.
    """
    key = step_key if merge else str
    seen = {key(c.step) for c in node.children}
    prefix = tuple(node.steps())
    new = []
    for p in proposals:
        if len(new) >= room:
            break
        if not p.text.strip() or key(p.text) in seen:
            continue
        seen.add(key(p.text))
        trace = (*prefix, p.text)
        terminal = p.finish == "eos" or env.is_terminal(problem, trace)
        reward = env.reward(problem, trace) if terminal else None
        new.append(node.add(p.text, tokens=p.num_tokens, logprob=p.logprob, terminal=terminal, reward=reward))
    set_priors(node, per_token=not env.lists_actions)
    return new
