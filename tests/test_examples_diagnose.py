"""examples/diagnose_two_layer.py runs (small sizes) and reaches both verdicts."""

import importlib.util
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_diagnose_two_layer_example(capsys):
    spec = importlib.util.spec_from_file_location("diagnose_two_layer", EXAMPLES / "diagnose_two_layer.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    reps = mod.main(["--m", "300", "--steps", "60", "--probe", "12"])
    wide, narrow = reps["wide, alpha=100"], reps["narrow, alpha=0.1"]
    assert wide.verdict == "lazy" and narrow.verdict == "feature learning"
    assert narrow.numbers["kernel_rel_change"] > 100 * wide.numbers["kernel_rel_change"]
    out = capsys.readouterr().out
    assert "lazy" in out and "feature learning" in out and "kernel change" in out
