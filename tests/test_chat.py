"""Chat templates rendered exactly as transformers renders them, the chat protocols' golden prompts,
chat answers kept apart from base answers, and one clear line for a missing or broken template."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli_helpers import read_results, read_samples, run_cli
from qwen_eval.backends import Backend
from qwen_eval.chat import (QWEN1_CHATML, ChatBackend, ChatOptions, ChatTemplate, checkpoint_template,
                            render_requests, resolve_template)
from qwen_eval.errors import UserError
from qwen_eval.requests import Choice, Generate, GenerateResult
from qwen_eval.task import DataSpec
from qwen_eval.tasks.humaneval import HumanEval, qwen_chat_body

TEMPLATES = Path(__file__).parent / "fixtures" / "chat_templates"
CONVERSATIONS = [
    [{"role": "user", "content": "What is 2 + 2?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a prime."}],
    # few-shot as turns: two answered questions, then the one to answer
    [{"role": "system", "content": "Answer with a letter."},
     {"role": "user", "content": "Q1\nA. x\nB. y"}, {"role": "assistant", "content": "A"},
     {"role": "user", "content": "  Q2 with spaces  \n"}, {"role": "assistant", "content": "B"},
     {"role": "user", "content": "Q3 中文"}],
]


def _templates() -> dict[str, str]:
    return {"qwen1-chatml": QWEN1_CHATML, "llama3": (TEMPLATES / "llama3.jinja").read_text(),
            "qwen2.5": (TEMPLATES / "qwen2.5.jinja").read_text()}


@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    from qwen_eval.model.tokenizer_json import write_hf_tokenizer

    tokenizer = AutoTokenizer.from_pretrained(write_hf_tokenizer(tmp_path_factory.mktemp("tok")))
    tokenizer.bos_token = "<|endoftext|>"  # so the Llama-3-style template's bos_token is exercised
    return tokenizer


@pytest.mark.parametrize("name", list(_templates()))
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_rendering_equals_transformers_apply_chat_template(hf_tokenizer, name, add_generation_prompt):
    source = _templates()[name]
    ours = ChatTemplate(source, name, bos_token=hf_tokenizer.bos_token, eos_token=hf_tokenizer.eos_token)
    for messages in CONVERSATIONS:
        want = hf_tokenizer.apply_chat_template(messages, chat_template=source, tokenize=False,
                                                add_generation_prompt=add_generation_prompt)
        assert ours.render(messages, add_generation_prompt=add_generation_prompt) == want


def test_end_of_turn_markers():
    t = _templates()
    assert ChatTemplate(t["qwen1-chatml"], "q").end_of_turn == "<|im_end|>"
    assert ChatTemplate(t["qwen2.5"], "q").end_of_turn == "<|im_end|>"
    assert ChatTemplate(t["llama3"], "l", bos_token="<s>").end_of_turn == "<|eot_id|>"


def test_qwen1_chatml_is_what_model_chat_builds():
    """Qwen-1's make_context: default system, then the query, then the assistant header."""
    rendered = ChatTemplate(QWEN1_CHATML, "q").render([{"role": "user", "content": "hi"}])
    assert rendered == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


# ---------------------------------------------------------------------------------------------
# Golden prompts of the HumanEval chat protocols

FIRST_PROMPT_HEAD = 'from typing import List\n\n\ndef has_close_elements(numbers: List[float], threshold: float) -> bool:\n'


def _first_doc():
    return HumanEval().load(DataSpec("sample"))[0]


