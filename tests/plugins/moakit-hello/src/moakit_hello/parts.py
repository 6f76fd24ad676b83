"""The plugin's provider and strategy, built from moakit's public pieces."""

from __future__ import annotations

from collections.abc import AsyncIterator

from moakit.engine.aggregate import aggregate
from moakit.engine.layered import run_layer
from moakit.engine.run import Run
from moakit.models.base import ChatRequest, Chunk, Model, message_text
from moakit.references import from_outputs


class HelloModel(Model):
    def __init__(self, name: str) -> None:
        self.name = name

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        last = message_text(request.messages[-1])
        yield Chunk(text=f"hello from {self.name}: {last}")
        yield Chunk(finish_reason="stop")


class FirstLayerOnly:
    async def execute(self, run: Run) -> None:
        layer = await run_layer(run, 0, [])
        await aggregate(run, from_outputs(layer.members))
