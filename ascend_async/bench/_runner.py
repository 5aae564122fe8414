"""The load generator: closed-loop concurrency sweeps and open-loop (constant/Poisson) rate sweeps
over one Session (or a DevicePool, with or without a dynamic Batcher in front), on asyncio,
uvloop or trio, with event-loop lag and watcher CPU sampling.

Every level runs in three phases: **warm-up** (time or runs; excluded from every figure),
**measure** (a duration, a run count, or until throughput is stable) and **drain** (runs still
in flight finish; open loop only, at most ``max_in_flight`` of them).
"""

from __future__ import annotations

import functools
import gc
import os
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import anyio

from ._config import LOOPS, MODES, PROFILE_EVERY, BenchConfig
from ._drivers import closed_level, make_submit, open_level, sync_level
from ._inputs import load_samples, save_outputs
from ._measure import LevelResult, LevelState, RunFacts, batcher_figures, bridge_wakeups, device_runs
from ._options import BenchError, pct_key

__all__ = ["BenchConfig", "BenchError", "LevelResult", "run_benchmark"]


#: ``submit(state)`` runs once; ``state`` is the level's state for a measured run, else None.
Submit = Callable[[LevelState | None], Awaitable[Any]]


def _not_visible(bad: int, visible: int) -> str:
    ids = ", ".join(map(str, range(visible))) if visible else "none"
    msg = f"--devices: device {bad} is not visible; this process sees {visible} device(s): {ids}"
    env = os.environ.get("ASCEND_RT_VISIBLE_DEVICES")
    if env is not None:
        msg += f" (ASCEND_RT_VISIBLE_DEVICES={env!r})"
    try:
        from ascend_async._backend import get_backend

        sim = get_backend().is_sim
    except Exception:
        sim = False
    if sim:
        have = os.environ.get("ASCEND_ASYNC_SIM_DEVICES")
        msg += (
            f". The simulated device has ASCEND_ASYNC_SIM_DEVICES={have or 'unset (1)'} devices, read when it starts: "
            "set it in the environment, e.g. ASCEND_ASYNC_SIM_DEVICES=4 ascend-async bench --demo cnn --devices all"
        )
    return msg


def _set_sim_timing(run_ms: float, sample_ms: float) -> None:
    from ascend_async._backend import get_backend

    b = get_backend()
    if not b.is_sim:
        raise BenchError(f"--sim-timing sets the simulated device's timing model; this backend is {b.name}")
    t = b.ffi.new("aa_sim_timing*", {"min_graph_us": round(run_ms * 1000), "per_sample_us": round(sample_ms * 1000)})
    b.lib.aa_sim_set_timing(t)


def _reset_sim_timing() -> None:
    from ascend_async._backend import get_backend

    b = get_backend()
    b.lib.aa_sim_set_timing(b.ffi.new("aa_sim_timing*"))


