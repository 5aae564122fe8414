"""Shared fixtures: every async test runs on asyncio, asyncio+uvloop and trio; the sim's leak
counters must read zero after each test."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import sim_leaks

# The sim exposes this many devices to the test process (read when its runtime starts): the
# DevicePool tests need several. Sessions still default to device 0.
os.environ.setdefault("ASCEND_ASYNC_SIM_DEVICES", "4")
# The suite runs many models CANN's ONNX parser would refuse (opsets past 18, Loop, ...) on
# purpose: it tests what the sim runs. add_graph's CANN check is tested on its own, with its
# modes set explicitly (tests/test_cann_check.py).
os.environ.setdefault("ASCEND_ASYNC_CANN_CHECK", "off")
# GE's per-run workspace, modelled by the sim (the allocator rule's detector): the sim's
# default, said here because the GE-rule and ABI tests depend on it.
os.environ.setdefault("ASCEND_ASYNC_SIM_WORKSPACE", "1")
# The sim fills every block it hands out and every block given back with a poison pattern (NaN
# in every float type): a run that reads a stale block gets a wrong answer the tests see, not
# plausible data (read when the sim's runtime starts; subprocesses inherit it).
os.environ.setdefault("ASCEND_ASYNC_SIM_POISON", "1")

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is in the test extra on Linux
    uvloop = None


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {}), id="asyncio"),
        pytest.param(
            ("asyncio", {"loop_factory": uvloop.new_event_loop if uvloop else None}),
            id="uvloop",
            marks=pytest.mark.skipif(uvloop is None, reason="uvloop is not installed"),
        ),
        pytest.param(("trio", {}), id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return request.param


@pytest.fixture(autouse=True)
def _no_sim_leaks() -> Iterator[None]:
    """Every test leaves the simulated device as it found it (sessions closed, memory freed)."""
    yield
    gc.collect()
    from ascend_async import _device

    assert not _device._devices, f"sessions left open: devices still held {list(_device._devices)}"
    leaks = sim_leaks()
    assert not leaks, f"sim resources leaked: {leaks}"
