"""OpenAI-compatible server backend: sample steps from vLLM, SGLang or llama.cpp's server.

Spec: ``openai:http://HOST:PORT/v1``, with options after ``?``, e.g.
``openai:http://127.0.0.1:8000/v1?model=Qwen/Qwen2.5-1.5B-Instruct&tokenizer=/models/qwen&concurrency=64``.
Several servers of the same model: ``openai:http://gpu1:8000/v1,http://gpu2:8000/v1?model=...``; the
prefixes of a call are dealt out to them in turn (a prefix's continuations stay on its server, where
its prompt is cached), with ``concurrency`` requests in flight per server.
The API key comes from ``$PONDER_API_KEY``, else ``$OPENAI_API_KEY`` (servers started without one
accept any). See ``ServerOptions`` for every option.

Why the completions API (raw prompt text) and not chat: a state is a prompt plus the steps written
so far, and the model must continue that exact text; a chat endpoint would re-wrap it. So ``render``
applies the chat template itself, with a local tokenizer named by ``tokenizer=`` (a model folder, a
``.gguf`` file, or ``smollm2``); without one it falls back to the task's plain prompt.

Why the ``openai`` client on a thread pool: ``Policy.sample`` is a synchronous call, and running an
event loop inside it breaks callers that already run one (notebooks, async Ray actors); the client
is thread-safe, keeps a pool of connections, and already retries connection errors, 408/429 and 5xx
with exponential backoff and jitter (0.5 s doubling to 8 s), so the one thing added here is the
fan-out: every prefix of a ``sample`` call (the whole frontier of a search round, every tree of the
batch) is one request with ``n=k`` in flight at once, at most ``concurrency`` at a time.

Differences from the local sampler, and how each is handled:

- **Stop strings.** ponder ends a step at a stop string only once the step has non-blank content,
  and keeps the stop string in the text. Servers drop the stop string and stop even at a leading
  one. So the stop string is put back, and a step that stopped while still blank (a leading newline)
  is continued by a second request from prefix + that blank text + the stop string, within what is
  left of ``max_tokens``; its tokens and log-probs are joined and both requests' usage is counted.
  The continued request re-reads the prefix as text, so where the server's stop token held more
  than the stop string (``"\\n\\n"``) the continuation sees one newline, not two.
- **Stop or end of text.** The API says ``finish_reason: "stop"`` for both. vLLM tells them apart
  (``stop_reason``: the stop string, or null at end of text); for servers that do not, the step is
  taken to have hit a stop string when the completion's last reported token holds one or, without
  log-probs, when the request asked for stop strings (end of text then reads as a stop; MCTS still
  ends the trace once the task sees an answer).
- **Token ids.** Servers report token *strings* (llama.cpp) or, asked for it, ids (vLLM
  ``return_tokens_as_token_ids``, used with ``vllm=1``). Nothing in ponder reads a step's ids except
  to count them, so where the server gives strings the ids are ``-1`` placeholders, one per token
  generated: ``num_tokens`` stays exact. Without log-probs the count is the response's
  ``usage.completion_tokens`` where the response held one choice (llama.cpp answers ``n=k`` one
  choice a request), else the local tokenizer's count of the text, else the usage shared by length.
- **Log-probs.** Asked for with ``logprobs=0`` (the sampled token's only); they are of the model's
  raw distribution on vLLM and llama.cpp, as ponder's sampler reports them. A server that returns
  none gives steps whose ``logprob`` raises a one-line ``PonderError``: greedy, sampling,
  self-consistency and best-of-N never read it and run; MCTS (priors), beam/DVTS/ToT/A* (path
  scores) and the loop's collapse watch (entropy) stop with that error.
- **Compute** comes from each response's ``usage``: ``tokens_read`` = prompt tokens (a prefix with
  ``n=k`` is read once, as the local sampler counts it; a continuation re-reads it), ``tokens_generated``
  = completion tokens, ``forward_calls`` = requests, ``seconds`` = the call's wall time shared by tokens.
"""

from __future__ import annotations

