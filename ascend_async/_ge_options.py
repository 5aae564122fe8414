"""GE's options: the one table of those the library accepts, their levels and values, and the check
that every ``options=`` mapping passes before anything is created.

GE takes options at three levels (hicann/ge ``options_params/overall_constraints.md``): *global*
(GEInitialize: :func:`ascend_async.set_ge_options`, before the first session), *session* (the
GeSession constructor: ``Session(options=...)``) and *graph* (AddGraph:
``session.add_graph(src, options=...)``). Each entry below names the page of
``docs/zh/api/graph_engine_api/cpp/ge/options_params/`` it comes from (its 生效级别 gives the
levels, its 参数取值 the values) and what the simulated device does with it. Options the sim does
not act on are still checked, passed on, and recorded (``Session.ge_options``,
``backend_info()["ge_options"]``), so a typo fails here on every backend instead of reaching GE.

Keys starting with ``sim.`` are the sim's own (never passed to GE); see ``_session._sim_options``.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = ["GLOBAL", "GRAPH", "LEVELS", "OPTIONS", "SESSION", "GeOption", "parse_gears", "validate"]

GLOBAL, SESSION, GRAPH = "global", "session", "graph"
LEVELS = (GLOBAL, SESSION, GRAPH)
_DOCS = "hicann/ge docs/zh/api/graph_engine_api/cpp/ge/options_params/"

#: What the sim does with an option (the README's options table reads these).
HONOURED, RECORDED, LIBRARY = "honoured", "recorded", "set by the library"


@dataclass(frozen=True)
class GeOption:
    """One GE option: its name, the levels GE reads it at, its values (None: a format that
    ``check`` verifies, described by ``form``), its source page, and the sim's treatment."""

    name: str
    levels: tuple[str, ...]
    values: tuple[str, ...] | None
    doc: str
    sim: str
    sim_note: str = ""
    form: str = ""
    check: Callable[[str], bool] | None = None

    def allowed(self) -> str:
        """The allowed values, as a message shows them."""
        if self.values is not None:
            return ", ".join(map(repr, self.values))
        return self.form


def _int_range(lo: int, hi: int | None = None) -> Callable[[str], bool]:
    def check(v: str) -> bool:
        if not re.fullmatch(r"-?[0-9]+", v):
            return False
        n = int(v)
        return n >= lo and (hi is None or n <= hi)

    return check


def _aicore(v: str) -> bool:
    # "cube|vector" (A2/A3/950), "n|" or "n" (Atlas inference/training): every number > 0
    m = re.fullmatch(r"([0-9]+)(?:\|([0-9]*))?", v)
    if m is None:
        return False
    return int(m.group(1)) > 0 and (not m.group(2) or int(m.group(2)) > 0)


def _json_object(v: str) -> bool:
    try:
        return isinstance(json.loads(v), dict)
    except ValueError:
        return False


def _dump_step(v: str) -> bool:
    if v == "None":
        return True
    if not re.fullmatch(r"[0-9]+(-[0-9]+)?(\|[0-9]+(-[0-9]+)?)*", v):
        return False
    # a range runs upwards ("5-2" would dump nothing)
    return all(int(lo) <= int(hi) for lo, _, hi in (p.partition("-") for p in v.split("|")) if hi)


def _non_empty(v: str) -> bool:
    return bool(v.strip())


def _input_shape(v: str) -> bool:
    # "name:d0,d1;name2:;..." with -1 for the dims that vary (an empty list: a scalar input)
    return bool(re.fullmatch(r"[^:;]+:(-?[0-9]+(,-?[0-9]+)*)?(;[^:;]+:(-?[0-9]+(,-?[0-9]+)*)?)*", v))


def _dynamic_dims(v: str) -> bool:
    return bool(re.fullmatch(r"[0-9]+(,[0-9]+)*(;[0-9]+(,[0-9]+)*)*", v))


_ALL = (GLOBAL, SESSION, GRAPH)
_GS = (GLOBAL, SESSION)

