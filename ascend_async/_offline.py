"""Offline models (.om): AscendCL's model API (aclmdl*) on the same run path as graphs.

An :class:`OfflineModel` is a :class:`Graph` whose replicas are model loads
(``aclmdlLoadFromMem``, one per stream: one modelId must never execute on two streams at once)
and whose runs are ``aclmdlExecuteAsync`` (``common/mdl.c``). Its signature and gears come from
the model's description (``aclmdlGetDesc``), never from an ONNX file: on CANN the .om has none.

On the sim an offline model is the sim's own container (``sim/model.c``): the header
``ASCEND_ASYNC simulated offline model``, the gear table and the ONNX bytes, written by
:func:`build_container` (``ascend-async compile`` on the sim). A real .om given to the sim, and
a sim container given to CANN, are refused with a message saying what to do.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ._dtypes import GE_TO_NUMPY
from ._errors import GraphError, InputError
from ._graph import Graph, TensorSpec
from ._memory import DeviceTensor
from ._submit import Descriptor, Replica

if TYPE_CHECKING:
    from ._device import Device
    from ._streams import Stream
    from ._watcher import Watcher

__all__ = ["GEAR_KINDS", "Gears", "OfflineModel", "build_container", "parse_gears"]

#: The sim container's header text (the first 48 bytes, NUL-padded).
SIM_HEADER = b"ASCEND_ASYNC simulated offline model\n"
_HEADER_BYTES = 48
_FIXED = struct.Struct("<IIIIQ")  # version, gear kind, gear count, gear width, ONNX size
_VERSION = 1
#: ATC's .om files start with this magic (ModelFileHeader).
OM_MAGIC = b"IMOD"
#: Gear kinds, as cdefs/offline.h numbers them.
GEAR_KINDS = {"batch": 1, "hw": 2, "dims": 3}
_KIND_NAMES = {v: k for k, v in GEAR_KINDS.items()}
_MAX_GEARS = 128  # ACL_MAX_BATCH_NUM
GEAR_INPUT = "ascend_mbatch_shape_data"


@dataclass(frozen=True)
class Gears:
    """A model's gears: ``kind`` is ``"batch"`` (one batch size per gear), ``"hw"`` (height,
    width) or ``"dims"`` (every dim of every input, in input order)."""

    kind: str
    values: tuple[tuple[int, ...], ...]

    def __str__(self) -> str:
        if self.kind == "batch":
            return "batch sizes " + ", ".join(str(g[0]) for g in self.values)
        if self.kind == "hw":
            return "image sizes " + ", ".join(f"{h}x{w}" for h, w in self.values)
        return "dims " + "; ".join(",".join(map(str, g)) for g in self.values)


def parse_gears(text: str) -> Gears:
    """``batch:1,2,4,8``, ``hw:224,224;448,448`` or ``dims:1,3,8;2,3,8`` (gears by ``;``).

    :raises ValueError: an unknown kind, a value that is not a positive int, an empty table.
    """
    kind, sep, rest = text.partition(":")
    kind = kind.strip()
    if not sep or kind not in GEAR_KINDS:
        raise ValueError(f"gears {text!r}: expected batch:N,N,..., hw:H,W;H,W or dims:D,D,...;D,D,...")
    values: tuple[tuple[int, ...], ...]
    try:
        if kind == "batch":
            values = tuple((int(v),) for v in rest.replace(";", ",").split(",") if v.strip())
        else:
            values = tuple(tuple(int(v) for v in g.split(",")) for g in rest.split(";") if g.strip())
    except ValueError:
        raise ValueError(f"gears {text!r}: every value must be an integer") from None
    return _checked(Gears(kind, values))


def _checked(gears: Gears) -> Gears:
    if not gears.values or len(gears.values) > _MAX_GEARS:
        raise ValueError(f"a model has 1 to {_MAX_GEARS} gears, got {len(gears.values)}")
    width = {len(g) for g in gears.values}
    if len(width) != 1 or (gears.kind == "hw" and width != {2}):
        raise ValueError(f"every {gears.kind} gear needs the same number of values ({gears})")
    if any(v <= 0 for g in gears.values for v in g):
        raise ValueError(f"gear values must be positive ({gears})")
    if len(set(gears.values)) != len(gears.values):
        raise ValueError(f"gears repeat ({gears})")
    return gears


def _dims(vi: Any) -> list[int]:
    """-1 for a symbolic or unknown dim."""
    t = vi.type.tensor_type
    return [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]


def build_container(onnx_bytes: bytes, gears: Gears | None = None, label: str | None = None) -> bytes:
    """The sim's offline model for ``onnx_bytes`` with ``gears`` (sim/model.c's format);
    errors name the model ``label`` (its file), else the ONNX graph's own name.

    Checks what a load would refuse: without gears every input dim must be fixed; a batch
    gear sets exactly dim 0 of every input, an hw gear exactly two dims of an input, and a
    dims gear lists every dim of every input, agreeing with the fixed ones.

    :raises GraphError: the model or the gears do not fit together.
    """
    import onnx

    try:
        model = onnx.load_model_from_string(onnx_bytes)
    except Exception as exc:
        raise GraphError(f"not a valid ONNX model ({type(exc).__name__}: {exc})") from exc
    init = {t.name for t in model.graph.initializer}
    inputs = [(vi.name, _dims(vi)) for vi in model.graph.input if vi.name not in init]
    name = label or model.graph.name or "model"
    _refuse_external_data(model, name)
    if gears is None:
        loose = [n for n, d in inputs if any(v < 0 for v in d)]
        if loose:
            raise GraphError(
                f"{name}: input(s) {', '.join(loose)} have dims that are not fixed; an offline model runs fixed "
                "shapes: give gears (--gears batch:1,2,4 ...) or export the model with fixed shapes"
            )
    else:
        gears = _checked(gears)
        for n, d in inputs:
            free = [i for i, v in enumerate(d) if v < 0]
            if gears.kind == "batch" and free != [0]:
                raise GraphError(
                    f"{name}: input {n} has dims {d}: a batch gear sets dim 0 of every input, which must be the "
                    "only dim that is not fixed"
                )
            if gears.kind == "hw" and len(free) not in (0, 2):
                raise GraphError(f"{name}: input {n} has dims {d}: an hw gear sets exactly two dims (H, W)")
        if gears.kind == "dims":
            flat = [v for _, d in inputs for v in d]
            for g in gears.values:
                if len(g) != len(flat) or any(f >= 0 and f != v for f, v in zip(flat, g, strict=False)):
                    raise GraphError(
                        f"{name}: a dims gear lists every dim of every input ({len(flat)} values, fixed ones as "
                        f"they are: {flat}); got {list(g)}"
                    )
    kind = GEAR_KINDS[gears.kind] if gears else 0
    table = [v for g in gears.values for v in g] if gears else []
    width = len(gears.values[0]) if gears else 0
    head = SIM_HEADER.ljust(_HEADER_BYTES, b"\0")
    fixed = _FIXED.pack(_VERSION, kind, len(gears.values) if gears else 0, width, len(onnx_bytes))
    return head + fixed + struct.pack(f"<{len(table)}q", *table) + onnx_bytes


def _refuse_external_data(model: Any, label: str) -> None:
    """An offline model carries its weights: ONNX bytes that keep tensors in external data are
    refused (they would be read from wherever the loading process happens to be)."""
    from ._graph import _external_data

    try:
        _external_data(model, None)
    except GraphError as exc:
        raise GraphError(
            f"{label}: an offline model must carry its weights, and this ONNX model keeps some in external "
            f"data ({exc}); compile it from its file: ascend-async compile reads them from the model's folder "
            "and embeds them"
        ) from None


def _container_onnx(data: bytes) -> bytes | None:
    """The ONNX bytes inside a sim container, or None when ``data`` is not a well-formed one
    (the sim's loader then says what is wrong)."""
    if not data.startswith(SIM_HEADER) or len(data) < _HEADER_BYTES + _FIXED.size:
        return None
    _, _, n_gears, width, size = _FIXED.unpack_from(data, _HEADER_BYTES)
    start = _HEADER_BYTES + _FIXED.size + 8 * n_gears * width
    return data[start : start + size] if start + size == len(data) else None


def read_source(source: str | os.PathLike[str] | bytes | bytearray | memoryview) -> tuple[bytes, str]:
    """The model's bytes and a label (the file's name, or "model"). A sim container whose ONNX
    model keeps weights in external data is refused here, before any load.

    :raises GraphError: unreadable file, or such a container.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, label = bytes(source), "model"
    elif isinstance(source, (str, os.PathLike)):
        try:
            with open(source, "rb") as f:
                data, label = f.read(), os.path.basename(os.fspath(source))
        except OSError as exc:
            raise GraphError(f"cannot read offline model {os.fspath(source)!r}: {exc}") from exc
    else:
        raise TypeError(f"load_model takes a path or bytes, not {type(source).__name__}")
    inner = _container_onnx(data)
    if inner is not None:
        import onnx

        try:
            model = onnx.load_model_from_string(inner)
        except Exception:  # a corrupt model: the sim's loader says so in its own words
            return data, label
        _refuse_external_data(model, label)
    return data, label


def _refuse_foreign(device: Device, data: bytes, label: str) -> None:
    """The clear refusals: a sim container on CANN (the sim refuses a real .om itself)."""
    if not device.backend.is_sim and data.startswith(SIM_HEADER):
        raise GraphError(
            f"{label}: this is a simulated offline model (made by ascend-async compile on the simulator); CANN "
            "runs .om files built by ATC, or by ascend-async compile on an Ascend host, from the ONNX model"
        )


def load_id(device: Device, data: bytes, label: str) -> int:
    """One load of the model on ``device`` (the calling thread's context is set): its modelId.

    :raises GraphError: the backend refused the model, with its reason.
    """
    _refuse_foreign(device, data, label)
    b = device.backend
    out = b.ffi.new("uint32_t*")
    device.ensure_current()
    rc = b.lib.aclmdlLoadFromMem(data, len(data), out)
    if rc:
        err = b.acl_error(rc, "aclmdlLoadFromMem")
        raise GraphError(f"{label}: {err}") from err
    return int(out[0])


class _NoCheck:
    """An offline model was compiled already: nothing for the ONNX parser check to say."""

    ok = True


class OfflineModel(Graph):
    """An offline model loaded in a session (:meth:`Session.load_model`): usable wherever a
    :class:`Graph` is. Its signature and gears come from the model's description.

    ``gears`` is None for a model with fixed shapes. Inputs are checked before anything is
    submitted; a shape that matches no gear raises :class:`InputError` listing the gears.
    """

    def __init__(self, device: Device, model_id: int, data: bytes, name: str) -> None:
        # Not Graph.__init__: there is no ONNX to read. The description is read once, here.
        b = device.backend
        ffi, lib = b.ffi, b.lib
        self.name = name
        self.model_bytes = data
        self._sync_lock = threading.Lock()  # run_sync's load: one gear-and-execute at a time
        self.external_data_dir = None
        self._external_stamp = None
        self._accepted = None
        desc = lib.aclmdlCreateDesc()
        if desc == ffi.NULL:
            raise GraphError(f"{name}: aclmdlCreateDesc failed")
        work, weight = ffi.new("size_t*"), ffi.new("size_t*")
        b.check(lib.aclmdlQuerySizeFromMem(data, len(data), work, weight), "aclmdlQuerySizeFromMem")
        #: device memory one load of the model takes (aclmdlQuerySizeFromMem): work and weights
        self.work_bytes = int(work[0])
        self.weight_bytes = int(weight[0])
        try:  # everything is read now: the description does not outlive this call
            b.check(lib.aclmdlGetDesc(desc, model_id), "aclmdlGetDesc")
            self._describe(b, desc)
        finally:
            lib.aclmdlDestroyDesc(desc)

    def _describe(self, b: Any, desc: Any) -> None:
        ffi, lib = b.ffi, b.lib
        n_in = int(lib.aclmdlGetNumInputs(desc))
        n_out = int(lib.aclmdlGetNumOutputs(desc))
        names = [ffi.string(lib.aclmdlGetInputNameByIndex(desc, i)).decode() for i in range(n_in)]
        self._gear_input = names.index(GEAR_INPUT) if GEAR_INPUT in names else -1
        #: bytes of the gear input (ascend_mbatch_shape_data), 0 without gears
        self.gear_input_size = (
            int(lib.aclmdlGetInputSizeByIndex(desc, self._gear_input)) if self._gear_input >= 0 else 0
        )
        self.n_model_inputs = n_in
        self.gears = self._read_gears(ffi, lib, desc) if self._gear_input >= 0 else None
        kind = self.gears.kind if self.gears else None
        dims = ffi.new("aclmdlIODims*")
        inputs = []
        self._free_dims: list[list[int]] = []
        for i in range(n_in):
            if i == self._gear_input:
                continue
            b.check(lib.aclmdlGetInputDims(desc, i, dims), "aclmdlGetInputDims")
            shape = [int(dims.dims[k]) for k in range(dims.dimCount)]
            free = [k for k, v in enumerate(shape) if v < 0]
            self._free_dims.append(free)
            sym = {"batch": ["batch"] * len(free), "hw": ["height", "width"]}.get(kind or "", [None] * len(free))
            spec_shape: list[int | str | None] = list(shape)
            for k, sy in zip(free, sym, strict=False):
                spec_shape[k] = sy
            dtype = GE_TO_NUMPY[int(lib.aclmdlGetInputDataType(desc, i))]
            inputs.append(TensorSpec(names[i], np.dtype(dtype), tuple(spec_shape)))
        outputs = []
        sizes = []
        for o in range(n_out):
            b.check(lib.aclmdlGetOutputDims(desc, o, dims), "aclmdlGetOutputDims")
            out_shape = tuple(int(dims.dims[k]) if dims.dims[k] >= 0 else None for k in range(dims.dimCount))
            dtype = GE_TO_NUMPY[int(lib.aclmdlGetOutputDataType(desc, o))]
            name_o = ffi.string(lib.aclmdlGetOutputNameByIndex(desc, o)).decode()
            outputs.append(TensorSpec(name_o, np.dtype(dtype), out_shape))
            sizes.append(int(lib.aclmdlGetOutputSizeByIndex(desc, o)))
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)
        self._input_names = tuple(s.name for s in self.inputs)
        #: per output, the buffer every run gives it (the largest gear's size)
        self.output_sizes = tuple(sizes)
        self._out_sizes = ffi.new("size_t[]", sizes or [0])
        # Output shapes follow from the gear (the input shapes), except value-dependent ones,
        # which every run reads after its event (aa_run.dynamic): safe to cache per signature.
        self.static_outputs = True

    @staticmethod
    def _read_gears(ffi: Any, lib: Any, desc: Any) -> Gears | None:
        batch = ffi.new("aclmdlBatch*")
        if lib.aclmdlGetDynamicBatch(desc, batch) == 0 and batch.batchCount:
            return Gears("batch", tuple((int(batch.batch[i]),) for i in range(batch.batchCount)))
        hw = ffi.new("aclmdlHW*")
        if lib.aclmdlGetDynamicHW(desc, ffi.cast("size_t", -1), hw) == 0 and hw.hwCount:
            return Gears("hw", tuple((int(hw.hw[i][0]), int(hw.hw[i][1])) for i in range(hw.hwCount)))
        count = ffi.new("size_t*")
        if lib.aclmdlGetInputDynamicGearCount(desc, ffi.cast("size_t", -1), count) == 0 and count[0]:
            n = int(count[0])
            arr = ffi.new("aclmdlIODims[]", n)
            if lib.aclmdlGetInputDynamicDims(desc, ffi.cast("size_t", -1), arr, n) == 0:
                return Gears(
                    "dims", tuple(tuple(int(arr[g].dims[k]) for k in range(arr[g].dimCount)) for g in range(n))
                )
        return None

    @property
    def cann_check(self) -> Any:
        return _NoCheck()

    @property
    def model(self) -> Any:
        raise GraphError(f"{self.name}: an offline model has no ONNX graph")

    def explain_refusal(self, detail: str) -> str:
        return detail

    def __repr__(self) -> str:
        ins = ", ".join(map(str, self.inputs))
        outs = ", ".join(map(str, self.outputs))
        gears = f" gears: {self.gears}" if self.gears else ""
        return f"<OfflineModel {self.name!r} ({ins}) -> ({outs}){gears}>"

    # -- gears ------------------------------------------------------------------------------

    def gear_shapes(self) -> list[dict[str, tuple[int, ...]]]:
        """Each gear's input shapes, smallest gear first (what a warm-up runs); [] without gears."""
        g = self.gears
        if g is None:
            return []
        out = []
        for gear in sorted(g.values):
            shapes: dict[str, tuple[int, ...]] = {}
            flat = iter(gear)
            for spec, free in zip(self.inputs, self._free_dims, strict=True):
                assert spec.shape is not None
                if g.kind == "dims":
                    shapes[spec.name] = tuple(next(flat) for _ in spec.shape)
                    continue
                dims = [d if isinstance(d, int) else 0 for d in spec.shape]
                for k, v in zip(free, gear * len(free) if g.kind == "batch" else gear, strict=False):
                    dims[k] = v
                shapes[spec.name] = tuple(dims)
            out.append(shapes)
        return out

    def gear_of(self, values: Sequence[Any]) -> tuple[int, ...] | None:
        """The gear these (bound) inputs select, or None for a model without gears.

        :raises InputError: the shapes match no gear (the message lists them).
        """
        g = self.gears
        if g is None:
            return None
        if g.kind == "dims":
            gear = tuple(int(d) for v in values for d in v.shape)
        else:
            firsts = [
                tuple(int(v.shape[k]) for k in free) for v, free in zip(values, self._free_dims, strict=True) if free
            ]
            gear = firsts[0] if firsts else ()
            if g.kind == "batch":
                gear = gear[:1]
        if gear not in g.values:
            shapes = ", ".join(f"{s.name}{tuple(v.shape)}" for s, v in zip(self.inputs, values, strict=True))
            raise InputError(f"{self.name}: input shapes {shapes} match no gear of the model; its gears are {g}")
        return gear

    def _bind(self, inputs: Mapping[str, Any] | Sequence[Any]) -> list[np.ndarray | DeviceTensor]:
        values = super()._bind(inputs)
        try:
            self.gear_of(values)
        except InputError:
            self._accepted = None  # a shape that fits no gear is never the fast path's signature
            raise
        return values

    def batcher_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """A batch-gear model's batcher: batches padded to the smallest gear that holds them
        (``pad_to_preferred`` over the gears), at most the largest gear."""
        if self.gears is None or self.gears.kind != "batch":
            return params
        sizes = sorted(v[0] for v in self.gears.values)
        top = params.get("max_batch_size", sizes[-1])
        if not isinstance(top, int) or top > sizes[-1]:
            raise ValueError(
                f"max_batch_size={top!r}: {self.name!r} runs batches of at most {sizes[-1]} ({self.gears})"
            )
        out = dict(params)
        out.setdefault("max_batch_size", top)
        if not out.get("preferred_batch_sizes"):  # unset, None or empty (bench without --batch-preferred)
            out["preferred_batch_sizes"] = [s for s in sizes if s <= top] or [top]
        out["pad_to_preferred"] = True
        if top not in out["preferred_batch_sizes"] or any(s not in sizes for s in out["preferred_batch_sizes"]):
            raise ValueError(f"{self.name!r}: preferred_batch_sizes must be gears of the model ({self.gears})")
        return out


class ModelReplica(Replica):
    """An offline model's load on one stream: each descriptor's aa_run carries an aa_mdl_run
    (its datasets, made on its first run, destroyed at unload)."""

    __slots__ = ("_desc", "_mdl", "model")
    is_model = True

    def __init__(self, device: Device, model_id: int, stream: Stream, model: OfflineModel) -> None:
        names = [s.name for s in model.outputs]
        super().__init__(device, device.backend.ffi.NULL, model_id, stream, names, len(model.inputs), static=True)
        self.model = model
        self._mdl: list[Any] = []  # every aa_mdl_run made (kept alive; destroyed at unload)
        # This load's own description: its current gear (aclmdlGetCurOutputDims) is per modelId.
        b = device.backend
        desc = b.lib.aclmdlCreateDesc()
        if desc == b.ffi.NULL:
            raise GraphError(f"{model.name}: aclmdlCreateDesc failed")
        self._desc = b.ffi.gc(desc, b.lib.aclmdlDestroyDesc)
        b.check(b.lib.aclmdlGetDesc(desc, model_id), "aclmdlGetDesc")

    def take(self, watcher: Watcher) -> Descriptor:
        if self._free:
            return self._free.pop()
        desc = super().take(watcher)
        ffi, lib = self.device.backend.ffi, self.device.backend.lib
        m = ffi.new("aa_mdl_run*")
        model = self.model
        m.model_id = self.graph_id
        m.desc = self._desc
        m.n_model_inputs = model.n_model_inputs
        m.gear_input = model._gear_input
        m.gear_kind = lib.AA_GEAR_NONE if model.gears is None else GEAR_KINDS[model.gears.kind]
        m.out_sizes = model._out_sizes
        desc.run.model = m
        self._mdl.append(m)
        return desc

    def set_gear(self, desc: Descriptor, values: Sequence[Any]) -> None:
        """This run's gear into its descriptor (bind checked it is one)."""
        gear = self.model.gear_of(values)
        if gear is None:
            return
        m = desc.run.model
        kind = self.model.gears.kind  # type: ignore[union-attr]
        if kind == "batch":
            m.batch = gear[0]
        elif kind == "hw":
            m.height, m.width = gear
        else:
            m.dims.dimCount = len(gear)
            m.dims.dims[0 : len(gear)] = gear

    def busy(self) -> int:
        """Runs of this load not yet completed (descriptors out)."""
        return len(self._mdl) - len(self._free)

    def destroy(self) -> None:
        """Its datasets and description go (the load is unloaded by the caller)."""
        b = self.device.backend
        for m in self._mdl:
            b.lib.aa_mdl_run_destroy(m)
        self._mdl.clear()
        self._free.clear()
        if self._desc is not None:
            b.ffi.release(self._desc)
            self._desc = None


def unload(device: Device, model_id: int) -> None:
    """aclmdlUnload (the caller made sure no run of this load is in flight)."""
    b = device.backend
    device.ensure_current()
    b.check(b.lib.aclmdlUnload(model_id), "aclmdlUnload")


def compile_model(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    gears: str | None = None,
    options: Mapping[str, str] | None = None,
) -> str:
    """``ascend-async compile``: check the ONNX model as CANN's parser would, then build the
    offline model. On the sim: the sim's container (``options`` are not used). On CANN: GE's
    build API (aclgrphBuildInitialize with the ``ge.*`` global options such as
    ``ge.socVersion``, which GE requires; aclgrphBuildModel with ``input_shape`` and the gear
    options; aclgrphSaveModel). Returns one line saying what was written.

    :raises GraphError: the check refused the model, the gears do not fit it, or GE refused it.
    :raises ValueError: unreadable gears. :raises OSError: unreadable or unwritable files.
    """
    from ._backend import get_backend
    from ._cann_check import check_model

    check = check_model(os.fspath(source))
    if not check.ok:
        raise GraphError(f"{os.fspath(source)}: {check.refusal()} (fix it first: ascend-async check --fix)")
    table = parse_gears(gears) if gears else None
    onnx_bytes = _self_contained(source)
    # checks the gears against the model on both backends
    data = build_container(onnx_bytes, table, os.path.basename(os.fspath(source)))
    backend = get_backend()
    if backend.is_sim:
        with open(output, "wb") as f:
            f.write(data)
        return f"{os.fspath(output)}: simulated offline model, {len(data)} bytes" + (
            f", gears: {table}" if table else ""
        )
    return _ge_build(backend, onnx_bytes, os.fspath(output), table, dict(options or {}))


def _self_contained(source: str | os.PathLike[str]) -> bytes:
    """The ONNX model at ``source`` with any external data read from the model's own folder
    (the locations checked as add_graph checks them) and embedded, as bytes.

    :raises GraphError: a refused location, or a model that would pass protobuf's 2 GiB.
    """
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    from ._graph import _external_data

    path = os.fspath(source)
    with open(path, "rb") as f:
        raw = f.read()
    model = onnx.load_model_from_string(raw)
    folder = os.path.dirname(os.path.abspath(path))
    if _external_data(model, folder) is None:  # refuses absolute, "..", escaping links
        return raw
    load_external_data_for_model(model, folder)
    if model.ByteSize() >= 2**31:
        raise GraphError(
            f"{os.path.basename(path)}: with its external data embedded the model passes protobuf's 2 GiB limit, "
            "which an offline model built from ONNX cannot exceed"
        )
    return bytes(model.SerializeToString())


def _ge_build(backend: Any, onnx_bytes: bytes, output: str, gears: Gears | None, options: dict[str, str]) -> str:
    """GE's build API through the CANN module (cdefs/om_build.h)."""
    import onnx

    if "ge.socVersion" not in options:
        raise GraphError(
            "building an .om needs the target chip: pass --options ge.socVersion=NAME (the chip's name, as "
            "npu-smi info shows it, e.g. Ascend910B1)"
        )
    model = onnx.load_model_from_string(onnx_bytes)
    init = {t.name for t in model.graph.initializer}
    inputs = [(vi.name, _dims(vi)) for vi in model.graph.input if vi.name not in init]
    build = {"input_shape": ";".join(f"{n}:{','.join(map(str, d))}" for n, d in inputs)}
    if gears is not None:
        if gears.kind == "batch":
            build["ge.dynamicBatchSize"] = ",".join(str(g[0]) for g in gears.values)
        elif gears.kind == "hw":
            build["ge.dynamicImageSize"] = ";".join(f"{h},{w}" for h, w in gears.values)
        else:  # GE lists only the values of the -1 dims, in order
            free = [k for k, v in enumerate(v for _, d in inputs for v in d) if v < 0]
            build["ge.dynamicDims"] = ";".join(",".join(str(g[k]) for k in free) for g in gears.values)
    glob = {k: v for k, v in options.items() if k.startswith("ge.")}
    build.update({k: v for k, v in options.items() if not k.startswith("ge.")})
    ffi, lib = backend.ffi, backend.lib
    keep: list[Any] = []

    def arr(opts: dict[str, str]) -> Any:
        a = ffi.new("aa_option[]", max(len(opts), 1))
        for i, (k, v) in enumerate(opts.items()):
            keep.extend([ffi.new("char[]", k.encode()), ffi.new("char[]", v.encode())])
            a[i].key, a[i].value = keep[-2], keep[-1]
        return a

    prefix = output[:-3] if output.endswith(".om") else output  # GE appends ".om"
    status = lib.aa_om_build(onnx_bytes, len(onnx_bytes), arr(glob), len(glob), arr(build), len(build), prefix.encode())
    if status:
        err = backend.ge_error(status, "aclgrphBuildModel")
        raise GraphError(f"{output}: GE could not build the offline model: {err}") from err
    written = prefix + ".om"
    size = os.path.getsize(written)
    return f"{written}: offline model built by GE ({options['ge.socVersion']}), {size} bytes" + (
        f", gears: {gears}" if gears else ""
    )
