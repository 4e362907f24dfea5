"""The loop's options (``ImproveConfig``, ``WatchConfig``) and their defaults, which differ from the
stand-alone commands' where the loop wants other settings."""

# No ``from __future__ import annotations``: ``config.build`` resolves the nested config types.
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any, Literal

from ..config import check_literals, check_positive, nested, option
from ..errors import PonderError
from ..imagination import IMAGINE_HELP, ImagineConfig, parse_imagine
from ..models.tiny import TinyConfig, fast_tiny
from ..search.mcts import MCTSConfig
from ..train.critic import CriticConfig
from ..train.dpo import DPOConfig
from ..train.expert import ExpertConfig
from ..train.grpo import GRPOConfig
from ..train.sft import SFTConfig
from ..tracking import HELP as REPORT_TO_HELP, ReportTo

PolicyUpdate = Literal["expert", "sft", "sft+dpo", "grpo", "none"]
SearchMethod = Literal["mcts", "best-of-n"]
TrainFrom = Literal["previous", "initial"]
CRITIC_KINDS = ("value", "prm", "orm")


def _bootstrap_defaults() -> SFTConfig:
    """Bootstrap of the from-scratch model on random legal traces. With observations the model learns only
    to write actions (the task computes their results), which 150 steps teach; free text needs ~900 to
    learn the arithmetic as well."""
    return SFTConfig(steps=150)


def _sft_defaults() -> SFTConfig:
    """Rejection-sampling fine-tuning on verified traces, each iteration."""
    return SFTConfig(steps=80, lr=5e-4, warmup=10, checkpoint_every=1000)


def _search_defaults() -> MCTSConfig:
    """MCTS over the imagined training problems. Wide (k = 8, widened to 16): on Game of 24 a state has
    up to 36 legal actions, and at k = 4 (widened to 6) the bootstrap policy's search solved 33-36% of
    its training puzzles, against 78% at k = 8 (held-out training puzzles, ranks 801-900)."""
    return MCTSConfig(simulations=64, k=8, k_max=16, rollouts=1, value_weight=0.5, max_nodes=512, skip_finished=True,
                      seed=0)


def _eval_mcts_defaults() -> MCTSConfig:
    """MCTS at test time, stopped at a fixed budget of 2,000 generated tokens per problem. The width was
    chosen on held-out training puzzles (ranks 801-900), never on the test split: with the bootstrap
    policy and rollouts alone, 64 simulations at k = 4 solved 40% of them, at k = 6 62% (a k = 6 tree
    is exhausted after 216 leaves), and 300 simulations at k = 8 widened to 16 92% (1,263 generated
    tokens per puzzle)."""
    return MCTSConfig(simulations=300, token_budget=2000, k=8, k_max=16, rollouts=1, value_weight=0.5, max_nodes=2048,
                      skip_finished=True, seed=0)


def _rollout_sft_defaults() -> SFTConfig:
    """Distillation of the fast rollout model (--rollout-model distill) each iteration: SFT on the verified
    traces the policy's SFT reads, mixed with the task's synthetic ones (--sft-mix), from its previous weights."""
    return SFTConfig(steps=80, lr=1e-3, warmup=10, checkpoint_every=1000)


def _critic_defaults() -> CriticConfig:
    """Critic training each iteration. A quarter of each batch comes from paths that succeed: with 2-3% of
    the labels positive, uniform batches leave the critics at the label mean (held-out AUC 0.54 for the
    value head, 0.76 for the PRM on the demo's iteration-3 data; 0.95 and 0.98 with balance 0.25)."""
    return CriticConfig(steps=30, batch_size=16, balance=0.25)


@dataclass
class WatchConfig:
    """The collapse watch, on held-out validation problems after each iteration."""

    samples: int = option(8, "traces sampled per validation problem to measure diversity and entropy")
    min_diversity: float = option(0.2, "warn when distinct traces / samples falls below this")
    max_drop: float = option(0.1, "warn when validation accuracy falls this far below the best so far")
    max_z: float = option(2.0, "also warn when validation accuracy falls below the best so far by this many standard "
                               "errors of a difference of two proportions (a fall from a low best, 6% -> 0% of 100, "
                               "that max_drop misses); 0 = off")
    rollback: bool = option(True, "after a warning, start the next iteration from the best checkpoint")

    def __post_init__(self):
        check_positive(self, "samples")
        if self.max_z is None or not self.max_z >= 0:
            raise PonderError(f"--set watch.max_z must be >= 0 (0 = off), got {self.max_z}")