def test_instruct_protocol_golden_prompt():
    """Qwen2.5-Coder's instruct HumanEval prompt (evalplus's ChatML decoder), rendered with a Qwen2.5
    template, byte for byte; the reply is pre-filled with the fence and stops at its close."""
    doc = _first_doc()
    assert doc.prompt.startswith(FIRST_PROMPT_HEAD)
    task = HumanEval({"prompt": "instruct"})
    (request,) = render_requests(task.requests(doc), ChatTemplate(_templates()["qwen2.5"], "q"), ChatOptions())
    assert request.context == (
        "<|im_start|>system\nYou are an intelligent programming assistant to produce Python algorithmic solutions"
        "<|im_end|>\n<|im_start|>user\nCan you complete the following Python function?\n```python\n"
        + doc.prompt.strip() + "\n```\n<|im_end|>\n<|im_start|>assistant\n```python\n")
    assert request.stop == ("<|endoftext|>", "<|endofmask|>", "</s>", "\nif __name__", "\ndef main(", "\nprint(",
                            "\n#", "\n```", "<|im_end|>")
    assert (request.max_new_tokens, request.max_length) == (2048, 1536)  # vLLM max_tokens, max_model_len
    assert request.temperature == 0.0 and not request.messages


def test_qwen_chat_protocol_golden_prompt():
    doc = _first_doc()
    (request,) = render_requests(HumanEval({"prompt": "qwen_chat"}).requests(doc), ChatTemplate(QWEN1_CHATML, "q"),
                                 ChatOptions())
    assert request.context == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                               "Help me fill the following code.\n" + doc.prompt + "<|im_end|>\n<|im_start|>assistant\n")
    assert request.stop == ("<|im_end|>",)


def test_instruct_program_is_the_restated_function_sanitized():
    doc = _first_doc()
    task = HumanEval({"prompt": "instruct"})
    reply = "from typing import List\n\ndef has_close_elements(numbers, threshold):\n\treturn True"
    program = task.program(doc, reply)
    assert program == ("from typing import List\ndef has_close_elements(numbers, threshold):\n    return True"
                       "\n" + doc.test + "\n" + f"check({doc.entry_point})")
    closed = "def has_close_elements(n, t):\n    return False\n```\nDone."  # the reply closes the pre-filled fence
    assert task.program(doc, closed).startswith("def has_close_elements(n, t):\n    return False\n")


# Replies in the shapes chat models give, with the body Qwen's rules cut out of each.
QWEN_CHAT_REPLIES = [
    ("Sure! Here is the code:\n```python\ndef f(x):\n    y = x + 1\n    return y\n```\nThis adds one.",
     "    y = x + 1\n    return y"),
    ("```\ndef helper():\n    pass\n\ndef f(x):\n    return helper()\n```", "    return helper()"),
    ("def f(x):\n    return x * 2\nprint(f(2))", "    return x * 2"),
    ("def f(x):\n    a = 1\n\n    return a\n\nThat's it.", "    a = 1\n\n    return a"),
    ("def other(y):\n    return y\nmore text", "    return y"),
    ("return x + 1", "    return x + 1"),
]


@pytest.mark.parametrize("reply, body", QWEN_CHAT_REPLIES)
def test_qwen_chat_body_extraction(reply, body):
    assert qwen_chat_body(reply, "f") == body


# ---------------------------------------------------------------------------------------------
# The wrapper: rendered before the inner backend, kept apart in the cache, recorded


class Recorder(Backend):
    name, fingerprint, max_length, tokens_processed, path = "rec", "base-fp", 2048, 0, None
    checkpoint_format = "qwen"

    def __init__(self):
        self.seen = []

    def describe(self):
        return {"name": self.name, "fingerprint": self.fingerprint}

    def generate(self, requests):
        self.seen += list(requests)
        return [GenerateResult(("ok",)) for _ in requests]

    def choice(self, requests):
        self.seen += list(requests)
        return []


def test_chat_backend_renders_and_is_kept_apart():
    inner = Recorder()
    options = ChatOptions(enabled=True, system="Be brief.")
    backend = ChatBackend(inner, resolve_template(options, inner), options)
    assert backend.fingerprint != inner.fingerprint and backend.name == "rec (chat)"
    other = ChatBackend(inner, resolve_template(ChatOptions(enabled=True), inner), ChatOptions(enabled=True))
    assert other.fingerprint != backend.fingerprint  # the system prompt changes answers
    backend.generate([Generate("Question: 1+1?", stop=("\n\n",))])
    backend.choice([Choice("Pick:", (" A", " B"))])
    generate, choice = inner.seen
    assert generate.context == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nQuestion: 1+1?<|im_end|>\n"
                                "<|im_start|>assistant\n")
    assert generate.stop == ("\n\n", "<|im_end|>")
    assert choice.context.endswith("<|im_start|>user\nPick:<|im_end|>\n<|im_start|>assistant\n")
    assert backend.describe()["chat"]["template_origin"] == "Qwen-1 ChatML (built in)"


