"""chat.fewshot_as_multiturn: each task's k-shot prompt split into its parts (Task.fewshot) rebuilds
the prompt byte for byte, and asked as chat turns it becomes system (description), user/assistant
per shot, then the question, the way lm-eval's --fewshot_as_multiturn builds them. Also Qwen's
chat GSM8K in its --use-fewshot mode (task.prompt=qwen_chat_fewshot)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from cli_helpers import read_results, read_samples, run_cli
from qwen_eval.chat import QWEN1_CHATML, ChatOptions, ChatTemplate, render_requests
from qwen_eval.errors import UserError
from qwen_eval.requests import Choice, Generate
from qwen_eval.task import DataSpec, FewShot
from qwen_eval.tasks.bbh import BBH, TASKS, BBHDoc
from qwen_eval.tasks.ceval import CEval
from qwen_eval.tasks.cmmlu import CMMLU
from qwen_eval.tasks.gsm8k import GSM8K
from qwen_eval.tasks.hendrycks_math import MATH
from qwen_eval.tasks.humaneval import HumanEval
from qwen_eval.tasks.mbpp import MBPP
from qwen_eval.tasks.mmlu import MMLU

MC = Path(__file__).parent / "fixtures" / "mc"
CHATML = ChatTemplate(QWEN1_CHATML, "Qwen-1 ChatML")


def _docs(task, spec: DataSpec, n: int = 3):
    return task.load(spec)[:n]


CASES = [
    (MMLU, DataSpec("local", str(MC / "mmlu")), (0, 1, 5)),
    (CEval, DataSpec("local", str(MC / "ceval")), (0, 2, 5)),
    (CMMLU, DataSpec("local", str(MC / "cmmlu")), (0, 5)),
    (GSM8K, DataSpec("sample"), (0, 1, 8)),
    (MATH, DataSpec("sample"), (0, 4)),
    (MBPP, DataSpec("sample"), (0, 3)),
]


@pytest.mark.parametrize("cls, spec, shot_counts", CASES, ids=[c[0].__name__ for c in CASES])
def test_parts_rebuild_the_prompt_byte_for_byte(cls, spec, shot_counts):
    for shots in shot_counts:
        task = cls(shots=shots)
        for doc in _docs(task, spec):
            parts = task.fewshot(doc)
            (request,) = task.requests(doc)
            assert len(parts.shots) == shots
            assert parts.text() == request.context == task.prompt(doc)


def test_every_bbh_prompt_file_splits_into_its_examples():
    task = BBH()
    for name in TASKS:
        doc = BBHDoc(f"{name}/0", name, "a question", "x")
        parts = task.fewshot(doc)
        assert parts.text() == task.prompt(doc), name
        assert len(parts.shots) == 3 and parts.description.strip() and "\n\nQ: " not in parts.description
        assert all(q.startswith("Q: ") and q.endswith("A: Let's think step by step.") for q, _ in parts.shots)
        assert all("So the answer is" in a and not a.startswith("\n") for _, a in parts.shots)


def test_messages_are_lm_evals_turns():
    parts = FewShot("About X.\n\n", (("Q1", "A1"), ("Q2", "A2")), "Q3")
    assert parts.messages() == (("system", "About X.\n\n"), ("user", "Q1"), ("assistant", "A1"),
                                ("user", "Q2"), ("assistant", "A2"), ("user", "Q3"))
    # chat.system and the description share the system turn, joined by the shot delimiter
    assert parts.messages("Be brief.")[0] == ("system", "Be brief.\n\nAbout X.\n\n")
    assert FewShot("", (("Q1", "A1"),), "Q2").messages("Sys")[:2] == (("system", "Sys"), ("user", "Q1"))
    assert FewShot("", (), "Q").messages() == (("user", "Q"),)


def test_multiturn_mmlu_renders_each_shot_as_a_turn():
    task = MMLU(shots=2)
    task.fewshot_as_multiturn = True
    doc = task.load(DataSpec("local", str(MC / "mmlu")))[0]
    (request,) = task.requests_for(doc)
    assert isinstance(request, Choice) and request.context == "" and request.continuations == (" A", " B", " C", " D")
    (rendered,) = render_requests([request], CHATML, ChatOptions(enabled=True, fewshot_as_multiturn=True))
    s1, s2 = doc.shots
    header = f"The following are multiple choice questions (with answers) about {doc.subject.replace('_', ' ')}.\n\n"
    assert rendered.context.startswith(f"<|im_start|>system\n{header}<|im_end|>\n<|im_start|>user\nQuestion: {s1.text}\n")
    assert f"\nAnswer:<|im_end|>\n<|im_start|>assistant\n{s1.answer}<|im_end|>\n<|im_start|>user\nQuestion: {s2.text}\n" \
        in rendered.context
    assert rendered.context.endswith(f"D. {doc.question.choices[3]}\nAnswer:<|im_end|>\n<|im_start|>assistant\n")
    assert rendered.context.count("<|im_start|>user\n") == 3 and rendered.context.count("<|im_start|>assistant\n") == 3


def test_multiturn_generation_keeps_the_tasks_stops_and_adds_the_end_of_turn():
    task = GSM8K(shots=2)
    task.fewshot_as_multiturn = True
    doc = task.load(DataSpec("sample"))[0]
    (request,) = task.requests_for(doc)
    (rendered,) = render_requests([request], CHATML, ChatOptions(enabled=True, fewshot_as_multiturn=True))
    assert rendered.stop == task.requests(doc)[0].stop + ("<|im_end|>",)
    assert rendered.context.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                                       "Question: ")
    assert rendered.context.endswith(f"Question: {doc.question}\nLet's think step by step\n<|im_end|>\n"
                                     "<|im_start|>assistant\n")


def test_a_task_without_shots_in_its_prompt_says_so():
    task = HumanEval()
    task.fewshot_as_multiturn = True
    doc = task.load(DataSpec("sample"))[0]
    with pytest.raises(UserError, match="humaneval has no few-shot text prompt"):
        task.requests_for(doc)
    with pytest.raises(UserError, match="set chat.enabled=true too"):
        ChatOptions.from_config({"fewshot_as_multiturn": True})
    with pytest.raises(UserError, match="chat.fewshot_as_multiturn='yes': use true or false"):
        ChatOptions.from_config({"enabled": True, "fewshot_as_multiturn": "yes"})


def test_qwen_chat_fewshot_is_the_scripts_use_fewshot_prompt():
    task = GSM8K({"prompt": "qwen_chat_fewshot"})
    assert task.shots == 4 and task.uses_chat
    doc = task.load(DataSpec("sample"))[0]
    (request,) = task.requests(doc)
    ((role, content),) = request.messages
    # the script's four examples, as its doc_to_text concatenates them (sha256 of those bytes)
    shots, question = content[:4573], content[4573:]
    assert hashlib.sha256(shots.encode()).hexdigest() == "25974f0a5d980c8e6b432422e959cb3293b6d715a99a90d1a4c8ab1ae207c54f"
    assert role == "user" and shots.startswith("Question: Angelo and Melanie") and shots.endswith("The answer is 146\n\n")
    assert shots.count("\nLet's think step by step\n") == 4
    assert question == f"Question: {doc.question}\nLet's think step by step"
    (rendered,) = render_requests([request], CHATML, ChatOptions())
    assert rendered.stop == ("<|im_end|>",) and rendered.context.endswith("step by step<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.slow
def test_cli_multiturn_run_is_recorded_and_kept_apart(tmp_path):
    common = ["task=mmlu", "model=tiny", "limit=1", "shots=2", "progress=false",
              f"data.path={MC / 'mmlu'}", f"cache_dir={tmp_path / 'cache'}", "chat.enabled=true"]
    single = run_cli(*common, f"output_dir={tmp_path / 'single'}", cwd=tmp_path)
    multi = run_cli(*common, "chat.fewshot_as_multiturn=true", f"output_dir={tmp_path / 'multi'}", cwd=tmp_path)
    assert single.returncode == 0 and multi.returncode == 0, multi.stderr[-1500:]
    s, m = read_results(tmp_path / "single"), read_results(tmp_path / "multi")
    assert m["model"]["chat"]["fewshot_as_multiturn"] is True and s["model"]["chat"]["fewshot_as_multiturn"] is False
    assert m["model"]["fingerprint"] != s["model"]["fingerprint"] and m["prompt_fingerprint"] != s["prompt_fingerprint"]
    assert m["requests"]["cached"] == 0
    bad = run_cli("task=mmlu", "model=tiny", "limit=1", "chat.fewshot_as_multiturn=true", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].endswith("set chat.enabled=true too")
