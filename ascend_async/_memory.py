"""DeviceTensor: device memory with a shape and dtype, owned by one Python object."""

from __future__ import annotations

import math
import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from ._dtypes import CARRIED, NUMPY_TO_GE, ge_dtype
from ._errors import InputError, SessionClosedError

if TYPE_CHECKING:
    from ._device import Device

__all__ = ["DeviceTensor"]


class DeviceTensor:
    """A tensor in device memory.

    Made by :meth:`from_numpy` (a synchronous copy), or returned by
    ``session.run(..., outputs="device")`` (zero copy: GE wrote it). Pass it back as an input
    to run on device data without host copies. ``close()`` returns the memory; so does garbage
    collection, but closing explicitly keeps device memory predictable.
    """

    __slots__ = ("__weakref__", "_addr", "_closed", "_device", "_ge", "_input", "_lock", "_nbytes", "dtype", "shape")

    def __init__(
        self, device: Device, addr: Any, shape: tuple[int, ...], dtype: np.dtype[Any], ge_tensor: Any = None
    ) -> None:
        # Use from_numpy or session.run(outputs="device"); this constructor is internal.
        # GE takes device inputs only at 32-byte aligned addresses (RunGraphWithStreamAsync
        # fails otherwise). Pool blocks and GE's output blocks always are, and there are no
        # views at an offset: an unaligned DeviceTensor cannot be made, so no run sees one.
        at = int(device.backend.ffi.cast("uintptr_t", addr))
        if at % 32:
            raise InputError(
                f"DeviceTensor: device address {at:#x} is not 32-byte aligned (GE requires device inputs "
                "and outputs at 32-byte aligned addresses)"
            )
        self._device = device
        self._addr = addr
        self._ge = ge_tensor  # aa_tensor* whose owner GE allocated, or None (our pool block)
        self.shape = shape
        self.dtype = dtype
        self._nbytes = math.prod(shape) * dtype.itemsize
        self._input: Any = None  # this tensor as a GE input (aa_tensor*), made on first use
        self._closed = False
        self._lock = threading.Lock()
        if ge_tensor is not None:
            device.ge_tensors.add(self)

    @classmethod
    def of_ge_output(cls, device: Device, ge_tensor: Any, shape: tuple[int, ...], dtype: np.dtype[Any]) -> DeviceTensor:
        """A run's output over the block GE placed (``ge_tensor``: an ``aa_tensor*`` it now
        owns). The constructor's work without its alignment check: GE's output blocks come
        from the stream's allocator lane, whose blocks are 32-byte aligned by construction."""
        self = cls.__new__(cls)
        self._device = device
        self._addr = ge_tensor.addr
        self._ge = ge_tensor
        self.shape = shape
        self.dtype = dtype
        self._nbytes = math.prod(shape) * dtype.itemsize
        self._input = None
        self._closed = False
        self._lock = threading.Lock()
        device.ge_tensors.add(self)
        return self

    @classmethod
    def from_numpy(cls, session: Any, array: np.ndarray) -> DeviceTensor:
        """Copy ``array`` to the session's device (blocks until the copy is done).

        :raises InputError: a dtype GE tensors cannot carry (before anything is allocated).
        """
        device: Device = session._device_for_tensors()
        array = np.require(array, requirements="C")  # ascontiguousarray would make a 0-d array 1-d
        if ge_dtype(array.dtype) is None:
            raise InputError(
                f"DeviceTensor.from_numpy: dtype {array.dtype} has no ge::DataType (GE tensors carry {CARRIED})"
            )
        b = device.backend
        nbytes = max(array.nbytes, 1)
        device.ensure_current()
        addr = device.alloc(device.device_pool, nbytes, "DeviceTensor.from_numpy")
        if array.nbytes:
            h2d = b.lib.ACL_MEMCPY_HOST_TO_DEVICE
            rc = b.lib.aclrtMemcpy(addr, nbytes, b.ffi.from_buffer(array), array.nbytes, h2d)
            if rc:
                b.lib.aa_pool_free(device.device_pool, addr)
                b.check(rc, "aclrtMemcpy")
        return cls(device, addr, tuple(array.shape), array.dtype)

    @property
    def nbytes(self) -> int:
        return self._nbytes

    @property
    def is_closed(self) -> bool:
        return self._closed

    @property
    def address(self) -> int:
        """The device address (for interop); valid until close()."""
        self.check_open()
        return int(self._device.backend.ffi.cast("uintptr_t", self._addr))

    def check_open(self) -> None:
        if self._closed:
            from ._device import check_not_forked

            check_not_forked()  # in a forked child, say so: that is why the tensor is gone
            raise SessionClosedError("the DeviceTensor was closed")

    def ge_input(self) -> Any:
        """This tensor described as a GE input: an aa_tensor struct to copy into place."""
        desc = self._input
        if desc is None:
            desc = self._input = self._device.backend.ffi.new("aa_tensor*")
            desc.addr = self._addr
            desc.size = max(self._nbytes, 1)
            desc.dtype = NUMPY_TO_GE[self.dtype]
            lib = self._device.backend.lib
            desc.format = lib.AA_FORMAT_ND
            desc.placement = lib.AA_PLACEMENT_DEVICE_HBM
            desc.ndim = len(self.shape)
            desc.dims[0 : len(self.shape)] = self.shape
        return desc[0]

    def numpy(self) -> np.ndarray:
        """Copy the data to a new host array (blocks until the copy is done)."""
        self.check_open()
        out = np.empty(self.shape, self.dtype)
        if out.nbytes:
            b = self._device.backend
            self._device.ensure_current()
            b.check(
                b.lib.aclrtMemcpy(
                    b.ffi.from_buffer(out), out.nbytes, self._addr, out.nbytes, b.lib.ACL_MEMCPY_DEVICE_TO_HOST
                ),
                "aclrtMemcpy",
            )
        return out

    def close(self) -> None:
        """Give the memory back (idempotent). Do not close a tensor a pending run still uses."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        lib = self._device.backend.lib
        if not self._device.alive:  # the device shut down and freed every block already
            return
        if self._ge is not None:
            lib.aa_tensor_release(self._ge)
            self._ge = None
        else:
            lib.aa_pool_free(self._device.device_pool, self._addr)
        self._addr = None

    def __del__(self) -> None:
        try:
            if not self._closed:
                self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"device {self._device.id}"
        return f"<DeviceTensor {self.dtype}{list(self.shape)} on {state}>"
