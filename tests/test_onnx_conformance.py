"""ONNX backend node test cases on the simulated device, as one suite.

The sim computes graphs with onnxruntime's CPU provider, so what it runs is what onnxruntime runs.
Every node case of the installed ``onnx`` package (``onnx.backend.test.case.node``: the cases
behind ``onnx/backend/test/data/node/*``, which the wheels no longer ship as files) goes through
onnxruntime's Python API (CPU provider, one thread) and through the sim's AddGraph + RunGraph.
Each case lands in exactly one category:

- ``refused``: an input or output GE tensors cannot carry (sequences, optionals, maps; strings,
  complex, float8, 4-bit types). The sim must refuse it at AddGraph with a message saying why.
- ``ort_error``: onnxruntime itself cannot load or run it (no kernel, unsupported attribute...).
  Not ours to fix; listed, not failed.
- ``ort_differs``: onnxruntime runs it but its outputs differ from ONNX's expected ones. The sim
  must then give onnxruntime's outputs (same engine), unless the op is random.
- ``ort_ok``: onnxruntime runs it and matches. The sim must match too: same dtype and shape,
  floats within the case's tolerance (rtol=1e-3, atol=1e-7 by default, as onnx's backend
  runner), integers and booleans bit-exact.

``python tests/test_onnx_conformance.py`` prints the counts and the named lists in the
markdown that docs/ops.md quotes.
"""

from __future__ import annotations

import collections
import ctypes
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import _simrun
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper

# Element types a GE tensor can carry (ge::DataType has a value for each).
GE_ELEM_TYPES = frozenset(
    {
        TensorProto.FLOAT,
        TensorProto.UINT8,
        TensorProto.INT8,
        TensorProto.UINT16,
        TensorProto.INT16,
        TensorProto.INT32,
        TensorProto.INT64,
        TensorProto.BOOL,
        TensorProto.FLOAT16,
        TensorProto.DOUBLE,
        TensorProto.UINT32,
        TensorProto.UINT64,
        TensorProto.BFLOAT16,
    }
)
# Ops whose outputs are random (Dropout in training mode, Random*): onnxruntime's draw differs
# from ONNX's and from its own next run, so the sim is only checked for dtypes and shapes.
RANDOM_OPS = frozenset(
    {"Dropout", "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Bernoulli"}
)
# Cases whose sim result may differ from onnxruntime's Python run with a reason (none today).
KNOWN_DIFFERENCES: dict[str, str] = {}
MIN_CASES = 1000  # a missing or broken case generator fails instead of passing empty


@dataclass
class Outcome:
    name: str
    category: str  # refused | ort_error | ort_differs | ort_ok
    sim_ok: bool
    detail: str = ""


@dataclass
class Report:
    outcomes: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0

    def by(self, category: str) -> list[Outcome]:
        return [o for o in self.outcomes if o.category == category]

    @property
    def sim_failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.sim_ok]


# ------------------------------------------------------------------------------------------------
# Values


def _value(v: Any) -> Any:
    """A case's input or output as numpy (tensors), a list (sequences), a dict (maps) or None."""
    if isinstance(v, TensorProto):
        return numpy_helper.to_array(v)
    if isinstance(v, list | tuple):
        return [_value(x) for x in v]
    if isinstance(v, dict):
        return {k: _value(x) for k, x in v.items()}
    if v is None:
        return None
    return np.asarray(v)


def _io_refusal(model: onnx.ModelProto) -> str | None:
    """Why GE tensors cannot carry the model's inputs or outputs, or None."""
    init = {t.name for t in model.graph.initializer}
    for kind, vis in (("input", [v for v in model.graph.input if v.name not in init]), ("output", model.graph.output)):
        for vi in vis:
            which = vi.type.WhichOneof("value")
            if which != "tensor_type":
                return f"non-tensor {kind} ({which})"
            if vi.type.tensor_type.elem_type not in GE_ELEM_TYPES:
                name = TensorProto.DataType.Name(vi.type.tensor_type.elem_type).lower()
                return f"{kind} dtype {name}"
    return None


