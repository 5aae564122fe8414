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
requests arriving concurrently at a replica are batched there. The batching parameters can be
changed while serving through Serve's ``user_config`` (``reconfigure``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from ._graph import GraphSource
from ._pool import device_count
from ._session import Session

__all__ = ["NPUModel", "npu_app", "require_serve"]


def require_serve() -> Any:
    """The ``ray.serve`` module.

    :raises ImportError: Ray Serve is not installed; the message says ``pip install 'ascend-async[ray]'``.
    """
    try:
        from ray import serve
    except ImportError as exc:
        raise ImportError(
            "the Ray Serve integration needs Ray Serve: pip install 'ascend-async[ray]' (ray[serve])"
        ) from exc
    return serve


class NPUModel:
    """A Serve deployment body: one session on this replica's NPU (logical device 0), one graph,
    one batcher. Deploy it with :func:`npu_app` (or wrap it in ``serve.deployment`` yourself).

    HTTP (``__call__``): a JSON body ``{"inputs": {name: nested list}}``, every input with the batch
    dimension first; the answer is ``{"outputs": {name: nested list}}`` with the same rows.
    Python (``handle.infer.remote(inputs)``): numpy arrays in and out.
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
    ) -> None:
        self.session = Session(device_id, streams=streams)
        try:
            self.graph = self.session.add_graph(model, name=name)
            self.batcher = self.session.batcher(
                self.graph,
                max_batch_size=max_batch_size,
                max_delay_ms=max_delay_ms,
                preferred_batch_sizes=preferred_batch_sizes,
            )
        except BaseException:
            self.session.close()
            raise
        self._dtypes = {s.name: s.dtype for s in self.graph.inputs}

    def reconfigure(self, config: Mapping[str, Any]) -> None:
        """Serve's ``user_config`` hook: batching parameters changed while serving
        (``max_batch_size``, ``max_delay_ms``, ``preferred_batch_sizes``, ...)."""
        self.batcher.configure(**dict(config))

    async def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One request through this replica's batcher (see :meth:`Batcher.run`)."""
        return await self.batcher.run(inputs)

    async def __call__(self, request: Any) -> dict[str, Any]:
        body = await request.json()
        raw = body.get("inputs") if isinstance(body, dict) else None
        if not isinstance(raw, dict):
            return {"error": 'expected a JSON body {"inputs": {name: nested list}}'}
        try:
            inputs = {k: np.asarray(v, dtype=self._dtypes.get(k)) for k, v in raw.items()}
            out = await self.batcher.run(inputs)
        except ValueError as exc:  # InputError and friends: the caller's mistake, said plainly
            return {"error": str(exc)}
        return {"outputs": {k: v.tolist() for k, v in out.items()}, "replica": self.info()}

    def info(self) -> dict[str, Any]:
        """Which device this replica drives: ``ASCEND_RT_VISIBLE_DEVICES`` as Ray set it, the
        devices visible to the process, the backend, the pid, and the batcher's counters."""
        st = self.batcher.statistics()
        return {
            "visible_devices": os.environ.get("ASCEND_RT_VISIBLE_DEVICES"),
            "device_count": device_count(),
            "backend": self.session.backend,
            "pid": os.getpid(),
            "batches": st.batches,
            "completed": st.completed,
        }

    def __del__(self) -> None:
        # Serve calls this when the replica shuts down (and GC may again): close is idempotent
        # and waits for the runs in flight.
        session = getattr(self, "session", None)
        if session is not None:
            session.close()


def npu_app(
    model: GraphSource,
    *,
    num_replicas: int = 1,
    npus_per_replica: float = 1,
    name: str = "ascend",
    max_ongoing_requests: int = 256,
    ray_actor_options: Mapping[str, Any] | None = None,
    **params: Any,
) -> Any:
    """A bound Serve application of :class:`NPUModel` with ``num_replicas`` replicas, each asking
    Ray for ``{"NPU": npus_per_replica}`` (so Ray sets its ``ASCEND_RT_VISIBLE_DEVICES``).
    ``params`` go to :class:`NPUModel` (``max_batch_size``, ``max_delay_ms``, ``streams``...).
    ``max_ongoing_requests`` should exceed ``max_batch_size``: it bounds what a replica can batch.

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
        ray_actor_options=options,
    )
    return deployment.bind(model, **params)
