"""Each example script in examples/ written for the core runs (small sizes) and shows its point."""

import importlib.util
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_lazy_vs_full_example(capsys):
    res = _load("lazy_vs_full").main(["--steps", "200", "--m", "100", "--alpha", "100"])
    full, lazy = res["full"], res["lazy (alpha=100)"]
    assert lazy["rel_weight_change"] < 0.05 * full["rel_weight_change"]
    assert "test loss" in capsys.readouterr().out
