"""Conversation → prompt tokens, exactly as ``create_chat_completion`` builds them.

The choice of template mirrors ``Llama.__init__``: a GGUF whose template is one of the library's
known ones uses that named format; any other embedded template is rendered with the library's own
sandboxed ``Jinja2ChatFormatter``; a file without a template falls back to ``llama-2``. The
tokenization mirrors ``chat_formatter_to_chat_completion_handler`` (special tokens parsed, BOS
added unless the template emitted it). A test compares the result with ``create_chat_completion``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from moakit.errors import ConfigError
from moakit.messages import Message, ToolSpec
from moakit.models.local.chat_messages import template_messages, with_tools_block

# A template that reads a ``tools`` variable renders tools, calls and results itself (Qwen2.5's).
_TAKES_TOOLS = re.compile(r"\btools\b")


@dataclass(frozen=True)
class Prompt:
    tokens: list[int]
    stop: list[str]  # stop strings the template implies (its end-of-turn text)


class ChatTemplate:
    def __init__(self, model: Any) -> None:
        from llama_cpp import llama_chat_format as chat_format

        self._model = model
        meta: dict[str, str] = model.metadata()
        eos_id, bos_id = model.token_eos(), model.token_bos()
        eos = model.token_get_text(eos_id) if eos_id != -1 else ""
        bos = model.token_get_text(bos_id) if bos_id != -1 else ""
        named = {
            "chatml": chat_format.format_chatml,
            "mistral-instruct": chat_format.format_mistral_instruct,
            "llama-3": chat_format.format_llama3,
        }
        guessed = chat_format.guess_chat_format_from_gguf_metadata(meta)
        template = meta.get("tokenizer.chat_template")
        self._formatter: Any
        self.native_tools = False
        if guessed in named:
            self._formatter = named[guessed]
        elif template is not None:
            self._formatter = chat_format.Jinja2ChatFormatter(
                template=template, eos_token=eos, bos_token=bos, stop_token_ids=[eos_id]
            )
            self.native_tools = bool(_TAKES_TOOLS.search(template))
        else:
            self._formatter = chat_format.format_llama2

    def render(self, messages: Sequence[Message], tools: Sequence[ToolSpec] = ()) -> Prompt:
        """The prompt of ``messages``, with ``tools`` offered (none: the plain prompt)."""
        dicts = template_messages(messages, native_tools=self.native_tools)
        extra: dict[str, Any] = {}
        if tools and self.native_tools:
            extra["tools"] = [tool.to_openai() for tool in tools]
        elif tools:
            dicts = with_tools_block(dicts, tools)
        try:
            result = self._formatter(messages=dicts, **extra)
        except Exception as exc:  # a template's raise_exception(), or a missing key
            raise ConfigError(
                f"the model's chat template rejected the conversation: {exc}", field="messages"
            ) from None
        tokens = self._model.tokenize(
            result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True
        )
        stop = result.stop if isinstance(result.stop, list) else [result.stop]
        return Prompt(tokens=list(tokens), stop=[s for s in stop if s])
