"""One loaded model file per process: weights, tokenizer, chat template, a multi-sequence
context and the scheduler thread that drives it. Every member and every stack (and every
concurrent query) using the same file and budget shares it.

Loading never touches process-wide file descriptors: llama.cpp's log callback goes to
``logging`` (see ``llama_log``) and the objects are built from llama-cpp-python's own wrappers
with their fd-redirecting quiet mode off. ``Llama`` itself is not used because it cannot make a
context with several sequences (``n_seq_max``) over a unified KV cache.
"""

from __future__ import annotations

import atexit
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moakit.errors import ConfigError
from moakit.models.local.llama_log import install_log_callback
from moakit.models.local.prompt import ChatTemplate
from moakit.models.local.scheduler import BatchScheduler, KVBudget


@dataclass(frozen=True)
class RuntimeKey:
    path: str
    n_ctx: int
    n_seq_max: int


class LlamaRuntime:
    # Rows per llama_decode at most, and the chunks a prompt is decoded in. A prompt resumes from
    # another's KV only at a chunk boundary (scheduler/rows.py), so smaller chunks reuse more;
    # 256 rows decode a prompt as fast as 512 here (3.6 s per 512 tokens either way, Qwen2.5-0.5B
    # on 2 cores), while 128 cost 16 % more.
    def __init__(self, key: RuntimeKey, *, n_threads: int, n_batch: int = 256) -> None:
        try:
            import llama_cpp
            from llama_cpp import _internals
        except ImportError:
            raise ConfigError(
                "the embedded provider needs llama-cpp-python: install moakit[local]",
                field="provider",
            ) from None
        install_log_callback()
        _backend_init(llama_cpp)
        self.key = key
        self.model: Any = _internals.LlamaModel(
            path_model=key.path, params=llama_cpp.llama_model_default_params(), verbose=True
        )
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = key.n_ctx * key.n_seq_max  # llama.cpp splits it into n_seq_max streams
        params.n_batch = params.n_ubatch = n_batch
        params.n_seq_max = key.n_seq_max
        params.kv_unified = False  # a KV stream per sequence: see scheduler/batch.py for why
        params.n_threads = params.n_threads_batch = n_threads
        params.no_perf = True
        # As ``Llama`` does: the default (auto) picks flash attention on CPU, whose different
        # rounding would make answers differ from create_chat_completion's for the same seed.
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self.context: Any = _internals.LlamaContext(model=self.model, params=params, verbose=True)
        self.template = ChatTemplate(self.model)
        budget = KVBudget(n_ctx=key.n_ctx, n_seq_max=key.n_seq_max, n_batch=n_batch)
        self.scheduler = BatchScheduler(self.model, self.context, budget, name=Path(key.path).stem)

    def tokenize(self, text: str) -> list[int]:
        return list(self.model.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def close(self) -> None:
        self.scheduler.close()
        self.context.close()
        self.model.close()


_backend_ready = False


def _backend_init(llama_cpp: Any) -> None:
    global _backend_ready
    if not _backend_ready:
        llama_cpp.llama_backend_init()
        _backend_ready = True


_runtimes: dict[RuntimeKey, LlamaRuntime] = {}
_runtimes_lock = threading.Lock()


def default_threads() -> int:
    return int(os.environ.get("MOAKIT_LLAMA_THREADS", "0")) or max(1, os.cpu_count() or 1)


def shared_runtime(key: RuntimeKey) -> LlamaRuntime:
    """The process-wide runtime for a model file and budget (loading costs memory and seconds)."""
    with _runtimes_lock:
        runtime = _runtimes.get(key)
        if runtime is None:
            runtime = _runtimes[key] = LlamaRuntime(key, n_threads=default_threads())
        return runtime


def is_loaded(key: RuntimeKey) -> bool:
    return key in _runtimes


@atexit.register
def close_all() -> None:
    # Free llama.cpp contexts while the interpreter is intact; left to __del__ at shutdown they
    # print spurious tracebacks once ctypes globals are torn down.
    with _runtimes_lock:
        for runtime in _runtimes.values():
            runtime.close()
        _runtimes.clear()