OPTIONS: dict[str, GeOption] = {
    o.name: o
    for o in (
        GeOption(
            "ge.exec.precision_mode_v2",
            _ALL,
            ("fp16", "origin", "cube_fp16in_fp32out", "mixed_float16", "mixed_bfloat16", "mixed_hif8", "cube_hif8"),
            "precision_tuning.md",
            RECORDED,
            "the sim computes in the graph's own dtypes (onnxruntime)",
        ),
        GeOption(
            "ge.exec.precision_mode",
            _ALL,
            (
                "force_fp32",
                "cube_fp16in_fp32out",
                "force_fp16",
                "allow_fp32_to_fp16",
                "must_keep_origin_dtype",
                "allow_mix_precision",
                "allow_mix_precision_fp16",
                "allow_mix_precision_bf16",
                "allow_fp32_to_bf16",
            ),
            "precision_tuning.md",
            RECORDED,
            "the sim computes in the graph's own dtypes; GE refuses it beside ge.exec.precision_mode_v2",
        ),
        GeOption(
            "ge.aicoreNum",
            _GS,
            None,
            "operator_and_graph_compilation.md",
            RECORDED,
            "the sim has no AI cores; its streams run on its device worker threads",
            form='"CUBE|VECTOR" (e.g. "12|10"), or "N|" / "N" on Atlas inference/training parts; numbers > 0',
            check=_aicore,
        ),
        GeOption(
            "ge.oo.level",
            _ALL,
            ("O1", "O3"),
            "experimental_parameters.md",
            RECORDED,
            "onnxruntime applies all its graph optimisations",
        ),
        GeOption(
            "ge.exec.staticMemoryPolicy",
            _GS,
            ("0", "1", "2", "3", "4"),
            "memory_management.md",
            RECORDED,
            "the sim's memory is the caching pool's (1 is GE's legacy spelling of 2)",
        ),
        GeOption(
            "ge.exec.enableDump",
            _GS,
            ("0", "1"),
            "precision_comparison.md",
            HONOURED,
            "each run's inputs/outputs as .npz under ge.exec.dumpPath, one folder per graph (GE dumps per op)",
        ),
        GeOption(
            "ge.exec.dumpPath",
            _GS,
            None,
            "precision_comparison.md",
            HONOURED,
            "the folder the sim's dump writes into (created if missing)",
            form="a folder path",
            check=_non_empty,
        ),
        GeOption(
            "ge.exec.dumpMode",
            _GS,
            ("input", "output", "all"),
            "precision_comparison.md",
            HONOURED,
            "which of a run's tensors the dump writes (default output, as GE's)",
        ),
        GeOption(
            "ge.exec.dumpStep",
            _GS,
            None,
            "precision_comparison.md",
            HONOURED,
            "which runs (0-based, per graph) are dumped",
            form='"None" (every run) or steps like "0|3-5|10"',
            check=_dump_step,
        ),
        GeOption(
            "ge.exec.profilingMode",
            (GLOBAL,),
            ("0", "1"),
            "Profiling.md",
            HONOURED,
            "1: every run of every session is traced (device events, as session.trace), one Chrome trace per "
            "session written at close under profilingOptions' output",
        ),
        GeOption(
            "ge.exec.profilingOptions",
            (GLOBAL,),
            None,
            "Profiling.md",
            HONOURED,
            "its output folder receives the sim's traces (default: the working directory, as GE's); the other "
            "collection switches are recorded",
            form='a JSON object, e.g. {"output": "/tmp/prof", "training_trace": "on"}',
            check=_json_object,
        ),
        GeOption(
            "ge.inputShape",
            (SESSION, GRAPH),
            None,
            "dynamic_shape.md",
            HONOURED,
            "with ge.dynamicDims: runs at shapes outside the gears are refused",
            form='"name:d0,d1,...;name2:..." with -1 for the dims the gears set (e.g. "x:-1,3,224,224")',
            check=_input_shape,
        ),
        GeOption(
            "ge.dynamicDims",
            (SESSION, GRAPH),
            None,
            "dynamic_shape.md",
            HONOURED,
            "the gears: one value per -1 of ge.inputShape, per gear",
            form='gears separated by ";", the dims of one gear by "," (e.g. "1;8;32"); 2 to 100 gears',
            check=_dynamic_dims,
        ),
        GeOption(
            "ge.dynamicNodeType",
            (SESSION, GRAPH),
            ("0", "1"),
            "dynamic_shape.md",
            RECORDED,
            "ONNX graphs have one kind of input",
        ),
        GeOption(
            "ge.graphRunMode",
            _GS,
            ("0", "1"),
            "basic_functions.md",
            LIBRARY,
            "GEInitialize gets 0 (online inference) unless set_ge_options says otherwise",
        ),
        GeOption(
            "ge.exec.deviceId",
            (GLOBAL,),
            None,
            "basic_functions.md",
            RECORDED,
            "sessions name their device (Session(device_id=...))",
            form="a logical device id, -1 or more",
            check=_int_range(-1),
        ),
        GeOption(
            "ge.session_device_id",
            (SESSION,),
            None,
            "basic_functions.md",
            LIBRARY,
            "Session(device_id=...) sets it",
            form="Session(device_id=...) sets it",
            check=lambda v: False,
        ),
        GeOption(
            "ge.deterministic",
            (GLOBAL,),
            ("0", "1"),
            "basic_functions.md",
            RECORDED,
            "the sim's graph runs are deterministic for a given engine_threads",
        ),
        GeOption(
            "ge.enableSingleStream",
            (GRAPH,),
            ("true", "false"),
            "basic_functions.md",
            RECORDED,
            "a graph runs on one onnxruntime session per stream",
        ),
    )
}


