"""The Python core cannot be hurt from outside (issue 13): user callbacks, close() from a
callback, fork, event loops that come and go, and bad arguments at every public entry.

Every trigger here failed before: a callback raising SystemExit killed the device's watcher,
close() inside a callback crashed or deadlocked, an output-sizing error on the callback path
left a run in flight for ever, a forked child hung, every loop that ever awaited a run stayed
alive, and Session(max_in_flight=0), run(None) and configure_watcher(typo=1) were accepted or
failed with raw errors. Crashes and hangs are bounded: the ones that took the process down run
in a subprocess, the others wait with timeouts.
"""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from helpers import add_model, held, wait_for

import ascend_async
from ascend_async import AscendWarning, _device, _submit

pytestmark = pytest.mark.anyio

X = np.arange(8, dtype=np.float32).reshape(2, 4)
BOUND = 20.0  # seconds: what "never hangs" waits at most, here


def bounded(fn: Callable[[], object], timeout: float = BOUND) -> None:
    """Call ``fn`` on a thread; fail (instead of hanging the suite) if it does not return."""
    box: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except BaseException as exc:
            box.append(exc)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"{fn!r} hung for {timeout} s"
    if box:
        raise box[0]


class Callback:
    """Records each call; ``then`` runs inside the callback (after recording)."""

    def __init__(self, then: Callable[[], object] | None = None) -> None:
        self.calls: list[tuple[Any, Any]] = []
        self.done = threading.Event()
        self.then = then

    def __call__(self, out: Any, err: Any) -> None:
        self.calls.append((out, err))
        self.done.set()
        if self.then is not None:
            self.then()

    def wait(self) -> None:
        assert self.done.wait(BOUND), "the callback never ran"


