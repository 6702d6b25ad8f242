"""Qwen2.5-Coder's instruct evaluation on EvalPlus (qwencoder-eval/instruct/eval_plus), shared by
HumanEval (`task.prompt=instruct`) and MBPP+: the request and the raw sample.

Request (its `ChatML` decoder in model.py, rendered here with the checkpoint's chat template):
  system     INSTRUCT_SYSTEM
  user       "Can you complete the following Python function?\\n```python\\n" + prompt.strip() + "\\n```\\n"
  assistant  pre-filled with "```python\\n", which the model continues
Greedy; stop strings INSTRUCT_STOPS (evalplus's EOS list, then the decoder's "\\n```"; the harness adds
the template's end of turn); vLLM with max_tokens=2048 and max_model_len=1536, i.e. at most 2048 new
tokens and at most 1536 tokens of prompt and reply together (Generate.max_new_tokens, max_length).

Raw sample (generate.py): the reply with each tab replaced by four spaces, then, if it holds "```",
what precedes the first "```". Qwen then runs `evalplus.sanitize` over the samples and reports the
sanitized scores (tasks/evalplus_sanitize.py); the raw ones are evaluated too.
"""

from __future__ import annotations

INSTRUCT_SYSTEM = "You are an intelligent programming assistant to produce Python algorithmic solutions"
INSTRUCT_USER = "Can you complete the following Python function?\n```python\n{prompt}\n```\n"
INSTRUCT_PREFILL = "```python\n"
# evalplus's EOS list (with "\n#", as Qwen2.5-Coder's copy has it), then its chat decoder's "\n```"
INSTRUCT_STOPS = ("<|endoftext|>", "<|endofmask|>", "</s>", "\nif __name__", "\ndef main(", "\nprint(", "\n#",
                  "\n```")
INSTRUCT_MAX_NEW_TOKENS = 2048  # vLLM max_tokens
INSTRUCT_MAX_LENGTH = 1536  # vLLM max_model_len: prompt + reply


def instruct_messages(prompt: str) -> tuple[tuple[str, str], ...]:
    """The system and user turns for a dataset prompt (stripped, as generate.py does)."""
    return (("system", INSTRUCT_SYSTEM), ("user", INSTRUCT_USER.format(prompt=prompt.strip())))


def raw_solution(reply: str) -> str:
    """generate.py's post-processing: tabs become four spaces, and a fence ends the code."""
    code = reply.replace("\t", "    ")
    if "```" in code:
        code = code.split("```")[0]
    return code