def _closest(key: str) -> str:
    close = difflib.get_close_matches(key, list(OPTIONS), n=1, cutoff=0.5)
    if not close:  # a prefix or case slip: compare without case
        low = {k.lower(): k for k in OPTIONS}
        close = [low[m] for m in difflib.get_close_matches(key.lower(), list(low), n=1, cutoff=0.4)]
    return f"; the closest known key is {close[0]!r}" if close else ""


def validate(
    options: Mapping[str, object] | None, level: str, inherited: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The options, checked for GE's ``level`` ("global", "session" or "graph"): known keys,
    allowed at that level, with allowed values, and consistent with each other. Returns them as
    ``{str: str}`` (GE takes strings; ints and bools are not guessed at: pass "1", "true").

    :raises ValueError: naming the key, what is allowed (values, or the levels it belongs to)
        and, for an unknown key, the closest known one. Nothing has been created. ``inherited``
        (the levels above: a session inherits the global options) joins the checks between options.
    :raises TypeError: not a mapping of str keys to str values.
    """
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise TypeError(f"options must be a mapping of str keys to str values, not {type(options).__name__}")
    out: dict[str, str] = {}
    for key, value in options.items():
        if not isinstance(key, str):
            raise TypeError(f"option keys are str, not {key!r}")
        opt = OPTIONS.get(key)
        if opt is None:
            raise ValueError(
                f"unknown GE option {key!r}{_closest(key)} (supported: the table in ascend_async._ge_options, "
                f"from {_DOCS})"
            )
        if level not in opt.levels:
            where = {
                GLOBAL: "ascend_async.set_ge_options",
                SESSION: "Session(options=...)",
                GRAPH: "add_graph(options=...)",
            }
            takes = " or ".join(f"{lv} ({where[lv]})" for lv in opt.levels)
            raise ValueError(
                f"GE option {key!r} is not a {level} option: GE reads it at the {takes} level ({_DOCS}{opt.doc})"
            )
        if not isinstance(value, str):
            raise TypeError(f"GE option {key!r}: values are str (GE takes strings), not {value!r}")
        ok = value in opt.values if opt.values is not None else (opt.check is not None and opt.check(value))
        if not ok:
            raise ValueError(
                f"GE option {key!r}: {value!r} is not allowed; allowed: {opt.allowed()} ({_DOCS}{opt.doc})"
            )
        out[key] = value
    merged = {**(inherited or {}), **out}
    if "ge.exec.precision_mode" in merged and "ge.exec.precision_mode_v2" in merged:
        raise ValueError(
            "GE options 'ge.exec.precision_mode' and 'ge.exec.precision_mode_v2' exclude each other; "
            f"allowed: one of them (GE recommends ge.exec.precision_mode_v2; {_DOCS}precision_tuning.md)"
        )
    if merged.get("ge.exec.enableDump") == "1" and "ge.exec.dumpPath" not in merged:
        raise ValueError(
            "GE option 'ge.exec.enableDump' is '1' without 'ge.exec.dumpPath': allowed: set ge.exec.dumpPath "
            f"beside it ({_DOCS}precision_comparison.md)"
        )
    if ("ge.inputShape" in out) != ("ge.dynamicDims" in out):
        have, need = (
            ("ge.inputShape", "ge.dynamicDims") if "ge.inputShape" in out else ("ge.dynamicDims", "ge.inputShape")
        )
        raise ValueError(f"GE option {have!r} needs {need!r} beside it (gears: {_DOCS}dynamic_shape.md)")
    if "ge.inputShape" in out:
        parse_gears(out["ge.inputShape"], out["ge.dynamicDims"])
    return out


#: A gear: each input's full shape at that gear.
Gear = dict[str, tuple[int, ...]]


def parse_gears(input_shape: str, dynamic_dims: str) -> list[Gear]:
    """The gears ``ge.inputShape`` + ``ge.dynamicDims`` describe: for each gear, every input's
    shape (the -1 dims of ``ge.inputShape`` filled, in order, from that gear's dims).

    :raises ValueError: a gear with the wrong number of dims (one per -1), fewer than 2 or more
        than 100 gears (GE's bounds on A2/A3 and Atlas parts), a repeated gear or input.
    """
    template: list[tuple[str, list[int]]] = []
    for part in input_shape.split(";"):
        name, _, dims = part.partition(":")
        shape = [int(d) for d in dims.split(",")] if dims else []
        if any(d < -1 for d in shape):
            raise ValueError(f"ge.inputShape {input_shape!r}: input {name!r} has a dim below -1")
        if name in (n for n, _ in template):
            raise ValueError(f"ge.inputShape {input_shape!r}: input {name!r} is listed twice")
        template.append((name, shape))
    holes = sum(d == -1 for _, s in template for d in s)
    if holes == 0:
        raise ValueError(f"ge.inputShape {input_shape!r} has no -1 dim for ge.dynamicDims to set")
    gears_text = dynamic_dims.split(";")
    if not 2 <= len(gears_text) <= 100:
        raise ValueError(
            f"ge.dynamicDims {dynamic_dims!r}: {len(gears_text)} gear(s); allowed: 2 to 100 gears "
            f"({_DOCS}dynamic_shape.md)"
        )
    gears: list[Gear] = []
    for g in gears_text:
        vals = [int(v) for v in g.split(",")]
        if len(vals) != holes:
            raise ValueError(
                f"ge.dynamicDims {dynamic_dims!r}: gear {g!r} has {len(vals)} dim(s); ge.inputShape "
                f"{input_shape!r} has {holes} -1 dim(s), one value each"
            )
        if any(v < 1 for v in vals):
            raise ValueError(f"ge.dynamicDims {dynamic_dims!r}: gear {g!r} has a dim below 1")
        it = iter(vals)
        gear = {name: tuple(next(it) if d == -1 else d for d in shape) for name, shape in template}
        if gear in gears:
            raise ValueError(f"ge.dynamicDims {dynamic_dims!r}: gear {g!r} is listed twice")
        gears.append(gear)
    return gears


def gears_to_options(gears: Mapping[str, object]) -> dict[str, str]:
    """``add_graph(gears={name: [shape, ...]})`` as GE's ``ge.inputShape`` / ``ge.dynamicDims``:
    every input lists one shape per gear (all the same count); the dims that differ between
    gears become -1.

    :raises ValueError: inputs with different gear counts or ranks across gears, a dim below 1.
    :raises TypeError: not a mapping of names to sequences of int tuples.
    """
    if not isinstance(gears, Mapping) or not gears:
        raise TypeError(f"gears must be a non-empty mapping of input names to lists of shapes, not {gears!r}")
    shapes: dict[str, list[tuple[int, ...]]] = {}
    for name, lst in gears.items():
        if not isinstance(name, str) or isinstance(lst, (str, bytes)):
            raise TypeError(f"gears: {name!r} -> {lst!r}: expected an input name and a list of shapes")
        try:
            shapes[name] = [tuple(int(d) for d in s) for s in lst]  # type: ignore[attr-defined]
        except (TypeError, ValueError):
            raise TypeError(f"gears[{name!r}] must be a list of shapes (tuples of ints), not {lst!r}") from None
    counts = {n: len(v) for n, v in shapes.items()}
    if len(set(counts.values())) != 1:
        raise ValueError(f"gears: every input lists one shape per gear; the counts differ: {counts}")
    template: list[str] = []
    dyn: list[list[int]] = [[] for _ in range(next(iter(counts.values())))]
    for name, lst in shapes.items():
        ranks = {len(s) for s in lst}
        if len(ranks) != 1:
            raise ValueError(f"gears[{name!r}]: the shapes differ in rank: {lst}")
        if any(d < 1 for s in lst for d in s):
            raise ValueError(f"gears[{name!r}]: every dim must be >= 1: {lst}")
        dims = []
        for axis in range(ranks.pop()):
            col = [s[axis] for s in lst]
            if len(set(col)) == 1:
                dims.append(str(col[0]))
            else:
                dims.append("-1")
                for i, v in enumerate(col):
                    dyn[i].append(v)
        template.append(f"{name}:{','.join(dims)}")
    if not dyn[0]:
        if len(dyn) == 1:
            raise ValueError(
                f"gears: one gear ({shapes}) fixes the shapes: give two or more, or no gears and inputs of that shape"
            )
        raise ValueError(f"gears: the shapes are the same in every gear ({shapes}); a static graph needs no gears")
    return {"ge.inputShape": ";".join(template), "ge.dynamicDims": ";".join(",".join(map(str, g)) for g in dyn)}


def table_markdown() -> str:
    """The README's options table, from :data:`OPTIONS`."""
    rows = ["| option | levels | values | on the sim |", "| --- | --- | --- | --- |"]
    for o in OPTIONS.values():
        vals = ", ".join(f"`{v}`" for v in o.values) if o.values is not None else o.form.replace("|", "\\|")
        note = f"**{o.sim}**: {o.sim_note}" if o.sim_note else f"**{o.sim}**"
        rows.append(f"| `{o.name}` | {'/'.join(o.levels)} | {vals} | {note} (`{o.doc}`) |")
    return "\n".join(rows)
