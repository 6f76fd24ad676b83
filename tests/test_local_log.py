"""Loading the embedded model leaves the process's stderr alone: llama.cpp's own output goes to
``logging`` (logger ``moakit.llama``), and what other threads log meanwhile is not lost."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.embedded

# Runs in a fresh interpreter so the load really is the first one and fd 2 is a real pipe.
SCRIPT = r"""
import asyncio, logging, os, sys, threading, time
logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(name)s|%(message)s")
logging.getLogger("moakit.llama").setLevel(logging.DEBUG)
from moakit.models.local import LocalModel

model = LocalModel("smollm2-135m", {"n_ctx": 256, "n_seq_max": 1})
done = threading.Event()
ticks = 0

def chatter():
    global ticks
    log = logging.getLogger("other")
    while not done.is_set():
        ticks += 1
        log.info("tick %d", ticks)
        os.write(2, b"raw %d\n" % ticks)
        time.sleep(0.0005)

thread = threading.Thread(target=chatter)
thread.start()
while ticks < 3:
    time.sleep(0.001)
before = ticks
asyncio.run(model.load())
during = ticks - before
done.set()
thread.join()
print(before, during, ticks)
"""


def test_other_threads_output_during_a_model_load_reaches_stderr() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    _before, during, total = map(int, proc.stdout.split())
    assert during > 0  # the other thread did write while the model was loading
    lines = set(proc.stderr.splitlines())
    missing = [i for i in range(1, total + 1) if f"other|tick {i}" not in lines]
    raw_missing = [i for i in range(1, total + 1) if f"raw {i}" not in lines]
    assert missing == [] and raw_missing == [], (len(missing), len(raw_missing), total)
    # llama.cpp's own loader output arrived through logging, not straight on fd 2.
    llama_lines = [line for line in lines if line.startswith("moakit.llama|")]
    assert any("llama_model_loader" in line for line in llama_lines)
    assert not any(line.startswith("llama_model_loader") for line in lines)
