"""Input data for the runner: generated (random or zeros) or read from ``.npy``/``.npz`` files or a
folder, checked against the model's signature before anything runs; and saved outputs."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._options import BenchError

__all__ = ["Samples", "check_sample", "load_samples", "parse_shapes", "save_outputs"]


@dataclass
class Samples:
    """The input sets the runner cycles through (run i uses ``sets[i % len(sets)]``)."""

    sets: list[dict[str, np.ndarray]]
    names: list[str]  # one label per set: "random", "zeros" or the file's stem
    source: str  # "random", "zeros" or the path(s) given
    batch: int = 1  # inferences per run, for inferences/s
    notes: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, str]:
        """``{input: "float32[8, 64]"}`` of the first set."""
        return {k: f"{v.dtype}{list(v.shape)}" for k, v in self.sets[0].items()}


def parse_shapes(specs: Sequence[str]) -> dict[str, list[int]]:
    """``["x:1,64", "y:2,3"]`` -> ``{"x": [1, 64], ...}``.

    :raises BenchError: on a spec that is not ``NAME:D0,D1,...`` with integer dims >= 0.
    """
    out: dict[str, list[int]] = {}
    for spec in specs:
        name, sep, dims = spec.partition(":")
        if not sep or not name or not dims:
            raise BenchError(f"--shape {spec!r}: expected NAME:D0,D1,... (e.g. x:1,64)")
        try:
            values = [int(d) for d in dims.split(",")]
        except ValueError:
            raise BenchError(f"--shape {spec!r}: dims must be integers, e.g. {name}:1,64") from None
        if any(v < 0 for v in values):
            raise BenchError(f"--shape {spec!r}: dims must be >= 0")
        out[name] = values
    return out


def _leading_symbolic(graph: Any) -> bool:
    """Every input's first dim is symbolic (a batch axis the runner may set)."""
    specs = list(graph.inputs)
    return bool(specs) and all(s.shape and not isinstance(s.shape[0], int) for s in specs)


