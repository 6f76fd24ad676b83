"""Start-up time of `import moakit`, `moa --help`, `moa ask --help`: this tree vs a baseline.

Each command runs in a fresh interpreter, ``--runs`` times, the two trees interleaved so that
both see the same load on a shared machine. Printed per command and tree: wall time (min and
median, ms, the interpreter's own start included: see the `python -c pass` row), the import time
``python -X importtime`` reports (sum of every module's own time, median of the runs), and how
many modules were imported. The baseline's ``src/`` is extracted with ``git archive`` into a
temporary directory and put first on ``PYTHONPATH``; nothing else changes between the two.

    .venv/bin/python bench/startup.py --baseline 5316760      # this tree vs the commit before
    .venv/bin/python bench/startup.py                         # this tree only
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MOA = "from moakit.cli.main import main; main()"
COMMANDS = {
    "python -c pass": ["-c", "pass"],
    "import moakit": ["-c", "import moakit"],
    "moa --help": ["-c", MOA, "--help"],
    "moa ask --help": ["-c", MOA, "ask", "--help"],
}


@dataclass
class Samples:
    wall_ms: list[float] = field(default_factory=list)
    import_ms: list[float] = field(default_factory=list)
    modules: int = 0


def extract_src(ref: str, into: Path) -> Path:
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", ref, "src"],
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def run_once(args: list[str], src: Path, samples: Samples) -> None:
    env = {**os.environ, "PYTHONPATH": str(src)}
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], env=env, capture_output=True, check=False)
    samples.wall_ms.append((time.perf_counter() - start) * 1000)
    timed = subprocess.run(
        [sys.executable, "-X", "importtime", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    own_us = [
        int(line.split("|")[0].split(":")[1])
        for line in timed.stderr.splitlines()
        if line.startswith("import time:") and "self [us]" not in line
    ]
    samples.import_ms.append(sum(own_us) / 1000)
    samples.modules = len(own_us)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", help="a git commit to compare with (e.g. main)")
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"this tree": ROOT / "src"}
        if args.baseline:
            trees = {args.baseline: extract_src(args.baseline, Path(tmp)), **trees}
        results = {(cmd, tree): Samples() for cmd in COMMANDS for tree in trees}
        for _ in range(args.runs):
            for cmd, argv in COMMANDS.items():
                for tree, src in trees.items():
                    run_once(argv, src, results[cmd, tree])
    print(f"{args.runs} runs each, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"{'command':<16}{'tree':<12}{'wall min':>9}{'median':>8}{'import':>8}{'modules':>9}")
    for cmd in COMMANDS:
        for tree in trees:
            s = results[cmd, tree]
            print(
                f"{cmd:<16}{tree[:11]:<12}{min(s.wall_ms):8.0f}ms{statistics.median(s.wall_ms):6.0f}ms"
                f"{statistics.median(s.import_ms):6.0f}ms{s.modules:9d}"
            )
        if len(trees) == 2:
            base, new = (results[cmd, tree] for tree in trees)
            print(
                f"{'':<16}{'ratio':<12}{min(new.wall_ms) / min(base.wall_ms):9.2f}"
                f"{statistics.median(new.wall_ms) / statistics.median(base.wall_ms):8.2f}"
                f"{statistics.median(new.import_ms) / statistics.median(base.import_ms):8.2f}"
            )


if __name__ == "__main__":
    main()
