"""Content fingerprints for stage outputs, so later stages can cache and a crashed run resumes.

A fingerprint is sha256 over: the stage name, the code version (damoc's version plus the stage's own
version number, bumped when its output format or semantics change), and every input part (file
contents, config sections, upstream fingerprints). Two runs with the same inputs get the same key;
change any input and the key changes. A small helper, not a framework: the stage decides its parts.

Layout of a cache entry: CACHE/<stage>/<fingerprint>/ holding the stage's files and `stage.json`
(what the stage did: rows, tokens, seconds). An entry counts as done only once `stage.json` exists,
and entries are built in a temporary directory and renamed into place (damoc.io.atomic_dir).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import damoc
from damoc.io import write_json

FINGERPRINT_CHARS = 20
_digest_memo: dict[tuple[str, int, int], str] = {}


def arithmetic_platform() -> dict:
    """What, besides a stage's inputs, decides the bytes it computes on CPU: the processor and the
    instruction set torch dispatches its kernels to (AVX2, AVX512, ...), and torch's version. A
    fingerprint cannot include these (a cache must serve every machine of a cluster), so outputs
    whose bytes matter (the zoo's weights) record them beside their digest: two machines may train
    the same settings into different weights."""
    import platform

    import torch

    cpu = None
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.lower().startswith("model name")), None)
    except OSError:
        pass
    return {"cpu": cpu or platform.processor() or platform.machine(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "mkl_cbwr": os.environ.get("MKL_CBWR"),   # MKL's code path (None: chosen per CPU)
            "torch": torch.__version__}


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: equal data gives equal text."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_default)


def _default(obj: Any) -> Any:
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "model_dump"):  # pydantic models (config sections)
        return obj.model_dump(mode="json", by_alias=True)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"cannot fingerprint {type(obj).__name__}")


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (memoised on path, size and mtime within one process)."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _digest_memo:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _digest_memo[key] = h.hexdigest()
    return _digest_memo[key]


def path_digest(path: str | os.PathLike) -> str:
    """Digest of a file, or of a directory's files (relative names and contents, sorted)."""
    path = Path(path)
    if path.is_file():
        return file_digest(path)
    h = hashlib.sha256()
    for child in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(child.relative_to(path).as_posix().encode())
        h.update(file_digest(child).encode())
    return h.hexdigest()


def fingerprint(stage: str, *parts: Any, stage_version: int = 1) -> str:
    """Fingerprint of a stage's output given everything it depends on."""
    h = hashlib.sha256()
    h.update(canonical_json({"stage": stage, "stage_version": stage_version, "damoc": damoc.__version__}).encode())
    for part in parts:
        h.update(b"\x00")
        h.update(part if isinstance(part, bytes) else canonical_json(part).encode())
    return h.hexdigest()[:FINGERPRINT_CHARS]


def default_cache_root() -> Path:
    """The stage cache: $DAMOC_CACHE_DIR, else the user cache dir (~/.cache/damoc on Linux)."""
    if os.environ.get("DAMOC_CACHE_DIR"):
        return Path(os.environ["DAMOC_CACHE_DIR"]).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("damoc"))


def stage_dir(cache_root: str | os.PathLike, stage: str, fp: str) -> Path:
    return Path(cache_root) / stage / fp


def is_done(entry: str | os.PathLike) -> bool:
    return (Path(entry) / "stage.json").is_file()


def read_summary(entry: str | os.PathLike) -> dict:
    with open(Path(entry) / "stage.json", encoding="utf-8") as f:
        return json.load(f)


def write_summary(entry: str | os.PathLike, summary: dict) -> None:
    """Written last: its presence marks the entry complete."""
    write_json(Path(entry) / "stage.json", summary)