@dataclass
class ImproveConfig:
    """The self-improvement loop: imagine -> search -> learn -> evaluate, repeated."""

    task: str = option("game24", "task to improve on")
    data: str | None = option(None, "your own problem file for the task")
    task_options: dict[str, Any] = field(default_factory=dict, metadata={"help": (
        "the task's own knobs (--task-option KEY=VALUE, or YAML task_options: {n_numbers: 5}), e.g. countdown's "
        "n_numbers, min_number, max_number, min_target, max_target")})
    model: str | None = option(None, "starting policy (a model folder, .gguf or smollm2); None = bootstrap the tiny model")
    imagine: str = option("auto", IMAGINE_HELP)
    iterations: int = option(2, "iterations of imagine -> search -> learn -> evaluate")
    problems: int = option(200, "new training problems searched per iteration")
    validation: int = option(100, "held-out training-distribution problems for the collapse watch (with 100, one "
                                  "standard error of its greedy accuracy is at most 5 points)")
    search_batch: int = option(200, "problems searched together (larger batches keep the model's calls fuller)")
    free_text: bool = option(
        False, "the model writes every step whole; off: where the task can, the model writes the action and the task "
        "its observation, and every search scores all legal actions (Game of 24; with it, give the bootstrap --set bootstrap.steps=900 to learn the arithmetic too)")
    search_method: SearchMethod = option(
        "mcts", "how the search phase looks for solutions of the training problems: mcts (tree search guided by the "
        "critics, the default), or best-of-n (--search-n whole traces sampled per problem, no tree search, ranked by "
        "the verifier; with --policy-update sft this is STaR's rejection-sampling fine-tuning; the samples form a "
        "flat tree whose states' Q is the share of their samples that the verifier accepted, which the critics, the "
        "expert targets and the DPO pairs learn from)")
    search_n: int | None = option(None, "traces sampled per training problem by --search-method best-of-n "
                                        "(None = --eval-n); ignored by mcts")
    policy_update: PolicyUpdate = option(
        "expert", "how the policy learns: expert (the search's improved policy at every searched state, plus SFT on "
        "verified traces), sft (verified traces only), sft+dpo (then step-level DPO on sibling pairs), grpo (GRPO on "
        "the iteration's training problems from groups of its own samples, rewarded by the verifier, or by the "
        "previous iteration's ORM where a problem has nothing to check against; options: --set grpo.FIELD=VALUE; the "
        "search still runs, to train the critics, but the policy does not learn from it, and policy-train.json counts "
        "GRPO's sampled tokens apart from the search's), or none")
    lora_r: int = option(0, "train the policy through LoRA adapters of this rank (PEFT), merged after each phase; 0 = full fine-tuning")
    train_from: TrainFrom = option(
        "previous", "where each iteration's policy training starts: the previous policy, or the initial one "
        "(STaR's restart: all verified traces so far, learned afresh, instead of fine-tuning on fine-tuning)")
    sft_mix: float = option(0.25, "share of each SFT batch drawn from the task's synthetic traces (keeps the basics)")
    traces_per_problem: int = option(4, "most distinct verified traces per problem for SFT")
    sft_epochs: float = option(
        8.0, "most passes over the verified traces per iteration: SFT stops after this many, before sft.steps, "
        "so a few traces are not memorised (which sharpens the policy onto them and starves search)"
    )
    pair_margin: float = option(0.2, "least Q gap between a chosen and a rejected sibling step")
    critics: tuple[str, ...] | None = option(
        None, "critics to train: any of value, prm, orm (default: value and prm, and orm where the task has no "
        "verifier: with one, nothing reads an ORM)")
    guide: str = option("value@1,prm@1", "critics (and weights) that guide MCTS from iteration 2 on")
    prm_label: Literal["rollout", "q"] = option("rollout", "PRM step labels: rollout success share or MCTS Q")
    retrain_critics: bool = option(True, "train critics every iteration (False: only after iteration 1, as AlphaLLM)")
    replay: int = option(2, "iterations of trees that pairs and critic targets come from")
    eval_limit: int | None = option(None, "first N test problems (None = the whole split)")
    eval_n: int = option(16, "N of best-of-N at evaluation")
    eval_methods: tuple[str, ...] = option(("greedy", "best-of-n", "mcts"), "decoding methods evaluated each iteration")
    eval_batch: int = option(100, "problems evaluated together")
    device: str | None = option(None, "torch device (default: cuda if available)")
    report_to: ReportTo = option("none", REPORT_TO_HELP)
    seed: int = option(0, "seed of everything: added to the seed of every option group (bootstrap, sft, search, ...)")
    tiny: TinyConfig = nested(TinyConfig)
    bootstrap: SFTConfig = nested(_bootstrap_defaults)
    sft: SFTConfig = nested(_sft_defaults)
    dpo: DPOConfig = nested(DPOConfig)
    expert: ExpertConfig = nested(ExpertConfig)
    grpo: GRPOConfig = nested(GRPOConfig)
    critic: CriticConfig = nested(_critic_defaults)
    search: MCTSConfig = nested(_search_defaults)
    eval_mcts: MCTSConfig = nested(_eval_mcts_defaults)
    watch: WatchConfig = nested(WatchConfig)
    rollout_model: str | None = option(
        None, "leaf rollouts of every MCTS (search and evaluation) from this cheaper model: a model folder, .gguf, "
        "smollm2 or a server; or 'distill': a small tiny model (shape: rollout_tiny) bootstrapped like the policy at "
        "iteration 0, then trained each iteration by SFT (rollout_sft) on the iteration's verified traces and saved "
        "in iter-I/rollout, which the next iteration's search rolls out with; None = the policy itself")
    rollout_tiny: TinyConfig = nested(fast_tiny)
    rollout_sft: SFTConfig = nested(_rollout_sft_defaults)
    imagination: ImagineConfig = nested(ImagineConfig)

    def __post_init__(self):
        if not isinstance(self.task_options, dict) or not all(isinstance(k, str) for k in self.task_options):
            raise PonderError(f"task_options: expected a mapping of option: value, got {self.task_options!r}")
        check_positive(self, "iterations", "problems", "search_batch", "eval_n", "eval_batch", "replay", "traces_per_problem")
        check_literals(self)
        if self.search_n is not None:
            check_positive(self, "search_n")
        parse_imagine(self.imagine)
        if self.rollout_model is not None and (not isinstance(self.rollout_model, str) or not self.rollout_model.strip()):
            raise PonderError(f"--rollout-model: expected a model spec or 'distill', got {self.rollout_model!r}")
        if self.lora_r < 0:
            raise PonderError(f"--lora-r must be >= 0, got {self.lora_r}")
        if self.validation < 0:
            raise PonderError(f"--validation must be >= 0, got {self.validation}")
        check_positive(self, "sft_epochs")
        if not 0 <= self.sft_mix < 1:
            raise PonderError(f"--sft-mix must be in [0, 1), got {self.sft_mix}")
        bad = [c for c in self.critics or () if c not in CRITIC_KINDS]
        if bad:
            raise PonderError(f"--critics: unknown {', '.join(bad)}; choose from {', '.join(CRITIC_KINDS)}")
        bad = [m for m in self.eval_methods if m not in ("greedy", "best-of-n", "mcts", "self-consistency")]
        if bad:
            raise PonderError(f"--eval-methods: unknown {', '.join(bad)}; choose from greedy, best-of-n, self-consistency, mcts")
        for kind, _ in guide_terms(self.guide):
            if self.critics is not None and kind not in self.critics:
                raise PonderError(f"--guide uses the {kind} critic, which --critics does not train")


def seeded(cfg: ImproveConfig) -> ImproveConfig:
    """``cfg`` with its ``seed`` added to every option group's own seed, so that ``--seed`` varies
    everything (data order, initialisation, sampling, critic splits); seed 0 changes nothing."""
    if not cfg.seed:
        return cfg
    groups = {f.name: getattr(cfg, f.name) for f in fields(cfg)}
    return replace(cfg, **{name: replace(g, seed=g.seed + cfg.seed) for name, g in groups.items()
                           if is_dataclass(g) and isinstance(getattr(g, "seed", None), int)})


def guide_terms(spec: str) -> list[tuple[str, float]]:
    """``value@1,prm@0.5`` -> [("value", 1.0), ("prm", 0.5)]: learned critics the loop trains, with weights."""
    from ..critics import parse_critic

    out = []
    for term in spec.split(","):
        kind, _, w = term.strip().partition("@")
        if kind not in CRITIC_KINDS:
            raise PonderError(f"--guide: {kind!r} is not a learned critic; choose from {', '.join(CRITIC_KINDS)}")
        [t] = parse_critic(f"{kind}:-" + (f"@{w}" if w else ""))  # checks the weight
        out.append((kind, t.weight))
    return out
