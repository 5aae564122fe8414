"""ascend_async: await Ascend Graph Engine runs from asyncio, uvloop and trio.

``await session.run(graph, inputs)`` submits a graph to a device stream without blocking the
event loop; a completion watcher thread resolves it when the device is done. Runs on real
Ascend hardware through CANN, or on the bundled simulated device everywhere else.
"""

from __future__ import annotations

from . import models as models
from ._backend import backend_info as backend_info
from ._batcher import Batcher as Batcher
from ._batcher import BatcherConfig as BatcherConfig
from ._batcher import BatcherStatistics as BatcherStatistics
from ._cann_check import ModelCheck as ModelCheck
from ._cann_check import check_model as check_model
from ._device import configure_watcher as configure_watcher
from ._errors import AclError as AclError
from ._errors import AscendError as AscendError
from ._errors import AscendTimeoutError as AscendTimeoutError
from ._errors import AscendWarning as AscendWarning
from ._errors import BackendUnavailableError as BackendUnavailableError
from ._errors import DeviceError as DeviceError
from ._errors import DeviceMemoryError as DeviceMemoryError
from ._errors import GeError as GeError
from ._errors import GraphError as GraphError
from ._errors import InputError as InputError
from ._errors import ModeConflictError as ModeConflictError
from ._errors import SessionClosedError as SessionClosedError
from ._errors import WatcherError as WatcherError
from ._event import Event as Event
from ._ge import set_ge_options as set_ge_options
from ._graph import Graph as Graph
from ._graph import TensorSpec as TensorSpec
from ._memory import DeviceTensor as DeviceTensor
from ._metrics import PrometheusExporter as PrometheusExporter
from ._offline import Gears as Gears
from ._offline import OfflineModel as OfflineModel
from ._offline import compile_model as compile_model
from ._pool import DevicePool as DevicePool
from ._pool import PoolDeviceStatistics as PoolDeviceStatistics
from ._pool import PoolStatistics as PoolStatistics
from ._pool import device_count as device_count
from ._session import RunProfile as RunProfile
from ._session import Session as Session
from ._session import SessionStatistics as SessionStatistics
from ._session import Stream as Stream
from ._session import WarmupReport as WarmupReport

__version__ = "0.1.0"

__all__ = (
    "AclError",
    "AscendError",
    "AscendTimeoutError",
    "AscendWarning",
    "BackendUnavailableError",
    "Batcher",
    "BatcherConfig",
    "BatcherStatistics",
    "DeviceError",
    "DeviceMemoryError",
    "DevicePool",
    "DeviceTensor",
    "Event",
    "GeError",
    "Gears",
    "Graph",
    "GraphError",
    "InputError",
    "ModeConflictError",
    "ModelCheck",
    "OfflineModel",
    "PoolDeviceStatistics",
    "PoolStatistics",
    "PrometheusExporter",
    "RunProfile",
    "Session",
    "SessionClosedError",
    "SessionStatistics",
    "Stream",
    "TensorSpec",
    "WarmupReport",
    "WatcherError",
    "backend_info",
    "check_model",
    "compile_model",
    "configure_watcher",
    "device_count",
    "models",
    "set_ge_options",
)

for _name in __all__:  # present the public names as ascend_async.X (repr, docs, pickling)
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("ascend_async."):
        _obj.__module__ = "ascend_async"
del _name, _obj
