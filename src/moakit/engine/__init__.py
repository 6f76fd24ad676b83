"""Runs a stack. ``Stack`` (stack.py) is the public surface; a run's state is ``Run`` (run.py);
a strategy (the layered one in layered.py, the staircase in staircase.py + stairs.py, any
plugin's) drives the layers through the shared pieces: the one retry loop (calls.py), the one
layer supervisor (supervisor.py) and the one aggregator chain with its stream rule
(aggregate.py); observers.py taps a run. Strategies are plugins (``register_strategies``)."""

from moakit.engine.observers import Observer
from moakit.engine.run import AGGREGATOR_RESERVE, Strategy
from moakit.engine.stack import Stack

__all__ = ["AGGREGATOR_RESERVE", "Observer", "Stack", "Strategy"]
