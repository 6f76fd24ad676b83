"""Run strategies by name (``strategy = "layered"`` in a stack config). A second strategy, such
as chunk-wise aggregation that starts the aggregator before the proposers finish, registers
here and reuses the shared pieces: ``calls.call_with_retries``, ``aggregate.aggregate``, the
``Run`` state and the reference pipeline."""

from __future__ import annotations

from collections.abc import Callable

from moakit.engine.layered import LayeredStrategy
from moakit.engine.run import Strategy
from moakit.engine.staircase import StaircaseStrategy
from moakit.errors import ConfigError

_STRATEGIES: dict[str, Callable[[], Strategy]] = {
    "layered": LayeredStrategy,
    "staircase": StaircaseStrategy,
}


def register_strategy(name: str, factory: Callable[[], Strategy]) -> None:
    """Add a strategy. A strategy may also define ``check(stack)``, called once the stack's
    models are built, to refuse with a ``ConfigError`` a stack it cannot run."""
    _STRATEGIES[name] = factory


def strategy_for(name: str) -> Strategy:
    factory = _STRATEGIES.get(name)
    if factory is None:
        raise ConfigError(
            f"strategy: unknown strategy {name!r} (known: {', '.join(sorted(_STRATEGIES))})",
            field="strategy",
        )
    return factory()