import math
import os
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, fields
from typing import Any, Sequence
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from ..compute import Compute
from ..errors import PonderError
from .base import SamplingParams, Samples, Step

PREFIX = "openai:"
API_KEY_VARS = ("PONDER_API_KEY", "OPENAI_API_KEY")


def is_server_spec(spec: str | None) -> bool:
    return bool(spec) and spec.startswith(PREFIX)


@dataclass(frozen=True)
class ServerOptions:
    """What follows ``?`` in an ``openai:`` spec (``&``-separated ``key=value``).

    model: the served model's name (default: the first the server lists at ``/models``).
    tokenizer: a local tokenizer for the chat template: a model folder, a ``.gguf`` file or ``smollm2``
        (default: none, so prompts are the task's plain prompt).
    concurrency: most requests in flight at once.
    timeout: seconds one request may take.
    retries: retries of a request after a connection error, a timeout, 408, 429 or 5xx (backoff 0.5 s doubling to 8 s).
    logprobs: ask for per-token log-probs (1) or not (0).
    vllm: send vLLM's extra fields (stop strings kept by the server, token ids instead of strings).
    """

    model: str | None = None
    tokenizer: str | None = None
    concurrency: int = 32
    timeout: float = 600.0
    retries: int = 5
    logprobs: bool = True
    vllm: bool = False

    def __post_init__(self):
        if self.concurrency <= 0:
            raise PonderError(f"server option concurrency must be > 0, got {self.concurrency}")
        if self.timeout <= 0:
            raise PonderError(f"server option timeout must be > 0, got {self.timeout}")
        if self.retries < 0:
            raise PonderError(f"server option retries must be >= 0, got {self.retries}")


def parse_spec(spec: str) -> tuple[list[str], ServerOptions]:
    """(base URLs, options) of ``openai:http://HOST:PORT/v1[,http://...]?key=value&...``; anything
    malformed is one line."""
    if not is_server_spec(spec):
        raise PonderError(f"not a server model spec: {spec!r} (expected openai:http://HOST:PORT/v1)")
    where, _, query = spec[len(PREFIX):].partition("?")
    bases = []
    for part in where.split(","):
        url = urlsplit(part.strip())
        if url.scheme not in ("http", "https") or not url.netloc:
            raise PonderError(f"{spec!r}: expected openai:http://HOST:PORT/v1 (http or https URLs, comma-separated)")
        bases.append(urlunsplit((url.scheme, url.netloc, url.path.rstrip("/"), "", "")))
    kinds = {f.name: f.type for f in fields(ServerOptions)}
    values: dict[str, Any] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in kinds:
            raise PonderError(f"{spec!r}: unknown server option {key!r}; choose from: {', '.join(kinds)}")
        kind = kinds[key]
        try:
            if "bool" in kind:
                if value.lower() not in ("0", "1", "true", "false", "yes", "no"):
                    raise ValueError
                values[key] = value.lower() in ("1", "true", "yes")
            elif "int" in kind:
                values[key] = int(value)
            elif "float" in kind:
                values[key] = float(value)
            else:
                values[key] = value or None
        except ValueError:
            raise PonderError(f"{spec!r}: server option {key}={value!r} is not a valid {kind.split()[0]}") from None
    return bases, ServerOptions(**values)


def load_tokenizer(spec: str):
    """A tokenizer alone (no weights): a model folder, a ``.gguf`` file, or ``smollm2``.

    A GGUF file's tokenizer is read from ponder's converted cache when the local backend already
    made one (fast), else from the GGUF itself (a few seconds).
    """
    from pathlib import Path

    from transformers import AutoTokenizer

    from .hf import _cache_dir, smollm2_gguf

    path = smollm2_gguf() if spec == "smollm2" else Path(spec)
    if not path.exists():
        raise PonderError(f"tokenizer not found: {spec} (give a model folder, a .gguf file, or 'smollm2')")
    try:
        if path.suffix == ".gguf":
            cached = _cache_dir() / "gguf" / f"{path.stem}-{path.stat().st_size}"
            if (cached / "tokenizer_config.json").is_file():
                return AutoTokenizer.from_pretrained(cached)
            return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise PonderError(f"{spec}: cannot load a tokenizer ({str(e).splitlines()[0]})") from None