def test_streamed_chat_generation_is_rendered_too():
    """generate_streaming through the chat wrapper reaches the inner backend rendered (the
    wrapper's attribute forwarding must not hand the raw request on), and streams when it does."""
    inner = Recorder()
    options = ChatOptions(enabled=True)
    backend = ChatBackend(inner, resolve_template(options, inner), options)
    reported = []
    backend.generate_streaming([Generate("Hi?")], lambda i, r: reported.append((i, r.texts)))
    assert inner.seen[0].context.endswith("<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n")
    assert inner.seen[0].stop[-1] == "<|im_end|>"
    assert reported == [(0, ("ok",))] and backend.streams == frozenset()


def test_no_template_is_one_clear_line():
    inner = Recorder()
    inner.checkpoint_format = "qwen2"
    with pytest.raises(UserError, match=r"model rec has no chat template .* chat\.template=FILE"):
        resolve_template(ChatOptions(enabled=True), inner)


def test_broken_templates_name_the_file(tmp_path):
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% for m in messages %}{{ m.content }")
    with pytest.raises(UserError, match=r"chat template .*bad\.jinja: line 1: "):
        resolve_template(ChatOptions(template=str(bad)), Recorder()).render([{"role": "user", "content": "x"}])
    raising = tmp_path / "raises.jinja"
    raising.write_text("{{ raise_exception('only user turns, please') }}")
    with pytest.raises(UserError, match=r"chat template .*raises\.jinja failed to render: only user turns, please"):
        resolve_template(ChatOptions(template=str(raising)), Recorder()).render([{"role": "user", "content": "x"}])
    with pytest.raises(UserError, match=r"chat\.template=.*missing\.jinja: cannot read it"):
        resolve_template(ChatOptions(template=str(tmp_path / "missing.jinja")), Recorder())


def test_checkpoint_templates_are_found(tmp_path):
    assert checkpoint_template(tmp_path) is None
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ 'x' }}"}))
    assert checkpoint_template(tmp_path) == "{{ 'x' }}"
    (tmp_path / "chat_template.jinja").write_text("{{ 'y' }}")
    assert checkpoint_template(tmp_path) == "{{ 'y' }}"  # transformers 5 prefers the .jinja file


@pytest.mark.slow
def test_cli_chat_runs_record_the_template_and_never_share_cache(tmp_path):
    common = ["task=humaneval", "model=tiny", "limit=2", "task.max_new_tokens=4", "progress=false",
              f"cache_dir={tmp_path / 'cache'}"]
    base = run_cli(*common, f"output_dir={tmp_path / 'base'}", cwd=tmp_path)
    chat = run_cli(*common, "task.prompt=instruct", f"output_dir={tmp_path / 'chat'}", cwd=tmp_path)
    assert base.returncode == 0 and chat.returncode == 0, chat.stderr[-1500:]
    b, c = read_results(tmp_path / "base"), read_results(tmp_path / "chat")
    assert c["model"]["chat"]["end_of_turn"] == "<|im_end|>" and "chat" not in b["model"]
    assert c["model"]["fingerprint"] != b["model"]["fingerprint"]
    assert c["prompt_fingerprint"] != b["prompt_fingerprint"]
    assert c["model"]["name"] == "tiny (chat)"
    assert "Can you complete the following Python function?" in read_samples(tmp_path / "chat")[0]["prompt"]
    again = run_cli(*common, "chat.enabled=true", "chat.system=Be brief.", f"output_dir={tmp_path / 'wrapped'}",
                    cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-1500:]
    assert read_results(tmp_path / "wrapped")["model"]["chat"]["system"] == "Be brief."
    assert read_results(tmp_path / "wrapped")["requests"]["cached"] == 0
