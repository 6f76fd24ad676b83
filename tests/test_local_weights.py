"""Split weights are untrusted bytes: assembled once, atomically, and refused unless they match."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from moakit.models.local import weights
from moakit.models.local.weights import WeightsError, assemble, cache_dir


@pytest.fixture(autouse=True)
def _forget_verified(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(weights, "_verified", set())


def make_parts(root: Path) -> tuple[list[Path], bytes]:
    chunks = [bytes([i]) * (3000 + 517 * i) for i in range(4)]
    paths = []
    for i, chunk in enumerate(chunks):
        path = root / f"part{i:02d}.bin"
        path.write_bytes(chunk)
        paths.append(path)
    return paths, b"".join(chunks)


def test_parts_are_joined_in_order_into_the_target(tmp_path: Path) -> None:
    parts, whole = make_parts(tmp_path)
    target = tmp_path / "cache" / "model.gguf"
    digest = hashlib.sha256(whole).hexdigest()
    assert assemble(parts, target, size=len(whole), sha256=digest) == target
    assert target.read_bytes() == whole
    assert [p.name for p in target.parent.iterdir()] == ["model.gguf"]  # no temp file left
    # Second use: the verified file is reused, the parts are not needed any more.
    weights._verified.clear()
    assert assemble([], target, size=len(whole), sha256=digest) == target


def test_a_corrupted_part_is_refused_and_nothing_is_cached(tmp_path: Path) -> None:
    parts, whole = make_parts(tmp_path)
    digest = hashlib.sha256(whole).hexdigest()
    data = bytearray(parts[2].read_bytes())
    data[100] ^= 0xFF  # one flipped byte, same size
    parts[2].write_bytes(bytes(data))
    target = tmp_path / "cache" / "model.gguf"
    with pytest.raises(WeightsError, match=r"sha256 .* does not match") as info:
        assemble(parts, target, size=len(whole), sha256=digest)
    assert info.value.field == "model"
    assert list(target.parent.iterdir()) == []  # neither the target nor a temp file


def test_a_truncated_part_is_refused(tmp_path: Path) -> None:
    parts, whole = make_parts(tmp_path)
    parts[3].write_bytes(parts[3].read_bytes()[:-1])
    with pytest.raises(WeightsError, match="bytes, expected"):
        assemble(parts, tmp_path / "m.gguf", size=len(whole), sha256="0" * 64)
    assert not (tmp_path / "m.gguf").exists()


def test_a_cached_file_changed_after_assembly_is_refused(tmp_path: Path) -> None:
    parts, whole = make_parts(tmp_path)
    digest = hashlib.sha256(whole).hexdigest()
    target = tmp_path / "m.gguf"
    assemble(parts, target, size=len(whole), sha256=digest)
    weights._verified.clear()  # a new process
    target.write_bytes(b"\x7f" + whole[1:])
    with pytest.raises(WeightsError, match="cached weights"):
        assemble(parts, target, size=len(whole), sha256=digest)


def test_cache_dir_honours_the_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOAKIT_WEIGHTS_DIR", str(tmp_path / "w"))
    assert cache_dir() == tmp_path / "w"
    monkeypatch.delenv("MOAKIT_WEIGHTS_DIR")
    assert cache_dir().name == "weights" and "moakit" in str(cache_dir())


def test_missing_part_package_names_what_to_install() -> None:
    split = weights.SplitWeights(
        filename="x.gguf", size=1, sha256="0" * 64, parts=(("no-such-dist-xyz", "1.0", "a.bin"),)
    )
    with pytest.raises(weights.ConfigError, match=r"no-such-dist-xyz==1\.0"):
        split.part_paths()


@pytest.mark.embedded
def test_qwen_weights_come_from_the_pinned_packages_and_match_the_digest() -> None:
    path = weights.resolve_model_path("qwen2.5-coder-0.5b")
    assert path.stat().st_size == weights.QWEN25_CODER_05B.size
    assert weights.sha256_of(path) == weights.QWEN25_CODER_05B.sha256
    for part in weights.QWEN25_CODER_05B.part_paths():
        assert part.is_file() and "site-packages" in str(part)