def _generate(
    graph: Any, shapes: dict[str, list[int]], batch: int | None, fill: str, seed: int
) -> tuple[dict[str, np.ndarray], list[str]]:
    rng = np.random.default_rng(seed)
    names = {s.name for s in graph.inputs}
    unknown = sorted(set(shapes) - names)
    if unknown:
        raise BenchError(f"--shape names {', '.join(unknown)} but the model's inputs are {', '.join(sorted(names))}")
    notes: list[str] = []
    arrays: dict[str, np.ndarray] = {}
    for spec in graph.inputs:
        declared = spec.shape
        given = shapes.get(spec.name)
        if given is not None:
            if declared is not None:
                if len(given) != len(declared):
                    raise BenchError(
                        f"--shape {spec.name}: {len(given)} dims given, "
                        f"the model declares {spec} ({len(declared)} dims)"
                    )
                for g, d in zip(given, declared, strict=False):
                    if isinstance(d, int) and d != g:
                        raise BenchError(f"--shape {spec.name}:{','.join(map(str, given))} does not match {spec}")
            shape = tuple(given)
        else:
            if declared is None:
                raise BenchError(f"input {spec} has no declared rank: give it with --shape {spec.name}:D0,D1,...")
            unknown = [f"dim {i} ({d or '?'})" for i, d in enumerate(declared) if i > 0 and not isinstance(d, int)]
            if unknown:
                # Only a batch (first) dim has a safe default; a spatial or sequence dim the
                # runner guessed would measure a model nobody runs.
                example = ",".join(
                    str(d) if isinstance(d, int) else "1" if i == 0 else "32" for i, d in enumerate(declared)
                )
                raise BenchError(
                    f"input {spec} has unknown {', '.join(unknown)}: give the shape to run, "
                    f"e.g. --shape {spec.name}:{example}"
                )
            dims = []
            for d in declared:
                if isinstance(d, int):
                    dims.append(d)
                elif batch is not None:
                    dims.append(batch)
                else:
                    dims.append(1)
                    notes.append(f"{spec.name}: batch dim {d or '?'} set to 1 (use --batch-size or --shape)")
            shape = tuple(dims)
        dtype = np.dtype(spec.dtype)
        if fill == "zeros":
            arrays[spec.name] = np.zeros(shape, dtype)
        elif dtype.kind == "f":
            arrays[spec.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in "iu":
            arrays[spec.name] = rng.integers(0, 8, size=shape).astype(dtype)
        elif dtype.kind == "b":
            arrays[spec.name] = rng.integers(0, 2, size=shape).astype(dtype)
        else:
            arrays[spec.name] = np.zeros(shape, dtype)
    return arrays, notes


def check_sample(graph: Any, arrays: dict[str, np.ndarray], origin: str) -> None:
    """Names, dtypes and fixed dims of ``arrays`` against the model's inputs.

    :raises BenchError: naming the input, what the model declares and what ``origin`` holds.
    """
    want = {s.name: s for s in graph.inputs}
    missing = sorted(set(want) - set(arrays))
    extra = sorted(set(arrays) - set(want))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"no data for {', '.join(missing)}")
        if extra:
            parts.append(f"{', '.join(extra)} not inputs of the model")
        raise BenchError(
            f"--input {origin}: {'; '.join(parts)}; the model's inputs are " + ", ".join(str(s) for s in graph.inputs)
        )
    for name, spec in want.items():
        a = arrays[name]
        if a.dtype != spec.dtype:
            raise BenchError(f"--input {origin}: {name} is {a.dtype}, the model wants {spec}")
        if spec.shape is not None:
            ok = a.ndim == len(spec.shape) and all(
                not isinstance(d, int) or d == n for d, n in zip(spec.shape, a.shape, strict=False)
            )
            if not ok:
                raise BenchError(f"--input {origin}: {name} has shape {list(a.shape)}, the model wants {spec}")


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: np.require(z[k], requirements="C") for k in z.files}
    except (OSError, ValueError) as exc:
        raise BenchError(f"--input {path}: cannot read as .npz: {exc}") from None


def _read_npy(path: Path) -> np.ndarray:
    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise BenchError(f"--input {path}: cannot read as .npy: {exc}") from None
    if not isinstance(a, np.ndarray):
        raise BenchError(f"--input {path}: not a .npy array (an .npz goes alone: --input {path})")
    return np.require(a, requirements="C")


def _sample_from_files(graph: Any, specs: Sequence[str]) -> tuple[list[dict[str, np.ndarray]], list[str]]:
    names = [s.name for s in graph.inputs]
    if len(specs) == 1 and "=" not in specs[0]:
        p = Path(specs[0])
        if not p.exists():
            raise BenchError(f"--input {p}: no such file or folder")
        if p.is_dir():
            return _samples_from_dir(graph, p)
        if p.suffix == ".npz":
            return [_read_npz(p)], [p.stem]
        if p.suffix == ".npy":
            if len(names) != 1:
                raise BenchError(
                    f"--input {p}: one .npy file, but the model has {len(names)} inputs "
                    f"({', '.join(names)}): give NAME=FILE.npy for each, an .npz or a folder"
                )
            return [{names[0]: _read_npy(p)}], [p.stem]
        raise BenchError(f"--input {p}: expected a .npy or .npz file, a folder, 'zeros' or 'random'")
    arrays: dict[str, np.ndarray] = {}
    for spec in specs:
        name, sep, file = spec.partition("=")
        if not sep or not name or not file:
            raise BenchError(f"--input {spec!r}: with several --input, each is NAME=FILE.npy")
        p = Path(file)
        if not p.is_file():
            raise BenchError(f"--input {spec}: no such file {file}")
        arrays[name] = _read_npy(p)
    return [arrays], ["+".join(Path(s.partition("=")[2]).stem for s in specs)]


