"""The benchmark files ``moa eval`` ships: unchanged copies of the public files (the sha256 in
PROVENANCE.md is of the uncompressed file), found without any checkout beside the package, and
overridable by ``--data-dir`` / ``MOAKIT_EVAL_DATA``."""

from __future__ import annotations

import gzip
import hashlib
import re
from pathlib import Path

import pytest

from moakit.eval.datasets import PACKAGED_DATA, default_data_dir, load_dataset

SRC = Path(__file__).resolve().parent.parent / "src"
TEST_DATA = Path(__file__).parent / "data"


def test_every_shipped_file_is_the_public_file_its_provenance_names() -> None:
    table = (PACKAGED_DATA / "PROVENANCE.md").read_text()
    rows = re.findall(r"^\| `([^`]+\.jsonl\.gz)` \|.*\| `([0-9a-f]{64})` \|$", table, re.M)
    shipped = sorted(p.name for p in PACKAGED_DATA.glob("*.jsonl.gz"))
    assert sorted(name for name, _ in rows) == shipped and shipped
    for name, digest in rows:
        data = gzip.decompress((PACKAGED_DATA / name).read_bytes())
        assert hashlib.sha256(data).hexdigest() == digest, name


def test_nothing_in_the_package_points_beside_the_checkout() -> None:
    for path in SRC.rglob("*"):
        if path.suffix in (".py", ".md", ".toml", ".js", ".html"):
            text = path.read_text(encoding="utf-8")
            assert "../shared" not in text and "/work/shared" not in text, path


def test_every_built_in_dataset_loads_from_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MOAKIT_EVAL_DATA", raising=False)
    assert default_data_dir() == PACKAGED_DATA
    sizes = {
        name: len(load_dataset(name).items)
        for name in ("gsm8k", "mt-bench", "alpaca-eval", "flask-hard")
    }
    assert sizes == {"gsm8k": 7473, "mt-bench": 80, "alpaca-eval": 805, "flask-hard": 89}
    mt = load_dataset("mt-bench").items
    assert sum(bool(i.references) for i in mt) == 30  # the GPT-4 references came along


def test_the_data_dir_and_the_environment_override_the_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert len(load_dataset("gsm8k", data_dir=TEST_DATA).items) == 5  # plain .jsonl there
    monkeypatch.setenv("MOAKIT_EVAL_DATA", str(TEST_DATA))
    assert default_data_dir() == TEST_DATA
    assert len(load_dataset("gsm8k").items) == 5
