"""Prompt construction for base models (plain template) and instruct models (chat template).

The base-model template is the one used by the Qwen2.5-Math / SimpleRL-Zoo evaluation harnesses::

    {problem}
    Please reason step by step, and put your final answer within \\boxed{}.

For instruct models, ``style="chat"`` sends the same text as a single user message through the
tokenizer's own chat template with ``add_generation_prompt=True``. A benchmark may carry its own
template (the synthetic set uses a bare ``"{problem}\\n"`` so that a character-level model sees only
its small alphabet); pass it as ``template=``.
"""

from __future__ import annotations

from typing import Any

from clipbench.benchmarks.problem import Problem

INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
BASE_TEMPLATE = "{problem}\n" + INSTRUCTION.replace("{}", "{{}}")
STYLES = ("base", "chat")


def render(problem: Problem | str, template: str = BASE_TEMPLATE) -> str:
    """Fill ``template`` (a ``str.format`` string with one ``{problem}`` field) with the problem text."""
    text = problem.problem if isinstance(problem, Problem) else problem
    return template.format(problem=text)


def build_prompt(
    problem: Problem | str,
    tokenizer: Any = None,
    style: str = "base",
    template: str = BASE_TEMPLATE,
) -> str:
    """The prompt string for one problem.

    ``style="base"``: the filled template. ``style="chat"``: the filled template as the user turn of
    ``tokenizer.apply_chat_template(..., add_generation_prompt=True, tokenize=False)``.
    """
    if style not in STYLES:
        raise ValueError(f"unknown prompt style {style!r}; known: {list(STYLES)}")
    content = render(problem, template)
    if style == "base":
        return content
    if tokenizer is None or not hasattr(tokenizer, "apply_chat_template"):
        raise ValueError("style='chat' needs a tokenizer with apply_chat_template")
    messages = [{"role": "user", "content": content}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
