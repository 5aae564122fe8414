"""Small ONNX models bundled with ascend_async (built by ``build_models.py``)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["NAMES", "path"]

NAMES = ("mlp", "cnn", "transformer")


def path(name: str) -> Path:
    """Path of a bundled model, by name (``"mlp"``) or file name (``"mlp.onnx"``)."""
    stem = name[:-5] if name.endswith(".onnx") else name
    if stem not in NAMES:
        raise ValueError(f"no bundled model {name!r}; choose one of {', '.join(NAMES)}")
    return Path(__file__).resolve().parent / f"{stem}.onnx"
