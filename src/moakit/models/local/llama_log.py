"""llama.cpp's log output, routed into Python ``logging`` (logger ``moakit.llama``, DEBUG).

llama-cpp-python's quiet mode (``verbose=False``) silences native output by pointing the
process's file descriptors 1 and 2 at /dev/null while a model loads; every other thread's output
in that window is lost (uvicorn's startup banner under ``moa serve --preload``, for one). Instead,
the native log callback is replaced once, process-wide, by one that hands each line to
``logging``; the loaders in this package never touch a file descriptor.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from typing import Any

logger = logging.getLogger("moakit.llama")

_installed = False
_install_lock = threading.Lock()
_callback: Any = None  # the ctypes callback must stay referenced, or llama.cpp calls freed memory
_pending = threading.local()  # llama.cpp may emit one line in several calls; join them per thread


def _on_log(level: int, text: bytes | None, user_data: Any) -> None:
    # Runs on whatever thread llama.cpp logs from; never raise into C.
    piece = (text or b"").decode("utf-8", errors="replace")
    buffered = getattr(_pending, "text", "") + piece
    if not buffered.endswith("\n"):
        _pending.text = buffered
        return
    _pending.text = ""
    for line in buffered.splitlines():
        if line.strip():
            logger.debug("%s", line)


def install_log_callback() -> None:
    """Route llama.cpp's logs into ``logging``. Idempotent; call before any model loads."""
    global _installed, _callback
    with _install_lock:
        if _installed:
            return
        import llama_cpp
        import llama_cpp.llama

        _callback = llama_cpp.llama_log_callback(_on_log)
        llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))
        _installed = True