def _samples_from_dir(graph: Any, folder: Path) -> tuple[list[dict[str, np.ndarray]], list[str]]:
    npz = sorted(folder.glob("*.npz"))
    if npz:
        return [_read_npz(p) for p in npz], [p.stem for p in npz]
    arrays: dict[str, np.ndarray] = {}
    for spec in graph.inputs:
        f = folder / f"{spec.name}.npy"
        if f.is_file():
            arrays[spec.name] = _read_npy(f)
    if not arrays:
        raise BenchError(
            f"--input {folder}: the folder has neither .npz files (one input set each) nor "
            + ", ".join(f"{s.name}.npy" for s in graph.inputs)
        )
    return [arrays], [folder.name]


def load_samples(
    graph: Any,
    inputs: Sequence[str],
    shapes: dict[str, list[int]],
    batch: int | None,
    seed: int,
) -> Samples:
    """The input sets for a run, checked against ``graph``'s signature.

    ``inputs`` empty or ``["random"]``: seeded random data; ``["zeros"]``: zeros; otherwise one
    ``.npy`` (single-input model), one ``.npz`` (arrays named like the inputs), a folder (``*.npz``
    files, cycled one per run, or ``NAME.npy`` per input), or ``NAME=FILE.npy`` per input.
    Generated data take symbolic dims from ``shapes``, the batch (first) dim from ``batch``, else 1.
    ``Samples.batch`` is the inferences per run: ``batch``, or the first dim when every input's
    first dim is symbolic.

    :raises BenchError: for a missing or unreadable file, wrong input names, dtypes or shapes, or
        a batch size the files or the model contradict.
    """
    if batch is not None and batch < 1:
        raise BenchError(f"--batch-size {batch}: must be >= 1")
    mode = inputs[0].lower() if len(inputs) == 1 and inputs[0].lower() in ("random", "zeros") else None
    if not inputs or mode:
        fill = mode or "random"
        if batch is not None and not _leading_symbolic(graph):
            first = [s.shape[0] if s.shape else None for s in graph.inputs]
            if any(f != batch for f in first):
                raise BenchError(
                    f"--batch-size {batch}: the model's first dims are fixed ("
                    + ", ".join(str(s) for s in graph.inputs)
                    + ")"
                )
        arrays, notes = _generate(graph, shapes, batch, fill, seed)
        samples = Samples([arrays], [fill], fill, notes=notes)
    else:
        if shapes:
            raise BenchError("--shape applies to generated inputs; the --input files fix the shapes")
        sets, labels = _sample_from_files(graph, inputs)
        origin = ", ".join(inputs)
        for arrays, label in zip(sets, labels, strict=True):
            check_sample(graph, arrays, origin if len(sets) == 1 else f"{origin} ({label})")
        samples = Samples(sets, labels, origin)
    if _leading_symbolic(graph):
        firsts = {int(a.shape[0]) for s in samples.sets for a in s.values() if a.ndim}
        if batch is not None and firsts != {batch}:
            raise BenchError(
                f"--batch-size {batch}: the input data have first dims {sorted(firsts)}; "
                "drop --batch-size or give data of that batch"
            )
        samples.batch = batch if batch is not None else (min(firsts) if len(firsts) == 1 else 1)
    elif batch is not None:
        samples.batch = batch
    return samples


def save_outputs(folder: str, labels: Sequence[str], outputs: Sequence[dict[str, Any]]) -> list[str]:
    """Write each input set's outputs as ``FOLDER/<label>.npz`` (arrays named like the model's
    outputs); returns the paths written.

    :raises BenchError: if the folder cannot be created or written.
    """
    try:
        os.makedirs(folder, exist_ok=True)
        paths = []
        for label, out in zip(labels, outputs, strict=True):
            p = os.path.join(folder, f"{label}.npz")
            arrays: dict[str, Any] = {k: np.asarray(v) for k, v in out.items()}
            np.savez(p, **arrays)
            paths.append(p)
    except OSError as exc:
        raise BenchError(f"--save-outputs {folder}: {exc}") from None
    return paths
