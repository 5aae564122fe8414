"""DevicePool: every visible device, least-loaded routing, fault isolation and recovery, the pool
batcher; and the sim's device visibility (ASCEND_RT_VISIBLE_DEVICES) and per-sample timing.

conftest.py gives the test process four sim devices (ASCEND_ASYNC_SIM_DEVICES=4)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from typing import Any

import anyio
import numpy as np
import onnx
import pytest
from helpers import sim_timing
from onnx import TensorProto, helper

import ascend_async as aa
from ascend_async._native import _sim

pytestmark = pytest.mark.anyio

AICORE = 507015
X = np.arange(8, dtype=np.float32).reshape(2, 4)


def add_model() -> onnx.ModelProto:
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 4]) for n in ("x", "y")]
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"], name="add")], "add", vi[:1], vi[1:])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def device_of(session: aa.Session) -> int:
    return int(session._device.id)


def completed(pool: aa.DevicePool) -> dict[int, int]:
    return {d.device_id: d.completed for d in pool.statistics().devices}


def state(pool: aa.DevicePool, device: int) -> str:
    return next(d.state for d in pool.statistics().devices if d.device_id == device)


async def test_pool_opens_every_visible_device_and_spreads_runs() -> None:
    assert aa.device_count() == 4
    async with aa.DevicePool() as pool:
        assert pool.devices == (0, 1, 2, 3)
        assert [device_of(s) for s in pool.sessions] == [0, 1, 2, 3]
        g = pool.add_graph(add_model())
        await pool.load(g)
        out: dict[int, np.ndarray] = {}

        async def one(i: int) -> None:
            out[i] = (await pool.run(g, {"x": X + i}))["y"]

        async with anyio.create_task_group() as tg:
            for i in range(32):
                tg.start_soon(one, i)
        for i in range(32):
            np.testing.assert_array_equal(out[i], 2 * (X + i))
        done = completed(pool)
        assert sum(done.values()) == 32 and all(n >= 1 for n in done.values()), done
        assert pool.statistics().in_flight == 0


async def test_async_with_pool_opens_its_sessions_off_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    from ascend_async import _session

    opened_on: list[int] = []
    real = _session.acquire_device

    def spy(device_id: int) -> Any:
        opened_on.append(threading.get_ident())
        return real(device_id)

    monkeypatch.setattr(_session, "acquire_device", spy)
    async with aa.DevicePool([0, 2], streams_per_device=1) as pool:
        assert len(opened_on) == 2 and threading.get_ident() not in opened_on
        g = pool.add_graph(add_model())
        out = await pool.run(g, {"x": X})
        np.testing.assert_array_equal(out["y"], 2 * X)


async def test_named_devices_and_instances() -> None:
    async with aa.DevicePool([1, 3], streams_per_device=1, instances=2) as pool:
        assert pool.devices == (1, 3)
        assert [device_of(s) for s in pool.sessions] == [1, 1, 3, 3]
        assert all(len(s.streams) == 1 for s in pool.sessions)
        g = pool.add_graph(add_model())
        np.testing.assert_array_equal((await pool.run(g, [X]))["y"], 2 * X)


def test_a_device_that_is_not_visible_is_refused() -> None:
    msg = r"device 7 is not visible: this process sees 4 device\(s\), logical ids 0\.\.3"
    with pytest.raises(aa.AclError, match=msg):
        aa.DevicePool([0, 7])
    with pytest.raises(ValueError, match="twice"):
        aa.DevicePool([1, 1])


async def test_a_faulted_device_leaves_the_rotation_and_the_rest_go_on() -> None:
    async with aa.DevicePool([0, 1], streams_per_device=1, retry_after_s=3600) as pool:
        g = pool.add_graph(add_model())
        await pool.load(g)
        bad = pool.sessions[1]
        assert _sim.lib.aa_sim_inject_fault(bad.streams[0].handle, 1, AICORE) == 0
        failures = []
        for _ in range(4):  # routing alternates while idle: device 1 gets one of these
            try:
                await pool.run(g, [X])
            except aa.DeviceError as exc:
                failures.append(exc)
        assert len(failures) == 1 and failures[0].code == AICORE
        assert state(pool, 1) == "out" and state(pool, 0) == "healthy"
        before = completed(pool)
        for _ in range(6):
            np.testing.assert_array_equal((await pool.run(g, [X]))["y"], 2 * X)
        after = completed(pool)
        assert after[0] == before[0] + 6 and after[1] == before[1]  # nothing went to device 1
        st = pool.statistics().devices[1]
        assert st.faults == 1 and st.failed == 1 and st.retry_in_s is not None and st.retry_in_s > 0


async def test_a_faulted_device_comes_back_after_a_probe() -> None:
    async with aa.DevicePool([0, 1], streams_per_device=1, retry_after_s=0) as pool:
        g = pool.add_graph(add_model())
        await pool.load(g)
        bad = pool.sessions[1]
        assert _sim.lib.aa_sim_inject_fault(bad.streams[0].handle, 1, AICORE) == 0
        while state(pool, 1) == "healthy":
            try:
                await pool.run(g, [X])
            except aa.DeviceError:
                pass
        assert state(pool, 1) == "out"
        # due at once (retry_after_s=0): the next run probes device 1; it faults again
        assert _sim.lib.aa_sim_inject_fault(bad.streams[0].handle, 1, AICORE) == 0
        with pytest.raises(aa.DeviceError):
            await pool.run(g, [X])
        st = pool.statistics().devices[1]
        assert st.state == "out" and st.faults == 2
        pool._members[1].retry_at = 0.0  # skip the doubled wait
        before = completed(pool)[1]
        np.testing.assert_array_equal((await pool.run(g, [X]))["y"], 2 * X)  # the probe succeeds
        assert completed(pool)[1] == before + 1 and state(pool, 1) == "healthy"


async def test_every_device_out_fails_at_once() -> None:
    async with aa.DevicePool([2], streams_per_device=1, retry_after_s=3600) as pool:
        g = pool.add_graph(add_model())
        await pool.load(g)
        assert _sim.lib.aa_sim_inject_fault(pool.sessions[0].streams[0].handle, 1, AICORE) == 0
        with pytest.raises(aa.DeviceError):
            await pool.run(g, [X])
        with pytest.raises(aa.DeviceError, match="every device of the pool is out of rotation") as info:
            await pool.run(g, [X])
        assert info.value.code == AICORE
        assert pool.sessions[0].statistics().in_flight == 0


async def test_pool_batcher_routes_batches_to_devices() -> None:
    async with aa.DevicePool([0, 1, 2]) as pool:
        g = pool.add_graph(add_model())
        b = pool.batcher(g, max_batch_size=4, max_delay_ms=60_000)
        assert b.config.max_concurrent_batches == 6  # one per stream of the pool
        xs = [X[:1] + i for i in range(24)]
        out: dict[int, np.ndarray] = {}

        async def one(i: int) -> None:
            out[i] = (await b.run({"x": xs[i]}))["y"]

        async with anyio.create_task_group() as tg:
            for i in range(24):
                tg.start_soon(one, i)
        for i, x in enumerate(xs):
            np.testing.assert_array_equal(out[i], 2 * x)
        assert b.statistics().batch_sizes == {4: 6}
        done = completed(pool)
        assert sum(done.values()) == 6 and all(n >= 1 for n in done.values()), done


async def test_closed_pool_refuses_runs() -> None:
    pool = aa.DevicePool([0])
    g = pool.add_graph(add_model())
    await pool.aclose()
    await pool.aclose()
    with pytest.raises(aa.SessionClosedError):
        await pool.run(g, [X])


async def test_sim_timing_adds_per_sample_time() -> None:
    """The timing model's floor: min_graph_us + per_sample_us x rows (a lower bound only)."""
    with sim_timing(min_graph_us=2000, per_sample_us=100):
        async with aa.Session() as s:
            g = s.add_graph(add_model())
            await s.load(g)
            for rows in (1, 30):
                _, prof = await s.run_profiled(g, [np.zeros((rows, 4), np.float32)])
                assert prof.compute_ms >= (2000 + 100 * rows) / 1000 * 0.99


