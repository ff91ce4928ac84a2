"""File digests: the one SHA-256 of a file that recordings, engines, calibrations and exports share.

Kept apart from the modules that use it, so hashing an engine file does not pull in the
recording format (or anything else) with it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

_CHUNK = 1 << 22  # 4 MiB: large enough to stream an engine file quickly, small for memory


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()
