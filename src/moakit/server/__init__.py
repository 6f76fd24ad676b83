"""``moa serve``: an OpenAI-compatible chat-completions server over MoA stacks."""

from moakit.server.app import create_app

__all__ = ["create_app"]
