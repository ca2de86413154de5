"""examples/tensor_decomposition.py runs (small sizes) and shows the lazy fit's dimension barrier."""

import importlib.util
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_tensor_decomposition_example(capsys):
    spec = importlib.util.spec_from_file_location("tensor_decomposition",
                                                  EXAMPLES / "tensor_decomposition.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = mod.main(["--d", "8", "--m", "6", "20", "--steps", "400"])
    # d = 8: dim Sym^3 = 120; m = 6 gives m d = 48 < 120, m = 20 gives 160 >= 120
    assert res[6]["lazy"] > 0.3 and res[20]["lazy"] < 1e-6
    assert res[6]["variant"] < 0.05 and res[6]["gd"] < 0.05
    assert "plain GD" in capsys.readouterr().out
