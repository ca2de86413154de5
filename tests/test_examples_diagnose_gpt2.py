"""examples/diagnose_gpt2.py runs (small sizes) on a tiny Hugging Face GPT-2 with token + mask
inputs, and the lazy run is diagnosed lazy while the model as given moves its kernel."""

import importlib.util
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_diagnose_gpt2_example(capsys):
    pytest.importorskip("transformers")
    spec = importlib.util.spec_from_file_location("diagnose_gpt2", EXAMPLES / "diagnose_gpt2.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    reps = mod.main(["--steps", "20", "--n", "32", "--probe", "8"])
    given, lazy = reps["as given"], reps["lazy, alpha=100"]
    assert lazy.verdict == "lazy"
    # control: the same model and run without the rescaling is not lazy
    assert given.verdict != "lazy"
    assert given.numbers["kernel_rel_change"] > 5 * lazy.numbers["kernel_rel_change"]
    assert lazy.numbers["train_loss"] < lazy.numbers["train_loss_init"]
    assert lazy.numbers["kappa"] < 0.1 * given.numbers["kappa"]
    out = capsys.readouterr().out
    assert "as given" in out and "kernel change" in out
