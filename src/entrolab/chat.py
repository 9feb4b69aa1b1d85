"""Prompts through a model's chat template: a task whose ``prompt`` is rendered with ``apply_chat_template``.

``--chat-template auto`` (the default) renders every prompt as one user message (after an optional system
prompt) with ``add_generation_prompt=True`` when the tokenizer carries a chat template, and leaves prompts as
they are when it has none (the tiny models); ``none`` never renders. The verifier, the splits and the
demonstrations are the task's own: only the text the model is conditioned on changes.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from entrolab.tasks import Example, Task

ChatTemplateMode = Literal["auto", "none"]
CHAT_TEMPLATE_MODES: tuple[str, ...] = get_args(ChatTemplateMode)


class ChatPrompts:
    """``task`` with its prompts rendered through ``tokenizer``'s chat template; everything else delegated."""

    def __init__(self, task: Task, tokenizer: Any, system_prompt: str | None = None) -> None:
        self._task = task
        self._tokenizer = tokenizer
        self._system = system_prompt
        bos = getattr(tokenizer, "bos_token", None)
        adds_bos = bos is not None and tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]
        self._strip = bos if adds_bos else None  # the tokenizer adds BOS itself: the rendered one would double it

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # not yet set (unpickling) or private: never delegated
            raise AttributeError(name)
        return getattr(self._task, name)

    def __repr__(self) -> str:
        return f"ChatPrompts({self._task!r})"

    def prompt(self, example: Example) -> str:
        messages = [{"role": "system", "content": self._system}] if self._system else []
        messages.append({"role": "user", "content": self._task.prompt(example)})
        try:
            text = self._tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as e:  # jinja errors, a template that rejects a system message, ...
            raise ValueError(f"the tokenizer's chat template failed to render a prompt of {example.id}: {e}") from e
        if self._strip and text.startswith(self._strip):
            text = text[len(self._strip) :]
        return text


def with_chat_template(task: Task, tokenizer: Any, mode: str = "auto", system_prompt: str | None = None) -> Task:
    """The task as the model should see it: rendered through the chat template when ``mode="auto"`` and the
    tokenizer has one, else unchanged. A template that fails to render fails here, on the first train prompt."""
    if mode not in CHAT_TEMPLATE_MODES:
        raise ValueError(f"chat_template must be one of {list(CHAT_TEMPLATE_MODES)}, got {mode!r}")
    if mode == "none" or not getattr(tokenizer, "chat_template", None):
        if system_prompt and mode != "none":
            raise ValueError("--system-prompt needs a tokenizer with a chat template (this one has none)")
        return task
    wrapped = ChatPrompts(task, tokenizer, system_prompt)
    if task.train:
        wrapped.prompt(task.train[0])
    return wrapped  # type: ignore[return-value]


__all__ = ["CHAT_TEMPLATE_MODES", "ChatPrompts", "ChatTemplateMode", "with_chat_template"]
