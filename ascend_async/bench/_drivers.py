"""The drivers: how runs are sent in one level. Closed loop (N clients, each waits for its
answer), open loop (a constant or Poisson schedule, sent on time whatever the answers do), and
the plain run_sync loop; `make_submit` makes one run in the chosen mode (async, thread, sync,
callback), through a Session, a DevicePool or a Batcher."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import anyio
import numpy as np

from .._loop import current_bridge
from ._config import BEHIND_NS, BURST, LATE_NS, MODES, PROFILE_EVERY, BenchConfig
from ._inputs import Samples
from ._measure import LevelResult, LevelState, finish_level, lag_monitor, overloaded, thread_cpu_s, watcher_tid
from ._options import BenchError

__all__ = ["Schedule", "Submit"]


Submit = Callable[[LevelState | None], Awaitable[Any]]


async def closed_level(
    cfg: BenchConfig, submit: Submit, conc: int, res: LevelResult, show: Any, **state_kw: Any
) -> LevelState:
    state = LevelState(cfg, res, **state_kw)
    if cfg.warmup.runs == 0 or (cfg.warmup.runs is None and not cfg.warmup.seconds):
        state.start_measuring(state.t_start)

    async def worker() -> None:
        while not state.stop:
            s = time.perf_counter_ns()
            measured = state.measuring
            try:
                await submit(state if measured else None)
            except Exception as exc:  # a device fault: stop the level, keep what we have
                state.fail(exc)
                return
            e = time.perf_counter_ns()
            state.done += 1
            if measured and s >= state.t0:  # only runs started inside the window count
                state.lat.append(e - s)
                state.ends.append(e)
                if state.should_stop():
                    state.stop = True
            elif not state.measuring and state.warmed_up(e):
                state.start_measuring(e)

    await _drive(cfg, state, [worker] * conc, show)
    return state


class Schedule:
    """The send times of an open-loop level from ``start_ns``: constant gaps, or Poisson gaps
    drawn in blocks from a generator seeded with ``seed`` (the same schedule on every run).
    ``skip`` passes any number of points in O(blocks), so an overloaded sender never spends its
    loop's time counting the points it missed one by one."""

    BLOCK = 4096

    def __init__(self, start_ns: float, rate: float, poisson: bool, seed: int) -> None:
        self.gap = 1e9 / rate
        self.t = float(start_ns)  # the next point not yet sent or skipped
        self._rng = np.random.default_rng(seed) if poisson else None
        self._gaps = np.empty(0)
        self._i = 0

    def _block(self) -> np.ndarray:
        """The Poisson gaps not used yet (refilled when spent)."""
        assert self._rng is not None
        if self._i >= self._gaps.size:
            self._gaps = self._rng.exponential(self.gap, self.BLOCK)
            self._i = 0
        return self._gaps[self._i :]

    def advance(self) -> None:
        """Move past the current point (sent)."""
        if self._rng is None:
            self.t += self.gap
        else:
            self.t += float(self._block()[0])
            self._i += 1

    def skip(self, now: float, end: float | None = None) -> int:
        """Pass every point at or before ``now`` (and before ``end``); returns how many."""
        limit = now if end is None else min(now, float(np.nextafter(end, -np.inf)))
        if self.t > limit:
            return 0
        if self._rng is None:
            n = int((limit - self.t) // self.gap) + 1
            self.t += n * self.gap
            return n
        n = 0
        while self.t <= limit:
            gaps = self._block()
            after = self.t + np.cumsum(gaps)  # the points after the current one
            k = int(np.searchsorted(after, limit, side="right"))  # of them, how many are passed too
            n += 1 + min(k, gaps.size - 1)
            if k < gaps.size:
                self.t = float(after[k])
                self._i += k + 1
                return n
            self.t = float(after[-1])  # the whole block passed: its last point is current now
            self._i += gaps.size
        return n


async def open_level(
    cfg: BenchConfig, submit: Submit, rate: float, res: LevelResult, show: Any, **state_kw: Any
) -> LevelState:
    """Sends on a fixed schedule: constant gaps, or Poisson gaps from a generator seeded with
    ``cfg.seed``, so every run of a level has the same schedule. The sender never blocks its
    loop: it sleeps until the next send or, when behind, catches up yielding every ``BURST``
    sends. A send more than 1 ms after its time is *late*. At most ``max_in_flight`` runs are in
    flight; when the sender had to wait for a slot, it resumes the schedule at the present and
    the points that fell due meanwhile are *missed*; so are points more than ``BEHIND_NS``
    overdue (a host that cannot send that fast). It never builds a backlog, and a level ends on
    time however overloaded.
    Latency counts from the intended send time, so waiting for a slot shows in the figures.

    The runs go to ``max_in_flight`` worker tasks started before the schedule begins, through an
    unbuffered stream: a send hands its time to an idle worker (no task is spawned per send,
    which would cost the loop more than the run's own submission), and "no worker idle" is the
    in-flight cap."""
    state = LevelState(cfg, res, **state_kw)
    res.max_in_flight = cfg.max_in_flight
    send, receive = anyio.create_memory_object_stream[tuple[int, bool]](0)

    async def one(intended: int, measured: bool) -> None:
        try:
            await submit(state if measured else None)
        except Exception as exc:
            state.fail(exc)
            return
        finally:
            state.in_flight -= 1
        e = time.perf_counter_ns()
        state.done += 1
        if measured:
            state.lat.append(e - intended)  # from the intended send time: no coordinated omission
            state.ends.append(e)
            if (cfg.count is not None or cfg.stable) and state.should_stop():
                state.request_stop()

    received = [0]  # the intended time of the last run a worker took

    async def worker() -> None:
        # Counted here, where a run is known to have gone out: a send cancelled at the
        # window's end may still have handed its item over.
        async for intended, measured in receive:
            received[0] = intended
            state.in_flight += 1
            if measured:
                res.sent += 1
                if time.perf_counter_ns() - intended > LATE_NS:
                    res.late_sends += 1
            await one(intended, measured)

    end_ns: float | None = None  # the window's end on the schedule (duration mode)
    timed = cfg.duration is not None and not cfg.stable and cfg.count is None
    schedule: Schedule | None = None

    async def sender() -> None:
        nonlocal end_ns, schedule
        state.t_start = time.perf_counter_ns()  # the workers are ready: the schedule starts now
        schedule = Schedule(state.t_start, rate, cfg.poisson, cfg.seed)
        skipped_last = False
        passed = burst = 0  # schedule points sent or missed: a warm-up in runs counts points,
        w = cfg.warmup  # so the measured window starts at the same point on every run
        while True:
            t = schedule.t
            if not state.measuring and (
                (w.runs is not None and passed >= w.runs)
                or (w.runs is None and t - state.t_start >= (w.seconds or 0.0) * 1e9)
            ):
                state.start_measuring(int(t))
                if timed:
                    assert cfg.duration is not None and state.sender_scope is not None
                    end_ns = t + cfg.duration * 1e9
                    # The window closes on the clock, wherever the sender waits then.
                    state.sender_scope.deadline = anyio.current_time() + (end_ns - time.perf_counter_ns()) / 1e9
            if end_ns is not None and t >= end_ns:
                return
            now = time.perf_counter_ns()
            if t > now:
                await anyio.sleep((t - now) / 1e9)
                burst = 0
            else:
                if burst >= BURST:
                    await anyio.lowlevel.checkpoint()  # behind schedule: catch up, but let the loop run
                    burst = 0
                    now = time.perf_counter_ns()
                if now - t > BEHIND_NS and not skipped_last:  # too far behind: the host cannot keep this rate
                    skipped = schedule.skip(now - BEHIND_NS, end_ns)
                    passed += skipped
                    if state.measuring:
                        res.missed += skipped
                    skipped_last = True  # the next point goes out whatever: a skip cannot chase the clock
                    continue
            skipped_last = False
            item = (int(t), state.measuring)
            try:
                send.send_nowait(item)
                waited = False
            except anyio.WouldBlock:  # every worker busy: max_in_flight reached, this send is late
                waited = True
                await send.send(item)
            s = time.perf_counter_ns()
            passed += 1
            burst += 1
            schedule.advance()
            if waited:  # the points that fell due while no slot was free are missed
                skipped = schedule.skip(s, end_ns)
                passed += skipped
                if state.measuring:
                    res.missed += skipped

    async def body() -> None:
        with receive:
            async with anyio.create_task_group() as tg:
                for _ in range(cfg.max_in_flight):
                    tg.start_soon(worker)
                await anyio.lowlevel.checkpoint()  # the workers wait for their first run
                with send, anyio.CancelScope() as scope:  # closing the stream lets the workers finish
                    state.sender_scope = scope
                    await sender()
                state.sender_scope = None
                if state.measuring:
                    state.phase = "drain"

    await _drive(cfg, state, [body], show)
    if end_ns is not None and schedule is not None:  # points the sender never reached: missed
        if int(schedule.t) == received[0]:  # its send was cancelled after a worker took it: sent
            schedule.advance()
        res.missed += schedule.skip(end_ns, end_ns)
    res.intended = res.sent + res.missed
    window_s = cfg.duration if end_ns is not None else res.elapsed_s
    res.sent_per_s = res.sent / window_s if window_s else 0.0
    res.overloaded = overloaded(res.intended, res.missed)
    return state


async def _drive(
    cfg: BenchConfig,
    state: LevelState,
    tasks: list[Callable[[], Coroutine[Any, Any, None]]],
    show: Any,
) -> None:
    res = state.res
    tids = [watcher_tid(d) for d in state.watch]
    w0 = [thread_cpu_s(t) for t in tids]
    c0 = time.process_time()
    async with anyio.create_task_group() as outer:
        outer.start_soon(lag_monitor, state)
        if show is not None:
            outer.start_soon(show.run, state)
        async with anyio.create_task_group() as tg:
            for fn in tasks:
                tg.start_soon(fn)
        state.stop = True
        outer.cancel_scope.cancel()
    res.process_cpu_s = time.process_time() - c0
    spent: list[float] = []
    for d, tid, a in zip(state.watch, tids, w0, strict=True):
        b = thread_cpu_s(tid or watcher_tid(d))
        if b is not None:
            spent.append(b - (a or 0.0))
    if spent:
        res.watcher_cpu_s = sum(spent)
    finish_level(cfg, state)


def make_submit(
    session: Any,
    graph: Any,
    samples: Samples,
    mode: str,
    limit: int,
    run: Callable[..., Awaitable[Any]] | None = None,
    every: int = PROFILE_EVERY,
) -> Submit:
    """``submit(state)`` runs the next input set once in ``mode``; in async mode one measured run
    in PROFILE_EVERY is profiled into ``state.profiles``. With ``run`` (a batcher's or a pool's
    ``run`` taking the inputs alone) each submit awaits it, unprofiled."""
    sets = samples.sets
    n = len(sets)
    calls = [0]

    def next_inputs() -> dict[str, np.ndarray]:
        calls[0] += 1
        return sets[calls[0] % n] if n > 1 else sets[0]

    if run is not None:

        async def run_target(state: LevelState | None) -> Any:
            return await run(next_inputs())

        return run_target
    if mode == "async":

        async def run_async(state: LevelState | None) -> Any:
            inputs = next_inputs()
            if state is None or calls[0] % every:
                return await session.run(graph, inputs)
            out, prof = await session.run_profiled(graph, inputs)
            if state.measuring:
                state.profiles.append(prof)
            return out

        return run_async
    if mode == "thread":
        limiter = anyio.CapacityLimiter(max(limit, 1))

        async def run_thread(state: LevelState | None) -> Any:
            return await anyio.to_thread.run_sync(session.run_sync, graph, next_inputs(), limiter=limiter)

        return run_thread
    if mode == "callback":

        async def run_callback(state: LevelState | None) -> Any:
            post = current_bridge().post
            event = anyio.Event()
            box: list[Any] = [None, None]

            def cb(outputs: Any, error: BaseException | None) -> None:
                box[0], box[1] = outputs, error
                post(event.set)

            session.run_with_callback(graph, next_inputs(), cb)
            await event.wait()
            if box[1] is not None:
                raise box[1]
            return box[0]

        return run_callback
    raise BenchError(f"--mode {mode!r}: choose one of {', '.join(MODES)}")


def sync_level(cfg: BenchConfig, session: Any, graph: Any, samples: Samples, res: LevelResult, show: Any) -> None:
    """Plain ``run_sync`` loop on this thread (concurrency 1 by construction)."""
    state = LevelState(cfg, res)
    sets = samples.sets
    i = 0
    tid = watcher_tid(cfg.device)
    w0 = thread_cpu_s(tid)
    c0 = time.process_time()
    last_show = state.t_start
    while True:
        s = time.perf_counter_ns()
        if not state.measuring and state.warmed_up(s):
            state.start_measuring(s)
        try:
            session.run_sync(graph, sets[i % len(sets)])
        except Exception as exc:
            state.fail(exc)
            break
        i += 1
        e = time.perf_counter_ns()
        state.done += 1
        if state.measuring:
            state.lat.append(e - s)
            state.ends.append(e)
            if state.should_stop():
                break
        if show is not None and e - last_show > 250_000_000:
            last_show = e
            show.update(state)
    res.process_cpu_s = time.process_time() - c0
    w1 = thread_cpu_s(tid)
    if w0 is not None and w1 is not None:
        res.watcher_cpu_s = w1 - w0
    finish_level(cfg, state)
