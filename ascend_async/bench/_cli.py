"""``ascend-async bench MODEL.onnx | --demo``, ``ascend-async bench compare A.json B.json``,
``ascend-async check MODEL.onnx`` and ``ascend-async doctor``."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import shlex
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from ._config import LOOPS, MODES, BenchConfig
from ._measure import LevelResult
from ._options import (
    DEFAULT_PERCENTILES,
    BenchError,
    parse_devices,
    parse_int_list,
    parse_levels,
    parse_percentiles,
    parse_sim_timing,
    parse_threshold,
    parse_warmup,
)
from ._runner import run_benchmark

__all__ = ["config_from_args", "main"]

DEMO_MODEL = "mlp"
#: Shapes for a demo model's non-batch symbolic dims (the runner does not guess those).
DEMO_SHAPES = {"transformer": ["x:1,16,64"]}
DEFAULT_CONCURRENCY = "1,4,16,64"


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as ``error: ...`` with exit code 2, like the rest."""


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a {'whole ' if kind is int else ''}number: {text!r}") from None
        if v <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
        return v

    return parse


def _non_negative(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not v >= 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0: {text!r}")
    return v


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ascend-async", description="ascend_async tools")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser(
        "bench",
        help="benchmark a model through Session.run (or a batcher, or a device pool)",
        description="Closed-loop concurrency sweeps or open-loop rate sweeps over one Session, a dynamic "
        "batcher (--batch-max) or a DevicePool (--devices). "
        "Compare two runs with: ascend-async bench compare A.json B.json",
        epilog="Ranges: START:END:STEP with xN (multiply) or +N (add), END included; lists with commas. "
        "Examples: --concurrency 1:64:x2   --rate 100:2000:+100 --latency-threshold 10   "
        "--input data.npz --batch-size 8   --json - | jq .results   "
        "--demo cnn --concurrency 64 --batch-max 32 --batch-delay 2 --sim-timing 2,0.1. "
        "On the simulated device, --devices needs several devices: the sim has ASCEND_ASYNC_SIM_DEVICES "
        "of them (default 1), read when it starts, so set it in the environment: "
        "ASCEND_ASYNC_SIM_DEVICES=4 ascend-async bench --demo cnn --devices all",
    )
    b.add_argument("model", nargs="?", help="an .onnx model (or use --demo)")
    b.add_argument(
        "--demo",
        nargs="?",
        const=DEMO_MODEL,
        metavar="NAME",
        help="a bundled model (mlp, cnn, transformer; default mlp)",
    )
    b.add_argument("--explain", action="store_true", help="print what every figure means, and exit")
    load = b.add_argument_group("load")
    load.add_argument(
        "--concurrency",
        metavar="RANGE",
        help=f"closed loop: runs kept in flight, e.g. 1:64:x2 or 1,4,16 (default {DEFAULT_CONCURRENCY})",
    )
    load.add_argument(
        "--rate",
        metavar="RANGE",
        help="open loop: runs per second on a schedule, e.g. 500 or 100:2000:+100 (latency from the intended time)",
    )
    load.add_argument("--poisson", action="store_true", help="open loop: Poisson arrivals instead of constant gaps")
    load.add_argument(
        "--max-in-flight",
        type=_positive(int),
        default=128,
        metavar="N",
        help="open loop: most runs outstanding; beyond it sends wait, are late, and the points "
        "passed meanwhile are missed (default 128)",
    )
    load.add_argument(
        "--warmup",
        default="0.5s",
        metavar="TIME|RUNS",
        help="per level, excluded from every figure: a time (2s, 500ms) or runs (20); default 0.5s",
    )
    load.add_argument("--duration", type=_positive(float), metavar="S", help="seconds measured per level (default 2)")
    load.add_argument(
        "--count", type=_positive(int), metavar="N", help="runs measured per level (instead of --duration)"
    )
    load.add_argument(
        "--stable",
        action="store_true",
        help="measure until the last three windows' throughput agree within --tolerance",
    )
    load.add_argument("--tolerance", type=_positive(float), default=0.10, help="for --stable (default 0.10)")
    load.add_argument("--window", type=_positive(float), default=1.0, help="--stable window seconds (default 1)")
    load.add_argument(
        "--max-windows", type=_positive(int), default=10, help="--stable gives up after this many windows"
    )
    load.add_argument(
        "--latency-threshold",
        metavar="MS|pN:MS",
        help="stop a sweep after the first level whose p99 (or pN) exceeds MS milliseconds",
    )
    data = b.add_argument_group("data")
    data.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="SRC",
        help="random (default), zeros, a .npy (one-input model), an .npz (arrays named like the inputs), "
        "a folder (*.npz sets used in turn, or NAME.npy per input), or NAME=FILE.npy (repeatable)",
    )
    data.add_argument(
        "--shape",
        action="append",
        default=[],
        metavar="NAME:D0,D1",
        help="shape of a generated input with symbolic dims (repeatable)",
    )
    data.add_argument(
        "--batch-size",
        type=_positive(int),
        metavar="N",
        help="the first (batch) dim of generated inputs; inferences/s = runs/s x N",
    )
    data.add_argument("--save-outputs", metavar="DIR", help="write each input set's outputs to DIR/<set>.npz")
    run = b.add_argument_group("run")
    run.add_argument("--streams", type=_positive(int), default=2, help="device streams (default 2)")
    run.add_argument(
        "--mode",
        choices=MODES,
        default="async",
        help="async: await session.run; thread: to_thread(run_sync); sync: run_sync loop; "
        "callback: run_with_callback bridged to the loop",
    )
    run.add_argument("--loop", choices=LOOPS, default="asyncio", help="uvloop needs the [uvloop] extra, trio [trio]")
    run.add_argument("--device", type=int, metavar="ID", help="the device of the Session (default 0)")
    run.add_argument("--seed", type=int, default=0, help="random inputs and Poisson schedule (default 0)")
    serve = b.add_argument_group("serving (--mode async)")
    serve.add_argument(
        "--batch-max",
        type=_positive(int),
        metavar="N",
        help="each request goes through a dynamic batcher (session.batcher / pool.batcher) that runs "
        "up to N rows at once; a request carries --batch-size rows (default 1), runs/s counts requests "
        "and inferences/s rows",
    )
    serve.add_argument(
        "--batch-delay",
        type=_non_negative,
        metavar="MS",
        help="with --batch-max: longest a request waits for its batch to fill (default 1 ms)",
    )
    serve.add_argument(
        "--batch-preferred",
        metavar="LIST",
        help="with --batch-max: batch sizes sent as soon as reached, e.g. 8,16",
    )
    serve.add_argument(
        "--devices",
        metavar="IDS|all",
        help="run through a DevicePool over these logical device ids (0,1,2,3) or every visible one (all); "
        "on the sim set ASCEND_ASYNC_SIM_DEVICES=N first",
    )
    serve.add_argument(
        "--sim-timing",
        metavar="RUN_MS[,SAMPLE_MS]",
        help="sim only: every graph run lasts at least RUN_MS + SAMPLE_MS x rows, e.g. 2,0.1 for a small "
        "CNN on an NPU (default: the sim's own compute time only)",
    )
    serve.add_argument(
        "--gears",
        metavar="LIST",
        help="static gears of the batch dimension, e.g. 1,8,32: the graph is added with add_graph(gears=...) "
        "(every input's batch dim at each gear), runs at other sizes are refused, and --batch-max pads each "
        "batch to the smallest gear that holds it",
    )
    out = b.add_argument_group("output")
    out.add_argument(
        "--percentiles",
        default=",".join(f"{p:g}" for p in DEFAULT_PERCENTILES),
        metavar="LIST",
        help="latency percentiles shown, e.g. 50,95,99,99.9 (default 50,90,99)",
    )
    out.add_argument("--json", metavar="PATH", help="summary JSON with the full configuration; - for stdout")
    out.add_argument("--csv", metavar="PATH", help="one row per level")
    out.add_argument("--plot", metavar="PATH.png", help="latency-throughput curve (needs matplotlib: the [plot] extra)")
    out.add_argument("--details", action="store_true", help="also show host and loop costs per level")
    out.add_argument(
        "--trace",
        metavar="PATH.json",
        help="write a Chrome trace of the sweep (open it in Perfetto or chrome://tracing): per stream H2D, "
        "compute and D2H, the loop's submit and resume, the batcher's batches (--mode async)",
    )
    out.add_argument(
        "--report",
        choices=("ais",),
        help="ais: also print ais_bench's performance summary (NPU_compute_time, H2D_latency, D2H_latency, "
        "throughput = 1000*batch/mean) from device events of every measured run; the JSON carries it per level",
    )
    out.add_argument("--quiet", action="store_true", help="no progress line")
    d = sub.add_parser("doctor", help="which backend, why, and what is installed")
    d.add_argument("model", nargs="?", help="also say whether CANN's ONNX parser would accept this .onnx model")
    c = sub.add_parser(
        "check",
        help="would CANN's ONNX parser accept this model? (exit 1 if not)",
        description="Every node's key as GE's ONNX parser looks it up (domain::model opset::op type) against the "
        "op plugins CANN registers publicly, the dtypes GE cannot carry, unknown dims, external data and the "
        "2 GiB protobuf limit. Exit 0: accepted; 1: refused; 2: usage or unreadable model.",
    )
    c.add_argument("model", help="an .onnx model")
    c.add_argument("--json", action="store_true", help="the verdict as JSON on stdout (for CI)")
    c.add_argument(
        "--fix",
        metavar="OUT.onnx",
        help="convert to the highest opset at which every op is registered, run both on the sim with seeded "
        "inputs, and write OUT.onnx only if the outputs agree",
    )
    c.add_argument("--seed", type=int, default=0, help="seed of the inputs --fix compares with (default 0)")
    k = sub.add_parser(
        "compile",
        help="build an offline model (.om) from an ONNX model",
        description="Runs the CANN model check first (exit 1 if CANN's ONNX parser would refuse the model). On the "
        "simulator it writes the sim's offline-model container (the ONNX bytes and the gear table); a real .om is "
        "built on an Ascend host (ATC, or GE's build API).",
    )
    k.add_argument("model", help="an .onnx model")
    k.add_argument("-o", "--output", required=True, metavar="MODEL.om", help="where to write the offline model")
    k.add_argument(
        "--gears",
        metavar="KIND:VALUES",
        help="batch:1,2,4,8 | hw:224,224;448,448 | dims:1,3,8;2,3,8 (every dim of every input, gears by ';')",
    )
    k.add_argument(
        "--options",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="GE build options on an Ascend host (repeatable): ge.* go to aclgrphBuildInitialize (ge.socVersion "
        "is required there), the rest to aclgrphBuildModel; unused on the simulator",
    )
    return p