def _close(got: Any, want: Any, rtol: float, atol: float) -> str | None:
    """None when ``got`` matches ``want`` as onnx's backend runner compares (ints exactly)."""
    if isinstance(want, list):
        if not isinstance(got, list) or len(got) != len(want):
            return "sequence length differs"
        for g, w in zip(got, want, strict=True):
            if (why := _close(g, w, rtol, atol)) is not None:
                return why
        return None
    if want is None:
        return None if got is None else "expected no value"
    got, want = np.asarray(got), np.asarray(want)
    if got.dtype != want.dtype:
        return f"dtype {got.dtype}, expected {want.dtype}"
    if got.shape != want.shape:
        return f"shape {got.shape}, expected {want.shape}"
    if want.dtype == object or want.dtype.kind in "biuUS":
        return None if np.array_equal(got, want) else "values differ"
    try:
        np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=rtol, atol=atol)
    except AssertionError as exc:
        return " ".join(str(exc).split())[:300]
    return None


def _all_close(got: list[Any], want: list[Any], rtol: float, atol: float) -> str | None:
    if len(got) != len(want):
        return f"{len(got)} outputs, expected {len(want)}"
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        if (why := _close(g, w, rtol, atol)) is not None:
            return f"output {i}: {why}"
    return None


# ------------------------------------------------------------------------------------------------
# The two engines


def _ort_options() -> Any:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 4  # its failures are recorded here, not printed
    return so


def _ort_feed(a: Any, elem_type: int) -> Any:
    if isinstance(a, np.ndarray) and a.dtype.name == "bfloat16":
        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(a.view(np.uint16), elem_type)
    return a


def _ort_read(v: Any) -> Any:
    if v.is_tensor() and v.data_type() == "tensor(bfloat16)":
        import ml_dtypes

        raw = ctypes.string_at(v.data_ptr(), v.tensor_size_in_bytes())
        return np.frombuffer(raw, np.uint16).view(ml_dtypes.bfloat16).reshape(v.shape()).copy()
    return v.numpy()


def run_ort(model: onnx.ModelProto, data: bytes, inputs: list[Any], options: Any) -> list[Any]:
    """One run through onnxruntime's Python API (CPU provider)."""
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    names = [vi.name for vi in model.graph.input][: len(inputs)]
    if any(isinstance(a, np.ndarray) and a.dtype.name == "bfloat16" for a in inputs) or any(
        o.type.tensor_type.elem_type == TensorProto.BFLOAT16 for o in model.graph.output
    ):
        elem = {vi.name: vi.type.tensor_type.elem_type for vi in model.graph.input}
        feeds = {n: _ort_feed(a, elem[n]) for n, a in zip(names, inputs, strict=True)}
        feeds = {n: v if isinstance(v, ort.OrtValue) else ort.OrtValue.ortvalue_from_numpy(v) for n, v in feeds.items()}
        out_names = [o.name for o in session.get_outputs()]
        return [_ort_read(v) for v in session.run_with_ort_values(out_names, feeds)]
    return list(session.run(None, dict(zip(names, inputs, strict=True))))


def _cases() -> list[Any]:
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [c for c in collect_testcases(None) if c.kind == "node"]


