"""Model interface and provider adapters."""

from moakit.models.base import ChatRequest, Chunk, Completion, Message, Model, Usage

__all__ = ["ChatRequest", "Chunk", "Completion", "Message", "Model", "Usage"]
