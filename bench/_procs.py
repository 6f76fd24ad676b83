"""Child processes and CPU accounting shared by the bench scripts (Linux: reads /proc)."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
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
