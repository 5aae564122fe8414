"""``ascend-async bench MODEL.onnx | --demo`` and ``ascend-async doctor``."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Sequence
from typing import Any

from ._report import environment, format_table, header_lines, write_csv, write_json, write_plot
from ._runner import LOOPS, MODES, BenchConfig, BenchError, LevelResult, parse_shapes, run_benchmark

__all__ = ["main"]

DEMO_MODEL = "mlp"


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 1,4,16,64, not {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"concurrency levels must be >= 1: {text!r}")
    return values


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if v <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
        return v

    return parse


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ascend-async", description="ascend_async tools")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser(
        "bench",
        help="benchmark a model through Session.run",
        description="Closed-loop concurrency sweeps or open-loop rates over one Session.",
    )
    b.add_argument("model", nargs="?", help="an .onnx model (or use --demo)")
    b.add_argument(
        "--demo",
        nargs="?",
        const=DEMO_MODEL,
        metavar="NAME",
        help="a bundled model (mlp, cnn, transformer; default mlp)",
    )
    load = b.add_argument_group("load")
    load.add_argument(
        "--concurrency",
        type=_int_list,
        default=None,
        help="closed loop: runs kept in flight, a list to sweep (default 1,4,16,64)",
    )
    load.add_argument(
        "--rate",
        type=_positive(float),
        help="open loop: runs per second (latency from the intended send time)",
    )
    load.add_argument("--poisson", action="store_true", help="open loop: Poisson arrivals instead of constant gaps")
    load.add_argument("--warmup", type=int, default=20, help="runs per level before measuring (excluded; default 20)")
    load.add_argument("--duration", type=_positive(float), help="seconds measured per level (default 2)")
    load.add_argument("--count", type=_positive(int), help="runs measured per level (instead of --duration)")
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
    run = b.add_argument_group("run")
    run.add_argument(
        "--shape",
        action="append",
        default=[],
        metavar="NAME:D0,D1",
        help="input shape for symbolic dims (repeatable)",
    )
    run.add_argument("--streams", type=_positive(int), default=2, help="device streams (default 2)")
    run.add_argument(
        "--mode",
        choices=MODES,
        default="async",
        help="async: await session.run; thread: to_thread(run_sync); sync: run_sync loop; "
        "callback: run_with_callback bridged to the loop",
    )
    run.add_argument("--loop", choices=LOOPS, default="asyncio")
    run.add_argument("--device", type=int, default=0)
    run.add_argument("--seed", type=int, default=0)
    out = b.add_argument_group("output")
    out.add_argument("--json", metavar="PATH")
    out.add_argument("--csv", metavar="PATH")
    out.add_argument("--plot", metavar="PATH.png", help="needs matplotlib")
    out.add_argument("--quiet", action="store_true", help="no progress line")
    sub.add_parser("doctor", help="which backend, why, and what is installed")
    return p


def _doctor() -> int:
    env = environment(["doctor"])
    ok = True
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
        print(f"optional {mod}: {'yes' if importlib.util.find_spec(mod) else 'no'}")
    return 0 if ok else 1


def _bench(args: argparse.Namespace, argv: Sequence[str]) -> int:
    if args.model and args.demo:
        print("error: give a MODEL or --demo, not both", file=sys.stderr)
        return 2
    if args.demo:
        from ascend_async.models import path as model_path

        try:
            model = str(model_path(args.demo))
        except ValueError as exc:
            print(f"error: --demo: {exc}", file=sys.stderr)
            return 2
    elif args.model:
        model = args.model
        if not os.path.exists(model):
            print(f"error: model {model!r}: no such file", file=sys.stderr)
            return 2
    else:
        print("error: give a MODEL.onnx or --demo", file=sys.stderr)
        return 2
    if args.count and args.duration:
        print("error: --duration and --count exclude each other", file=sys.stderr)
        return 2
    explicit_conc = args.concurrency is not None
    if args.concurrency is None:
        args.concurrency = [1, 4, 16, 64]
    try:
        shapes = parse_shapes(args.shape)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    duration = args.duration if args.duration else (None if (args.count or args.stable) else 2.0)
    cfg = BenchConfig(
        model=model,
        concurrency=args.concurrency,
        rate=args.rate,
        poisson=args.poisson,
        warmup=max(args.warmup, 0),
        duration=duration,
        count=args.count,
        stable=args.stable,
        tolerance=args.tolerance,
        window=args.window,
        max_windows=args.max_windows,
        shapes=shapes,
        streams=args.streams,
        mode=args.mode,
        loop=args.loop,
        device=args.device,
        seed=args.seed,
        progress=not args.quiet,
    )
    if args.mode == "sync" and explicit_conc and args.concurrency != [1] and args.rate is None:
        print("note: --mode sync runs one at a time; the concurrency sweep is ignored", file=sys.stderr)
    env = environment(argv)
    for line in header_lines(env, args.device):
        print(line)
    print(f"model: {model}   mode: {cfg.mode}   loop: {cfg.loop}   streams: {cfg.streams}")
    results: list[LevelResult] = []
    facts: dict[str, Any] = {"model": model, "mode": cfg.mode, "loop": cfg.loop, "streams": cfg.streams}
    error: str | None = None
    rc = 0

    def level_done(res: LevelResult) -> None:
        results.append(res)
        _save(args, env, facts, results, None)

    try:
        _, more = run_benchmark(cfg, level_done)
        facts.update(more)
    except BenchError as exc:
        error = str(exc)
    except KeyboardInterrupt:
        error = "interrupted"
    except Exception as exc:  # device faults etc.: keep what was measured
        error = f"{type(exc).__name__}: {exc}"
    for r in results:
        if r.error and error is None:
            error = f"at {r.load} {r.value:g}: {r.error}"
    if facts.get("inputs"):
        print("inputs: " + ", ".join(f"{k} {v}" for k, v in facts["inputs"].items()))
    for note in facts.get("notes", []):
        print(f"note: {note}")
    if results:
        print(format_table(results))
        for r in results:
            if r.stable is False:
                print(
                    f"warning: {r.load} {r.value:g} never became stable within {cfg.tolerance:.0%} "
                    f"after {len(r.windows)} windows: {', '.join(f'{w:,.0f}' for w in r.windows)} runs/s"
                )
            if r.late_sends:
                print(
                    f"warning: rate {r.value:g}: {r.late_sends} sends were > 1 ms late "
                    "(the load generator fell behind; latency still counts from the intended time)"
                )
        if any(r.stages_ms for r in results):
            print(
                "h2d/compute/d2h: p50 of the device stages of one run in 16 (device events between the stages); "
                "compute-only/s = streams / mean compute time"
            )
        if env.get("backend") == "sim":
            print("(simulated device: the stages are the sim's host threads, not NPU timings)")
    if error:
        print(f"error: {error}", file=sys.stderr)
        rc = 1
    plot_msg = _save(args, env, facts, results, error, plot=True)
    if plot_msg:
        print(f"error: {plot_msg}", file=sys.stderr)
        rc = rc or 1
    return rc


def _save(
    args: argparse.Namespace,
    env: dict[str, Any],
    facts: dict[str, Any],
    results: list[LevelResult],
    error: str | None,
    plot: bool = False,
) -> str | None:
    if args.json:
        write_json(args.json, env, facts, results, error)
    if args.csv:
        write_csv(args.csv, env, facts, results)
    if plot and args.plot and results:
        return write_plot(args.plot, env, results)
    return None


def main(argv: list[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _parser().parse_args(args_list)
    except SystemExit as exc:  # argparse: usage error or --help
        return int(exc.code or 0) if isinstance(exc.code, int) else 2
    if args.command == "doctor":
        return _doctor()
    return _bench(args, args_list)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
