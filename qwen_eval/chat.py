"""Chat templates: the text a chat model was trained to see for a conversation.

A task that asks in chat turns gives `Generate(context="", messages=(("user", "..."),), prefill=...)`;
before anything is cached, the runner renders it with the model's template into the plain context
the backend sees (`render_requests`), so a base run and a chat run never share a cache entry.

Templates, first found wins:
  1. `chat.template=FILE` (a Jinja file, as tokenizer_config.json's `chat_template` would hold);
  2. the checkpoint's own: a GGUF's `tokenizer.chat_template`, or tokenizer_config.json's
     `chat_template` / `chat_template.jinja` in a checkpoint folder;
  3. ChatML as Qwen-1's `model.chat()` writes it, for Qwen-1 checkpoints (they carry no template).
Rendering is transformers' `apply_chat_template`: a sandboxed Jinja environment with trim_blocks
and lstrip_blocks, the loopcontrols extension, its `tojson`, `raise_exception` and `strftime_now`,
and the tokenizer's bos/eos token strings as variables.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping, Sequence

from qwen_eval.errors import UserError

# Qwen-1 chat checkpoints: model.chat() builds this (qwen_generation_utils.make_context, chatml)
QWEN1_CHATML = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
QWEN1_SYSTEM = "You are a helpful assistant."
_TURN_END = re.compile(r"<\|[^|>]+\|>|</s>|<end_of_turn>|\[/INST\]")


@dataclass(frozen=True)
class ChatOptions:
    """The `chat` config block."""

    enabled: bool = False  # wrap every task's prompt in one user turn
    system: str | None = None  # a system message before the first turn
    template: str | None = None  # a Jinja file; None: the checkpoint's own
    fewshot_as_multiturn: bool = False  # each shot a user turn and an assistant turn (Task.fewshot)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> ChatOptions:
        cfg = dict(cfg or {})
        known = ("enabled", "system", "template", "fewshot_as_multiturn")
        unknown = set(cfg) - set(known)
        if unknown:
            raise UserError(f"chat.{sorted(unknown)[0]} is not a chat option; use {', '.join('chat.' + k for k in known)}")
        enabled, multiturn = cfg.get("enabled", False), cfg.get("fewshot_as_multiturn", False)
        for key, value in (("enabled", enabled), ("fewshot_as_multiturn", multiturn)):
            if not isinstance(value, bool):
                raise UserError(f"chat.{key}={value!r}: use true or false")
        if multiturn and not enabled:
            raise UserError("chat.fewshot_as_multiturn=true asks the shots as chat turns: set chat.enabled=true too")
        return cls(enabled, cfg.get("system"), cfg.get("template"), multiturn)

    def describe(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "system": self.system, "template": self.template,
                "fewshot_as_multiturn": self.fewshot_as_multiturn}


class ChatTemplate:
    def __init__(self, source: str, origin: str, *, bos_token: str | None = None, eos_token: str | None = None):
        self.source = source
        self.origin = origin  # where it came from, for error lines and results.json
        # as transformers passes the tokenizer's special tokens: only those it has
        self.special = {k: v for k, v in (("bos_token", bos_token), ("eos_token", eos_token)) if v is not None}

    @cached_property
    def _compiled(self):
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise jinja2.exceptions.TemplateError(message)

        def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
            return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
        env.filters["tojson"] = tojson
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        try:
            return env.from_string(self.source)
        except jinja2.TemplateSyntaxError as e:
            raise UserError(f"chat template {self.origin}: line {e.lineno}: {e.message}") from None

    def render(self, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = True) -> str:
        import jinja2

        try:
            return self._compiled.render(messages=[dict(m) for m in messages], tools=None, documents=None,
                                         add_generation_prompt=add_generation_prompt, **self.special)
        except jinja2.TemplateError as e:
            raise UserError(f"chat template {self.origin} failed to render: {e}") from None

    @cached_property
    def end_of_turn(self) -> str | None:
        """The marker the template writes after an assistant turn (`<|im_end|>` for ChatML)."""
        probe = "\u2063reply\u2063"
        text = self.render([{"role": "user", "content": "hi"}, {"role": "assistant", "content": probe}],
                           add_generation_prompt=False)
        after = text[text.rfind(probe) + len(probe):] if probe in text else ""
        found = _TURN_END.search(after)
        return found.group(0) if found else None


def read_template_file(path: str | Path) -> str:
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise UserError(f"chat.template={path}: cannot read it ({e.strerror}); give a Jinja template file") from None
    if p.suffix == ".json":  # a tokenizer_config.json
        try:
            text = json.loads(text)["chat_template"]
        except (ValueError, KeyError, TypeError):
            raise UserError(f"chat.template={path}: a .json file must be a tokenizer_config.json with a chat_template") from None
    return text


def checkpoint_template(directory: Path) -> str | None:
    """The template a Hugging Face checkpoint folder ships, if any."""
    jinja_file = directory / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    config = directory / "tokenizer_config.json"
    if config.is_file():
        try:
            template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
        except ValueError:
            raise UserError(f"{config} is not valid JSON; is it the checkpoint's own?") from None
        if isinstance(template, list):  # named templates: the default one
            template = next((t.get("template") for t in template if t.get("name") == "default"), None)
        return template
    return None


def resolve_template(options: ChatOptions, backend: Any) -> ChatTemplate:
    """The template for chat requests on `backend` (see the module docstring for the order)."""
    special = backend.special_tokens()
    if options.template:
        return ChatTemplate(read_template_file(options.template), str(options.template), **special)
    own = backend.chat_template
    if own:
        return ChatTemplate(own, f"of {backend.path or backend.name}", **special)
    if backend.checkpoint_format in ("qwen", "tiny"):  # Qwen-1 vocabulary, no template
        return ChatTemplate(QWEN1_CHATML, "Qwen-1 ChatML (built in)", **special)
    raise UserError(f"model {backend.name} has no chat template (its checkpoint carries none); give "
                    f"one with chat.template=FILE (a Jinja template, or a tokenizer_config.json that has one)")


def server_turns(requests: Sequence[Any], options: ChatOptions) -> list[Any]:
    """Chat requests for a backend that renders turns itself (model=openai with
    model.chat_completions=true): the system prompt added, `chat.enabled` turning a plain context
    into one user turn; nothing rendered here."""
    from qwen_eval.requests import Choice, Generate

    out = []
    for r in requests:
        messages = tuple(getattr(r, "messages", ()) or ())
        if not messages and options.enabled and isinstance(r, (Generate, Choice)) and r.context:
            messages = (("user", r.context),)
        if messages and options.system is not None and messages[0][0] != "system":
            messages = (("system", options.system),) + messages
        out.append(replace(r, context="" if messages else r.context, messages=messages) if messages else r)
    return out


def render_requests(requests: Sequence[Any], template: ChatTemplate | None, options: ChatOptions) -> list[Any]:
    """Chat requests as the plain requests the backend answers: messages rendered with the
    template, the task's prefill appended, generation stopped at the template's end of turn.
    With `chat.enabled`, a request without messages becomes one user turn of its context."""
    from qwen_eval.requests import Choice, Generate

    out = []
    for r in requests:
        messages = getattr(r, "messages", None)
        if not messages and options.enabled and isinstance(r, (Generate, Choice)) and r.context:
            messages = (("user", r.context),)
        if not messages:
            out.append(r)
            continue
        if template is None:
            raise UserError("a chat request reached a model without a chat template; give chat.template=FILE")
        turns = [{"role": role, "content": content} for role, content in messages]
        if options.system is not None and turns[0]["role"] != "system":
            turns.insert(0, {"role": "system", "content": options.system})
        context = template.render(turns) + (getattr(r, "prefill", "") or "")
        if isinstance(r, Generate):
            stop = r.stop + ((template.end_of_turn,) if template.end_of_turn and template.end_of_turn not in r.stop else ())
            out.append(replace(r, context=context, messages=(), prefill="", stop=stop))
        else:
            out.append(replace(r, context=context))
    return out


class ChatBackend:
    """A backend whose chat requests are rendered with `template` first (see render_requests).
    Its fingerprint covers the template and the system prompt, and its name says "chat", so chat
    answers never meet base answers in the cache or in a table."""

    def __init__(self, inner: Any, template: ChatTemplate | None, options: ChatOptions):
        self.inner = inner
        self.template = template
        self.options = options
        self.name = f"{inner.name} (chat)"
        self.max_length = inner.max_length
        import hashlib

        digest = hashlib.sha256(json.dumps([inner.fingerprint, template.source if template else None, options.system,
                                            options.enabled, options.fewshot_as_multiturn]).encode()).hexdigest()
        self.fingerprint = digest[:16]

    def __getattr__(self, name: str) -> Any:  # dtype, device, path, engine, ...
        return getattr(self.inner, name)

    @property
    def tokens_processed(self) -> int:
        return self.inner.tokens_processed

    def describe(self) -> dict[str, Any]:
        chat = {**self.options.describe(), "template_origin": self.template.origin if self.template else None,
                "end_of_turn": self.template.end_of_turn if self.template else None}
        return {**self.inner.describe(), "name": self.name, "fingerprint": self.fingerprint, "chat": chat}

    def _rendered(self, requests):
        if getattr(self.inner, "renders_chat", False):
            return server_turns(requests, self.options)
        return render_requests(requests, self.template, self.options)

    def choice(self, requests):
        return self.inner.choice(self._rendered(requests))

    def generate(self, requests):
        return self.inner.generate(self._rendered(requests))

    @property
    def streams(self) -> frozenset[str]:
        return self.inner.streams

    def answer_streaming(self, kind, requests, on_done):  # explicit: __getattr__ would skip the template
        if kind != "rolling":
            requests = self._rendered(requests)
        return self.inner.answer_streaming(kind, requests, on_done)

    def generate_streaming(self, requests, on_done):
        return self.answer_streaming("generate", requests, on_done)

    def rolling(self, requests):
        return self.inner.rolling(requests)


def wrap(backend: Any, options: ChatOptions, task: Any) -> Any:
    """`backend` as it must answer `task`: wrapped when the task asks in chat turns or
    chat.enabled is set (the template is resolved now, so a missing one fails before any work)."""
    if not (options.enabled or task.uses_chat):
        return backend
    if getattr(backend, "renders_chat", False):  # the server applies its own template
        return ChatBackend(backend, None, options)
    return ChatBackend(backend, resolve_template(options, backend), options)
