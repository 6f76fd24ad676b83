"""``moa serve``: OpenAI-compatible Chat Completions and Responses endpoints over MoA stacks."""

from moakit.server.app import create_app
from moakit.server.settings import ServerSettings, read_server_settings

__all__ = ["ServerSettings", "create_app", "read_server_settings"]