def run_benchmark(
    cfg: BenchConfig,
    on_level: Callable[[LevelResult], None] | None = None,
    progress: Any = None,
) -> tuple[list[LevelResult], RunFacts]:
    """Run every load level of ``cfg`` in order; returns the results (those so far when a level
    fails, the failing level carrying ``error``) and :class:`RunFacts`. A sweep stops early after
    the first level above ``cfg.latency_threshold``, and in a rate sweep after the first level
    that overloads the device (``facts.stopped`` says why). ``progress`` is an optional
    ``(label) -> display`` factory (see ``_progress.Progress``).

    :raises BenchError: for a model, input data or setting that cannot run, before any timing.
    """
    import ascend_async as aa

    if cfg.mode not in MODES:
        raise BenchError(f"--mode {cfg.mode!r}: choose one of {', '.join(MODES)}")
    if cfg.loop not in LOOPS:
        raise BenchError(f"--loop {cfg.loop!r}: choose one of {', '.join(LOOPS)}")
    if cfg.mode == "sync" and cfg.load == "rate":
        raise BenchError("--mode sync is a closed loop of one; it takes no --rate")
    serving = "--batch-max" if cfg.batch_max is not None else "--devices" if cfg.devices is not None else None
    if serving and cfg.mode != "async":
        raise BenchError(f"{serving} runs requests with await (a batcher, a device pool): it needs --mode async")
    if cfg.batch_max is not None:
        big = [p for p in cfg.batch_preferred if p > cfg.batch_max]
        if big:
            raise BenchError(f"--batch-preferred {big[0]} is larger than --batch-max {cfg.batch_max}")
    try:
        graph = _offline_model(cfg.model) or aa.Graph(cfg.model)
    except Exception as exc:
        raise BenchError(f"cannot load model {cfg.model}: {exc}") from exc
    samples = load_samples(graph, cfg.inputs, cfg.shapes, cfg.batch_size, cfg.seed)
    facts = RunFacts(
        inputs=samples.describe(), input_source=samples.source, batch=samples.batch, notes=list(samples.notes)
    )
    check = graph.cann_check
    if isinstance(graph, aa.OfflineModel):  # compiled already: no ONNX for the parser check
        facts.notes.append(f"offline model: {graph.gears or 'fixed shapes'}")
    else:
        facts.notes.append(
            "CANN check: CANN's ONNX parser would accept this model" if check.ok else "CANN check: " + check.refusal()
        )
    if len(samples.sets) > 1:
        facts.notes.append(f"{len(samples.sets)} input sets, used in turn")
    if cfg.batch_max is not None:
        # A request's rows are the first dim of its inputs (a static one too): inferences/s counts them.
        rows = {int(next(iter(s.values())).shape[0]) if next(iter(s.values())).ndim else 1 for s in samples.sets}
        if len(rows) > 1:
            raise BenchError(
                f"--batch-max {cfg.batch_max}: the input sets carry different row counts ({sorted(rows)}); "
                "give sets of one size, so that inferences/s counts rows exactly"
            )
        samples.batch = facts.batch = rows.pop()
        if samples.batch > cfg.batch_max:
            raise BenchError(
                f"--batch-max {cfg.batch_max}: each request carries {samples.batch} rows (--batch-size, the input "
                "data or a static batch dim), more than a batch may hold; lower --batch-size or raise --batch-max"
            )
    gears = None
    if cfg.gears:
        # every input's batch dim at each gear; its other dims as the input sets have them
        first = samples.sets[0]
        gears = {s.name: [(g, *first[s.name].shape[1:]) for g in cfg.gears] for s in graph.inputs}
        bad = sorted({int(a.shape[0]) for s in samples.sets for a in s.values()} - set(cfg.gears))
        if cfg.batch_max is None and bad:
            raise BenchError(
                f"--gears {','.join(map(str, cfg.gears))}: the requests carry {bad[0]} rows, not a gear "
                "(set --batch-size to a gear, or batch with --batch-max, which pads to the next gear)"
            )
    if cfg.report == "ais" and (cfg.mode != "async" or cfg.batch_max is not None or cfg.devices is not None):
        raise BenchError(
            "--report ais reads device events of each run: it needs --mode async without --batch-max or --devices"
        )
    levels = [1.0] if cfg.mode == "sync" else list(cfg.levels)
    results: list[LevelResult] = []
    peak = max(int(v) for v in levels) if cfg.load == "concurrency" else cfg.max_in_flight
    # Runs past the device's event budget wait for events (on the loop) in any case: ask for no
    # more than it has (a larger max_in_flight is clamped with a warning).
    from .._backend import get_backend
    from .._device import event_limit

    peak = min(max(512, peak), event_limit(get_backend()))
    pool: Any = None
    session: Any = None
    if cfg.devices is not None:
        visible = aa.device_count()
        ids = list(range(visible)) if isinstance(cfg.devices, str) else [int(d) for d in cfg.devices]
        if not ids:
            raise BenchError(_not_visible(0, visible).replace("device 0 is not visible", "no device is visible"))
        bad = [d for d in ids if d >= visible]
        if bad:
            raise BenchError(_not_visible(bad[0], visible))
        try:
            pool = aa.DevicePool(ids, streams_per_device=cfg.streams, max_in_flight=peak)
        except Exception as exc:
            raise BenchError(f"cannot open a device pool on devices {ids}: {exc}") from exc
        facts.devices = list(pool.devices)
    else:
        try:
            session = aa.Session(cfg.device, streams=cfg.streams, max_in_flight=peak)
        except Exception as exc:
            raise BenchError(f"cannot open a session on device {cfg.device}: {exc}") from exc
    target: Any = pool if pool is not None else session
    watch = facts.devices if facts.devices is not None else [cfg.device]

    def record(res: LevelResult) -> bool:
        """Keep a finished level; False when the sweep should end here."""
        results.append(res)
        if on_level:
            on_level(res)
        if res.error:
            return False
        th = cfg.latency_threshold
        if th is not None:
            v = res.latency_ms.get(pct_key(th.percentile))
            if v is not None and v > th.ms:
                facts.stopped = f"{res.label}: {pct_key(th.percentile)} {v:.3f} ms > --latency-threshold {th.ms:g} ms"
                return False
        if res.overloaded and res.value != levels[-1]:
            facts.stopped = f"{res.label} is overloaded (> 1% of its sends missed); higher rates would only miss more"
            return False
        return True

    def check_outputs(outs: list[dict[str, Any]]) -> None:
        if cfg.save_outputs:
            facts.saved_outputs = save_outputs(cfg.save_outputs, samples.names, outs)

    timing_set = False
    try:
        try:
            target.add_graph(graph, gears=gears) if gears else target.add_graph(graph)
        except Exception as exc:
            raise BenchError(f"cannot add model {cfg.model}: {exc}") from exc
        facts.backend = (pool.sessions[0] if pool is not None else session).backend
        if gears:
            facts.gears = {n: [list(sh) for sh in v] for n, v in gears.items()}

        def make_batcher() -> Any:
            try:
                return target.batcher(
                    graph,
                    max_batch_size=cfg.batch_max,
                    max_delay_ms=cfg.batch_delay_ms,
                    preferred_batch_sizes=cfg.batch_preferred,
                )
            except (ValueError, aa.GraphError) as exc:
                raise BenchError(f"--batch-max {cfg.batch_max}: {exc}") from exc

        if cfg.batch_max is not None:
            c = make_batcher().config
            facts.batcher = {
                "max_batch_size": c.max_batch_size,
                "max_delay_ms": c.max_delay_ms,
                "preferred_batch_sizes": list(c.preferred_batch_sizes),
                "max_concurrent_batches": c.max_concurrent_batches,
            }
        if cfg.sim_timing is not None:
            _set_sim_timing(*cfg.sim_timing)
            timing_set = True
            facts.sim_timing = {"ms_per_run": cfg.sim_timing[0], "ms_per_sample": cfg.sim_timing[1]}
        if cfg.mode in ("sync", "thread"):
            # Check the inputs and compile once, before any timing (and keep the outputs).
            try:
                check_outputs([session.run_sync(graph, s) for s in samples.sets])
            except aa.AscendError as exc:
                raise BenchError(f"{cfg.model}: the first run failed: {exc}") from exc

        if cfg.mode == "sync":
            res = LevelResult("concurrency", 1, batch=samples.batch)
            show = progress(res.label) if progress else None
            try:
                sync_level(cfg, session, graph, samples, res, show)
            finally:
                if show is not None:
                    show.close()
            record(res)
            return results, facts

        async def main() -> None:
            try:
                if cfg.mode == "async":
                    # compile, load and run each gear once on every stream (Session.warmup)
                    reports = await target.warmup(graph)
                    reports = reports if isinstance(reports, list) else [reports]
                    facts.warmup = {
                        "seconds": max(r.seconds for r in reports),
                        "runs": sum(r.runs for r in reports),
                        "shapes": [{k: list(v) for k, v in sh.items()} for sh in reports[0].shapes],
                        "streams": sum(r.streams for r in reports),
                    }
                    facts.notes.append(
                        f"warm-up: compiled and loaded on {facts.warmup['streams']} stream(s), "
                        f"{facts.warmup['runs']} zero run(s) at {len(reports[0].shapes)} shape(s), "
                        f"{facts.warmup['seconds'] * 1000:.1f} ms"
                    )
                    check_outputs([await target.run(graph, s) for s in samples.sets])
                    if cfg.batch_max is not None:  # the requests as the batcher will see them
                        first = make_batcher()
                        await first.run(samples.sets[0])
                        first.close()
                elif cfg.mode == "callback":
                    one = make_submit(session, graph, samples, "callback", 1)
                    check_outputs([await one(None) for _ in samples.sets])
            except aa.AscendError as exc:
                raise BenchError(f"{cfg.model}: the first run failed: {exc}") from exc
            # The heap built so far (onnx, numpy, the model, the interpreter's own objects) is
            # frozen, as latency-sensitive services do after startup: a full collection of it
            # takes ~10 ms here and would land in some level's latencies and loop lag. What the
            # runs themselves allocate is still collected.
            gc.collect()
            gc.freeze()
            try:
                if cfg.trace:
                    with target.trace(cfg.trace):
                        await _levels()
                    facts.trace = cfg.trace
                else:
                    await _levels()
            finally:
                gc.unfreeze()

        async def _levels() -> None:
            for value in levels:
                res = LevelResult(cfg.load, value, batch=samples.batch)
                limit = int(value) if cfg.load == "concurrency" else cfg.max_in_flight
                batcher = make_batcher() if cfg.batch_max is not None else None
                run: Callable[..., Awaitable[Any]] | None = None
                if batcher is not None:
                    run = batcher.run
                elif pool is not None:
                    run = functools.partial(pool.run, graph)
                snap: dict[str, Any] = {}

                def on_measure(batcher: Any = batcher, snap: dict[str, Any] = snap) -> None:
                    snap["batcher"] = batcher.statistics() if batcher is not None else None
                    snap["pool"] = pool.statistics() if pool is not None else None

                every = 1 if cfg.report == "ais" else PROFILE_EVERY
                submit = make_submit(session, graph, samples, cfg.mode, limit, run, every)
                show = progress(res.label) if progress else None
                w0 = bridge_wakeups()
                kw = {"on_measure": on_measure, "watch": watch}
                try:
                    if cfg.load == "rate":
                        state = await open_level(cfg, submit, value, res, show, **kw)
                    else:
                        state = await closed_level(cfg, submit, int(value), res, show, **kw)
                finally:
                    if show is not None:
                        show.close()
                w1 = bridge_wakeups()
                if cfg.mode == "async" and w0 is not None and w1 is not None and state.done:
                    res.loop_wakeups_per_run = (w1 - w0) / state.done
                if batcher is not None:
                    res.batcher = batcher_figures(snap.get("batcher"), batcher.statistics(), res.elapsed_s)
                    batcher.close()
                if pool is not None:
                    res.device_runs = device_runs(snap.get("pool"), pool.statistics())
                if not record(res):
                    return

        _run_loop(cfg.loop, main)
    finally:
        if timing_set:
            _reset_sim_timing()
        try:
            target.close()
        except Exception:  # a faulted session still closes as far as it can
            pass
    return results, facts


def _run_loop(loop: str, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
    if loop == "trio":
        try:
            import trio  # noqa: F401
        except ImportError:
            raise BenchError("--loop trio: trio is not installed (pip install trio)") from None
        anyio.run(fn, backend="trio")
    elif loop == "uvloop":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            raise BenchError("--loop uvloop: uvloop is not installed (pip install uvloop)") from None
        anyio.run(fn, backend="asyncio", backend_options={"use_uvloop": True})
    else:
        anyio.run(fn, backend="asyncio")


def _offline_model(path: str) -> Any:
    """An offline model (.om, or the sim's container) read for its signature by a short-lived
    session (each benchmarked session loads it again), or None for anything else."""
    from .._offline import OM_MAGIC, SIM_HEADER

    try:
        with open(path, "rb") as f:
            head = f.read(len(SIM_HEADER))
    except OSError:
        return None
    if not (head.startswith(OM_MAGIC) or head == SIM_HEADER or str(path).endswith(".om")):
        return None
    import ascend_async as aa

    with aa.Session(streams=1) as probe:
        return probe.load_model(path)
