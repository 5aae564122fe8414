"""The library under pytest-asyncio, the way an application's own test suite uses it: async
fixtures that open a Session (per test, and one shared by a class on a class-scoped loop),
tests marked ``@pytest.mark.asyncio``, plain asyncio (``gather``, ``wait_for``) around
``Session.run``; and beside them, in the same module, the same kind of test under anyio's
plugin. It mirrors the README's "Testing code that uses ascend_async".

The rest of the suite runs on anyio's pytest plugin (asyncio, uvloop and trio); both plugins are
loaded here. pytest-asyncio runs in strict mode (pyproject: ``asyncio_mode = "strict"``), so it
touches only what is marked for it, and anyio's plugin only tests that use ``anyio_backend``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest
import pytest_asyncio
from helpers import add_model_proto, held, sim_leaks, wait_for

import ascend_async as aa

# --- what an application's conftest.py would hold ---------------------------------------------


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aa.Session]:
    """A Session opened for one test on that test's loop, closed after it."""
    async with aa.Session(streams=2) as s:
        yield s


@pytest_asyncio.fixture
async def add(session: aa.Session) -> aa.Graph:
    """The Add model (z = x + y), compiled and loaded on every stream before the test starts."""
    g = session.add_graph(add_model_proto())
    await session.load(g)
    return g


def inputs(i: int, rows: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(i)
    return {k: rng.standard_normal((rows, 4)).astype(np.float32) for k in ("x", "y")}


@pytest_asyncio.fixture(loop_scope="class", scope="class")
async def class_session() -> AsyncIterator[tuple[aa.Session, aa.Graph]]:
    """One Session (with the Add model loaded) for a class of tests, on the class's loop; the
    sim's leak counters are checked once it is closed."""
    async with aa.Session() as s:
        g = s.add_graph(add_model_proto())
        await s.load(g)
        yield s, g
    assert not sim_leaks(), sim_leaks()


# --- the tests ----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_run_in_a_pytest_asyncio_test(session: aa.Session, add: aa.Graph) -> None:
    v = inputs(0)
    out = await session.run(add, v)
    np.testing.assert_array_equal(out["z"], v["x"] + v["y"])  # numpy's answer
    assert session.statistics().completed == 1


@pytest.mark.asyncio
async def test_the_fixture_and_the_test_share_pytest_asyncios_loop(session: aa.Session, add: aa.Graph) -> None:
    """The session was opened in a fixture; the test's runs complete on the same running loop
    (the fixture's and the test's loop scope are both "function")."""
    loop = asyncio.get_running_loop()
    done: list[asyncio.AbstractEventLoop] = []

    async def one(i: int) -> np.ndarray:
        out = await session.run(add, inputs(i))
        done.append(asyncio.get_running_loop())
        return out["z"]

    got = await asyncio.gather(*(one(i) for i in range(32)))
    for i, z in enumerate(got):
        v = inputs(i)
        np.testing.assert_array_equal(z, v["x"] + v["y"])
    assert done == [loop] * 32
    st = session.statistics()
    assert st.completed == 32 and st.in_flight == 0


@pytest.mark.asyncio
async def test_asyncio_wait_for_cancels_a_run_on_a_held_stream(session: aa.Session, add: aa.Graph) -> None:
    """``asyncio.wait_for`` around a run that cannot finish (its stream held): TimeoutError, the
    run counted cancelled once the device is done with it, and the stream usable after."""
    with held(session.streams[0]):
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(session.run(add, inputs(1), stream=0), timeout=0.05)
        assert session.statistics().in_flight == 1  # the device may still read its buffers
    v = inputs(2)
    out = await session.run(add, v, stream=0)  # behind the cancelled one on the same stream
    np.testing.assert_array_equal(out["z"], v["x"] + v["y"])
    st = session.statistics()
    assert st.cancelled == 1 and st.completed == 1 and st.in_flight == 0


@pytest.mark.asyncio
async def test_an_asyncio_task_cancelled_while_in_flight(session: aa.Session, add: aa.Graph) -> None:
    with held(session.streams[1]):
        task = asyncio.ensure_future(session.run(add, inputs(3), stream=1))
        await wait_for(lambda: session.statistics().in_flight == 1, "submitted: the device holds it")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    v = inputs(4)
    np.testing.assert_array_equal((await session.run(add, v, stream=1))["z"], v["x"] + v["y"])
    assert session.statistics().cancelled == 1


@pytest.fixture
async def anyio_session(anyio_backend: object) -> AsyncIterator[aa.Session]:
    """The README's anyio fixture: a plain async fixture that anyio's plugin runs on the test's
    loop (it asks for ``anyio_backend``); strict pytest-asyncio leaves it alone."""
    async with aa.Session() as s:
        yield s


@pytest.mark.anyio
async def test_the_same_module_under_anyios_plugin(anyio_session: aa.Session) -> None:
    g = anyio_session.add_graph(add_model_proto())
    v = inputs(7)
    np.testing.assert_array_equal((await anyio_session.run(g, v))["z"], v["x"] + v["y"])


@pytest.mark.asyncio(loop_scope="class")
class TestOneSessionForTheClass:
    """Opening a device takes seconds on an NPU: an application's suite opens one session for a
    class (or module) of tests, on a loop of the same scope, so the session's loop outlives each
    test. The suite's per-test leak check would see the shared session open between tests; the
    class replaces it with one check when the session closes."""

    @pytest.fixture(autouse=True)
    def _no_sim_leaks(self) -> None:
        """(Overrides conftest's: the leak check runs in ``class_session``'s teardown instead.)"""

    async def test_first(self, class_session: tuple[aa.Session, aa.Graph]) -> None:
        s, g = class_session
        v = inputs(5)
        np.testing.assert_array_equal((await s.run(g, v))["z"], v["x"] + v["y"])

    async def test_second_on_the_same_session_and_loop(self, class_session: tuple[aa.Session, aa.Graph]) -> None:
        s, g = class_session
        before = s.statistics().completed  # 1 after test_first (0 when run alone)
        v = inputs(6, rows=3)
        np.testing.assert_array_equal((await s.run(g, v))["z"], v["x"] + v["y"])
        assert s.statistics().completed == before + 1