def _compile(args: argparse.Namespace) -> int:
    from .._offline import compile_model

    try:
        options = dict(o.split("=", 1) for o in args.options if "=" in o)
        if len(options) != len(args.options):
            raise ValueError(f"--options takes KEY=VALUE, got {args.options!r}")
        print(compile_model(args.model, args.output, args.gears, options))  # the command's report
    except (ValueError, OSError) as exc:  # GraphError is a ValueError
        print(f"ascend-async compile: {exc}", file=sys.stderr)
        return 1
    return 0


def _check(args: argparse.Namespace) -> int:
    import json

    from .._cann_check import check_model
    from .._errors import GraphError
    from ._fix import fix_model

    try:
        result = check_model(args.model)
    except GraphError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    doc = result.to_dict()
    code = 0 if result.ok else 1
    if args.fix:
        fixed = fix_model(args.model, args.fix, seed=args.seed)
        doc["fix"] = {"written": fixed.written, "opset": fixed.opset, "message": fixed.message}
        code = 0 if fixed.written else 1
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(result.format())
        if args.fix:
            print(("fixed: " if doc["fix"]["written"] else "not fixed: ") + doc["fix"]["message"])
    return code


def _compare_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="ascend-async bench compare",
        description="Compare two summary JSONs (ascend-async bench --json) level by level: B against A.",
    )
    p.add_argument("a", metavar="A.json")
    p.add_argument("b", metavar="B.json")
    p.add_argument(
        "--max-regression",
        type=_positive(float),
        metavar="PCT",
        help="exit 1 when a level's runs/s fell, or its p99 rose, by more than PCT percent",
    )
    return p