def run_script(code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (tests/ importable); a crash or hang fails here."""
    tests = str(Path(__file__).parent)
    prelude = f"import sys; sys.path.insert(0, {tests!r})\n"
    proc = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


# -- callbacks ------------------------------------------------------------------------------------


def _raise(exc: BaseException) -> Callable[[], None]:
    def fn() -> None:
        raise exc

    return fn


@pytest.mark.parametrize(
    "exc",
    [SystemExit(3), KeyboardInterrupt(), ValueError("user bug"), GeneratorExit()],
    ids=["SystemExit", "KeyboardInterrupt", "ValueError", "GeneratorExit"],
)
def test_callback_exception_is_reported_and_contained(exc: BaseException) -> None:
    with ascend_async.Session() as a, ascend_async.Session() as b:
        ga, gb = add_model(a), add_model(b)
        bad = Callback(then=_raise(exc))
        good = Callback()
        with pytest.warns(AscendWarning, match=type(exc).__name__) as record:
            a.run_with_callback(ga, [X, X], bad)
            a.run_with_callback(ga, [X, X], good)  # the watcher completes it after the bad one
            good.wait()
        assert record[0].message.__cause__ is exc
        # The watcher lives: later runs in every session on the device work.
        after = Callback()
        b.run_with_callback(gb, [X, X], after)
        after.wait()
        np.testing.assert_array_equal(after.calls[0][0]["z"], X + X)
        gs = add_model(b)
        np.testing.assert_array_equal(b.run_sync(gs, [X, X])["z"], X + X)
        assert a.statistics().in_flight == 0
        assert a.statistics().completed == 2
        bounded(a.close)


async def test_callback_exception_leaves_await_path_working() -> None:
    async with ascend_async.Session() as s:
        g_cb, g = add_model(s), add_model(s)
        good = Callback()
        with pytest.warns(AscendWarning, match="SystemExit"):
            s.run_with_callback(g_cb, [X, X], Callback(then=_raise(SystemExit(1))))
            s.run_with_callback(g_cb, [X, X], good)
            await anyio.to_thread.run_sync(good.wait)
        with anyio.fail_after(BOUND):
            out = await s.run(g, [X, X])
        np.testing.assert_array_equal(out["z"], X + X)


def test_callback_exception_with_warnings_as_errors_goes_to_threading_excepthook(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: seen.append(args.exc_value))
    with ascend_async.Session() as s:
        g = add_model(s)
        good = Callback()
        # filterwarnings = error (pyproject): the escalated warning cannot stop the watcher
        s.run_with_callback(g, [X, X], Callback(then=_raise(KeyboardInterrupt())))
        s.run_with_callback(g, [X, X], good)
        good.wait()
        assert len(seen) == 1 and isinstance(seen[0], AscendWarning)
        assert isinstance(seen[0].__cause__, KeyboardInterrupt)
        assert s.statistics().in_flight == 0


def test_error_sizing_outputs_on_callback_path_fails_the_run_not_the_session(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with ascend_async.Session() as s:
        g = add_model(s)
        monkeypatch.setattr(_submit, "GE_TO_NUMPY", {})  # no output dtype can be sized (read_host_outputs)
        cb = Callback()
        s.run_with_callback(g, [X, X], cb)
        cb.wait()
        out, err = cb.calls[0]
        assert out is None and isinstance(err, KeyError)
        assert s.statistics().in_flight == 0
        assert s.statistics().failed == 1
        monkeypatch.undo()
        ok = Callback()
        s.run_with_callback(g, [X, X], ok)
        ok.wait()
        np.testing.assert_array_equal(ok.calls[0][0]["z"], X + X)
        bounded(s.close)  # before: in_flight stayed 1 and close() blocked for ever


def test_close_inside_callback_with_another_session_open() -> None:
    with ascend_async.Session() as other:
        g_other = add_model(other)
        s = ascend_async.Session()
        g = add_model(s)
        cb = Callback(then=s.close)
        s.run_with_callback(g, [X, X], cb)
        cb.wait()
        assert s.is_closed
        bounded(s.close)  # waits for the deferred teardown
        with pytest.raises(ascend_async.SessionClosedError):
            s.run_sync(g, [X, X])
        np.testing.assert_array_equal(other.run_sync(g_other, [X, X])["z"], X + X)


def test_close_inside_callback_while_another_run_is_in_flight() -> None:
    with ascend_async.Session() as other:
        add_model(other)
        s = ascend_async.Session()
        g = add_model(s)
        submitted = threading.Event()

        def close_after_second_run() -> None:
            assert submitted.wait(BOUND)
            s.close()  # before: waited for the second run, which this very thread completes

        first, second = Callback(then=close_after_second_run), Callback()
        s.run_with_callback(g, [X, X], first)
        s.run_with_callback(g, [X, X], second)
        submitted.set()
        second.wait()
        np.testing.assert_array_equal(second.calls[0][0]["z"], X + X)
        bounded(s.close)
        assert s._torn_down.is_set()


async def test_close_inside_callback_while_an_awaited_run_is_in_flight() -> None:
    with ascend_async.Session() as other:
        add_model(other)
        s = ascend_async.Session()
        g_cb, g = add_model(s), add_model(s)
        await s.run(g, [X, X], stream=0)  # loaded
        result: dict[str, Any] = {}
        cb = Callback(then=s.close)
        async with anyio.create_task_group() as tg:
            with held(s.streams[0]):

                async def awaited() -> None:
                    result.update(await s.run(g, [X, X], stream=0))

                tg.start_soon(awaited)
                await wait_for(lambda: s.statistics().in_flight == 1, "the awaited run is in flight")
                s.run_with_callback(g_cb, [X, X], cb)
                await anyio.to_thread.run_sync(cb.wait)
                assert s.is_closed and not s._torn_down.is_set()  # waiting for the held run
        np.testing.assert_array_equal(result["z"], X + X)
        with anyio.fail_after(BOUND):
            await s.aclose()


@pytest.mark.slow
def test_close_inside_callback_of_the_last_session_on_the_device() -> None:
    # Before: the watcher freed its own C watch and then waited on NULL: a segfault.
    proc = run_script(
        """
        import threading, numpy as np, ascend_async
        from helpers import add_model, sim_stats
        X = np.ones((2, 4), np.float32)
        s = ascend_async.Session()
        g = add_model(s)
        ran = threading.Event()
        def cb(out, err):
            s.close()
            ran.set()
        s.run_with_callback(g, [X, X], cb)
        assert ran.wait(20)
        s.close()
        from ascend_async import _device
        assert not _device._devices
        st = sim_stats()
        assert st["sessions"] == st["streams"] == st["events"] == 0, st
        print("ok")
        """
    )
    assert proc.stdout.strip() == "ok"


@pytest.mark.slow
def test_close_in_callback_of_last_session_with_a_run_in_flight() -> None:
    proc = run_script(
        """
        import threading, numpy as np, ascend_async
        from helpers import add_model
        X = np.ones((2, 4), np.float32)
        s = ascend_async.Session()
        g = add_model(s)
        go, second = threading.Event(), threading.Event()
        got = []
        def first(out, err):
            assert go.wait(20)
            s.close()
        s.run_with_callback(g, [X, X], first)
        s.run_with_callback(g, [X, X], lambda out, err: (got.append(out), second.set()))
        go.set()
        assert second.wait(20)
        s.close()
        assert (got[0]["z"] == 2).all()
        print("ok")
        """
    )
    assert proc.stdout.strip() == "ok"


# -- faults ---------------------------------------------------------------------------------------


async def test_stream_retired_while_the_first_run_on_it_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by the soak: a stream faulted and was retired (its replicas removed) while a run's
    first load on it was under way; the run then failed with KeyError."""
    from ascend_async._native import _sim

    async with ascend_async.Session(streams=2) as s:
        g, h = add_model(s), add_model(s)
        await s.run(h, [X, X], stream=1)  # h has a replica on stream 1, g has none there
        lane = s.streams[1]
        retired = threading.Event()
        real = s._ensure_loaded

        def load_then_wait(state: Any, stream: Any) -> Any:
            gid = real(state, stream)
            assert retired.wait(BOUND)  # meanwhile the stream faults and is retired
            return gid

        monkeypatch.setattr(s, "_ensure_loaded", load_then_wait)
        result: dict[str, Any] = {}
        async with anyio.create_task_group() as tg:

            async def first_run_of_g() -> None:
                result.update(await s.run(g, [X, X], stream=1))

            tg.start_soon(first_run_of_g)
            await wait_for(lambda: lane in s._graphs[id(g)].replicas, "g is loaded on stream 1")
            assert _sim.lib.aa_sim_inject_fault(lane.handle, 1, 507015) == 0
            with pytest.raises(ascend_async.DeviceError):
                await s.run(h, [X, X], stream=1)
            assert s.streams[1] is not lane  # replaced, and retired with its replicas
            assert lane not in s._graphs[id(g)].replicas
            retired.set()
        np.testing.assert_array_equal(result["z"], X + X)  # ran on the replacement stream


# -- fork -----------------------------------------------------------------------------------------

_FORK_CHILD = """
import asyncio, json, os, sys, faulthandler
import numpy as np, ascend_async
from helpers import add_model
X = np.ones((2, 4), np.float32)

def child_try(results, s, g_sync, g_async):
    tries = {
        "run_sync": lambda: s.run_sync(g_sync, [X, X]),
        "run": lambda: asyncio.run(s.run(g_async, [X, X])),
        "new_session": lambda: ascend_async.Session(),
        "streams": lambda: s.streams,
        "synchronize": lambda: stream.synchronize(),
        "event_query": lambda: event.query(),
        "event_wait": lambda: asyncio.run(event.wait()),
        "tensor_numpy": lambda: tensor.numpy(),
        "close": s.close,
        "run_after_close": lambda: s.run_sync(g_sync, [X, X]),
    }
    for name, fn in tries.items():
        try:
            fn()
            results[name] = "ok"
        except ascend_async.BackendUnavailableError as exc:
            results[name] = "fork" if "forked" in str(exc) else repr(exc)
        except BaseException as exc:
            results[name] = repr(exc)

s = ascend_async.Session()
g_sync, g_async = add_model(s), add_model(s)
s.run_sync(g_sync, [X, X])
asyncio.run(s.run(g_async, [X, X]))
stream = s.streams[0]
event = stream.record()
tensor = ascend_async.DeviceTensor.from_numpy(s, X)
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    faulthandler.dump_traceback_later(20, exit=True)  # a hang fails the child, loudly
    os.close(r)
    results = {}
    child_try(results, s, g_sync, g_async)
    os.write(w, json.dumps(results).encode())
    os.close(w)
    sys.exit(7)  # a normal interpreter exit: must not hang in the runtime's finalizers
os.close(w)
data = b""
while chunk := os.read(r, 65536):
    data += chunk
_, status = os.waitpid(pid, 0)
# The parent is untouched by its child.
assert (s.run_sync(g_sync, [X, X])["z"] == 2).all()
assert (asyncio.run(s.run(g_async, [X, X]))["z"] == 2).all()
assert (tensor.numpy() == X).all()
event.close()
tensor.close()
s.close()
print(json.dumps({"child": json.loads(data), "exit": os.waitstatus_to_exitcode(status)}))
"""


@pytest.mark.slow
def test_forked_child_gets_a_clear_error_and_never_hangs() -> None:
    out = json.loads(run_script(_FORK_CHILD).stdout)
    assert out["exit"] == 7, out
    child = out["child"]
    assert child == {
        "run_sync": "fork",
        "run": "fork",
        "new_session": "fork",
        "streams": "fork",
        "synchronize": "fork",
        "event_query": "fork",
        "event_wait": "fork",
        "tensor_numpy": "fork",
        "close": "ok",  # a no-op there: the parent owns the device
        "run_after_close": "fork",
    }


@pytest.mark.slow
def test_fork_before_the_first_session_starts_afresh() -> None:
    proc = run_script(
        """
        import os, sys, faulthandler, numpy as np, ascend_async
        from helpers import add_model
        X = np.ones((2, 4), np.float32)
        pid = os.fork()
        if pid == 0:
            faulthandler.dump_traceback_later(20, exit=True)
            with ascend_async.Session() as s:
                ok = (s.run_sync(add_model(s), [X, X])["z"] == 2).all()
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        with ascend_async.Session() as s:
            assert (s.run_sync(add_model(s), [X, X])["z"] == 2).all()
        print(os.waitstatus_to_exitcode(status))
        """
    )
    assert proc.stdout.strip() == "0"


# -- nothing outlives its owner -------------------------------------------------------------------


def _live(kind: type) -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, kind))


