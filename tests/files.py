"""Small helpers the data tests share."""

from __future__ import annotations

from pathlib import Path


def write_file(path: Path, text: str | bytes) -> Path:
    """Write text or bytes to `path`, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path