def _doctor(model: str | None = None) -> int:
    from ._report import environment

    env = environment(["doctor"])
    print(f"ascend_async: {env['library']}  python {env['python']}  numpy {env['numpy']}")
    try:
        import ascend_async as aa

        info = aa.backend_info()
    except Exception as exc:
        print(f"backend: UNAVAILABLE: {exc}")
        return 1
    print(f"backend: {info['backend']}  ({info['reason']})")
    home = os.environ.get("ASCEND_HOME_PATH") or os.environ.get("ASCEND_TOOLKIT_HOME")
    if home:
        print(f"CANN install: {home} ({'exists' if os.path.isdir(home) else 'MISSING on disk'})")
    else:
        print(
            "CANN install: not found (ASCEND_HOME_PATH / ASCEND_TOOLKIT_HOME unset; source set_env.sh of the toolkit)"
        )
    built = importlib.util.find_spec("ascend_async._native._cann") is not None
    print(f"CANN module built: {'yes' if built else 'no'}  (ascend_async._native._cann)")
    print(f"devices visible: {info.get('devices')}  ({info['backend']})")
    if info.get("sim"):
        print(f"sim config: {info['sim']}")
    if info["backend"] == "sim":
        print("note: runs use the SIMULATED device; benchmark numbers are not hardware numbers")
    for mod in ("trio", "uvloop", "matplotlib"):
        have = importlib.util.find_spec(mod) is not None
        print(f"optional {mod}: {'yes' if have else f'no (pip install {mod})'}")
    if model is not None:
        from .._cann_check import check_model

        try:
            check = check_model(model)
        except aa.GraphError as exc:
            print(f"CANN check: cannot read {model}: {exc}")
            return 1
        print("CANN check: " + ("CANN's ONNX parser would accept it" if check.ok else check.refusal()))
        return 0 if check.ok else 1
    return 0


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """The :class:`BenchConfig` a parsed ``bench`` command line asks for.

    :raises BenchError: for a missing model, conflicting flags or a value that does not parse.
    """
    if args.model and args.demo:
        raise BenchError("give a MODEL or --demo, not both")
    if args.demo:
        from ascend_async.models import path as model_path

        try:
            model = str(model_path(args.demo))
        except ValueError as exc:
            raise BenchError(f"--demo: {exc}") from None
    elif args.model:
        model = args.model
        if not os.path.isfile(model):
            raise BenchError(f"model {model!r}: no such file")
    else:
        raise BenchError("give a MODEL.onnx or --demo NAME (mlp, cnn, transformer)")
    if args.count and args.duration:
        raise BenchError("--duration and --count exclude each other")
    if args.rate is not None and args.concurrency is not None:
        raise BenchError("--rate (open loop) and --concurrency (closed loop) exclude each other")
    if args.rate is not None:
        load, levels = "rate", parse_levels(args.rate, integer=False, option="--rate")
    else:
        load = "concurrency"
        levels = parse_levels(args.concurrency or DEFAULT_CONCURRENCY, integer=True, option="--concurrency")
    if args.mode == "sync" and (load == "rate"):
        raise BenchError("--mode sync is a closed loop of one; it takes no --rate")
    if args.mode == "sync" and args.concurrency is None:
        levels = [1]
    elif args.mode == "sync" and list(levels) != [1]:
        raise BenchError(
            f"--mode sync is a closed loop of one (run_sync on this thread); --concurrency {args.concurrency} asks "
            "for more: use --mode thread for run_sync from several threads, or --mode async"
        )
    from ._inputs import parse_shapes

    duration = args.duration if args.duration else (None if (args.count or args.stable) else 2.0)
    if args.batch_max is None:
        for flag, v in (("--batch-delay", args.batch_delay), ("--batch-preferred", args.batch_preferred)):
            if v is not None:
                raise BenchError(f"{flag} sets the batcher: it needs --batch-max N")
    serving = "--batch-max" if args.batch_max is not None else "--devices" if args.devices is not None else None
    if serving and args.mode != "async":
        raise BenchError(f"{serving} runs requests with await (a batcher, a device pool): it needs --mode async")
    if args.devices is not None and args.device is not None:
        raise BenchError("--device (one Session) and --devices (a DevicePool) exclude each other")
    devices = parse_devices(args.devices) if args.devices is not None else None
    return BenchConfig(
        model=model,
        load=load,
        levels=levels,
        poisson=args.poisson,
        warmup=parse_warmup(args.warmup),
        duration=duration,
        count=args.count,
        stable=args.stable,
        tolerance=args.tolerance,
        window=args.window,
        max_windows=args.max_windows,
        percentiles=parse_percentiles(args.percentiles),
        latency_threshold=parse_threshold(args.latency_threshold) if args.latency_threshold else None,
        max_in_flight=args.max_in_flight,
        shapes=parse_shapes(args.shape or (DEMO_SHAPES.get(args.demo, []) if args.demo else [])),
        inputs=list(args.input),
        batch_size=args.batch_size,
        save_outputs=args.save_outputs,
        streams=args.streams,
        mode=args.mode,
        loop=args.loop,
        device=args.device if args.device is not None else 0,
        seed=args.seed,
        progress=not args.quiet,
        batch_max=args.batch_max,
        batch_delay_ms=args.batch_delay if args.batch_delay is not None else 1.0,
        batch_preferred=parse_int_list(args.batch_preferred, "--batch-preferred") if args.batch_preferred else [],
        devices="all" if args.devices is not None and devices is None else devices,
        sim_timing=parse_sim_timing(args.sim_timing) if args.sim_timing is not None else None,
        gears=parse_int_list(args.gears, "--gears") if args.gears else None,
        trace=args.trace,
        report=args.report,
    )


