"""The Aggregate-and-Synthesize prompt and reference injection, exactly as the MoA paper's
reference implementation does it (Wang et al. 2024, Table 1; togethercomputer/MoA ``utils.py``).

This module owns the prompt text and nothing else; the engine decides *when* to inject.
"""

from __future__ import annotations

from collections.abc import Sequence

from moakit.messages import Message, as_messages

AGGREGATE_AND_SYNTHESIZE = (
    "You have been provided with a set of responses from various open-source models to the "
    "latest user query. Your task is to synthesize these responses into a single, high-quality "
    "response. It is crucial to critically evaluate the information provided in these responses, "
    "recognizing that some of it may be biased or incorrect. Your response should not simply "
    "replicate the given answers but should offer a refined, accurate, and comprehensive reply "
    "to the instruction. Ensure your response is well-structured, coherent, and adheres to the "
    "highest standards of accuracy and reliability.\n"
    "\n"
    "Responses from models:"
)


def references_block(references: Sequence[str], prompt: str = AGGREGATE_AND_SYNTHESIZE) -> str:
    """The prompt followed by ``\\n{i}. {text}`` for each reference, numbered from 1."""
    return prompt + "".join(f"\n{i}. {text}" for i, text in enumerate(references, start=1))


def inject_references(
    messages: Sequence[Message],
    references: Sequence[str],
    prompt: str = AGGREGATE_AND_SYNTHESIZE,
) -> list[Message]:
    """Return a copy of ``messages`` carrying ``references`` in the system message.

    With no references the conversation is returned unchanged (layer 1 answers plainly). An
    existing leading system message gets the block appended after a blank line; otherwise the
    block becomes a new leading system message. The caller's list is never mutated: every layer
    must see the original conversation, not the previous layer's rewrite of it.
    """
    if not references:
        return list(messages)
    return inject_block(messages, references_block(references, prompt))


def inject_block(messages: Sequence[Message], block: str) -> list[Message]:
    """A copy of ``messages`` with an already formatted references ``block`` in the system
    message (appended after a blank line, or as a new leading system message)."""
    return _prepend_or_append_system(messages, block, append=True)


def with_system_prompt(messages: Sequence[Message], system: str | None) -> list[Message]:
    """Put a member's own system prompt in front of the conversation's (if any)."""
    if not system:
        return list(messages)
    return _prepend_or_append_system(messages, system, append=False)


def _prepend_or_append_system(
    messages: Sequence[Message], text: str, *, append: bool
) -> list[Message]:
    # Messages are immutable: the caller's list is never changed, and every layer sees the
    # original conversation, not the previous layer's rewrite of it.
    out = list(messages)
    if not all(type(m) is Message for m in out):
        out = list(as_messages(out))  # a library caller's OpenAI-style dicts
    if out and out[0].role == "system":
        old = out[0].text
        out[0] = out[0].with_text(old + "\n\n" + text if append else text + "\n\n" + old)
    else:
        out.insert(0, Message.system(text))
    return out
