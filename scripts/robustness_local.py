"""The robustness run behind ``docs/robustness.md`` (``make robustness``).

On real models: the embedded Qwen2.5-Coder-0.5B stack (``scripts/local-robust.toml``: the
``local`` preset as it was before it became a cascade, without its straggler cut) on the first
``ITEMS`` GSM8K items, clean and with one of its three samples adversarial (``deceptive``,
``injector``), without and with each defense, and each defense on the clean stack (what it
costs when nobody attacks). Plain
``moa eval run`` steps (in-process, ``moakit.eval.EvalSession``) of ``CHUNK`` more items each,
into ``results/robustness-local/``
(resumable; it shares the eval's response cache, so the honest samples are the ones
``docs/eval-local.md`` scored). Then the scripted simulation (``bench/robustness.py``,
clearly labelled), and the page from both.

    .venv/bin/python scripts/robustness_local.py                  # run (or resume), write
    .venv/bin/python scripts/robustness_local.py --budget-s 3600  # at most an hour
    .venv/bin/python scripts/robustness_local.py --render-only
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from eval_driver import CACHE, DATA, ROOT, checkpoint_cache, load_jsonl, machine, report, run_chunk

from moakit.eval.session import EvalSettings

RESULTS = ROOT / "results" / "robustness-local"
DOC = ROOT / "docs" / "robustness.md"
RUNS = RESULTS / "runs.jsonl"
STACK = "scripts/local-robust.toml"
ITEMS = 20
CHUNK = 4  # items added to every system per step
ADVERSARY_SLOT = "1:2"  # the third sample (seed 3, temperature 0.9)
CLEAN = "moa:local-robust"  # the clean stack's system name: every gap is against it

# (attack, defense): attack "none" or an adversary kind; defense "none" or a defense name.
MATRIX: list[tuple[str, str]] = [
    ("none", "none"),
    ("deceptive", "none"),
    ("injector", "none"),
    ("deceptive", "cluster"),
    ("deceptive", "trust"),
    ("deceptive", "vote"),
    ("injector", "fence"),
    ("injector", "trust"),
    ("compromised", "none"),
    ("compromised", "fence"),
    ("compromised", "cluster"),
    ("compromised", "trust"),
    ("none", "fence"),
    ("none", "cluster"),
    ("none", "trust"),
    ("none", "vote"),
]


def spec(attack: str, defense: str) -> str:
    parts = [f"moa:{STACK}"]
    if attack != "none":
        parts.append(f"adversary={attack}@{ADVERSARY_SLOT}")
    if defense != "none":
        if defense == "trust" and attack == "none":
            parts.append(f"untrusted={ADVERSARY_SLOT}")  # distrust the same, honest, sample
        parts.append(f"defense={defense}")
    return ",".join(parts)


def settings(items: int, *, report_only: bool = False) -> EvalSettings:
    """What ``moa eval run --dataset gsm8k --limit ITEMS ...`` says, for one step."""
    return EvalSettings(
        out_dir=RESULTS,
        dataset="gsm8k",
        limit=items,
        data_dir=DATA,
        timeout_s=600.0,
        reference=CLEAN,
        systems=[spec(attack, defense) for attack, defense in MATRIX],
        cache_path=CACHE,
        report_only=report_only,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget-s", type=float, default=None, help="Stop after this long.")
    parser.add_argument("--items", type=int, default=ITEMS)
    parser.add_argument("--render-only", action="store_true")
    args = parser.parse_args(argv)
    (RESULTS / "records").mkdir(parents=True, exist_ok=True)
    if not args.render_only:
        deadline = None if args.budget_s is None else time.time() + args.budget_s
        # Systems run one after another, so grow the item count in steps: stopped at any
        # point, every system has (nearly) the same items and the gaps stay paired.
        for limit in [*range(CHUNK, args.items, CHUNK), args.items]:
            if deadline is not None and time.time() >= deadline:
                break
            if not run_chunk(settings(limit), RUNS, deadline, items=limit):
                break
        checkpoint_cache()
    report(settings(args.items, report_only=True))
    with tempfile.TemporaryDirectory() as tmp:
        simulated = Path(tmp) / "simulation.md"
        bench = [sys.executable, str(ROOT / "bench" / "robustness.py"), "--out", str(simulated)]
        subprocess.run(bench, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        simulation = simulated.read_text()
    from render_robustness_local import document

    DOC.write_text(
        document(RESULTS, MATRIX, spec, args.items, load_jsonl(RUNS), machine(), simulation)
    )
    print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
