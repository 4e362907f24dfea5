"""One tree and one node type for every search algorithm.

Training data, the viewer and the reports read any algorithm's output because every algorithm
builds this same ``Node``. A node is reached by the step written in it; the root holds no step.
Path ids are stable: the root is "0" and the j-th child of node "0.2" is "0.2.j".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from ..errors import PonderError


@dataclass(eq=False)
class Node:
    """A reasoning state = the path of steps from the root to here.

    step: the text of the step that led here ("" at the root).
    tokens: the step's token count; logprob: its log-probability under the policy.
    prior: the policy prior used by PUCT (normalised over siblings).
    visits, value_sum: MCTS statistics; ``q`` = value_sum / visits.
    scores: critic name -> score of this state.
    terminal: the trace ends here; reward: the verifier's reward of a terminal trace (None if unknown).
    """

    step: str = ""
    tokens: int = 0
    logprob: float = 0.0
    prior: float = 1.0
    visits: int = 0
    value_sum: float = 0.0
    scores: dict[str, float] = field(default_factory=dict)
    terminal: bool = False
    reward: float | None = None
    id: str = "0"
    children: list["Node"] = field(default_factory=list)
    parent: "Node | None" = field(default=None, repr=False)

    # --- structure --------------------------------------------------------------------------------
    def add(self, step: str, **attrs: Any) -> "Node":
        child = Node(step=step, id=f"{self.id}.{len(self.children)}", parent=self, **attrs)
        self.children.append(child)
        return child

    def child_with(self, step: str) -> "Node | None":
        return next((c for c in self.children if c.step == step), None)

    def add_path(self, steps: Sequence[str], **leaf_attrs: Any) -> "Node":
        """Walk or grow the path of ``steps`` from this node (shared prefixes are shared); return its end."""
        node = self
        for s in steps:
            node = node.child_with(s) or node.add(s)
        for k, v in leaf_attrs.items():
            setattr(node, k, v)
        return node

    def path(self) -> list["Node"]:
        """Nodes from the root's first child down to this node."""
        out, node = [], self
        while node.parent is not None:
            out.append(node)
            node = node.parent
        return out[::-1]

    def steps(self) -> list[str]:
        return [n.step for n in self.path()]

    @property
    def depth(self) -> int:
        return self.id.count(".")

    @property
    def q(self) -> float:
        return self.value_sum / self.visits if self.visits else 0.0

    def __iter__(self) -> Iterator["Node"]:
        """Every node of the subtree, depth first, this one first."""
        stack = [self]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(reversed(node.children))

    def size(self) -> int:
        return sum(1 for _ in self)

    def find(self, node_id: str) -> "Node":
        node = self
        for part in node_id.split(".")[1:]:
            node = node.children[int(part)]
        return node

    # --- serialisation ----------------------------------------------------------------------------
    _FIELDS = ("step", "tokens", "logprob", "prior", "visits", "value_sum", "scores", "terminal", "reward", "id")

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self._FIELDS}
        d["children"] = [c.to_dict() for c in self.children]
        return d

    @classmethod
    def from_dict(cls, d: dict, parent: "Node | None" = None) -> "Node":
        if not isinstance(d, dict) or "id" not in d or not isinstance(d.get("children"), list):
            raise PonderError("not a ponder tree: expected an object with 'id' and 'children'")
        node = cls(**{k: d[k] for k in cls._FIELDS if k in d}, parent=parent)
        node.children = [cls.from_dict(c, node) for c in d["children"]]
        return node
