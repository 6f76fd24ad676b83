"""One sampler chain per sequence, built like llama-cpp-python's ``Llama._init_sampler``.

Order: repetition penalties (presence / frequency from the request), an optional grammar
(``response_format``, or the tools), then greedy at temperature 0, else top-k → top-p → min-p →
temperature → a seeded draw. Each sequence owns its chain, so seeds, penalty histories and
grammars never mix between the sequences of one batch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from moakit.errors import ConfigError

DEFAULT_TEMPERATURE = 0.7
DEFAULT_TOP_P = 0.95
TOP_K = 40
MIN_P = 0.05
REPEAT_PENALTY = 1.0  # what create_chat_completion applies by default (none)
PENALTY_LAST_N = 64
DEFAULT_SEED = 0xFFFFFFFF  # LLAMA_DEFAULT_SEED: llama.cpp picks a random seed


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = DEFAULT_TOP_P
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int = DEFAULT_SEED
    grammar: str | None = None  # GBNF text with a ``root`` rule
    grammar_source: str = "response_format"  # the request field it comes from (for errors)


def grammar_for(response_format: Mapping[str, Any] | None) -> str | None:
    """GBNF for OpenAI's ``response_format``; ``None`` for free text."""
    if response_format is None:
        return None
    from llama_cpp import llama_grammar

    kind = response_format.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return str(llama_grammar.JSON_GBNF)
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        if not isinstance(schema, Mapping):
            raise ConfigError(
                "response_format.json_schema.schema must be a JSON schema object",
                field="response_format.json_schema.schema",
            )
        _reject_remote_refs(schema)
        try:
            return str(llama_grammar.json_schema_to_gbnf(json.dumps(schema)))
        except Exception as exc:  # the converter raises bare built-ins for unsupported schemas
            raise ConfigError(
                f"response_format.json_schema.schema cannot be enforced: {exc}",
                field="response_format.json_schema.schema",
            ) from None
    raise ConfigError(
        f"response_format.type {kind!r} is not supported (use text, json_object or json_schema)",
        field="response_format.type",
    )


def _reject_remote_refs(node: Any) -> None:
    """A request's schema is untrusted: only local ``#/...`` references. (The converter's own
    refusal to fetch is an ``assert``, which ``python -O`` removes.)"""
    if isinstance(node, Mapping):
        ref = node.get("$ref")
        if ref is not None and not (isinstance(ref, str) and ref.startswith("#")):
            raise ConfigError(
                f"response_format.json_schema.schema: only local $ref ('#/...') are allowed, "
                f"not {str(ref)[:80]!r}",
                field="response_format.json_schema.schema",
            )
        for value in node.values():
            _reject_remote_refs(value)
    elif isinstance(node, list):
        for value in node:
            _reject_remote_refs(value)


def build_chain(params: SamplingParams, model: Any) -> Any:
    """A ``llama_cpp._internals.LlamaSampler`` (a llama_sampler chain); the caller closes it."""
    import llama_cpp
    from llama_cpp import _internals

    chain: Any = _internals.LlamaSampler()  # type: ignore[no-untyped-call]
    try:
        chain.add_penalties(
            n_vocab=model.n_vocab(),
            penalty_last_n=PENALTY_LAST_N,
            penalty_repeat=REPEAT_PENALTY,
            penalty_freq=params.frequency_penalty,
            penalty_present=params.presence_penalty,
        )
        if params.grammar is not None:
            grammar = llama_cpp.llama_sampler_init_grammar(
                model.vocab, params.grammar.encode("utf-8"), b"root"
            )
            if not grammar:
                raise ConfigError(
                    f"the {params.grammar_source} could not be compiled into a grammar",
                    field=params.grammar_source,
                )
            llama_cpp.llama_sampler_chain_add(chain.sampler, grammar)
        if params.temperature <= 0.0:
            chain.add_greedy()
        else:
            chain.add_top_k(TOP_K)
            chain.add_top_p(params.top_p, 1)
            chain.add_min_p(MIN_P, 1)
            chain.add_temp(params.temperature)
            chain.add_dist(params.seed)
    except BaseException:
        chain.close()
        raise
    return chain
