"""Small ONNX models bundled with ascend_async (built by ``build_models.py``).

``ascend_async.models.path("mlp")`` is the bundled model's file, usable from any directory::

    graph = session.add_graph(ascend_async.models.path("mlp"))

- ``mlp``: ``x: float32[batch, 64]`` -> ``y: float32[batch, 10]``
- ``cnn``: ``x: float32[batch, 3, 32, 32]`` -> ``y: float32[batch, 10]``
- ``transformer``: ``x: float32[batch, seq, 64]`` -> ``y: float32[batch, seq, 64]``
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["NAMES", "path"]

NAMES = ("mlp", "cnn", "transformer")


def path(name: str) -> Path:
    """The absolute path of a bundled model, by name (``"mlp"``) or file name (``"mlp.onnx"``).

    :raises ValueError: if there is no bundled model of that name (the message lists them).
    """
    stem = name[:-5] if name.endswith(".onnx") else name
    if stem not in NAMES:
        raise ValueError(f"no bundled model {name!r}; choose one of {', '.join(NAMES)}")
    return Path(__file__).resolve().parent / f"{stem}.onnx"
