"""The README works as written: every ```python block runs, from a directory that is not the
repository, and every install command and documented runner command is valid."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", README, flags=re.S | re.M)


PYTHON_BLOCKS = _blocks("python")


def test_readme_has_python_examples() -> None:
    assert len(PYTHON_BLOCKS) >= 2
    assert any('backend="trio"' in b for b in PYTHON_BLOCKS)
    assert any('"use_uvloop": True' in b for b in PYTHON_BLOCKS)


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_readme_python_block_runs(index: int, tmp_path: Path) -> None:
    """Run as a user would: a fresh interpreter in an empty directory (so relative paths such as
    "mlp.onnx" would fail), with the installed package."""
    script = tmp_path / f"block{index}.py"
    script.write_text(PYTHON_BLOCKS[index])
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=90, check=False
    )
    assert proc.returncode == 0, f"README python block {index} failed:\n{PYTHON_BLOCKS[index]}\n{proc.stderr}"
    lines = proc.stdout.splitlines()
    assert lines, "every README example prints what it got"
    if "np.ones((8, 64)" in PYTHON_BLOCKS[index]:
        # The first examples print the output's shape: mlp maps (8, 64) to (8, 10), once per loop run.
        assert all(line == "(8, 10)" for line in lines), proc.stdout


def test_readme_install_extras_exist() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    section = pyproject.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    extras = set(re.findall(r"^([a-z0-9_-]+) = \[", section, flags=re.M))
    named = set()
    for block in _blocks("bash"):
        for group in re.findall(r"\.\[([a-z0-9_,-]+)\]", block):
            named.update(group.split(","))
    assert named, "the README names no extras"
    assert named <= extras, f"README installs extras that pyproject.toml lacks: {named - extras}"
    assert {"trio", "uvloop", "plot", "test"} <= extras


def test_readme_runner_commands_parse() -> None:
    """Every ``ascend-async bench ...`` line in the README is valid for the runner's parser."""
    from ascend_async.bench._cli import _compare_parser, _parser, config_from_args

    commands = [
        line.split("#")[0].strip()
        for block in _blocks("bash")
        for line in block.splitlines()
        if line.strip().startswith("ascend-async bench")
    ]
    assert len(commands) >= 5
    for cmd in commands:
        argv = shlex.split(cmd)[1:]
        if argv[1] == "compare":
            _compare_parser().parse_args(argv[2:])
            continue
        args = _parser().parse_args(argv)
        if args.explain:
            continue
        if args.model:  # a placeholder file name: check every other setting on a bundled model
            args.model, args.demo = None, "mlp"
        config_from_args(args)