@pytest.mark.slow
def test_event_loops_do_not_outlive_their_runs() -> None:
    import trio

    from ascend_async._loop import LoopBridge

    try:
        import uvloop
    except ImportError:  # pragma: no cover
        uvloop = None
    with ascend_async.Session() as s:
        g = add_model(s)

        async def one() -> None:
            out = await s.run(g, [X, X])
            assert out["z"][0, 0] == 0

        # Loops other tests left to anyio's test runners (and their bridges) are not this test's.
        base_loops = _live(asyncio.AbstractEventLoop)
        base_trio = _live(trio.lowlevel.TrioToken)
        base_bridges = _live(LoopBridge)
        for _ in range(150):
            asyncio.run(one())
        if uvloop is not None:
            for _ in range(50):
                uvloop.run(one())
        for _ in range(100):
            trio.run(one)
        assert _live(asyncio.AbstractEventLoop) <= base_loops + 1
        assert _live(trio.lowlevel.TrioToken) <= base_trio + 1
        assert _live(LoopBridge) <= base_bridges + 1
        # Their channels went back too: 300 loops would have used up the watcher's 63.
        w = s._device.watcher
        assert w is not None and len(w._channels) <= 1
        assert s.statistics().in_flight == 0


async def test_limiter_is_dropped_with_its_session() -> None:
    from ascend_async._loop import current_bridge

    bridge = current_bridge()
    s = ascend_async.Session()
    g = add_model(s)
    await s.run(g, [X, X])
    assert s in bridge.limiters
    await s.aclose()
    assert len(bridge.limiters) == 0  # dropped by close, not left for the garbage collector


