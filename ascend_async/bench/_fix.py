"""``ascend-async check --fix``: convert a model CANN's parser would refuse to an opset it
accepts, and prove on the simulated device that the outputs did not change.

A tool above the library (it opens a Session and generates inputs); the check itself is the
core's ``_cann_check``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .._cann_check import ModelSource, _fix_hint, _load, cann_registrations, check_model, fix_opset
from .._graph import Graph
from .._session import Session
from ._inputs import _generate

if TYPE_CHECKING:
    import onnx

__all__ = ["FixResult", "fix_model"]


@dataclass(frozen=True)
class FixResult:
    """What ``fix_model`` did: the opset it converted to, the outputs compared, and whether it wrote."""

    written: bool
    opset: int | None
    message: str
    max_abs_diff: dict[str, float] = field(default_factory=dict)


def fix_model(source: ModelSource, out: str | os.PathLike[str], *, seed: int = 0) -> FixResult:
    """Convert ``source`` to the highest opset at which CANN registers all its ops, run the
    original and the converted model on the simulated device with the same seeded inputs, and
    write ``out`` only when the converted model is accepted by :func:`check_model` and every
    output agrees (exactly for integers, to 1e-5 relative / 1e-6 absolute for floats)."""
    import numpy as np
    import onnx
    from onnx import version_converter

    model, label, _ = _load(source)
    before = check_model(model)
    if before.ok:
        return FixResult(False, None, f"{label}: nothing to fix, CANN's parser would accept it as it is")
    target = fix_opset(model)
    if target is None:
        return FixResult(False, None, f"{label}: no opset conversion helps{_fix_hint(cann_registrations(), model, {})}")
    try:
        converted = version_converter.convert_version(model, target)
        how = "onnx's version converter"
    except Exception as exc:  # onnx raises RuntimeError (adapter assertions) and others
        # The converter lacks adapters for some ops whose newer version only added types
        # (ConstantOfShape 19 -> 21, say). Relabelling the opset is then right exactly when the
        # model is still valid at the target: onnx's strict checker decides, and the outputs
        # compared on the sim below are the final word.
        relabelled = _relabel(model, target)
        if relabelled is None:
            return FixResult(False, target, f"{label}: cannot convert to opset {target}: {exc}")
        converted = relabelled
        how = f"relabelling (onnx's converter: {str(exc).splitlines()[-1][:120]})"
    after = check_model(converted)
    if not after.ok:
        reasons = "; ".join(p.message for p in after.problems if p.severity == "error")
        return FixResult(False, target, f"{label}: converted to opset {target}, still refused: {reasons}")

    original, fixed = Graph(model), Graph(converted)
    inputs, _ = _generate(original, {}, None, "random", seed)
    with Session() as session:
        want = session.run_sync(session.add_graph(original), inputs)
        got = session.run_sync(session.add_graph(fixed), inputs)
    diffs: dict[str, float] = {}
    for name, a in want.items():
        b = got.get(name)
        if b is None or a.shape != b.shape or a.dtype != b.dtype:
            return FixResult(
                False, target, f"{label}: output {name!r} differs in name, shape or dtype after converting"
            )
        if a.dtype.kind == "f":
            diffs[name] = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)), initial=0.0))
            agree = np.allclose(a, b, rtol=1e-5, atol=1e-6, equal_nan=True)
        else:
            diffs[name] = float(not np.array_equal(a, b))
            agree = np.array_equal(a, b)
        if not agree:
            return FixResult(
                False,
                target,
                f"{label}: output {name!r} changed after converting to opset {target}; not written",
                diffs,
            )
    onnx.save(converted, os.fspath(out))
    return FixResult(
        True,
        target,
        f"{label}: converted to opset {target} by {how}; outputs agree on the sim (seed {seed}); "
        f"wrote {os.fspath(out)}",
        diffs,
    )


def _relabel(model: onnx.ModelProto, target: int) -> onnx.ModelProto | None:
    """``model`` with its ai.onnx opset set to ``target``, if onnx's strict checker (shape
    inference included) accepts it there; else None."""
    import onnx

    relabelled = onnx.ModelProto()
    relabelled.CopyFrom(model)
    for imp in relabelled.opset_import:
        if imp.domain in ("", "ai.onnx"):
            imp.version = target
    try:
        onnx.checker.check_model(relabelled, full_check=True)
    except Exception:  # onnx.checker.ValidationError, shape inference errors
        return None
    return relabelled
