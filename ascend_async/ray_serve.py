"""Ray Serve across hosts: replicas that each own one NPU, batch on their event loop, and serve HTTP.

Needs the ``[ray]`` extra (``pip install 'ascend-async[ray]'``). Ray knows Ascend NPUs as the
``NPU`` resource and sets ``ASCEND_RT_VISIBLE_DEVICES`` for each worker, so a replica asking for
``{"NPU": 1}`` sees exactly its device as logical device 0 (on CANN and on the sim alike).

.. code-block:: python

    from ray import serve
    from ascend_async.ray_serve import npu_app

    app = npu_app("cnn.onnx", num_replicas=2, max_batch_size=32, max_delay_ms=2)
    serve.run(app, route_prefix="/cnn")
    # POST /cnn  {"inputs": {"x": [[...]]}}  ->  {"outputs": {"y": [[...]]}}

Each replica runs one :class:`Session` and one :class:`Batcher` on the replica's asyncio loop:
requests arriving concurrently at a replica are batched there. The batching parameters and the
HTTP limits can be changed while serving through Serve's ``user_config`` (``reconfigure``).

HTTP answers (:meth:`NPUModel.respond`, a plain coroutine from body and headers to a status and
a JSON object, so it is tested without Ray): 200 with the outputs; 400 naming the problem (bad
JSON, an empty body, anything but ``{"inputs": {name: nested list of numbers}}``, an unknown or
missing input, a wrong shape, numbers that do not fit the input's dtype); 405 for a method other
than POST; 413 for a body over ``max_body_bytes``; 503 with ``Retry-After`` when the replica
sheds the request (``max_pending`` requests already wait at it, its ``request_timeout_s``
passed, it is shutting down, or the device failed the batch); 500 only for a failure of ours,
logged with the request id, which the answer carries.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import math
import os
import uuid
from collections.abc import AsyncIterable, Mapping, Sequence
from contextlib import aclosing
from typing import Any

import anyio
import numpy as np

from ._errors import AscendError, GraphError, InputError, SessionClosedError
from ._graph import GraphSource, TensorSpec
from ._pool import device_count
from ._session import Session

__all__ = ["DEFAULT_MAX_BODY_BYTES", "HttpError", "NPUModel", "npu_app", "parse_inputs", "require_serve"]

#: The default cap on a request body (4 MiB): about a million float32 values as JSON text.
DEFAULT_MAX_BODY_BYTES = 4 * 2**20
_SERVING_KEYS = ("max_body_bytes", "max_pending", "request_timeout_s")

log = logging.getLogger("ascend_async.ray_serve")


def require_serve() -> Any:
    """The ``ray.serve`` module.

    :raises ImportError: Ray Serve is not installed; the message says ``pip install 'ascend-async[ray]'``.
    """
    try:
        from ray import serve
    except ImportError as exc:
        raise ImportError(
            "the Ray Serve integration needs Ray Serve: pip install 'ray[serve]' (the [ray] extra; from a clone: "
            "pip install '.[ray]')"
        ) from exc
    return serve


class HttpError(Exception):
    """A request answered with an HTTP error ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


_USAGE = 'expected a JSON object {"inputs": {name: nested list of numbers}}'


def _is_float(dtype: np.dtype[Any]) -> bool:
    return dtype.kind == "f" or dtype.name == "bfloat16"  # ml_dtypes' bfloat16 has kind 'V'


def _array(spec: TensorSpec, value: Any) -> np.ndarray:
    """One input from its JSON value, exactly representable in the input's dtype, or HttpError(400)."""
    name, dtype = spec.name, spec.dtype
    if isinstance(value, dict):
        raise HttpError(400, f"input {name!r} is a JSON object; expected a nested list of numbers ({spec})")
    try:
        raw = np.asarray(value)
    except ValueError as exc:  # ragged lists, more than 64 dims
        raise HttpError(400, f"input {name!r} is not a rectangular nested list of numbers: {exc}") from None
    kind = raw.dtype.kind
    if kind not in "biuf":
        what = "strings" if kind in "US" else "nulls, objects, mixed types or integers beyond 64 bits"
        raise HttpError(400, f"input {name!r} holds {what}; expected numbers for {spec}")
    if dtype.kind == "b":
        if kind != "b":
            raise HttpError(400, f"input {name!r} is {dtype}: expected true/false, got numbers")
        return np.require(raw, requirements="C")
    if kind == "b":
        raise HttpError(400, f"input {name!r} is {dtype}: expected numbers, got true/false")
    if dtype.kind in "iu":
        if kind == "f":
            raise HttpError(400, f"input {name!r} is {dtype}: expected integers, got non-integer numbers")
        info = np.iinfo(dtype)
        if raw.size and (int(raw.min()) < info.min or int(raw.max()) > info.max):
            raise HttpError(400, f"input {name!r} is {dtype}: a value is outside [{info.min}, {info.max}]")
        return np.require(raw.astype(dtype), requirements="C")
    if not _is_float(dtype):  # cannot happen: a Graph's inputs are GE dtypes
        raise HttpError(400, f"input {name!r} has dtype {dtype}, which JSON numbers cannot fill")
    with np.errstate(over="ignore", invalid="ignore"):
        out = raw.astype(dtype)
    if raw.size and kind == "f" and np.any(np.isfinite(raw) & ~np.isfinite(out.astype(np.float64))):
        raise HttpError(400, f"input {name!r} is {dtype}: a finite value overflows it")
    return np.require(out, requirements="C")


