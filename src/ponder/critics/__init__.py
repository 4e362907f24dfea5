"""Critics: one protocol, ``score(problems, steps) -> one float per state``, for every search method.

- ``verifier``: the task's own reward of a finished trace (``oracle`` where it reads the gold answer);
- ``value:PATH``, ``prm:PATH``, ``orm:PATH``: learned critics (``ScalarCritic`` folders written by
  ``ponder improve``);
- ``judge``: the policy model prompted as a judge (Tree of Thoughts' value prompt);
- ``implicit:ITER`` or ``implicit:POLICY:REFERENCE``: the implicit reward of a DPO-trained policy,
  beta * log(pi / pi_ref) summed over the steps so far (``ITER``: a ``ponder improve`` iteration folder);
- a weighted mix of any of them, AlphaLLM-style: ``value:PATH@0.5,prm:PATH@0.3,verifier@0.2``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, NamedTuple

from ..errors import PonderError
from ..tasks import Task
from .base import Critic, Mixture, Verifier, checked_scores, scored

CRITICS = ("verifier", "judge", "value:PATH", "prm:PATH", "orm:PATH", "implicit:ITER", "implicit:POLICY:REFERENCE")
_LEARNED = ("value", "prm", "orm")


class CriticSpec(NamedTuple):
    kind: str
    path: str | None
    weight: float


def parse_critic(spec: str) -> list[CriticSpec]:
    """``NAME[:PATH][@WEIGHT]`` terms separated by commas; checked before any model is loaded."""
    out = []
    for term in (t.strip() for t in spec.split(",")):
        if not term:
            raise PonderError(f"--critic {spec!r}: empty term")
        weight = 1.0
        if "@" in term:
            term, w = term.rsplit("@", 1)
            try:
                weight = float(w)
            except ValueError:
                raise PonderError(f"--critic {spec!r}: weight {w!r} is not a number") from None
            if weight <= 0:
                raise PonderError(f"--critic {spec!r}: weights must be > 0, got {weight}")
        kind, _, path = term.partition(":")
        if kind == "implicit":
            if not path:
                raise PonderError("--critic implicit needs models: implicit:ITER (a ponder improve iteration folder) "
                                  "or implicit:POLICY:REFERENCE")
        elif kind in _LEARNED:
            if not path:
                raise PonderError(f"--critic {kind} needs a folder: {kind}:PATH (written by ponder improve)")
        elif kind in ("verifier", "judge"):
            if path:
                raise PonderError(f"--critic {kind} takes no path, got {term!r}")
        else:
            raise PonderError(f"unknown critic {kind!r}; choose one of: {', '.join(CRITICS)}")
        out.append(CriticSpec(kind, path or None, weight))
    return out


def get_critic(spec: str, task: Task, policy: Callable[[], object] | object | None = None) -> Critic:
    """The critic a spec names. ``policy`` (or a function returning it) serves the judge and the device."""
    terms = parse_critic(spec)
    critics = [_one(t, task, policy) for t in terms]
    if len(critics) == 1:
        return critics[0]
    return Mixture(critics, [t.weight for t in terms])


def critic_name(spec: str, task: Task) -> str:
    """The name the critic ``spec`` names goes by (``value@1+prm@0.5`` for a mix), without loading it."""
    terms = parse_critic(spec)
    names = [("verifier" if task.checkable else "oracle") if t.kind == "verifier" else t.kind for t in terms]
    return names[0] if len(terms) == 1 else "+".join(f"{n}@{t.weight:g}" for n, t in zip(names, terms))


def load_implicit(spec: str, task: Task, policy=None):
    """The implicit-reward critic of ``ITER`` (a ponder improve iteration folder) or ``POLICY:REFERENCE``;
    ``policy``, if loaded from the same folder, is shared instead of loaded again."""
    from .implicit import ImplicitReward

    device = str(policy.model.device) if policy is not None and hasattr(policy, "model") else None
    if (Path(spec) / "policy-train.json").is_file():
        return ImplicitReward.from_iteration(spec, task, device, loaded=policy)
    pol, sep, ref = spec.partition(":")
    if not sep or not pol or not ref:
        raise PonderError(f"implicit reward {spec!r}: not an iteration folder of ponder improve (no policy-train.json); "
                          "give POLICY:REFERENCE")
    return ImplicitReward.load(pol, ref, task, device=device, loaded=policy)


def _one(t: CriticSpec, task: Task, policy) -> Critic:
    if t.kind == "verifier":
        return Verifier(task)
    pol = policy() if callable(policy) else policy
    if t.kind == "judge":
        if pol is None or not hasattr(pol, "model"):
            raise PonderError("--critic judge needs a local model to prompt (--model)")
        from .judge import Judge

        return Judge(pol, task)
    if t.kind == "implicit":
        return load_implicit(t.path, task, pol)
    from .scalar import ScalarCritic

    device = str(pol.model.device) if pol is not None and hasattr(pol, "model") else None
    critic = ScalarCritic.load(t.path, task, device=device)
    if critic.kind != t.kind:
        raise PonderError(f"{t.path}: holds the {critic.kind} critic, not a {t.kind} one")
    return critic


__all__ = ["CRITICS", "Critic", "CriticSpec", "Mixture", "Verifier", "checked_scores", "critic_name", "get_critic", "load_implicit",
           "parse_critic", "scored"]