def run_case(case: Any, options: Any) -> Outcome:
    raw_inputs, raw_expected = case.data_sets[0]
    inputs = [_value(a) for a in raw_inputs]
    expected = [_value(a) for a in raw_expected]
    data = case.model.SerializeToString()
    refusal = _io_refusal(case.model)
    if refusal is not None:
        # onnxruntime's Python API cannot feed some of these types either: loading the model
        # tells whether onnxruntime takes it at all.
        try:
            ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            refusal = None
            load_error = " ".join(str(exc).split())[:300]
            try:
                _simrun.run_case(data, [])
            except _simrun.AddGraphError:
                return Outcome(case.name, "ort_error", True, load_error)
            except Exception as sim_exc:
                return Outcome(case.name, "ort_error", False, f"{load_error}; the sim: {sim_exc}")
            return Outcome(case.name, "ort_error", False, f"{load_error}; the sim accepted it")
        try:
            _simrun.run_case(data, [])
        except _simrun.AddGraphError as exc:
            text = str(exc)
            clear = "not a tensor" in text or "cannot carry" in text
            return Outcome(case.name, "refused", clear, refusal if clear else f"unclear refusal: {text}")
        except Exception as exc:
            return Outcome(case.name, "refused", False, f"{refusal}: not refused at AddGraph: {exc}")
        return Outcome(case.name, "refused", False, f"{refusal}: AddGraph accepted it")

    try:
        ort_out: list[Any] | None = run_ort(case.model, data, inputs, options)
        ort_why = _all_close(ort_out, expected, case.rtol, case.atol)  # type: ignore[arg-type]
        category = "ort_ok" if ort_why is None else "ort_differs"
    except Exception as exc:
        ort_out, ort_why, category = None, " ".join(str(exc).split())[:300], "ort_error"

    try:
        got = _simrun.run_case(data, inputs)
    except Exception as exc:
        sim_error: str | None = " ".join(str(exc).split())[:400]
        got = []
    else:
        sim_error = None

    if category == "ort_error":
        # The sim's engine is onnxruntime: it must refuse (at AddGraph or at the run) as well.
        return Outcome(case.name, category, sim_error is not None, ort_why or "")
    ops = {n.op_type for n in case.model.graph.node}
    if sim_error is not None:
        return Outcome(case.name, category, case.name in KNOWN_DIFFERENCES, f"sim failed: {sim_error}")
    if ops & RANDOM_OPS and category == "ort_differs":
        # A random draw: the dtypes and shapes must agree, the values cannot.
        same = len(got) == len(ort_out or []) and all(
            np.asarray(g).shape == np.asarray(o).shape and np.asarray(g).dtype == np.asarray(o).dtype
            for g, o in zip(got, ort_out or [], strict=False)
        )
        return Outcome(case.name, category, same, f"random op; onnxruntime: {ort_why}")
    reference = expected if category == "ort_ok" else ort_out
    why = _all_close(got, reference, case.rtol, case.atol)  # type: ignore[arg-type]
    ok = why is None or case.name in KNOWN_DIFFERENCES
    if category == "ort_differs":
        return Outcome(
            case.name,
            category,
            ok,
            f"onnxruntime vs ONNX: {ort_why}" + ("" if why is None else f"; sim vs onnxruntime: {why}"),
        )
    return Outcome(case.name, category, ok, "" if why is None else f"sim vs expected: {why}")


def run_suite() -> Report:
    t0 = time.perf_counter()
    options = _ort_options()
    report = Report()
    for case in _cases():
        report.outcomes.append(run_case(case, options))
    report.seconds = time.perf_counter() - t0
    return report


# ------------------------------------------------------------------------------------------------
# The report (docs/ops.md quotes it)


def format_report(report: Report) -> str:
    n = len(report.outcomes)
    ok, differs, err, refused = (report.by(c) for c in ("ort_ok", "ort_differs", "ort_error", "refused"))
    ran = len(ok) + len(differs)
    passed = sum(o.sim_ok for o in ok)
    lines = [
        f"- node cases in onnx {onnx.__version__}: **{n}** (onnxruntime {ort.__version__})",
        f"- run by onnxruntime's CPU provider: **{ran}**; with ONNX's expected outputs: **{len(ok)}**",
        f"- of those {len(ok)}, passed on the sim: **{passed}**; failed on the sim: **{len(ok) - passed}**"
        + "".join(f"\n  - `{o.name}`: {o.detail}" for o in ok if not o.sim_ok),
        f"- onnxruntime runs but differs from ONNX's expected outputs: **{len(differs)}**; the sim gives "
        f"onnxruntime's outputs in {sum(o.sim_ok for o in differs)} (random ops: dtypes and shapes only)",
        f"- onnxruntime cannot load or run: **{len(err)}** (the sim refuses all of them: "
        f"{sum(o.sim_ok for o in err)}/{len(err)})",
        f"- refused by the sim at AddGraph because GE tensors cannot carry an input or output: **{len(refused)}** "
        f"(with a clear message: {sum(o.sim_ok for o in refused)}/{len(refused)})",
    ]
    lines.append("")
    lines.append("Refused at AddGraph, by the input or output GE tensors cannot carry:")
    lines.append("")
    lines.extend(_grouped(refused, _refusal_kind))
    lines.append("")
    lines.append("onnxruntime differs from ONNX's expected outputs (the sim gives onnxruntime's):")
    lines.append("")
    lines.extend(f"- `{o.name}`" for o in differs)
    lines.append("")
    lines.append("onnxruntime cannot load or run (by its message):")
    lines.append("")
    lines.extend(_grouped(err, lambda o: _ort_reason(o.detail)))
    return "\n".join(lines)


