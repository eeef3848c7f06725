"""lmzip's cache folder and the SHA-256 of model files, cached there.

Below both the registry and the backends: the registry fingerprints GGUF files with
:func:`file_sha256`, the torch backend the files of a model folder.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

__all__ = ["cache_dir", "file_sha256"]


def cache_dir() -> Path:
    """Where lmzip keeps assembled model files and hashes (``$LMZIP_CACHE``)."""
    base = os.environ.get("LMZIP_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lmzip")
    return Path(base)


def file_sha256(path: Path) -> str:
    """SHA-256 of a model file, cached by (path, size, mtime) since hashing takes a while."""
    path = Path(path).resolve()
    st = path.stat()
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    cache_file = cache_dir() / "sha256.json"
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    if isinstance(cache, dict) and isinstance(cache.get(key), str):
        return cache[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    try:
        cache = cache if isinstance(cache, dict) else {}
        cache[key] = digest
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(f"sha256.json.tmp{os.getpid()}")
        tmp.write_text(json.dumps(cache, indent=0, sort_keys=True))
        os.replace(tmp, cache_file)
    except OSError:
        pass  # a cache we cannot write only costs time
    return digest
