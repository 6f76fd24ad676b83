"""A stack's shape before it runs: who answers in which layer, how many LLM calls, how many
serial rounds, and a rough cost when every member has prices."""

from __future__ import annotations

from typing import Any

from moakit.config import MemberSpec
from moakit.engine import Stack

# Rough sizes for the estimate: a short question, and answers of max_tokens (or this) tokens.
ESTIMATE_QUESTION_TOKENS = 100
ESTIMATE_ANSWER_TOKENS = 512


def _member(spec: MemberSpec) -> dict[str, Any]:
    return {"label": spec.display, "provider": spec.provider, "model": spec.model}


def _cost(spec: MemberSpec, prompt_tokens: int) -> float | None:
    if spec.price_in_per_mtok is None or spec.price_out_per_mtok is None:
        return None
    answer = spec.max_tokens or ESTIMATE_ANSWER_TOKENS
    return (prompt_tokens * spec.price_in_per_mtok + answer * spec.price_out_per_mtok) / 1e6


def stack_shape(stack: Stack) -> dict[str, Any]:
    """JSON for the playground: layers of members, the aggregator chain, and the estimates
    (one call per member and one aggregator call: no retries, no fallbacks)."""
    config = stack.config
    layers = [[_member(s) for s in specs] for specs in stack.layer_specs]
    aggregator, *fallbacks = stack.aggregator_specs
    costs: list[float | None] = []
    prompt = ESTIMATE_QUESTION_TOKENS
    for specs in stack.layer_specs:
        costs.extend(_cost(s, prompt) for s in specs)
        # The next layer is shown every answer of this one.
        prompt = ESTIMATE_QUESTION_TOKENS + sum(
            s.max_tokens or ESTIMATE_ANSWER_TOKENS for s in specs
        )
    costs.append(_cost(aggregator, prompt))
    known = [c for c in costs if c is not None]
    return {
        "name": config.name,
        "description": config.description,
        "layers": layers,
        "aggregator": _member(aggregator),
        "fallbacks": [_member(f) for f in fallbacks],
        "llm_calls": sum(len(layer) for layer in layers) + 1,
        "serial_rounds": len(layers) + 1,
        "estimated_cost_usd": round(sum(known), 6) if len(known) == len(costs) else None,
        "deadline_s": config.deadline_s,
    }