def _grouped(outcomes: list[Outcome], key: Any) -> list[str]:
    groups: dict[str, list[str]] = collections.defaultdict(list)
    for o in outcomes:
        groups[key(o)].append(o.name)
    return [
        f"- {reason} ({len(names)}): " + ", ".join(f"`{x}`" for x in names)
        for reason, names in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    ]


def _refusal_kind(o: Outcome) -> str:
    d = o.detail
    if d.startswith("non-tensor"):  # "non-tensor input (sequence_type)"
        kind, which = d.removeprefix("non-tensor ").split(" (")
        return f"{which.removesuffix('_type)')} {kind}"
    if "float8" in d:
        return "float8 tensors"
    if "int4" in d or "int2" in d:
        return "2- and 4-bit integer tensors"
    if "string" in d:
        return "string tensors"
    return d


def _ort_reason(detail: str) -> str:
    d = detail
    if "Could not find an implementation" in d:
        return "no CPU kernel for the op at this opset and type"
    if "is not a registered function/op" in d or "Fatal error" in d:
        return "op unknown to onnxruntime"
    if "layout" in d.lower() and "not supported" in d:
        return "batchwise (layout=1) recurrent ops"
    if "locale" in d:
        return "needs a locale this machine lacks"
    if "NOT_IMPLEMENTED" in d:
        return "a feature onnxruntime does not implement"
    if "INVALID_GRAPH" in d or "INVALID_ARGUMENT" in d or "Load model" in d:
        return "model rejected by onnxruntime's checks"
    return "run-time failure in onnxruntime"


# ------------------------------------------------------------------------------------------------
# The test


@pytest.fixture(scope="module")
def report() -> Report:
    return run_suite()


@pytest.mark.slow
def test_node_cases_run_as_onnxruntime_runs_them(report: Report) -> None:
    print("\n" + format_report(report) + f"\n({report.seconds:.1f} s)")
    assert len(report.outcomes) >= MIN_CASES, f"only {len(report.outcomes)} node cases collected"
    assert len(report.by("ort_ok")) >= MIN_CASES, "onnxruntime ran suspiciously few cases"
    stale = set(KNOWN_DIFFERENCES) - {o.name for o in report.outcomes if o.category == "ort_ok"}
    assert not stale, f"KNOWN_DIFFERENCES names cases that are no longer run: {sorted(stale)}"
    failures = [f"{o.name} [{o.category}]: {o.detail}" for o in report.sim_failures]
    assert not failures, f"{len(failures)} case(s) fail on the sim:\n" + "\n".join(failures)


def test_refusals_are_the_io_ge_cannot_carry(report: Report) -> None:
    refused = report.by("refused")
    assert refused, "no case with sequences/optionals/strings: the suite lost its refusal cases"
    assert any(o.detail.startswith("non-tensor") for o in refused)
    assert any("string" in o.detail for o in refused)
    # Every refusal is about the graph's boundary: nothing onnxruntime runs inside is refused.
    assert all(_io_refusal_name(o.detail) for o in refused)


def _io_refusal_name(detail: str) -> bool:
    return detail.startswith(("non-tensor", "input dtype", "output dtype"))


if __name__ == "__main__":
    r = run_suite()
    print(format_report(r))
    print(f"\n({r.seconds:.1f} s)", file=sys.stderr)