def _bench(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from rich.console import Console

    from . import _report as rep
    from ._progress import progress_factory

    if args.explain:
        print(rep.EXPLAIN, end="")
        return 0
    err = Console(stderr=True, markup=False, highlight=False, emoji=False)
    try:
        cfg = config_from_args(args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.plot:
        msg = rep.check_plot()  # before the run, not after minutes of it
        if msg:
            print(f"error: {msg}", file=sys.stderr)
            return 2
    json_stdout = args.json == "-"
    con = rep.results_console(to_stderr=json_stdout)
    if cfg.mode == "sync" and args.concurrency not in (None, "1"):
        con.print("note: --mode sync runs one at a time; the concurrency sweep is ignored")
    env = rep.environment(argv)
    command = "ascend-async " + shlex.join(argv)
    where: int | str = cfg.device
    if cfg.devices is not None:
        ids = "all" if isinstance(cfg.devices, str) else ",".join(map(str, cfg.devices))
        where = f"{ids} (DevicePool)"
    for line in rep.header_lines(env, where):
        pooled = cfg.devices is not None and line.startswith("device: ")
        con.print("devices: " + line.removeprefix("device: ") if pooled else line)
    model_name = os.path.basename(cfg.model)
    con.print(
        f"model: {cfg.model}   mode: {cfg.mode}   loop: {cfg.loop}   streams: {cfg.streams}"
        f"{' per device' if cfg.devices is not None else ''}   warm-up: {cfg.warmup} per level"
    )
    if cfg.batch_max is not None:
        pref = f", preferred {','.join(map(str, cfg.batch_preferred))}" if cfg.batch_preferred else ""
        con.print(f"batcher: up to {cfg.batch_max} rows per device run, delay {cfg.batch_delay_ms:g} ms{pref}")
    if cfg.sim_timing is not None:
        con.print(
            f"sim timing model: a graph run lasts at least {cfg.sim_timing[0]:g} ms + {cfg.sim_timing[1]:g} ms per row"
        )
    results: list[LevelResult] = []
    facts: dict[str, Any] = {"mode": cfg.mode, "loop": cfg.loop, "streams": cfg.streams}
    error: str | None = None

    def doc() -> dict[str, Any]:
        return rep.summary_doc(command, cfg.as_dict(), env, facts, results, error)

    def level_done(res: LevelResult) -> None:
        results.append(res)
        if args.json and not json_stdout:
            rep.write_json(args.json, doc())  # a partial file survives an interrupted sweep

    progress = progress_factory(err, cfg.percentiles) if cfg.progress else None
    try:
        _, run_facts = run_benchmark(cfg, level_done, progress)
        facts.update(dataclasses.asdict(run_facts))
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        error = "interrupted"
    except Exception as exc:  # device faults etc.: keep what was measured
        error = f"{type(exc).__name__}: {exc}"
    for r in results:
        if r.error and error is None:
            error = f"at {r.label}: {r.error}"
    if facts.get("inputs"):
        con.print(
            "inputs: "
            + ", ".join(f"{k} {v}" for k, v in facts["inputs"].items())
            + f" ({facts.get('input_source')}; batch {facts.get('batch')})"
        )
    for note in facts.get("notes", []):
        con.print(f"note: {note}")
    for path in facts.get("saved_outputs", []):
        con.print(f"outputs saved: {path}")
    if facts.get("trace"):
        con.print(f"trace: {facts['trace']} (open in https://ui.perfetto.dev or chrome://tracing)")
    if results:
        sim = env.get("backend") == "sim"
        title = f"{model_name} - backend {env.get('backend')}{' (SIMULATED device)' if sim else ''}"
        con.print(rep.main_table(results, cfg.percentiles, title))
        stages = rep.stage_table(results, cfg.percentiles)
        if stages is not None:
            con.print(stages)
        for line in rep.serving_lines(results):
            con.print(line)
        if args.details:
            con.print(rep.details_table(results))
        for line in rep.legend(results, args.details):
            con.print(line, style="dim")
        if sim and stages is not None:
            con.print("(simulated device: the stages are the sim's host threads, not NPU timings)", style="dim")
        if cfg.report == "ais":
            for line in rep.ais_lines(results):
                con.print(line, markup=False, highlight=False)
        for w in rep.warnings_for(results, cfg.tolerance):
            con.print(f"warning: {w}")
    if facts.get("stopped"):
        con.print(f"sweep stopped: {facts['stopped']}")
    rc = 0
    if error:
        print(f"error: {error}", file=sys.stderr)
        rc = 1
    if args.json:
        rep.write_json(args.json, doc())
        if not json_stdout:
            con.print(f"summary JSON: {args.json}")
    if args.csv:
        rep.write_csv(args.csv, env.get("backend"), facts, results, cfg.percentiles)
        con.print(f"CSV: {args.csv}")
    if args.plot and results:
        meta = {
            "model": model_name,
            "backend": env.get("backend"),
            "mode": cfg.mode,
            "loop": cfg.loop,
            "streams": cfg.streams,
            "batch": facts.get("batch", 1),
        }
        rep.write_plot(args.plot, results, meta)
        con.print(f"plot: {os.path.abspath(args.plot)}")
    return rc


def _compare(argv: Sequence[str]) -> int:
    from . import _report as rep
    from ._compare import compare_docs, load_doc

    try:
        args = _compare_parser().parse_args(list(argv))
    except SystemExit as exc:
        return int(exc.code or 0) if isinstance(exc.code, int) else 2
    try:
        a, b = load_doc(args.a), load_doc(args.b)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    con = rep.results_console(to_stderr=False)
    con.print(f"A: {args.a}  ({a.get('command', '?')})")
    con.print(f"B: {args.b}  ({b.get('command', '?')})")
    table, notes, regressions = compare_docs(a, b, args.max_regression)
    con.print(table)
    for n in notes:
        con.print(f"note: {n}")
    if regressions:
        for r in regressions:
            con.print(f"regression: {r}")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """The ``ascend-async`` command; returns its exit code (2 for a usage error)."""
    with warnings.catch_warnings():
        # The commands print the CANN check's verdict themselves; add_graph's warning would say
        # it again. Other warnings are one line each, without our source lines.
        warnings.filterwarnings("ignore", message=r"(?s).*CANN's ONNX parser would refuse")
        warnings.showwarning = _show_warning
        return _main(argv)


def _show_warning(message: Warning | str, category: type[Warning], *_: object, **__: object) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _main(argv: list[str] | None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:2] == ["bench", "compare"]:
        return _compare(args_list[2:])
    try:
        args = _parser().parse_args(args_list)
    except SystemExit as exc:  # argparse: usage error or --help
        return int(exc.code or 0) if isinstance(exc.code, int) else 2
    if args.command == "doctor":
        return _doctor(args.model)
    if args.command == "check":
        return _check(args)
    if args.command == "compile":
        return _compile(args)
    return _bench(args, args_list)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
