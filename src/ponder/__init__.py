"""ponder: search over a language model's reasoning steps, guided by critics, and self-improvement
from what the search finds."""

from .compute import Compute
from .critics import Critic, Verifier, get_critic
from .errors import PonderError
from .models import Policy, SamplingParams, Step, load_policy
from .search import METHODS, Node, SearchEnv, SearchResult, State, get_method
from .tasks import Problem, Task, get_task

__version__ = "0.1.0"

__all__ = [
    "Compute", "Critic", "METHODS", "Node", "Policy", "PonderError", "Problem", "SamplingParams", "SearchEnv",
    "SearchResult", "State", "Step", "Task", "Verifier", "get_critic", "get_method", "get_task", "load_policy",
]
