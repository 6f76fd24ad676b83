"""Runs a stack. ``Stack`` (stack.py) is the public surface; a run's state is ``Run`` (run.py);
the layered strategy (layered.py) drives the layers, sharing the one retry loop (calls.py) and
the final aggregator with its stream rule (aggregate.py); the staircase strategy (staircase.py,
stairs.py) aggregates chunk-wise while the layers still write; observers.py taps a run."""

from moakit.engine.observers import Observer
from moakit.engine.run import AGGREGATOR_RESERVE, Strategy
from moakit.engine.stack import Stack
from moakit.engine.strategies import register_strategy

__all__ = ["AGGREGATOR_RESERVE", "Observer", "Stack", "Strategy", "register_strategy"]