# -- arguments ------------------------------------------------------------------------------------


def _case_ids(cases: list[tuple[dict[str, Any], type, str]]) -> list[str]:
    return [",".join(f"{k}={v!r}".replace(" ", "") for k, v in kw.items()) for kw, _, _ in cases]


SESSION_CASES: list[tuple[dict[str, Any], type, str]] = [
    ({"max_in_flight": 0}, ValueError, "max_in_flight must be >= 1"),
    ({"max_in_flight": -5}, ValueError, "max_in_flight"),
    ({"max_in_flight": 2.5}, TypeError, "max_in_flight must be an int"),
    ({"max_in_flight": True}, TypeError, "max_in_flight must be an int"),
    ({"streams": 0}, ValueError, "streams must be >= 1"),
    ({"streams": -1}, ValueError, "streams must be >= 1"),
    ({"streams": "2"}, TypeError, "streams must be an int"),
    ({"device_id": -1}, ValueError, "device_id must be >= 0"),
    ({"device_id": None}, TypeError, "device_id must be an int"),
    ({"options": ["ge.exec.x"]}, TypeError, "options must be a mapping"),
]


@pytest.mark.parametrize(("kwargs", "error", "match"), SESSION_CASES, ids=_case_ids(SESSION_CASES))
def test_session_arguments_are_checked(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        ascend_async.Session(**kwargs)


@pytest.fixture
def watch_configs() -> Iterator[None]:
    saved = dict(_device._watch_configs)
    yield
    _device._watch_configs.clear()
    _device._watch_configs.update(saved)


WATCH_CASES: list[tuple[dict[str, Any], type, str]] = [
    ({"spinus": 10}, TypeError, "unknown key 'spinus'"),
    ({"spin_us": -1}, ValueError, "spin_us=-1 is out of range"),
    ({"takeover_us": 0}, ValueError, "takeover_us=0 is out of range"),
    ({"wake_after_us": 2**32}, ValueError, "out of range"),
    ({"fault_probe_us": 1.5}, TypeError, "must be an int"),
    ({"min_sleep_us": 100, "max_sleep_us": 10}, ValueError, "below min_sleep_us"),
    ({"strategy": "interrupt"}, ValueError, "strategy must be"),
    ({"device_id": -1}, ValueError, "device_id"),
]


@pytest.mark.parametrize(("kwargs", "error", "match"), WATCH_CASES, ids=_case_ids(WATCH_CASES))
@pytest.mark.usefixtures("watch_configs")
def test_configure_watcher_arguments_are_checked(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    before = dict(_device._watch_configs)
    with pytest.raises(error, match=match):
        ascend_async.configure_watcher(**kwargs)
    assert _device._watch_configs == before  # nothing half-applied


@pytest.mark.usefixtures("watch_configs")
def test_configure_watcher_accepts_its_documented_keys() -> None:
    ascend_async.configure_watcher(
        0, "poll", spin_us=0, min_sleep_us=5, max_sleep_us=50, fault_probe_us=500, wake_after_us=200, takeover_us=9000
    )
    with ascend_async.Session() as s:
        g = add_model(s)
        cb = Callback()
        s.run_with_callback(g, [X, X], cb)
        cb.wait()


def _watch_config_in_effect(**config: int) -> dict[str, int]:
    ascend_async.configure_watcher(0, "poll", **config)
    with ascend_async.Session() as s:
        g = add_model(s)
        cb = Callback()
        s.run_with_callback(g, [X, X], cb)  # starts the device's watcher
        cb.wait()
        w = s._device.watcher
        assert w is not None
        cfg = w.backend.ffi.new("aa_watch_config*")
        w.backend.lib.aa_watch_get_config(w.handle, cfg)
        return {k: int(getattr(cfg, k)) for k in ("spin_us", "min_sleep_us", "max_sleep_us", "wake_after_us")}


@pytest.mark.usefixtures("watch_configs")
def test_configure_watcher_keys_take_effect_alone() -> None:
    """spin_us=0 alone means no spinning (the C watch takes the spin and sleep keys together:
    the others keep their defaults); an unset key keeps its default."""
    assert _watch_config_in_effect(spin_us=0) == {
        "spin_us": 0,
        "min_sleep_us": 20,
        "max_sleep_us": 500,
        "wake_after_us": 1000,
    }
    assert _watch_config_in_effect(max_sleep_us=10)["max_sleep_us"] == 10
    assert _watch_config_in_effect(min_sleep_us=800) == {
        "spin_us": 50,
        "min_sleep_us": 800,
        "max_sleep_us": 800,
        "wake_after_us": 1000,
    }
    assert _watch_config_in_effect(wake_after_us=300) == {
        "spin_us": 50,
        "min_sleep_us": 20,
        "max_sleep_us": 500,
        "wake_after_us": 300,
    }


async def test_run_graph_argument_is_checked() -> None:
    async with ascend_async.Session() as s:
        g = add_model(s)
        for bad in (None, "add", g.model_bytes):
            with pytest.raises(TypeError, match="graph must be a Graph"):
                await s.run(bad, [X, X])  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="graph must be a Graph"):
                await s.run_profiled(bad, [X, X])  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="graph must be a Graph"):
                s.run_sync(bad, [X, X])  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="graph must be a Graph"):
                s.run_with_callback(bad, [X, X], Callback())  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="graph must be a Graph"):
                s.remove_graph(bad)  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="graph must be a Graph"):
                await s.load(bad)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="source is None"):
            s.add_graph(None)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="callback must be callable"):
            s.run_with_callback(g, [X, X], None)  # type: ignore[arg-type]
        assert s.statistics().in_flight == 0
        out = await s.run(g, [X, X])  # nothing was bound or counted by the refusals
        np.testing.assert_array_equal(out["z"], X + X)
