"""Per-query budgets (``BudgetConfig``): calls, tokens, dollars and latency.

The ledger admits a call only if what it could cost, plus what the final aggregator could
cost, fits what is left: the aggregator's share is reserved from the first call on, so a
budget never leaves a query with references and nobody to write the answer. A call's worst
case is its prompt (estimated high) plus its ``max_tokens``; what a finished attempt really
used replaces its estimate. Members the budget cannot afford are not started (a ``budget``
decision names them); a retry the budget cannot afford is not made.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from moakit.config import ResolvedMember
from moakit.messages import ChatRequest, Message, Usage
from moakit.policies import BudgetConfig

CHARS_PER_TOKEN = 3
# An aggregator squeezed by the budget still gets at least this many tokens to answer in.
MIN_ANSWER_TOKENS = 16
# Tokens a formatter adds around one reference (numbering, label, fence lines), at most.
REFERENCE_FRAMING = 40


@dataclass(frozen=True)
class Cost:
    calls: int = 0
    tokens: int = 0
    usd: float = 0.0

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.calls + other.calls, self.tokens + other.tokens, self.usd + other.usd)


def prompt_tokens(messages: Sequence[Message]) -> int:
    return math.ceil(sum(len(m.text) + 8 for m in messages) / CHARS_PER_TOKEN)


def _usd(spec: ResolvedMember, prompt: int, completion: int) -> float:
    p_in, p_out = spec.price_in_per_mtok or 0.0, spec.price_out_per_mtok or 0.0
    return (prompt * p_in + completion * p_out) / 1e6


class Ledger:
    """What a query has spent and set aside, against its ``limits``."""

    def __init__(
        self, limits: BudgetConfig, conversation: Sequence[Message], aggregate_prompt: str = ""
    ) -> None:
        self.limits = limits
        self.conversation_tokens = prompt_tokens(conversation)
        self.prompt_tokens = math.ceil(len(aggregate_prompt) / CHARS_PER_TOKEN)
        # Spent or set aside for calls started; and the final aggregator's share, held back
        # until it starts (recomputed as each layer's references are admitted).
        self.committed = Cost()
        self.reserve = Cost()

    # -- estimates ------------------------------------------------------------------------

    def cap(self, request: ChatRequest) -> int:
        """The most tokens a call may write: its own ``max_tokens``, or the budget's default."""
        return request.max_tokens or self.limits.default_max_tokens

    def worst(self, spec: ResolvedMember, request: ChatRequest) -> Cost:
        prompt = prompt_tokens(request.messages)
        cap = self.cap(request)
        return Cost(1, prompt + cap, _usd(spec, prompt, cap))

    def aggregator_share(self, aggregator: ResolvedMember, references: Sequence[int]) -> Cost:
        """The final aggregator's worst case, shown references of at most ``references``
        tokens each."""
        # The conversation, the aggregate prompt, and each reference with its framing (the
        # fenced formatter's boundary lines and label).
        prompt = (
            self.conversation_tokens
            + self.prompt_tokens
            + sum(references)
            + REFERENCE_FRAMING * len(references)
        )
        cap = aggregator.max_tokens or self.limits.default_max_tokens
        return Cost(1, prompt + cap, _usd(aggregator, prompt, cap))

    # -- admission -------------------------------------------------------------------------

    def fits(self, extra: Cost) -> str | None:
        """Why ``extra`` on top of what is committed breaks a limit, or ``None``."""
        total = self.committed + self.reserve + extra
        limits = self.limits
        if limits.max_calls is not None and total.calls > limits.max_calls:
            return f"max_calls {limits.max_calls}"
        if limits.max_tokens is not None and total.tokens > limits.max_tokens:
            return f"max_tokens {limits.max_tokens}"
        if limits.max_cost_usd is not None and total.usd > limits.max_cost_usd:
            return f"max_cost_usd {limits.max_cost_usd:g}"
        return None

    def bounded(self, request: ChatRequest) -> ChatRequest:
        """``request`` with a ``max_tokens`` when token or cost limits need one."""
        if request.max_tokens is not None:
            return request
        if self.limits.max_tokens is None and self.limits.max_cost_usd is None:
            return request
        return replace(request, max_tokens=self.limits.default_max_tokens)

    def commit(self, cost: Cost) -> None:
        self.committed = self.committed + cost

    def settle(self, spec: ResolvedMember, reserved: Cost, used: Usage) -> None:
        """An attempt ended: what it really used replaces what was set aside for it (its
        call stays counted)."""
        actual = Cost(1, used.total_tokens, _usd(spec, used.prompt_tokens, used.completion_tokens))
        if used.total_tokens == 0:
            actual = reserved  # no usage reported: keep the worst case
        self.committed = Cost(
            self.committed.calls,
            self.committed.tokens - reserved.tokens + actual.tokens,
            self.committed.usd - reserved.usd + actual.usd,
        )

    def admit_layer(
        self,
        members: Sequence[tuple[ResolvedMember, ChatRequest]],
        aggregator: ResolvedMember,
    ) -> tuple[dict[int, Cost], str | None]:
        """Which of a layer's ``members`` (in order) fit with the aggregator's share for their
        answers as references: position -> reservation, and why the others were left out."""
        admitted: dict[int, Cost] = {}
        caps: list[int] = []
        reason = None
        for i, (spec, request) in enumerate(members):
            worst = self.worst(spec, request)
            share = self.aggregator_share(aggregator, [*caps, self.cap(request)])
            saved, self.reserve = self.reserve, share
            why = self.fits(worst)
            if why is not None:
                self.reserve = saved
                reason = reason or why
                continue
            self.commit(worst)
            admitted[i] = worst
            caps.append(self.cap(request))
        return admitted, reason

    def admit(self, spec: ResolvedMember, request: ChatRequest) -> tuple[Cost | None, str | None]:
        """One more call (a retry, the aggregator, a fallback): its reservation, or why not."""
        worst = self.worst(spec, request)
        why = self.fits(worst)
        if why is not None:
            return None, why
        self.commit(worst)
        return worst, None

    def admit_final(
        self, spec: ResolvedMember, request: ChatRequest
    ) -> tuple[ChatRequest, Cost | None, str | None]:
        """An aggregator (or fallback) call: its share, set aside so far, becomes its own
        admission. If its prompt came out longer than estimated, its ``max_tokens`` shrinks to
        what is left (never below ``MIN_ANSWER_TOKENS``) rather than leaving no answer."""
        self.reserve = Cost()
        reserved, why = self.admit(spec, request)
        if why is None or why.startswith("max_calls"):
            return request, reserved, why
        prompt = prompt_tokens(request.messages)
        room = self._room(spec, prompt)
        if room < MIN_ANSWER_TOKENS:
            return request, None, why
        request = replace(request, max_tokens=min(self.cap(request), room))
        reserved, why = self.admit(spec, request)
        return request, reserved, why

    def _room(self, spec: ResolvedMember, prompt: int) -> int:
        """Completion tokens one more call with a ``prompt``-token prompt may still write."""
        limits, spent = self.limits, self.committed
        room = 1 << 30
        if limits.max_tokens is not None:
            room = min(room, limits.max_tokens - spent.tokens - prompt)
        if limits.max_cost_usd is not None and spec.price_out_per_mtok:
            left = limits.max_cost_usd - spent.usd - _usd(spec, prompt, 0)
            room = min(room, int(left * 1e6 / spec.price_out_per_mtok))
        return room


__all__ = ["Cost", "Ledger", "prompt_tokens"]
