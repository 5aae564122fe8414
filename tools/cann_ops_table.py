"""Rebuild ``ascend_async/cann_onnx_ops.tsv``: the ONNX op keys CANN's op plugins register.

Give it checkouts of the public operator repositories (hicann/ops-nn, hicann/ops-math,
hicann/ops-cv). It reads every ``**/framework/*_onnx_plugin.cpp`` and collects the keys
``<domain>::<opset>::<OpType>`` in both forms the plugins use:

- literal: ``.OriginOpType("ai.onnx::11::Conv")`` (also several strings in one call, or a
  braced list), and
- macro: ``REGISTER_CUSTOM_ONNX_OP(ai.onnx::11::Acos, Acos, AcosV11)``.

The table names each repository's commit (``git rev-parse HEAD`` in the checkout), so a verdict
can always be traced to the sources it was read from.

    python tools/cann_ops_table.py --repo hicann/ops-nn=../ops-nn --repo hicann/ops-math=../ops-math \\
        --repo hicann/ops-cv=../ops-cv -o ascend_async/cann_onnx_ops.tsv
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

KEY = r"[A-Za-z_][\w.]*::\d+::[A-Za-z_]\w*"
# .OriginOpType( ... ) up to the closing parenthesis; the quoted keys inside it.
_ORIGIN = re.compile(r"OriginOpType\s*\(([^;]*?)\)\s*[.;]", re.S)
_QUOTED = re.compile(r'"(' + KEY + r')"')
# REGISTER_CUSTOM_ONNX_OP(key, ...): the macro stringifies its first argument. Its own
# #define line (whose first parameter is a name, not a key) does not match KEY.
_MACRO = re.compile(r"REGISTER_CUSTOM_ONNX_OP\s*\(\s*(" + KEY + r")\s*,")
_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)

HEADER = """\
# ONNX op registrations of CANN's ONNX parser, read from the public operator repositories:
{commits}
# files **/framework/*_onnx_plugin.cpp; keys '<domain>::<opset>::<OpType>' in their literal form
# (OriginOpType("ai.onnx::11::Conv")) and macro form (REGISTER_CUSTOM_ONNX_OP(ai.onnx::11::Acos, ...)).
# GE's parser looks a node up by the model's opset_import version for its domain; Constant, FileConstant and
# graph inputs are mapped internally. A lower bound: a shipped CANN may register more.
# Rebuild: python tools/cann_ops_table.py --repo OWNER/NAME=CHECKOUT (once per repository above) -o FILE
key\trepository\tpath
"""


def keys_in(source: str) -> set[str]:
    """Every key a plugin source registers, comments ignored."""
    text = _COMMENT.sub("", source)
    found = set(_MACRO.findall(text))
    for call in _ORIGIN.findall(text):
        found.update(_QUOTED.findall(call))
    return found


def commit_of(checkout: Path) -> str:
    try:
        out = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True)
    except OSError:
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def build(repos: list[tuple[str, Path]]) -> str:
    """The table's text: the header naming each repository's commit, then one row per key."""
    rows: set[tuple[str, str, str]] = set()
    commits = []
    for name, root in repos:
        commits.append(f"#   {name} at commit {commit_of(root)}")
        for plugin in sorted(root.glob("**/framework/*_onnx_plugin.cpp")):
            rel = plugin.relative_to(root).as_posix()
            for key in keys_in(plugin.read_text(encoding="utf-8", errors="replace")):
                rows.add((key, name, rel))  # a key registered in several files gets a row for each
    body = "".join(f"{k}\t{repo}\t{path}\n" for k, repo, path in sorted(rows))
    return HEADER.format(commits="\n".join(commits)) + body


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", action="append", required=True, metavar="OWNER/NAME=PATH", help="a checkout to read")
    p.add_argument("-o", "--output", default="-", help="where to write the table (default: stdout)")
    args = p.parse_args(argv)
    repos = []
    for spec in args.repo:
        name, sep, path = spec.partition("=")
        if not sep or not Path(path).is_dir():
            p.error(f"--repo {spec!r}: expected OWNER/NAME=PATH to a checkout")
        repos.append((name, Path(path)))
    text = build(repos)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