def parse_inputs(body: bytes, specs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
    """A request body ``{"inputs": {name: nested list}}`` as numpy inputs in the graph's dtypes.

    :raises HttpError: (400) naming the problem: an empty body, bad JSON or UTF-8, nesting past
        Python's limit, another shape of document, an unknown or missing input, values that are not
        numbers of the input's kind (floats for an int input, booleans for a float one, ...) or do
        not fit its dtype. Shapes are checked by the batcher (InputError).
    """
    if not body.strip():
        raise HttpError(400, f"empty body; {_USAGE}")
    try:
        doc = json.loads(body)
    except RecursionError:
        raise HttpError(400, "the JSON body is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise HttpError(400, f"the body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise HttpError(400, f"the body is a JSON {type(doc).__name__}; {_USAGE}")
    raw = doc.get("inputs")
    if not isinstance(raw, dict):
        what = "has no 'inputs'" if raw is None else f"has 'inputs' as a JSON {type(raw).__name__}"
        raise HttpError(400, f"the body {what}; {_USAGE}")
    by_name = {s.name: s for s in specs}
    takes = ", ".join(map(str, specs))
    for name in raw:
        if name not in by_name:
            raise HttpError(400, f"unknown input {name!r}; the model takes {takes}")
    for spec in specs:
        if spec.name not in raw:
            raise HttpError(400, f"missing input {spec.name!r}; the model takes {takes}")
    return {s.name: _array(s, raw[s.name]) for s in specs}


def _jsonable(a: np.ndarray) -> Any:
    if a.dtype.name == "bfloat16":
        a = a.astype(np.float32)  # exact, and plain floats on every ml_dtypes version
    return a.tolist()


def _declared_length(headers: Mapping[str, str]) -> int | None:
    """The ``Content-Length`` header's byte count, or None. :raises HttpError: (400) not a number."""
    declared = headers.get("content-length")
    if declared is None:
        return None
    if not declared.strip().isdigit():
        raise HttpError(400, f"Content-Length {declared!r} is not a byte count")
    return int(declared)


def _request_id(headers: Mapping[str, str]) -> str:
    """Serve's request id (its proxy sets ``x-request-id``), else a new one."""
    rid = headers.get("x-request-id") or ""
    return rid if 0 < len(rid) <= 128 and rid.isprintable() else uuid.uuid4().hex


class NPUModel:
    """A Serve deployment body: one session on this replica's NPU (logical device 0), one graph,
    one batcher. Deploy it with :func:`npu_app` (or wrap it in ``serve.deployment`` yourself).

    HTTP (``__call__``, answered by :meth:`respond`): a JSON body ``{"inputs": {name: nested
    list}}``, every input with the batch dimension first; the answer is ``{"outputs": {name:
    nested list}}`` with the same rows (non-finite floats as ``NaN``/``Infinity``, as Python's
    json module writes them), or an error status with ``{"error": message, "request_id": id}``.
    Python (``handle.infer.remote(inputs)``): numpy arrays in and out.

    ``max_body_bytes`` caps a request body (413 beyond it, checked on ``Content-Length`` before
    reading and again while reading); ``max_pending`` sheds HTTP requests (503) while that many
    requests already wait at this replica (None: no bound but Serve's ``max_ongoing_requests``);
    ``request_timeout_s`` sheds a request that got no result in that time (503).
    """

    def __init__(
        self,
        model: GraphSource,
        *,
        name: str | None = None,
        streams: int = 2,
        device_id: int = 0,
        max_batch_size: int = 32,
        max_delay_ms: float = 2.0,
        preferred_batch_sizes: tuple[int, ...] = (),
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_pending: int | None = None,
        request_timeout_s: float | None = None,
    ) -> None:
        self._max_body_bytes, self._max_pending, self._request_timeout_s = _serving_limits(
            max_body_bytes, max_pending, request_timeout_s
        )
        # Requests waiting at this replica: changed only on the replica's event loop (infer); other
        # threads (Serve may run sync methods such as info() in a pool) only read it.
        self._pending = 0
        self.session = Session(device_id, streams=streams)
        try:
            self.graph = self.session.add_graph(model, name=name)
            self.batcher = self.session.batcher(
                self.graph,
                max_batch_size=max_batch_size,
                max_delay_ms=max_delay_ms,
                preferred_batch_sizes=preferred_batch_sizes,
            )
            # Warm up before Serve counts the replica ready (the constructor returns): compile and
            # load on every stream and run the batch sizes the batcher will use, on an event loop
            # of its own in a helper thread (Serve may call the constructor on a running loop).
            with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ascend-async-warmup") as ex:
                self.warmup_report = ex.submit(anyio.run, self.batcher.warmup).result()
        except BaseException:
            self.session.close()
            raise

    def reconfigure(self, config: Mapping[str, Any]) -> None:
        """Serve's ``user_config`` hook, while serving: the HTTP limits (``max_body_bytes``,
        ``max_pending``, ``request_timeout_s``) and the batching parameters (``max_batch_size``,
        ``max_delay_ms``, ``preferred_batch_sizes``, ...).

        :raises ValueError: a bad value; nothing changes.
        """
        config = dict(config)
        limits = _serving_limits(*(config.pop(k, getattr(self, f"_{k}")) for k in _SERVING_KEYS))
        if config:
            self.batcher.configure(**config)
        self._max_body_bytes, self._max_pending, self._request_timeout_s = limits

    async def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One request through this replica's batcher (see :meth:`Batcher.run`)."""
        self._pending += 1
        try:
            return await self.batcher.run(inputs, timeout=self._request_timeout_s)
        finally:
            self._pending -= 1

    async def respond(
        self, body: bytes, headers: Mapping[str, str] | None = None, method: str = "POST"
    ) -> tuple[int, dict[str, Any]]:
        """One HTTP request, from its body and headers (lower-case names) to the status and the
        JSON answer (see the class). Never raises but for cancellation: a failure of ours is a
        500 whose request id is logged with the traceback."""
        headers = headers or {}
        rid = _request_id(headers)
        try:
            return 200, await self._respond(body, headers, method)
        except HttpError as exc:
            status, message = exc.status, exc.message
        except InputError as exc:  # shapes, batch dims: the batcher's checks
            status, message = 400, str(exc)
        except SessionClosedError:  # the batcher or session closed (an AscendError too)
            status, message = 503, "the replica is shutting down"
        except AscendError as exc:  # before TimeoutError: AscendTimeoutError is a device's timeout
            if isinstance(exc, GraphError):  # the model cannot serve (e.g. an output without rows)
                return self._internal(rid, exc)
            status, message = 503, f"the device could not run this request ({type(exc).__name__}: {exc})"
        except TimeoutError:
            status, message = 503, f"no result within the replica's request_timeout_s ({self._request_timeout_s} s)"
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            status, message = 503, "the replica is shutting down"
        except Exception as exc:
            return self._internal(rid, exc)
        return status, {"error": message, "request_id": rid}

    async def _respond(self, body: bytes, headers: Mapping[str, str], method: str) -> dict[str, Any]:
        if method != "POST":
            raise HttpError(405, f"method {method} is not allowed; POST {_USAGE[len('expected ') :]}")
        limit = self._max_body_bytes
        declared = _declared_length(headers)
        if declared is not None and declared > limit:
            raise HttpError(413, f"the body is {declared} bytes; this server takes at most {limit}")
        if len(body) > limit:
            raise HttpError(413, f"the body is over {limit} bytes, the most this server takes")
        if self._max_pending is not None and self._pending >= self._max_pending:  # shed before parsing
            raise HttpError(503, f"the replica is at capacity ({self._pending} requests pending); retry later")
        inputs = parse_inputs(body, self.graph.inputs)
        out = await self.infer(inputs)  # no await since the check: the count it makes is the one checked
        return {"outputs": {k: _jsonable(v) for k, v in out.items()}, "replica": self.info()}

    def _internal(self, rid: str, exc: BaseException) -> tuple[int, dict[str, Any]]:
        log.error("request %s failed with an internal error", rid, exc_info=exc)
        return 500, {"error": f"internal error ({type(exc).__name__}); request id {rid}", "request_id": rid}

    async def __call__(self, request: Any) -> Any:
        """Serve's HTTP entry (a Starlette request): read the body until it passes
        ``max_body_bytes`` (none of it when ``Content-Length`` already does, or is not a
        number), answer with :meth:`respond`."""
        from starlette.responses import Response

        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            readable = (_declared_length(headers) or 0) <= self._max_body_bytes
        except HttpError:  # respond() answers 400 for it
            readable = False
        body = b""
        if request.method == "POST" and readable:
            async with aclosing(request.stream()) as chunks:
                body = await _read_capped(chunks, self._max_body_bytes)
        status, payload = await self.respond(body, headers, request.method)
        extra = {"Retry-After": "1"} if status == 503 else {}
        if status == 405:
            extra["Allow"] = "POST"
        return Response(json.dumps(payload), status, extra, media_type="application/json")

    def info(self) -> dict[str, Any]:
        """Which device this replica drives: ``ASCEND_RT_VISIBLE_DEVICES`` as Ray set it, the
        devices visible to the process, the backend, the pid, the requests pending here and the
        batcher's counters."""
        st = self.batcher.statistics()
        return {
            "visible_devices": os.environ.get("ASCEND_RT_VISIBLE_DEVICES"),
            "device_count": device_count(),
            "backend": self.session.backend,
            "pid": os.getpid(),
            "pending": self._pending,
            "batches": st.batches,
            "completed": st.completed,
            "warmup": {"runs": self.warmup_report.runs, "seconds": self.warmup_report.seconds},
        }

    def __del__(self) -> None:
        # Serve calls this when the replica shuts down (and GC may again): close is idempotent
        # and waits for the runs in flight.
        session = getattr(self, "session", None)
        if session is not None:
            session.close()


async def _read_capped(chunks: AsyncIterable[bytes], limit: int) -> bytes:
    """The body, or its first bytes past ``limit`` when it is longer (enough to answer 413):
    the rest is never read."""
    buf = bytearray()
    async for chunk in chunks:
        buf += chunk
        if len(buf) > limit:
            break
    return bytes(buf)


def _serving_limits(
    max_body_bytes: Any, max_pending: Any, request_timeout_s: Any
) -> tuple[int, int | None, float | None]:
    """The HTTP limits, checked. :raises ValueError: a bad value."""
    if not isinstance(max_body_bytes, int) or isinstance(max_body_bytes, bool) or max_body_bytes < 1:
        raise ValueError(f"max_body_bytes must be a positive int, not {max_body_bytes!r}")
    if max_pending is not None and (
        not isinstance(max_pending, int) or isinstance(max_pending, bool) or max_pending < 1
    ):
        raise ValueError(f"max_pending must be a positive int or None, not {max_pending!r}")
    if request_timeout_s is not None and not (
        isinstance(request_timeout_s, (int, float)) and request_timeout_s > 0 and math.isfinite(request_timeout_s)
    ):
        raise ValueError(f"request_timeout_s must be a positive number of seconds or None, not {request_timeout_s!r}")
    return max_body_bytes, max_pending, None if request_timeout_s is None else float(request_timeout_s)


def npu_app(
    model: GraphSource,
    *,
    num_replicas: int = 1,
    npus_per_replica: float = 1,
    name: str = "ascend",
    max_ongoing_requests: int = 256,
    max_queued_requests: int = -1,
    ray_actor_options: Mapping[str, Any] | None = None,
    **params: Any,
) -> Any:
    """A bound Serve application of :class:`NPUModel` with ``num_replicas`` replicas, each asking
    Ray for ``{"NPU": npus_per_replica}`` (so Ray sets its ``ASCEND_RT_VISIBLE_DEVICES``).
    ``params`` go to :class:`NPUModel` (``max_batch_size``, ``max_delay_ms``, ``streams``...).
    ``max_ongoing_requests`` should exceed ``max_batch_size``: it bounds what a replica can batch.
    ``max_queued_requests`` (-1: no bound) makes Serve itself answer 503 when that many requests
    already wait for a replica; ``max_pending`` (a param) does the same at each replica.

    :raises ImportError: Ray Serve is not installed.
    """
    serve = require_serve()
    options: dict[str, Any] = {"resources": {"NPU": npus_per_replica}}
    options.update(ray_actor_options or {})
    deployment = serve.deployment(
        NPUModel,
        name=name,
        num_replicas=num_replicas,
        max_ongoing_requests=max_ongoing_requests,
        max_queued_requests=max_queued_requests,
        ray_actor_options=options,
    )
    return deployment.bind(model, **params)
