"""Child processes and CPU accounting shared by the bench scripts (Linux: reads /proc)."""

from __future__ import annotations

import gc
import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MOA = str(Path(sys.executable).with_name("moa"))


@contextmanager
def child(args: list[str]) -> Iterator[subprocess.Popen[str]]:
    """A child process with stdout piped (stderr discarded, so a chatty child never blocks on
    a full pipe), terminated on exit."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(10)


@contextmanager
def fake_backend(*flags: str) -> Iterator[tuple[str, int]]:
    """`moa fake-backend` on a free port in its own process; yields (base_url, pid)."""
    with child([MOA, "fake-backend", "--port", "0", *flags]) as proc:
        assert proc.stdout is not None
        base_url = proc.stdout.readline().strip()
        if not base_url.startswith("http"):
            raise RuntimeError("fake backend did not start")
        yield base_url, proc.pid


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class GcClock:
    """CPU seconds this process spends in the cyclic garbage collector, by generation, while
    installed (``with GcClock() as gc_clock``): at thousands of calls in flight, allocation
    makes the collector a large share of the engine's CPU per call."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.collections = [0, 0, 0]
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.process_time()
        else:
            self.seconds[info["generation"]] += time.process_time() - self._started
            self.collections[info["generation"]] += 1

    def __enter__(self) -> GcClock:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)

    def summary(self, calls: int) -> str:
        per_gen = ", ".join(
            f"gen{g} {n} x {s / n * 1e3 if n else 0:.1f} ms"
            for g, (n, s) in enumerate(zip(self.collections, self.seconds, strict=True))
        )
        return f"{sum(self.seconds) / calls * 1e6:.1f} us per call in the GC ({per_gen})"
