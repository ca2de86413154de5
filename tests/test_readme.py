"""The README's library snippet runs as written (with fewer training steps)."""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_library_snippet_runs():
    text = README.read_text()
    code = re.search(r"## The library in one screen\n\n```python\n(.*?)```", text, re.S).group(1)
    code = code.replace("steps=2000", "steps=20").replace("steps=500", "steps=20")
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)
    assert ns["K"].shape == (200, 200) and ns["K_inf"].shape == (200, 200)
    assert ns["report"].verdict in ("lazy", "intermediate", "feature learning")
    assert torch.all(ns["adv"].delta_norm <= 0.1 + 1e-6)
    assert "rel_weight_change" in ns["hist"].to_frame()
