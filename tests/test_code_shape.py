"""Code shape: every function of the library is short (<= 80 lines, the project's style rule).

A function's length runs from its ``def`` line to its last line, docstring included (decorators
excluded); no function is exempt.
"""

from __future__ import annotations

import ast
from pathlib import Path

LIMIT = 80
ROOT = Path(__file__).resolve().parents[1] / "lazylab"


def function_lengths(root: Path = ROOT) -> dict[str, int]:
    """``"path name" -> lines`` of every function and method (decorators excluded; the longest
    when a name repeats in a file)."""
    out: dict[str, int] = {}
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                key = f"{path.relative_to(root.parent).as_posix()} {node.name}"
                out[key] = max(out.get(key, 0), node.end_lineno - node.lineno + 1)
    return out


def test_function_lengths_are_measured():
    lengths = function_lengths()
    assert 5 <= lengths["lazylab/training/loop.py log_schedule"] < 20  # a known short one
    assert lengths["lazylab/trainer.py train"] > 40  # a known long signature + docstring


def test_no_function_in_the_library_is_longer_than_80_lines():
    lengths = function_lengths()
    long = [f"{k} ({n} lines)" for k, n in lengths.items() if n > LIMIT]
    assert not long, "split these functions: " + ", ".join(long)