@dataclass(frozen=True)
class ServerStep(Step):
    """A step from a server that returned no log-probs: reading ``logprob`` is a clear error, not a silent 0."""

    server: str = field(default="", compare=False)

    @property
    def logprob(self) -> float:
        raise PonderError(
            f"the server {self.server} returned no per-token log-probs, which this method needs (MCTS priors, "
            "beam/DVTS/ToT/A* path scores, the collapse watch); use a server that gives them (vLLM, llama.cpp) "
            "or greedy, sampling, self-consistency or best-of-n"
        )


@dataclass
class _Piece:
    """One choice of one response, as ponder reads it."""

    text: str  # without the stop string
    finish: str  # "stop" (a stop string), "eos" or "length"
    stop: str  # the stop string that ended it ("" unless finish == "stop")
    ids: list[int] | None  # token ids where the server gave them
    logprobs: list[float] | None  # None where the server gave none
    raw: str | None = None  # the generated tokens' text, stop included, where the server gave token strings
    usage: int | None = None  # the response's completion tokens, where the response held this choice alone


class ServerPolicy:
    """A model behind an OpenAI-compatible completions endpoint, as a ``Policy``."""

    def __init__(self, spec: str, seed: int = 0):
        self.spec = spec
        self.urls, self.options = parse_spec(spec)
        self.url = ",".join(self.urls)
        try:
            import openai
        except ImportError:
            raise PonderError("a server model needs the openai client: pip install 'ponder[server]' (or openai)") from None
        o = self.options
        key = next((os.environ[v] for v in API_KEY_VARS if os.environ.get(v)), "EMPTY")
        self.clients = [openai.OpenAI(base_url=u, api_key=key, timeout=o.timeout, max_retries=o.retries) for u in self.urls]
        self.pool = ThreadPoolExecutor(max_workers=o.concurrency * len(self.urls), thread_name_prefix="ponder-server")
        self.model_name = o.model or self._first_model()
        self.name = f"{self.model_name}@{self.url}"
        self.tokenizer = load_tokenizer(o.tokenizer) if o.tokenizer else None
        self._seed, self._lock = seed, threading.Lock()

    # --- the Policy protocol ------------------------------------------------------------------------
    def seed(self, seed: int) -> None:
        """Requests carry seeds counted from here, so a rerun asks for the same samples (servers that
        honour ``seed`` then give them; batching on the server can still change floating-point sums)."""
        with self._lock:
            self._seed = seed

    def render(self, task, problem) -> str:
        if self.tokenizer is None:
            return task.prompt(problem)
        from .hf import render_prompt

        return render_prompt(self.tokenizer, task, problem)

    def sample(self, prefixes: Sequence[str], k: int, params: SamplingParams) -> Samples:
        if not prefixes:
            return Samples([], [])
        if k <= 0:
            raise PonderError(f"k must be > 0, got {k}")
        t0 = time.perf_counter()
        with self._lock:
            seeds = list(range(self._seed, self._seed + len(prefixes)))
            self._seed += len(prefixes)
        futures = [self.pool.submit(self._one_prefix, p, k, params, s) for p, s in zip(prefixes, seeds)]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for f in pending:
            f.cancel()  # after one failure the rest would fail the same way; do not queue them
        for f in futures:
            if f.done() and not f.cancelled() and f.exception() is not None:
                wait(pending)  # the requests already running finish (or fail) before we report
                raise f.exception()
        results = [f.result() for f in futures]
        seconds = time.perf_counter() - t0
        steps = [r[0] for r in results]
        weights = [g + t for _, g, t, _ in results]
        total = sum(weights) or 1
        compute = [Compute(g, t, float(n), seconds * w / total) for (_, g, t, n), w in zip(results, weights)]
        return Samples(steps, compute)

    # --- one prefix: one request with n=k, then any continuations ------------------------------------
    def _one_prefix(self, prefix: str, k: int, params: SamplingParams, seed: int) -> tuple[list[Step], int, int, int]:
        """(k steps, tokens generated, tokens read, requests) for one prefix, on server ``seed mod N``."""
        srv = seed % len(self.urls)
        pieces, usage = self._request(prefix, k, params, params.max_tokens, seed, srv)
        generated, read, requests = usage
        steps = []
        for j, piece in enumerate(pieces):
            text, ids = "", list(piece.ids or [])
            lps = list(piece.logprobs) if piece.logprobs is not None else None
            count = self._count(piece, usage[0], pieces)
            # a stop string before any content does not end a ponder step: continue after it, from the
            # blank text exactly as generated where the server shows its tokens (a "\n\n" token stays two)
            while piece.finish == "stop" and not (text + piece.text).strip() and count < params.max_tokens:
                raw = piece.raw
                text += raw if raw is not None and not raw.strip() and piece.stop in raw else piece.text + piece.stop
                pieces2, usage2 = self._request(prefix + text, 1, params, params.max_tokens - count, (seed * 1009 + j) % 2**31, srv)
                generated, read, requests = generated + usage2[0], read + usage2[1], requests + usage2[2]
                piece = pieces2[0]
                ids += piece.ids or []
                lps = lps + piece.logprobs if lps is not None and piece.logprobs is not None else None
                count += self._count(piece, usage2[0], pieces2)
            text += piece.text
            if piece.finish == "stop":
                text += piece.stop
            if len(ids) != count:
                ids = [-1] * count  # the server gave token strings, not ids: keep the count exact
            if lps is not None:
                steps.append(Step(text, tuple(ids), tuple(lps), piece.finish))
            else:
                steps.append(ServerStep(text, tuple(ids), (math.nan,) * count, piece.finish, server=self.url))
        return steps, generated, read, requests

    def _count(self, piece: _Piece, completion_tokens: int, siblings: list[_Piece]) -> int:
        """Tokens generated for one choice: exact from log-probs or ids, else counted or shared."""
        if piece.logprobs is not None:
            return len(piece.logprobs)
        if piece.ids is not None:
            return len(piece.ids)
        if piece.usage is not None:  # e.g. llama.cpp, which answers n=k with k requests of one choice
            return piece.usage
        if self.tokenizer is not None:
            return len(self.tokenizer(piece.text + piece.stop, add_special_tokens=False)["input_ids"])
        chars = sum(len(p.text) + 1 for p in siblings)
        return round(completion_tokens * (len(piece.text) + 1) / chars)

    def _request(self, prompt: str, n: int, params: SamplingParams, max_tokens: int, seed: int, srv: int) -> tuple[list[_Piece], tuple[int, int, int]]:
        """n choices for one prompt and (completion tokens, prompt tokens, requests) from ``usage``.

        A server that returns fewer than n choices (some ignore ``n``) is asked again for the rest.
        """
        pieces: list[_Piece] = []
        generated = read = requests = 0
        while len(pieces) < n:
            requests += 1
            resp = self._create(prompt, n - len(pieces), params, max_tokens, seed + len(pieces), srv)
            got = sorted(resp.choices, key=lambda c: c.index)
            if not got:
                raise PonderError(f"{self.urls[srv]}: the server returned no choices")
            usage = resp.usage
            if usage is None:
                raise PonderError(f"{self.urls[srv]}: the server reports no usage, so compute cannot be counted")
            new = [self._piece(c, params) for c in got]
            if len(new) == 1:
                new[0].usage = usage.completion_tokens
            pieces += new
            generated += usage.completion_tokens or 0
            read += usage.prompt_tokens if len(pieces) == len(got) else 0  # a repeat request re-reads, counted once as with n
        return pieces[:n], (generated, read, requests)

    def _create(self, prompt: str, n: int, params: SamplingParams, max_tokens: int, seed: int, srv: int):
        import openai

        o, url = self.options, self.urls[srv]
        extra: dict[str, Any] = {}
        if o.vllm:
            # vLLM keeps the stop string itself and returns ids as "token_id:N" (its own fields)
            extra = {"include_stop_str_in_output": True, "return_tokens_as_token_ids": True, "skip_special_tokens": True}
        try:
            return self.clients[srv].completions.create(
                model=self.model_name,
                prompt=prompt,
                n=n,
                max_tokens=max_tokens,
                temperature=params.temperature,
                top_p=params.top_p,
                stop=list(params.stop) or None,
                logprobs=0 if o.logprobs else None,
                seed=seed,
                extra_body=extra or None,
            )
        except openai.APIStatusError as e:
            if e.status_code >= 500:
                raise PonderError(f"{url}: server error HTTP {e.status_code} after {o.retries} retries: {_message(e)}") from None
            raise PonderError(f"{url}: HTTP {e.status_code}: {_message(e)}") from None
        except openai.APITimeoutError:
            raise PonderError(f"{url}: no answer within {o.timeout:g} s ({o.retries} retries); "
                              "raise ?timeout= or lower ?concurrency=") from None
        except openai.APIConnectionError as e:
            raise PonderError(f"{url}: cannot reach the server after {o.retries} retries ({_cause(e)}); "
                              "finished rows are kept, rerun to resume once it is back") from None

    def _piece(self, choice, params: SamplingParams) -> _Piece:
        text = choice.text or ""
        lp = choice.logprobs
        tokens = list(lp.tokens) if lp is not None and lp.tokens is not None else None
        logprobs = [float(x) if x is not None else math.nan for x in lp.token_logprobs] if lp is not None and lp.token_logprobs is not None else None
        ids = None
        if tokens and all(t.startswith("token_id:") for t in tokens):
            ids = [int(t[len("token_id:"):]) for t in tokens]
        finish, stop = "length", ""
        if choice.finish_reason == "stop":
            finish, stop = self._which_stop(choice, text, tokens, params.stop)
        elif choice.finish_reason not in ("length", None):
            raise PonderError(f"{self.url}: unexpected finish_reason {choice.finish_reason!r}")
        if self.options.vllm and stop and text.endswith(stop):
            text = text[: -len(stop)]  # kept by the server (include_stop_str_in_output); put back below as for others
        raw = "".join(tokens) if tokens and ids is None else None
        return _Piece(text, finish, stop, ids, logprobs, raw)

    def _which_stop(self, choice, text: str, tokens: list[str] | None, stops: Sequence[str]) -> tuple[str, str]:
        """("stop", the stop string) or ("eos", ""): see the module docstring."""
        if not stops:
            return "eos", ""
        reason = getattr(choice, "stop_reason", None)  # vLLM: the stop string, or None / a token id at end of text
        if reason is not None or (self.options.vllm and hasattr(choice, "stop_reason")):
            return ("stop", reason) if isinstance(reason, str) and reason in stops else ("eos", "")
        if tokens:
            last = tokens[-1]
            hit = [s for s in stops if s in last]
            return ("stop", hit[0]) if hit else ("eos", "")
        return "stop", stops[0]

    def _first_model(self) -> str:
        import openai

        try:
            models = self.clients[0].models.list().data
        except openai.APIStatusError as e:
            raise PonderError(f"{self.url}: HTTP {e.status_code} listing models: {_message(e)}") from None
        except openai.APIError as e:
            raise PonderError(f"{self.url}: cannot reach the server ({_cause(e)})") from None
        if not models:
            raise PonderError(f"{self.url}: the server lists no model; name one with ?model=")
        return models[0].id

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        for c in self.clients:
            c.close()


def _message(e) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        msg = body.get("message") or (body.get("error") or {}).get("message") if isinstance(body.get("error"), dict) else body.get("message") or body.get("detail")
        if msg:
            return " ".join(str(msg).split())[:300]
    return " ".join(str(e).split())[:300]


def _cause(e: BaseException) -> str:
    while e.__cause__ is not None:
        e = e.__cause__
    return " ".join(str(e).split())[:200] or type(e).__name__