CHILD = textwrap.dedent(
    """
    import json, anyio, numpy as np, ascend_async as aa
    from ascend_async._native import _sim
    out = {"count": aa.device_count()}
    try:
        with aa.DevicePool() as pool:
            out["pool"] = list(pool.devices)
            d = _sim.ffi.new("int32_t*")
            _sim.lib.aclrtGetDevice(d)
            out["current"] = int(d[0])
    except aa.AclError as exc:
        out["error"] = str(exc)
    print(json.dumps(out))
    """
)


@pytest.mark.parametrize(
    ("visible", "count"),
    [(None, 8), ("2,5,7", 3), ("2,5,3,7", 2), ("6,9", 1), ("1,1", 1), ("x", 0), ("", 0), ("3 ,4", 1)],
)
def test_sim_honours_ascend_rt_visible_devices(visible: str | None, count: int) -> None:
    """As ACL: logical ids over the visible physical ones, ascending; parsing stops at the first
    bad character, out-of-range or repeated/descending id."""
    env = dict(os.environ, ASCEND_ASYNC_SIM_DEVICES="8", ASCEND_ASYNC_BACKEND="sim")
    env.pop("ASCEND_RT_VISIBLE_DEVICES", None)
    if visible is not None:
        env["ASCEND_RT_VISIBLE_DEVICES"] = visible
    proc = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["count"] == count
    if count:
        assert got["pool"] == list(range(count))
    else:
        assert "no device is visible" in got["error"] and "ASCEND_RT_VISIBLE_DEVICES" in got["error"]
