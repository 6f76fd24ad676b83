"""A llama.cpp grammar for Qwen2.5's tool calls, built from the tools' JSON schemas.

Qwen's chat template asks for each call as ``<tool_call>\\n{"name": <function-name>,
"arguments": <args-json-object>}\\n</tool_call>``, calls one after another on their own lines.
The grammar admits that shape with ``name`` one of the offered tools and ``arguments`` an object
valid for THAT tool's schema (one alternative per tool, so a name never pairs with another
tool's arguments). It also admits the same objects bare, without the tags: the embedded
Qwen2.5-Coder-0.5B almost never writes ``<tool_call>`` (its first-token probability is ~0 after
the template's tools prompt) but starts a call as a bare ``{"``, in a code fence, or copies the
``<tools>`` block. Taking the bare form as a call, and not letting free text start with ``{``,
``<`` or a fence, turns those attempts into schema-valid calls, while an answer in words stays
as it was. (Measured on that model: banning only a ```` ```json ```` start, it wrote
```` ```xml ````; banning only ``<tool_call>``, a MoA aggregator wrote ``<tools>`` text.)

llama-cpp-python's JSON-schema converter writes each tool's rules; they are renamed under a
prefix of their own, because the converter names a ``$ref``'s rule by the last part of its path,
and two tools that both define ``$defs/Item`` differently would otherwise share one rule.

``tool_choice`` picks the root: "required" or a forced tool: calls only; "auto": calls, or free
text that does not start like a call.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from moakit.errors import ConfigError

CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"
# What free text may not start with when tools are offered (each begins a call, or the small
# model's attempt at one). A longer start only blocks text that begins with all of it.
_CALL_STARTS = ("{", "<", "```")

_RULE_NAME = re.compile(r"[A-Za-z0-9-]+")


def tool_call_grammar(
    tools: Sequence[tuple[str, Mapping[str, Any]]],
    *,
    parallel: bool = True,
    allow_text: bool = False,
) -> str:
    """GBNF (``root`` rule) for one call (``parallel`` false) or one or more calls, each to one
    of ``tools`` ((name, parameters schema) pairs) with arguments valid for that tool's schema;
    with ``allow_text``, free text is the other choice."""
    if not tools:
        raise ValueError("a tool-call grammar needs at least one tool")
    lines: list[str] = []
    alternatives: list[str] = []
    for index, (name, schema) in enumerate(tools):
        prefix = f"t{index}-"
        arguments = _namespaced_rules(_schema_grammar(name, schema), prefix, lines)
        head = json.dumps(f'{{"name": {json.dumps(name)}, "arguments": ')
        lines.append(f'{prefix}call ::= {head} {arguments} "}}"')
        alternatives.append(f"{prefix}call")
    lines.append(f"call-object ::= {' | '.join(alternatives)}")
    lines.append(f'tagged-call ::= "{CALL_OPEN}\\n" call-object "\\n{CALL_CLOSE}"')
    # Parallel calls follow one another on their own lines, as the template renders them.
    forms = ("tagged-call", "call-object")
    roots = [f'( {one} ( "\\n" {one} )* )' if parallel else one for one in forms]
    if allow_text:
        lines.append(f"text ::= {_text_rule()}")
        lines.append("any-text ::= [^\\x00]*")
        roots.append("text")
    lines.append(f"root ::= {' | '.join(roots)}")
    return "\n".join(lines)


def _text_rule() -> str:
    """Text that is not empty and does not start with one of ``_CALL_STARTS``: it may stop
    anywhere inside such a start, and continues freely once it has left every one."""
    firsts = sorted({start[0] for start in _CALL_STARTS})
    options = [f"[^{_class_escape(''.join(firsts))}] any-text"]
    for first in firsts:
        tails = [start[1:] for start in _CALL_STARTS if start[0] == first]
        if all(tails):  # only a longer start is blocked: the first character alone is text
            (tail,) = tails
            options.append(f'"{_gbnf_escape(first)}" {_diverging(tail)}')
    return " | ".join(options)


def _diverging(literal: str) -> str:
    """A prefix of ``literal`` (possibly empty) that ends the text, or one that leaves it at
    some character and then goes on freely."""
    head, rest = literal[0], literal[1:]
    inner = f"[^{_class_escape(head)}] any-text"
    if rest:
        inner += f' | "{_gbnf_escape(head)}" {_diverging(rest)}'
    return f"( {inner} )?"


def _class_escape(chars: str) -> str:
    return "".join("\\" + c if c in "\\]^-[" else c for c in chars)


def _schema_grammar(name: str, schema: Mapping[str, Any]) -> str:
    from llama_cpp import llama_grammar

    _reject_remote_refs(schema, name)
    try:
        return str(llama_grammar.json_schema_to_gbnf(json.dumps(schema)))
    except Exception as exc:  # the converter raises bare built-ins for unsupported schemas
        raise ConfigError(
            f"the parameters schema of tool {name!r} cannot be enforced: {exc}", field="tools"
        ) from None


def _namespaced_rules(gbnf: str, prefix: str, out: list[str]) -> str:
    """Append ``gbnf``'s rules to ``out``, every rule name prefixed; return the new root's
    name."""
    rules: dict[str, str] = {}
    for line in gbnf.splitlines():
        if not line.strip():
            continue
        name, sep, body = line.partition(" ::= ")
        if not sep:
            raise ValueError(f"unexpected grammar line from the schema converter: {line!r}")
        rules[name.strip()] = body
    for name, body in rules.items():
        out.append(f"{prefix}{name} ::= {_rename(body, rules, prefix)}")
    return f"{prefix}root"


def _rename(body: str, names: Mapping[str, str], prefix: str) -> str:
    """``body`` with each reference to a rule in ``names`` prefixed; string literals, character
    classes and ``{m,n}`` repetition counts are copied as they are."""
    out: list[str] = []
    i, n = 0, len(body)
    while i < n:
        c = body[i]
        if c in '"[{':
            end = _closing(body, i, {'"': '"', "[": "]", "{": "}"}[c])
            out.append(body[i:end])
            i = end
            continue
        match = _RULE_NAME.match(body, i)
        if match:
            word = match.group()
            out.append(prefix + word if word in names else word)
            i = match.end()
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _closing(body: str, start: int, close: str) -> int:
    """The index just past the ``close`` that ends the literal or class opened at ``start``
    (backslash escapes skipped)."""
    i = start + 1
    while i < len(body):
        if body[i] == "\\":
            i += 2
            continue
        if body[i] == close:
            return i + 1
        i += 1
    raise ValueError(f"unterminated {body[start]!r} in a converted grammar")


def _gbnf_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _reject_remote_refs(node: Any, tool: str) -> None:
    """A tool's schema comes from the request: only local ``#/...`` references (the converter's
    own refusal to fetch is an ``assert``, which ``python -O`` removes)."""
    if isinstance(node, Mapping):
        ref = node.get("$ref")
        if ref is not None and not (isinstance(ref, str) and ref.startswith("#")):
            raise ConfigError(
                f"tool {tool!r}: only local $ref ('#/...') are allowed in parameters, "
                f"not {str(ref)[:80]!r}",
                field="tools",
            )
        for value in node.values():
            _reject_remote_refs(value, tool)
    elif isinstance(node, list):
        for value in node:
            _reject_remote_refs(value, tool)
