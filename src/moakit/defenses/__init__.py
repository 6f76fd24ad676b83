"""Defenses against a deceptive or injected member, each opt-in per stack:

- ``fenced`` formatter (``[references] formatter = "fenced"``): references framed as data;
- ``cluster`` transform: keep the majority cluster of a layer's references;
- ``trust`` transform: label, or drop, references of ``trust = "untrusted"`` members;
- ``vote`` strategy (``strategy = "vote"``): dropout-and-vote over reference subsets.

Each records what it did in ``Result.defenses``. They reach the engine as plugins
(``moakit.defenses.plugin``); nothing here registers on import.
"""
