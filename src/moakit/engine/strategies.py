"""The built-in run strategies, registered through the plugin hook like any other: ``layered``
(the paper's) and ``staircase`` (chunk-wise aggregation). A third-party strategy reuses the
same pieces: ``calls.call_with_retries``, ``supervisor.supervise_layer``, the
``aggregate.AggregatorChain``, the ``Run`` state and the reference pipeline."""

from __future__ import annotations

from moakit.engine.layered import LayeredStrategy
from moakit.engine.run import Strategy
from moakit.engine.staircase import StaircaseStrategy
from moakit.hookspecs import Register, hookimpl
from moakit.plugins import registry


@hookimpl
def register_strategies(register: Register) -> None:
    register("layered", LayeredStrategy)
    register("staircase", StaircaseStrategy)


def strategy_for(name: str) -> Strategy:
    strategy: Strategy = registry().strategies.get(name, field="strategy")()
    return strategy
