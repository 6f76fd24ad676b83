"""Defenses against a deceptive or injected member, each opt-in per stack:

- ``fenced`` formatter (``[references] formatter = "fenced"``): references framed as data;
- ``cluster`` transform: keep the majority cluster of a layer's references;
- ``trust`` transform: label, or drop, references of ``trust = "untrusted"`` members;
- ``vote`` strategy (``strategy = "vote"``): dropout-and-vote over reference subsets.

Each records what it did in ``Result.defenses``. ``moakit.defenses.redteam`` builds the
adversaries they are measured against.
"""

from moakit.defenses.cluster import cluster_transform
from moakit.defenses.fence import fenced_formatter
from moakit.defenses.trust import trust_transform
from moakit.defenses.vote import VoteStrategy, register_extractor
from moakit.engine.strategies import register_strategy
from moakit.references import register_formatter, register_transform_factory

register_formatter("fenced", fenced_formatter)
register_transform_factory("cluster", cluster_transform)
register_transform_factory("trust", trust_transform)
register_strategy("vote", VoteStrategy)

__all__ = ["VoteStrategy", "register_extractor"]
